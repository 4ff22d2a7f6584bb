"""Tokenizers built from a manifest's texts and prompts: word-level and BPE, saved as a
folder that AutoTokenizer loads and a recipe names; a tiny model trains with one."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner
from transformers import AutoTokenizer

from pengi_kit.cli import main
from pengi_kit.data.tokenizer import EOS, UNK, build_tokenizer
from pengi_kit.errors import PengiKitError

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_manifest(tmp_path: Path, n: int = 12) -> Path:
    """n rows over real WAV clips: a literal prompt, none, or the qa task whose template renders one."""
    from pengi_kit.data.synthetic import SyntheticCorpus

    corpus = SyntheticCorpus(4, seed=1, sample_rate=16000, clip_seconds=0.5)
    rows = []
    for i in range(n):
        clip = tmp_path / f"clip{i % 4}.wav"
        if not clip.exists():
            sf.write(clip, corpus.clip(i % 4).audio, 16000)
        words = DIGITS[i % 10] if i % 3 else f"{DIGITS[i % 10]}, said twice: {DIGITS[i % 10]}"
        rows.append([{"audio": clip.name, "task": "qa", "question": "which number?", "text": words},
                     {"audio": clip.name, "text": words},  # its prompt comes from the recipe's data table
                     {"audio": clip.name, "prompt": "what digit is spoken?", "text": words}][min(i % 4, 2)])
    path = tmp_path / "digits.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def texts_of(manifest: Path) -> list[str]:
    from pengi_kit.data.manifest import read_manifest

    texts = [t for ex in read_manifest(manifest, prompt="")[0] for t in (ex.text, ex.prompt) if t]
    assert "question: which number?" in texts and texts.count("seven") + texts.count("eight") == 2
    return texts


def test_word_tokenizer_from_a_manifest(tmp_path):
    manifest = digit_manifest(tmp_path)
    tok = AutoTokenizer.from_pretrained(build_tokenizer([manifest], tmp_path / "tok", kind="word"))
    assert (tok.eos_token, tok.pad_token, tok.unk_token) == (EOS, EOS, UNK)
    for text in texts_of(manifest):  # targets and prompts (a rendered template included) round-trip
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == text
    assert len(tok("question: which number?", add_special_tokens=False)["input_ids"]) == 5  # a word or mark each
    assert tok("a zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id] * 2
    # a capped vocabulary keeps the most frequent words: "what digit is spoken" is on most rows, "eleven" never
    small = AutoTokenizer.from_pretrained(build_tokenizer([manifest], tmp_path / "small", vocab_size=9,
                                                          texts=["eleven"]))
    assert len(small) == 9
    assert tok.unk_token_id not in small("what digit is spoken?", add_special_tokens=False)["input_ids"]
    assert small("eleven", add_special_tokens=False)["input_ids"] == [small.unk_token_id]


def test_bpe_tokenizer_covers_any_text(tmp_path):
    manifest = digit_manifest(tmp_path)
    tok = AutoTokenizer.from_pretrained(build_tokenizer([manifest], tmp_path / "bpe", kind="bpe", vocab_size=300))
    assert tok.eos_token == tok.pad_token == EOS and len(tok) <= 300
    for text in [*texts_of(manifest), "une baleine chante: ça, c'est nouveau!"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # merges were learned from the data: a frequent word is one token, not its letters
    assert len(tok(" spoken", add_special_tokens=False)["input_ids"]) == 1
    with pytest.raises(PengiKitError, match="--vocab-size 100 is too small"):
        build_tokenizer([manifest], tmp_path / "tiny", kind="bpe", vocab_size=100)


def test_cli_writes_a_folder_a_recipe_trains_with(tmp_path):
    import pengi_kit
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    manifest = digit_manifest(tmp_path)
    result = CliRunner().invoke(main, ["data", "tokenizer", str(manifest), "--out", str(tmp_path / "tok")])
    assert result.exit_code == 0, result.output
    assert "tokens to" in result.output and f'tokenizer = "{tmp_path / "tok"}"' in result.output
    bad = CliRunner().invoke(main, ["data", "tokenizer", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "none.jsonl" in bad.output

    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 2})
    raw["model"]["lm"]["tokenizer"] = str(tmp_path / "tok")
    raw["data"].update(train=[{"manifest": str(manifest), "prompt": "what digit is spoken?"}], valid="")
    Trainer(from_dict(raw), progress=False).fit()
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    pengi = pengi_kit.load(tmp_path / "run")
    built = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert pengi.model.lm.tokenizer.get_vocab() == built.get_vocab()
    assert pengi.model.lm.model.get_input_embeddings().num_embeddings == len(built)
