"""Answer matching, AP/mAP, retrieval and the linear probe on cases worked out by hand."""
import pytest
import torch

from pengi_kit.evaluation.scores import (accuracy, answer_correct, average_precision, mean_average_precision,
                                         normalize_answer, retrieval_scores, word_similarity)
from pengi_kit.evaluation.tasks import fit_logistic_regression


def test_answer_normalisation():
    assert normalize_answer("Yes, there are Two dogs.") == "yes there are 2 dogs"
    assert normalize_answer("  The  dog's  bark! ") == "dogs bark"
    assert answer_correct("The dog", ["dog"]) and answer_correct("three", ["3", "4"])
    assert not answer_correct("a cat", ["dog"])
    # yes/no references: the first word of the answer decides
    assert answer_correct("yes, a dog barks", ["yes"]) and not answer_correct("no dog", ["yes"])
    assert not answer_correct("maybe yes", ["yes"])


def test_word_similarity():
    assert word_similarity("a low tone", "low tone") == 1.0  # the article does not count
    assert word_similarity("low tone", "high tone") == pytest.approx(2 * 1 / 4)
    assert word_similarity("", "x") == 0.0


def test_average_precision_by_hand():
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    ap = average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)
    # a tie is one threshold: (0.5 recall at precision 1/2) + (0.5 recall at precision 2/3)
    ap = average_precision(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([0, 1, 1]))
    assert ap == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert torch.isnan(torch.tensor(average_precision(torch.tensor([1.0]), torch.tensor([0]))))


def test_map_skips_classes_without_positives_and_accuracy():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.6, 0.7, 0.2]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    # class 0: positive ranked first -> 1; class 1: positives at ranks 1, 2 -> 1; class 2 has none
    assert mean_average_precision(scores, labels) == pytest.approx(1.0)
    labels = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 0, 0]])
    # class 0: the positive (0.6) is second -> 1/2; class 1: positive 0.8 first -> 1
    assert mean_average_precision(scores, labels) == pytest.approx(0.75)
    assert accuracy(scores, torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)


def test_retrieval_by_hand():
    # 2 queries over 4 items; query 0's relevant item ranks 2nd, query 1's two relevant items rank 1st and 4th
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.2],
                        [0.8, 0.3, 0.2, 0.1]])
    rel = torch.tensor([[0, 0, 1, 0],
                        [1, 0, 0, 1]])
    out = retrieval_scores(sim, rel, ks=(1, 2))
    assert out["R@1"] == pytest.approx(0.5) and out["R@2"] == pytest.approx(1.0)
    # AP@10: query 0 -> (1/2) / 1; query 1 -> (1/1 + 2/4) / 2
    assert out["mAP@10"] == pytest.approx((0.5 + 0.75) / 2)


@pytest.mark.learning
def test_linear_probe_learns_a_separable_problem(learning_seed, record_property):
    g = torch.Generator().manual_seed(learning_seed)
    centers = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(90) % 3
    x = centers[y] + torch.randn(90, 8, generator=g)
    predict = fit_logistic_regression(x[:60], torch.nn.functional.one_hot(y[:60], 3).float(), multi_label=False)
    record_property("held-out accuracy", float(accuracy(predict(x[60:]), y[60:])))
    assert accuracy(predict(x[60:]), y[60:]) >= 0.95  # seeds 0-4: 1.0 (the classes are 3 sigma apart)


def test_clotho_aqa_agreement_rules(tmp_path):
    """any / majority / unanimous, by hand, and the aqa task reporting them with their counts."""
    import json

    import numpy as np
    import soundfile as sf

    from pengi_kit.evaluation.scores import agreed_answers
    from pengi_kit.evaluation.tasks import evaluate

    assert agreed_answers(["Yes", "yes.", "no"]) == {"any": ["Yes", "yes.", "no"], "majority": ["Yes"]}
    assert agreed_answers(["two", "2", "Two"])["unanimous"] == ["two"]
    assert set(agreed_answers(["rain", "wind", "water"])) == {"any"}  # no majority, no agreement
    questions = {"q1": (["yes", "yes", "no"], "no"), "q2": (["dog", "dog", "dog"], "dog"),
                 "q3": (["rain", "wind", "water"], "wind")}
    rows = []
    for n, (question, (answers, _)) in enumerate(questions.items()):
        sf.write(tmp_path / f"{n}.wav", np.zeros(800), 16000)
        rows += [{"audio": f"{n}.wav", "prompt": question, "text": a} for a in answers]
    (tmp_path / "aqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    class Said:  # answers as written above, whatever the clip
        def generate(self, clips, prompts, **_):
            return [questions[p][1] for p in prompts]

    result = evaluate(Said(), "aqa", tmp_path / "aqa.jsonl")
    assert result.metrics["accuracy"] == 1.0  # each answer is one annotator's
    assert result.metrics["accuracy (majority)"] == 0.5  # q1 (majority yes) wrong, q2 right; q3 has none
    assert result.metrics["accuracy (unanimous)"] == 1.0 and result.info["questions (unanimous)"] == 1
