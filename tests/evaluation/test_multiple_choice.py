"""Multiple-choice scoring against golden items worked out by hand from each benchmark's official
script (tests/fixtures/multiple_choice/README.md), the files' layouts, and scoring predictions
made elsewhere from the command line without torch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pengi_kit.data.benchmarks import read_items, render
from pengi_kit.errors import PengiKitError
from pengi_kit.evaluation import multiple_choice as mc

GOLDEN = Path(__file__).parents[1] / "fixtures" / "multiple_choice"


@pytest.mark.parametrize("name", ["mmau.json", "mmar.jsonl"])
def test_token_rule_matches_the_golden_items(name):
    bench, items = read_items(GOLDEN / name)
    assert bench.name == name.split(".")[0]
    predictions = mc.predictions_of(items, bench.key)
    official, strict = mc.official(bench, items, predictions), mc.strict_scores(items, predictions)
    by_id = {r["id"]: r for r in official.items}
    for item in items:
        expected = item.record["expected"]
        if expected["official"] is None:
            assert by_id[item.id]["missing"], item.id
        else:
            assert by_id[item.id]["match"] == expected["official"], (item.id, expected["why"])
    assert [r["match"] for r in strict.items] == [i.record["expected"]["strict"] for i in items]
    right = sum(1 for i in items if i.record["expected"]["official"])
    skipped = sum(1 for i in items if i.record["expected"]["official"] is None)
    assert official.counts["missing"] == skipped
    assert official.metrics["accuracy (official)"] == right / (len(items) - skipped)
    assert official.metrics["accuracy (official, missing counted wrong)"] == right / len(items)


def test_mmau_report_prints_as_its_script():
    bench, items = read_items(GOLDEN / "mmau.json")
    lines = mc.report_lines(bench, mc.official(bench, items, mc.predictions_of(items, bench.key)))
    # 16 answered: task sound = m1..m9 (9), speech = u1 u2 c1 c2 (4), music = d1..d3 (3); x1 skipped
    assert lines[:5] == ["*" * 30, "Task-wise Accuracy:", "sound : 33.33% over 9 samples",
                         "music : 33.33% over 3 samples", "speech : 50.00% over 4 samples"]
    assert "Total Accuracy: 37.50% over 16 samples" in lines
    assert lines[lines.index("Difficulty-wise Accuracy:") + 1].startswith("easy : ")


def test_air_bench_letter_rule_matches_the_golden_items():
    bench, items = read_items(GOLDEN / "air_bench.jsonl")
    assert bench.name == "air-bench" and items[2].choices == ["Man", "Woman", "Child", "Robot"]
    for item in items:
        assert mc.letter(item.record["response"]) == item.record["expected"]["parsed"], item.record["expected"]["why"]
    official = mc.official(bench, items, mc.predictions_of(items, bench.key))
    assert [r["match"] for r in official.items] == [i.record["expected"]["official"] for i in items]
    assert official.counts == {"items": 9, "scored": 6, "missing": 0, "unparsed": 3}
    assert official.metrics["accuracy (official, unparsed dropped)"] == 5 / 6
    assert official.metrics["accuracy (official, unparsed wrong)"] == 5 / 9
    assert official.metrics["mean over task_datasets (unparsed dropped)"] == (4 / 4 + 1 / 2) / 2
    assert mc.report_lines(bench, official)[:4] == ["Speaker_Gender_Fixture: Sum=4, correct=4, acc=1.0",
                                                    "Speaker_Age_Fixture: Sum=2, correct=1, acc=0.5",
                                                    "total_sum: 6", "fail_num: 3"]


def test_air_bench_answer_that_is_no_choice_is_one_error(tmp_path):
    record = {"path": "x.wav", "question": "q", "choice_a": "yes", "choice_b": "no", "answer_gt": "maybe",
              "task_name": "T", "dataset_name": "D", "uniq_id": 7, "response": "A"}
    (tmp_path / "air.json").write_text(json.dumps([record]))
    with pytest.raises(PengiKitError, match="item 7: answer 'maybe' is none of its choices"):
        mc.score_file(tmp_path / "air.json")


def test_prompts_render_the_published_templates():
    bench, items = read_items(GOLDEN / "air_bench.jsonl")
    two = render(bench.template, items[0])  # AIR-Bench's script prints the absent choices as None
    assert two.endswith("Who speaks?\nA. Man\nB. Woman\nC. None\nD. None")
    bench, items = read_items(GOLDEN / "mmau.json")
    assert render(bench.template, items[0]) == ("\nWhich one?  Select one option from the provided choices.\n"
                                                "['Man', 'Woman', 'Child', 'Robot'].")
    assert render("{question} {lettered}", items[0]).endswith("A. Man\nB. Woman\nC. Child\nD. Robot")
    with pytest.raises(PengiKitError, match="no field 'nope' in item m1"):
        render("{nope}", items[0])


def test_unknown_layout_names_its_keys(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"q": 1}]))
    with pytest.raises(PengiKitError, match=r"not the layout of mmau, mmar, air-bench .*\['q'\].*--benchmark"):
        read_items(tmp_path / "x.json")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(PengiKitError, match=r"bad.jsonl:2: not JSON"):
        read_items(tmp_path / "bad.jsonl")


def test_predictions_are_scored_from_the_command_line_without_torch(tmp_path):
    """A fresh interpreter runs the command and then checks that torch never loaded."""
    code = ("import sys\nfrom pengi_kit.cli import main\n"
            f"sys.argv = ['pengi-kit', 'evaluate', '--task', 'multiple-choice', '--predictions', "
            f"{str(GOLDEN / 'mmau.json')!r}, '--out', {str(tmp_path / 'out')!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Total Accuracy: 37.50% over 16 samples" in run.stdout
    assert "No prediction count: 1" in run.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["benchmark"] == "mmau" and results["counts"]["missing"] == 1
    assert results["metrics"]["accuracy (official)"] == 6 / 16
    lines = [json.loads(line) for line in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    official = {r["id"]: r for r in lines if r["scorer"] == "official"}
    assert len(official) == 17 and official["m2"] == {"id": "m2", "scorer": "official", "match": 1, "parsed": "Man"}


def test_a_file_without_predictions_under_the_key_says_which_key(tmp_path):
    from click.testing import CliRunner

    from pengi_kit.cli import main

    data = json.loads((GOLDEN / "mmau.json").read_text())
    for record in data:
        record["model_prediction"] = record.pop("model_output", "")
    (tmp_path / "renamed.json").write_text(json.dumps(data))
    run = CliRunner().invoke(main, ["evaluate", "--task", "multiple-choice", "--predictions",
                                    str(tmp_path / "renamed.json")])
    assert run.exit_code == 2 and "no item has a prediction under 'model_output'" in run.output
    run = CliRunner().invoke(main, ["evaluate", "--predictions", str(tmp_path / "renamed.json"),
                                    "--prediction-key", "model_prediction"])
    assert run.exit_code == 0 and "Total Accuracy: 35.29% over 17 samples" in run.output  # the empty one counts
