"""End to end: the offline demo pretrains its tagger (a tagging run), trains a small Pengi and learns."""
import json
import re

import pytest
from click.testing import CliRunner

from pengi_kit.cli import main

pytestmark = pytest.mark.slow  # the whole demo, about 3 minutes on 2 cores: not in the fast lane


@pytest.mark.learning
def test_demo_trains_a_model_that_learned(tmp_path, learning_seed, record_property):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, [
        "demo", "-s", f"seed={learning_seed}", "-s", f"train.output_dir='{out}'",
        "-s", f"model.audio_encoder.pretrained='{out / 'tagger' / 'encoder'}'", "-s", "data.synthetic_valid_size=60"])
    assert result.exit_code == 0, result.output
    accuracy = dict(re.findall(r"^\s+(caption|classification|yes/no|count)\s+([0-9.]+)$", result.output, re.M))
    for task in ("classification", "yes/no"):
        record_property(f"demo: {task}", float(accuracy[task]))
    # chance: 1/6 for the class, 1/2 for yes/no (and 0 for exact answers that repeat the kind). Seeds 0-4
    # (scripts/learning_spread.py): classification 0.92-0.98, yes/no 0.73-0.99, the tagger's F1 0.99-1.0
    assert float(accuracy["classification"]) >= 0.8, result.output
    assert float(accuracy["yes/no"]) >= 0.65, result.output
    assert (out / "example.wav").is_file()
    # the tagger went through the general pretraining: a tagging run with its exported encoder folder
    tagger = [json.loads(line) for line in (out / "tagger" / "metrics.jsonl").read_text().splitlines()]
    record_property("tagger: valid_f1", float([r["valid_f1"] for r in tagger if "valid_f1" in r][-1]))
    assert [r["valid_f1"] for r in tagger if "valid_f1" in r][-1] >= 0.8, tagger
    assert (out / "tagger" / "encoder" / "component.json").is_file()
    generated = CliRunner().invoke(main, ["generate", str(out), str(out / "example.wav"),
                                          "--prompt", "this is a sound of"])
    assert generated.exit_code == 0 and generated.output.split("\t")[1].strip() in {
        "low tone", "high tone", "rising chirp", "falling chirp", "noise burst", "click train"}, generated.output

    # the demo's evaluation suite on the held-out clips it wrote: one table, JSON and Markdown
    report = out / "report"
    evaluated = CliRunner().invoke(main, ["evaluate", str(out), "--suite", "recipes/eval/demo.toml",
                                          "--data-root", str(out / "eval"), "--out", str(report)])
    assert evaluated.exit_code == 0, evaluated.output
    scores = {(t["name"], m): v for t in json.loads((report / "results.json").read_text())["tasks"]
              for m, v in t["metrics"].items()}
    for (task, metric), value in scores.items():
        if isinstance(value, float):
            record_property(f"{task}: {metric}", float(value))
    # seeds 0-4: zero-shot classification 0.92-0.98 both ways, yes/no 0.73-0.99, linear probe 0.88-0.95
    assert scores[("zero-shot classification (generate)", "accuracy")] >= 0.8, evaluated.output
    assert scores[("zero-shot classification (likelihood)", "accuracy")] >= 0.8, evaluated.output
    assert scores[("question answering", "accuracy (yes/no)")] >= 0.65, evaluated.output
    assert scores[("linear probe", "accuracy")] >= 0.75, evaluated.output
    # the questions as multiple choice (MMAU's layout): seeds 0-4 gave 0.66-0.86 by the official match and
    # 0.62-0.87 by likelihood
    assert scores[("multiple choice", "accuracy (official)")] >= 0.5, evaluated.output
    assert scores[("multiple choice", "accuracy (likelihood)")] >= 0.5, evaluated.output
    # retrieval by likelihood beats chance (1/40 at R@1) by far: 0.50-0.60 over seeds 0-4; CIDEr-D 4.5-5.5
    assert scores[("retrieval (likelihood)", "text-to-audio R@1")] >= 0.2, evaluated.output
    assert scores[("captioning", "CIDEr-D")] > 1.0, evaluated.output
    assert re.search(r"^captioning\s+SPICE\s+(unavailable|0\.\d{4})", evaluated.output, re.M), evaluated.output
    assert "| linear probe | accuracy |" in (report / "results.md").read_text()

    # served: 32 concurrent clients (OpenAI's client) get the offline answers, batched together
    _served_answers_equal_the_offline_ones(out)


def _served_answers_equal_the_offline_ones(out):
    import base64
    from concurrent.futures import ThreadPoolExecutor

    import openai

    import pengi_kit
    from pengi_kit.server import spawned

    rows = [json.loads(line) for line in (out / "eval" / "aqa.jsonl").read_text().splitlines()]
    captions = [json.loads(line) for line in (out / "eval" / "captions.jsonl").read_text().splitlines()]
    rows = rows[::3][:24] + [{**r, "prompt": "generate audio caption"} for r in captions[:8]]
    clips = [out / "eval" / r["audio"] for r in rows]
    offline = pengi_kit.load(out, device="cpu").generate(clips, [r["prompt"] for r in rows])
    with spawned(out, "--device", "cpu", "--max-batch", "32") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)

        def ask(i: int) -> str:
            audio = {"data": base64.b64encode(clips[i].read_bytes()).decode(), "format": "wav"}
            return client.chat.completions.create(model="demo", messages=[{"role": "user", "content": [
                {"type": "input_audio", "input_audio": audio}, {"type": "text", "text": rows[i]["prompt"]}]}]
            ).choices[0].message.content

        with ThreadPoolExecutor(32) as pool:
            served = list(pool.map(ask, range(len(rows))))
    assert len(rows) == 32 and served == offline
