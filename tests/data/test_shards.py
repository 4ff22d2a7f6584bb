"""Tar shards: written from a manifest by the CLI, streamed in training with rank and
worker splitting, readable by webdataset."""

from __future__ import annotations

import json
import re
import tarfile

import pytest
import torch
from click.testing import CliRunner

from pengi_kit.cli import main
from pengi_kit.data.build import build_dataset
from pengi_kit.data.loader import TrainLoader, eval_loader
from pengi_kit.data.shards import ShardDataset, ShardError, expand_braces, resolve_shards
from pengi_kit.engine.trainer import Trainer
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

from corpora import tone, write

SR = 16000


@pytest.fixture
def sharded(tmp_path):
    """11 good rows, a truncated clip, a missing clip and a bad line, in shards of 3."""
    lines = []
    for i in range(11):
        write(tmp_path / "clips" / f"{i}.flac", tone(0.3, 22050, 100 + 30 * i, seed=i), 22050)
        lines.append(json.dumps({"audio": f"clips/{i}.flac", "task": "qa", "question": f"q{i}?", "text": f"t{i}",
                                 **({"start": 0.05} if i == 3 else {})}))
    cut = write(tmp_path / "clips" / "cut.wav", tone(0.3), subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[:-2000])
    lines += [json.dumps({"audio": "clips/cut.wav", "prompt": "p", "text": "cut"}),
              json.dumps({"audio": "clips/gone.wav", "prompt": "p", "text": "gone"}), "{oops"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "shards"
    result = CliRunner().invoke(main, ["data", "shard", str(manifest), "--out", str(out), "--shard-size", "3"])
    assert result.exit_code == 0, result.output
    assert f"wrote 12 samples in 4 shards: {out}/train-{{000000..000003}}.tar; 2 problem(s)" in result.output
    assert "m.jsonl:14: invalid JSON" in result.output and "gone.wav: cannot read audio file" in result.output
    return manifest, out


def test_shards_hold_audio_bytes_and_manifest_fields(sharded):
    manifest, out = sharded
    index = json.loads((out / "shards.json").read_text())
    assert [s["count"] for s in index["shards"]] == [3, 3, 3, 3] and index["samples"] == 12
    rows = {}
    for path in sorted(out.glob("train-*.tar")):
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert len(names) == 6 and all(n.endswith((".json", ".flac", ".wav")) for n in names)
            for name in names:
                if name.endswith(".json"):
                    meta = json.loads(tar.extractfile(name).read())
                    key = name.removesuffix(".json")
                    audio = next(n for n in names if n.startswith(key + ".") and n != name)
                    rows[meta["text"]] = (meta, tar.extractfile(audio).read())
    meta, data = rows["t3"]
    assert meta["prompt"] == "question: q3?" and meta["task"] == "qa" and meta["start"] == 0.05
    assert meta["source"] == f"{manifest}:4" and meta["audio"].endswith("clips/3.flac")
    assert data == (manifest.parent / "clips" / "3.flac").read_bytes()  # untouched bytes


def test_webdataset_reads_them(sharded):
    wds = pytest.importorskip("webdataset")
    _, out = sharded
    samples = list(wds.WebDataset(str(out / "train-{000000..000003}.tar"), shardshuffle=False))
    assert len(samples) == 12
    texts = {json.loads(s["json"])["text"] for s in samples}
    assert texts == {f"t{i}" for i in range(11)} | {"cut"}


def test_patterns_folders_and_missing_shards(sharded, tmp_path):
    _, out = sharded
    assert expand_braces("a-{08..10}-{x,y}.tar") == ["a-08-x.tar", "a-08-y.tar", "a-09-x.tar", "a-09-y.tar",
                                                      "a-10-x.tar", "a-10-y.tar"]
    assert resolve_shards(out) == resolve_shards(str(out / "train-{000000..000003}.tar"))
    assert resolve_shards(str(out / "*.tar")) == resolve_shards(out)
    with pytest.raises(ShardError, match=r"train-000004.tar: shard not found and 5 more"):
        resolve_shards(str(out / "train-{000000..000009}.tar"))


def test_streaming_same_batches_for_any_worker_count_and_rank_split(sharded):
    _, out = sharded
    dataset = ShardDataset(out, SR, 0.2, "random", seed=3)
    loaders = {w: TrainLoader(dataset, 2, seed=3, num_workers=w) for w in (0, 2)}
    assert len(loaders[0]) == 6
    runs = {w: list(loader.epoch(1)) for w, loader in loaders.items()}
    assert len(runs[0]) == len(runs[2]) == 6
    for a, b in zip(runs[0], runs[2]):
        assert a["texts"] == b["texts"] and a["errors"] == b["errors"]
        if a["texts"]:
            torch.testing.assert_close(a["audio"], b["audio"], rtol=0, atol=0)
    assert [b["texts"] for b in loaders[0].epoch(1, start_batch=4)] == [b["texts"] for b in runs[0][4:]]
    assert [b["texts"] for b in loaders[0].epoch(0)] != [b["texts"] for b in runs[0]]  # reshuffled per epoch
    errors = [e for b in runs[0] for e in b["errors"]]
    assert len(errors) == 1 and re.search(r"m.jsonl:12: \S*clips/cut.wav in \S*train-\d{6}.tar:\d{9}.wav: truncated",
                                          errors[0]), errors

    ranks = [TrainLoader(ShardDataset(out, SR, 0.2, seed=3), 2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    seen = [[t for b in loader.epoch(0) for t in b["texts"] + b["errors"]] for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert len(seen[0]) == len(seen[1]) == 6 and not set(seen[0]) & set(seen[1])

    every = [t for b in eval_loader(ShardDataset(out, SR, 0.2), 5) for t in b["texts"] + b["errors"]]
    assert len(every) == 12  # evaluation: everything, in order, the last batch partial


def test_training_streams_shards(sharded, tmp_path):
    _, out = sharded
    raw = tiny_recipe(tmp_path / "run", train={"batch_size": 4, "max_steps": 3})
    raw["data"].update(train=str(out / "train-{000000..000003}.tar"), valid=str(out), num_workers=2)
    recipe = from_dict(raw)
    assert isinstance(build_dataset(recipe, "train", SR, 0.5), ShardDataset)
    trainer = Trainer(recipe, progress=False)
    assert trainer.steps_per_epoch == 3
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3] and any("valid_loss" in r for r in records)
    skipped = [e for r in records if r.get("event") == "skipped_examples" for e in r["errors"]]
    assert any(re.search(r"cut.wav in .*: truncated", e) for e in skipped)


def test_shards_cannot_be_mixed_with_weights(sharded, tmp_path):
    manifest, out = sharded
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["train"] = [{"manifest": str(out)}, {"manifest": str(manifest), "weight": 2}]
    with pytest.raises(Exception, match="cannot be mixed"):
        build_dataset(from_dict(raw), "train", SR, 0.5)


def test_conversations_shard_with_their_clips_in_order_and_train_in_the_chat_layout(tmp_path):
    """A conversation file (two clips a row, one row placing the same clip twice) shards with each
    clip a member, streams back as conversations with the clips in their order, trains in the chat
    layout, and is refused by Pengi's prefix layout."""
    import numpy as np

    from pengi_kit.data.audio import load_audio
    from pengi_kit.data.shards import write_shards

    rows = []
    for i in range(8):
        for n in (0, 1):
            write(tmp_path / "clips" / f"{i}_{n}.wav", tone(0.5, SR, 200 + 300 * n + 20 * i, seed=i), SR,
                  subtype="PCM_16")
        clips = [f"clips/{i}_0.wav", f"clips/{i}_1.wav"] if i != 5 else [f"clips/{i}_1.wav", f"clips/{i}_1.wav"]
        rows.append({"messages": [{"role": "user", "content": "<audio><audio>is the second higher?"},
                                  {"role": "assistant", "content": "yes" if i != 5 else "no"}], "audios": clips})
    rows.append({"messages": [{"role": "user", "content": "<audio>hi"}, {"role": "assistant", "content": "x"}],
                 "audios": ["clips/gone.wav"]})
    (tmp_path / "chats.json").write_text(json.dumps(rows))
    report = write_shards(tmp_path / "chats.json", tmp_path / "shards", 3, shuffle=False)
    assert report.samples == 8 and len(report.problems) == 1 and "gone.wav" in report.problems[0]
    assert json.loads((tmp_path / "shards" / "shards.json").read_text())["rows"] == "conversations"
    with tarfile.open(tmp_path / "shards" / "train-000001.tar") as tar:
        assert tar.getnames()[:3] == ["000000003.0.wav", "000000003.1.wav", "000000003.json"]
    data = ShardDataset(tmp_path / "shards", SR, None, "start")
    data.configure(batch_size=8, train=False)
    items = [data._item(ref, {}) for ref in data._stream()]
    assert [it["text"] for it in items] == ["yes"] * 5 + ["no"] + ["yes"] * 2
    for i, item in enumerate(items):
        names = [f"{i}_0", f"{i}_1"] if i != 5 else [f"{i}_1", f"{i}_1"]
        for wav, name in zip(item["audios"], names):
            assert np.array_equal(wav, load_audio(tmp_path / "clips" / f"{name}.wav", SR))
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 4, "batch_size": 4})
    raw["data"].update(train=str(tmp_path / "shards"), valid="")
    with pytest.raises(Exception, match="hold conversations, which the chat layout reads"):
        build_dataset(from_dict(raw), "train", SR, 0.5)
    del raw["model"]["text_mapper"]
    raw["model"]["layout"] = "chat"
    Trainer(from_dict(raw), progress=False).fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 4 and all(np.isfinite(losses))
