"""Hugging Face datasets as a source: a dataset saved with save_to_disk (and as Parquet) with an
Audio column trains and validates, Pengi rows and chat rows; its audio is decoded by pengi-kit's
own path (a corrupt clip is one line naming the row); bad tables are named."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

datasets = pytest.importorskip("datasets")

from pengi_kit.data.build import build_dataset  # noqa: E402
from pengi_kit.data.collate import collate  # noqa: E402
from pengi_kit.errors import RecipeError  # noqa: E402
from pengi_kit.recipe import from_dict  # noqa: E402
from pengi_kit.testing import tiny_recipe  # noqa: E402

KINDS = ("low tone", "high tone")


def _wav(kind: str, rng: np.random.Generator) -> bytes:
    hz = rng.uniform(200, 400) if kind == "low tone" else rng.uniform(2000, 4000)
    buf = io.BytesIO()
    sf.write(buf, 0.5 * np.sin(2 * np.pi * hz * np.arange(8000) / 16000), 16000, format="WAV")
    return buf.getvalue()


def _pengi_rows(n: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    kinds = [KINDS[i % 2] for i in range(n)]
    return {"audio": [{"bytes": _wav(k, rng), "path": f"{i}.wav"} for i, k in enumerate(kinds)], "caption": kinds}


def _train(raw: dict, tmp_path) -> list[dict]:
    from pengi_kit.engine.trainer import Trainer

    Trainer(from_dict(raw), progress=False).fit()
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.learning
def test_a_saved_dataset_with_an_audio_column_trains_and_validates(tmp_path, learning_seed, record_property):
    rows = _pengi_rows(24, learning_seed)
    rows["audio"][5] = {"bytes": b"RIFF\x00\x00\x00\x00WAVEnot audio", "path": "broken.wav"}
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"train": ds, "test": ds.select(range(8))}).save_to_disk(str(tmp_path / "hf"))
    table = {"manifest": str(tmp_path / "hf"), "split": "train", "columns": {"text": "caption"},
             "prompt": "this is a sound of"}
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 8, "eval_every": 4})
    raw["seed"] = learning_seed
    raw["data"].update(train=[table], valid=[{**table, "split": "test"}])
    recipe = from_dict(raw)
    data = build_dataset(recipe, "train", 16000, 0.5)
    assert len(data) == 24 and data[1]["text"] == "high tone" and data[1]["prompt"] == "this is a sound of"
    assert data[1]["audio"].shape == (8000,) and abs(float(np.abs(data[1]["audio"]).max()) - 0.5) < 0.01
    assert data[5] == {"error": data[5]["error"]} and data[5]["error"].startswith(f"{tmp_path / 'hf'}:row 5: ")
    metrics = _train(raw, tmp_path)
    losses = [m["loss"] for m in metrics if "loss" in m]
    record_property("loss, last step / first", float(losses[-1] / losses[0]))
    assert len(losses) == 8 and losses[-1] < losses[0]  # seeds 0-4: the last is 0.74-0.78 of the first
    assert sum("valid_loss" in m for m in metrics) == 2
    # a dataset of several splits needs one named; a missing column is named with those there are
    with pytest.raises(RecipeError, match="a dataset of splits train, test; name one with split"):
        build_dataset(from_dict(raw, [f'data.train=[{{manifest = "{tmp_path / "hf"}"}}]']), "train", 16000, 0.5)
    with pytest.raises(RecipeError, match=r"no column 'text' for the rows' text \(columns: audio, caption\)"):
        build_dataset(from_dict(raw, [f'data.train=[{{manifest = "{tmp_path / "hf"}", split = "train"}}]']),
                      "train", 16000, 0.5)
    with pytest.raises(RecipeError, match=r"columns.label: expected one of audio, text"):
        from_dict(raw, [f'data.train=[{{manifest = "x.parquet", columns = {{label = "y"}}}}]'])
    # the same rows as Parquet
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    parquet = build_dataset(from_dict(raw, [f'data.train=[{{manifest = "{tmp_path / "rows.parquet"}", columns = '
                                            '{text = "caption"}, prompt = "this is a sound of"}]']), "train", 16000, 0.5)
    assert len(parquet) == 24 and np.array_equal(parquet[3]["audio"], data[3]["audio"])


@pytest.mark.learning
def test_conversations_with_a_list_of_audio_train_in_the_chat_layout(tmp_path, learning_seed, record_property):
    rng = np.random.default_rng(1 + learning_seed)
    rows = {"messages": [], "audios": []}
    for i in range(16):
        a, b = KINDS[i % 2], KINDS[(i // 2) % 2]
        rows["messages"].append([{"role": "user", "content": "<audio><audio>question: is there a high tone?"},
                                 {"role": "assistant", "content": "yes" if "high tone" in (a, b) else "no"}])
        rows["audios"].append([{"bytes": _wav(a, rng), "path": None}, {"bytes": _wav(b, rng), "path": None}])
    rows["messages"][3] = [{"role": "assistant", "content": "no"}]  # a bad row: the assistant first
    ds = datasets.Dataset.from_dict(rows).cast_column("audios", datasets.List(datasets.Audio()))
    assert isinstance(ds.features["audios"].feature, datasets.Audio)  # an Audio list, as the hub keeps them
    ds.save_to_disk(str(tmp_path / "chat"))
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 6})
    raw["seed"] = learning_seed
    del raw["model"]["text_mapper"]
    raw["model"]["layout"] = "chat"
    raw["data"].update(train=str(tmp_path / "chat"), valid="")
    data = build_dataset(from_dict(raw), "train", 16000, 0.5)
    item = data[0]
    assert [m["role"] for m in item["messages"]] == ["user", "assistant"] and len(item["audios"]) == 2
    assert data[3]["error"] == f"{tmp_path / 'chat'}:row 3: the conversation starts with an assistant turn (begin " \
                               "with a user turn (after an optional system prompt))"
    batch = collate([data[i] for i in range(4)])
    assert len(batch["conversations"]) == 3 and batch["audio"].shape == (6, 8000) and len(batch["errors"]) == 1
    losses = [m["loss"] for m in _train(raw, tmp_path) if "loss" in m]
    record_property("loss, last step / first", float(losses[-1] / losses[0]))
    assert len(losses) == 6 and losses[-1] < losses[0]  # seeds 0-4: the last is 0.76-0.80 of the first
    raw["model"]["layout"] = "prefix"
    raw["model"]["text_mapper"] = {"name": "transformer", "prefix_length": 16, "num_layers": 1, "num_heads": 2}
    with pytest.raises(RecipeError, match="rows of conversations .* set model.layout"):
        build_dataset(from_dict(raw), "train", 16000, 0.5)


def test_validate_accepts_what_train_reads(tmp_path):
    from pengi_kit.recipe import check_files

    datasets.Dataset.from_dict(_pengi_rows(4, 2)).cast_column("audio", datasets.Audio()).save_to_disk(
        str(tmp_path / "hf"))
    raw = tiny_recipe(tmp_path / "run")
    raw["data"].update(train=[{"manifest": str(tmp_path / "hf"), "columns": {"text": "caption"}, "prompt": "a"}],
                       valid=str(tmp_path / "rows-*.parquet"))
    with pytest.raises(RecipeError, match=r"data.valid: '.*rows-\*.parquet' matches no file"):
        check_files(from_dict(raw))
    datasets.load_from_disk(str(tmp_path / "hf")).to_parquet(str(tmp_path / "rows-0.parquet"))
    check_files(from_dict(raw))


def test_streamed_parquet_trains_with_the_same_batches_for_any_workers_and_resumes(tmp_path):
    from pengi_kit.data.hf import HFStream
    from pengi_kit.data.loader import TrainLoader

    ds = datasets.Dataset.from_dict(_pengi_rows(20, 3)).cast_column("audio", datasets.Audio())
    for part in range(2):  # two files, as a set larger than one file
        ds.select(range(part * 10, part * 10 + 10)).to_parquet(str(tmp_path / f"rows-{part}.parquet"))
    table = {"manifest": str(tmp_path / "rows-*.parquet"), "streaming": True, "columns": {"text": "caption"},
             "prompt": "this is a sound of"}
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 4, "batch_size": 4, "save_every": 2})
    raw["data"].update(train=[table], valid="")
    data = build_dataset(from_dict(raw), "train", 16000, 0.5)
    assert isinstance(data, HFStream) and data.num_examples() == 20

    def texts(loader, epoch, start=0):
        return [b["texts"] for b in loader.epoch(epoch, start)]

    one = TrainLoader(data, 4, seed=0)
    assert len(one) == 5 and sorted(t for b in texts(one, 0) for t in b) == sorted(ds["caption"])
    assert texts(one, 0) == texts(one, 0) != texts(one, 1)  # seeded, and shuffled anew each epoch
    assert texts(TrainLoader(data, 4, seed=0, num_workers=2), 0) == texts(one, 0)
    assert texts(one, 1, start=2) == texts(one, 1)[2:]
    ranks = [texts(TrainLoader(data, 2, seed=0, rank=r, world_size=2), 0) for r in (0, 1)]
    assert sorted(t for r in ranks for b in r for t in b) == sorted(ds["caption"])
    metrics = _train(raw, tmp_path)
    part = tiny_recipe(tmp_path / "part", train={"max_steps": 2, "batch_size": 4, "save_every": 2})
    part["data"].update(train=[table], valid="")
    from pengi_kit.engine.trainer import Trainer

    Trainer(from_dict(part), progress=False).fit()
    part["train"]["max_steps"] = 4
    Trainer(from_dict(part), resume=True, progress=False).fit()
    resumed = [json.loads(line)["loss"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
               if '"loss"' in line]
    assert resumed == [m["loss"] for m in metrics if "loss" in m]
