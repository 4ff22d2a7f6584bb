"""The training loader: weighted mixtures, per-dataset templates, length buckets, rank
sharding, exact resumption, and the same batches for any number of workers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from pengi_kit.data.build import build_dataset
from pengi_kit.data.dataset import ManifestDataset, MixtureDataset
from pengi_kit.data.loader import TrainLoader
from pengi_kit.data.sampler import LENGTH_STEP, BucketBatchSampler
from pengi_kit.errors import RecipeError
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

from corpora import tone, write

SR = 16000


def corpus(root, name, n, sr=22050, seconds=0.3, **row):
    """A manifest of ``n`` clips (longer than the 0.2 s crop) with texts of varied length."""
    lines = []
    for i in range(n):
        write(root / name / f"{i}.wav", tone(seconds, sr, 100 + 50 * i, seed=i), sr, subtype="PCM_16")
        lines.append(json.dumps({"audio": f"{name}/{i}.wav", "text": f"{name} {i}" + " word" * (i % 7), **row}))
    path = root / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def batches(loader, epoch, start=0):
    return [(b["texts"], b["audio"]) for b in loader.epoch(epoch, start)]


def assert_same(a, b):
    assert len(a) == len(b)
    for (texts_a, audio_a), (texts_b, audio_b) in zip(a, b):
        assert texts_a == texts_b
        torch.testing.assert_close(audio_a, audio_b, rtol=0, atol=0)


# ---------------------------------------------------------------- sampler

def test_sampler_is_deterministic_per_seed_and_epoch():
    def order(seed, epoch):
        s = BucketBatchSampler([30], 4, lengths=np.arange(30) % 7, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert len(order(0, 0)) == 7 and len({i for b in order(0, 0) for i in b}) == 28  # no repeats, tail dropped


def test_ranks_split_every_global_batch_and_resume_is_exact():
    lengths = np.random.default_rng(0).integers(1, 50, 100)
    ranks = [BucketBatchSampler([100], 5, lengths=lengths, num_replicas=3, rank=r, seed=7) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    assert [len(p) for p in per_rank] == [6, 6, 6] == [len(s) for s in ranks]
    single = BucketBatchSampler([100], 15, lengths=lengths, seed=7)
    single.set_epoch(2)
    for step, whole in enumerate(single):  # rank r holds slice r of the same global batch
        assert sum((per_rank[r][step] for r in range(3)), []) == whole
    ranks[1].set_epoch(2, start_batch=4)
    assert list(ranks[1]) == per_rank[1][4:] and len(ranks[1]) == 2


def test_buckets_group_similar_lengths_in_random_order():
    lengths = np.random.default_rng(1).integers(1, 200, 2000)
    spread = {}
    for pool in (0, 20):
        s = BucketBatchSampler([2000], 16, lengths=lengths, seed=0, pool_batches=pool)
        batches = list(s)
        spread[pool] = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
        firsts = [lengths[b].min() for b in batches]
    assert spread[20] < 2 * LENGTH_STEP < spread[0] / 5  # lengths within a step are not sorted
    assert not np.all(np.diff(firsts) >= 0)  # batch order is not sorted by length


def test_short_answers_are_not_sorted_into_batches_of_one_class():
    """Digits' words are 3-5 characters long: sorted by exact length, a batch of 16 held two or three
    digits (a tagger and BatchNorm learn badly from that); within a length step they mix."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    labels = np.random.default_rng(2).integers(0, 10, 1600)
    lengths = np.array([len(words[k]) for k in labels])
    s = BucketBatchSampler([1600], 16, lengths=lengths, seed=0)
    kinds = [len(set(labels[b])) for b in s]
    assert np.mean(kinds) > 7, np.mean(kinds)  # as unsorted batches: about 8.1 of 10 digits in 16 draws


def test_tagging_batches_are_not_bucketed_by_their_labels(tmp_path):
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.recipe import from_dict

    tagger = {"name": "tagger", "task": "tagging", "model": {"audio_encoder": {"name": "cnn14", "width": 2,
                                                                              "clip_seconds": 0.5}},
              "data": {"synthetic_train_size": 64, "synthetic_valid_size": 4},
              "train": {"batch_size": 8, "max_steps": 1, "output_dir": str(tmp_path / "run")}}
    assert Trainer(from_dict(tagger), progress=False).loader.sampler.lengths is None


def test_weights_repeat_and_subsample_sources():
    s = BucketBatchSampler([10, 40], 5, weights=[2.0, 0.25], seed=3)
    draws = [d for b in s for d in b]
    assert len(draws) == 30 and len(set(draws)) == 30  # each copy is its own draw
    by_source = Counter("a" if d % 50 < 10 else "b" for d in draws)
    assert by_source == {"a": 20, "b": 10}
    assert Counter(d % 50 for d in draws if d % 50 < 10) == {i: 2 for i in range(10)}
    s.set_epoch(1)
    other = {d % 50 for b in s for d in b if d % 50 >= 10}
    assert other != {d % 50 for d in draws if d % 50 >= 10}  # another quarter of b in the next epoch


# ---------------------------------------------------------------- datasets and loader

def test_zero_and_two_workers_give_identical_batches(tmp_path):
    dataset = ManifestDataset(corpus(tmp_path, "a", 24, task="caption"), SR, 0.2, "random", seed=5)
    loaders = {w: TrainLoader(dataset, 4, seed=5, num_workers=w) for w in (0, 2)}
    assert len(loaders[0]) == 6
    for epoch in (0, 1):
        assert_same(batches(loaders[0], epoch), batches(loaders[2], epoch))
    assert_same(batches(loaders[0], 1, start=4), batches(loaders[2], 1)[4:])  # exact mid-epoch resume
    first = batches(loaders[0], 0)
    assert first[0][1].shape == (4, 3200)  # cropped to 0.2 s at the encoder's rate
    lengths = [max(len(t) for t in texts) - min(len(t) for t in texts) for texts, _ in first]
    assert max(lengths) < 2 * LENGTH_STEP  # bucketed: texts of a batch have similar length


def test_mixture_from_recipe_weights_templates_and_crops(tmp_path):
    a = corpus(tmp_path, "a", 8)
    b = corpus(tmp_path, "b", 16, task="caption")
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["train"] = [
        {"manifest": str(a), "weight": 2, "task": "caption", "templates": {"caption": "describe the {kind} sound"}},
        {"manifest": str(b), "weight": 0.5},
    ]
    unfilled = build_dataset(from_dict(raw), "train", SR, 0.2)  # rows of a lack the field 'kind'
    assert len(unfilled.load_errors) == 8 and "needs field 'kind'" in unfilled.load_errors[0]
    raw["data"]["train"][0]["templates"] = {"caption": "describe the sound"}
    recipe = from_dict(raw)
    assert recipe["data"]["train"][1] == {"manifest": str(b), "weight": 0.5}
    dataset = build_dataset(recipe, "train", SR, 0.2)
    assert isinstance(dataset, MixtureDataset) and dataset.sizes == [8, 16]
    loader = TrainLoader(dataset, 4, seed=0)
    seen = [(t, a) for texts, audio in batches(loader, 0) for t, a in zip(texts, audio)]
    assert Counter(t.split()[0] for t, _ in seen) == {"a": 16, "b": 8}
    prompts = {dataset[i]["prompt"] for i in range(24)}
    assert prompts == {"describe the sound", "generate audio caption"}  # a's own template, b's built-in one
    copies = [audio for text, audio in seen if text == "a 0"]  # example 0 of a, drawn twice
    assert len(copies) == 2 and not torch.equal(copies[0], copies[1])  # each copy its own crop


def test_dataset_can_add_its_own_task(tmp_path):
    path = corpus(tmp_path, "d", 2, task="spoken_digit", speaker="theo")
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["train"] = [{"manifest": str(path), "templates": {"spoken_digit": "which digit does {speaker} say"}}]
    dataset = build_dataset(from_dict(raw), "train", SR, 0.2)
    assert dataset[1]["prompt"] == "which digit does theo say" and dataset[1]["task"] == "spoken_digit"


@pytest.mark.parametrize("entry,message", [
    ({"manifest": "a.jsonl", "weight": 0}, r"data.train\[0\].weight: must be positive"),
    ({"manifest": "a.jsonl", "wieght": 2}, "did you mean 'weight'"),
    ({"weight": 2}, "missing 'manifest'"),
    ({"manifest": "a.jsonl", "task": "captoin"}, "did you mean 'caption'"),
    ({"manifest": "a.jsonl", "templates": {"caption": "oops {"}}, "malformed"),
    ("a.jsonl", r"data.train\[0\]: expected a table"),
])
def test_bad_mixture_entries_are_recipe_errors(tmp_path, entry, message):
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["train"] = [entry]
    with pytest.raises(RecipeError, match=message):
        from_dict(raw)


def test_plain_string_source_still_works(tmp_path):
    path = corpus(tmp_path, "s", 4, task="caption")
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["train"] = str(path)
    dataset = build_dataset(from_dict(raw), "train", SR, 0.2)
    assert isinstance(dataset, ManifestDataset) and len(dataset) == 4


# ---------------------------------------------------------------- batches by duration

def test_duration_batches_fill_a_budget_with_little_padding_and_resume_exactly():
    from pengi_kit.data.sampler import DurationBatchSampler

    rng = np.random.default_rng(0)
    durations = np.exp(rng.uniform(np.log(1), np.log(30), 500))  # 1-30 s, skewed to short clips
    counts, padded = set(), []
    for rank in (0, 1):
        s = DurationBatchSampler([300, 200], durations, 60.0, weights=[1.0, 0.5], num_replicas=2, rank=rank, seed=3)
        for epoch in range(3):
            s.set_epoch(epoch)
            epoch_batches = list(s)
            counts.add(len(epoch_batches))
            for batch in epoch_batches:
                d = durations[np.array(batch) % 500]
                assert len(batch) * d.max() <= 60.0 or len(batch) == 1
                padded.append(1 - d.sum() / (len(batch) * d.max()))
            s.set_epoch(epoch, start_batch=5)
            assert list(s) == epoch_batches[5:]
    assert len(counts) == 1  # every epoch and rank has the same steps
    assert np.mean(padded) < 0.1, np.mean(padded)
    # the two ranks split each global batch; the epochs differ
    a, b = (DurationBatchSampler([300, 200], durations, 60.0, num_replicas=2, rank=r, seed=3) for r in (0, 1))
    first = [x + y for x, y in zip(a, b)]
    assert all(not set(x) & set(y) for x, y in zip(a, b)) and len(first[0]) == 2 * len(next(iter(a)))
    a.set_epoch(1)
    assert list(a) != [x[:len(x) // 2] for x in first]


def test_batch_seconds_trains_and_resumes_bitwise(tmp_path):
    from pengi_kit.engine.trainer import Trainer

    lines = []
    for i in range(24):  # 0.5 to 1.65 s
        write(tmp_path / "c" / f"{i}.wav", tone(0.5 + 0.05 * i, SR, 200 + 40 * i, seed=i), SR, subtype="PCM_16")
        lines.append(json.dumps({"audio": f"c/{i}.wav", "text": "a low tone" if i % 2 else "a high tone",
                                 "prompt": "this is a sound of"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")

    def recipe(out, steps):
        raw = tiny_recipe(tmp_path / out, train={"max_steps": steps, "save_every": 3, "batch_seconds": 4.0})
        raw["model"]["audio_encoder"]["clip_seconds"] = 0  # clips of any length
        raw["data"].update(train=str(tmp_path / "m.jsonl"), valid="")
        return from_dict(raw, ["optim.warmup_steps=2"])

    Trainer(recipe("full", 6), progress=False).fit()
    Trainer(recipe("part", 3), progress=False).fit()
    Trainer(recipe("part", 6), resume=True, progress=False).fit()
    rows = {out: [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
            for out in ("full", "part")}
    losses = {out: [r["loss"] for r in rs if "loss" in r] for out, rs in rows.items()}
    assert len(losses["full"]) == 6 and losses["part"] == losses["full"]
    padding = [r["audio_padding"] for r in rows["full"] if "audio_padding" in r]
    assert padding and max(padding) < 0.15, padding
