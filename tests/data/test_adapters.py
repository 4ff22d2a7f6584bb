"""Dataset adapters on small fake trees in each corpus's real layout, through the CLI;
``data check`` on a broken corpus."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from click.testing import CliRunner

from pengi_kit.cli import main
from pengi_kit.data.manifest import read_manifest

from corpora import make_broken_corpus, tone, write


def wav(path: Path, seconds: float = 0.2, sr: int = 16000) -> Path:
    return write(path, tone(seconds, sr), sr, subtype="PCM_16")


def table(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def prepare(name: str, root: Path, *args: str) -> tuple[list, str]:
    out = root.parent / f"{name}.jsonl"
    result = CliRunner().invoke(main, ["data", "prepare", name, "--root", str(root), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    examples, errors = read_manifest(out)
    assert errors == []
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(not Path(r["audio"]).is_absolute() for r in rows)  # relative to the manifest's folder
    return [(e, r) for e, r in zip(examples, rows)], result.output


def summary(pairs) -> set[tuple]:
    return {(e.audio.name, e.prompt, e.text, r.get("split")) for e, r in pairs}


def test_clotho(tmp_path):
    root = tmp_path / "clotho"
    captions = [f"caption {k}" for k in range(1, 6)]
    table(root / "clotho_captions_development.csv", ["file_name"] + [f"caption_{k}" for k in range(1, 6)],
          [["rain, on a roof.wav", *captions], ["birds.wav", *captions]])
    table(root / "clotho_captions_evaluation.csv", ["file_name"] + [f"caption_{k}" for k in range(1, 6)],
          [["car.wav", *captions]])
    wav(root / "clotho_audio_development" / "rain, on a roof.wav")
    wav(root / "clotho_audio_development" / "birds.wav")
    wav(root / "evaluation" / "car.wav")  # the folder name the 7z archive unpacks to
    pairs, output = prepare("clotho", root)
    assert len(pairs) == 15 and "15 rows for 3 clips" in output
    assert ("rain, on a roof.wav", "generate audio caption", "caption 3", "development") in summary(pairs)
    assert ("car.wav", "generate audio caption", "caption 5", "evaluation") in summary(pairs)
    pairs, _ = prepare("clotho", root, "--split", "evaluation")
    assert {r["split"] for _, r in pairs} == {"evaluation"} and len(pairs) == 5


def test_audiocaps_finds_audio_by_youtube_id_and_reports_missing(tmp_path):
    root = tmp_path / "audiocaps"
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    table(root / "dataset" / "train.csv", header,
          [[91139, "r1nicOVtvkQ", 130, "A woman talks nearby as water pours"],
           [58146, "UDGBjjwyaqE", 20, "Multiple clanging and clanking sounds"],
           [11, "-AheI8Epim4", 30, "a missing clip"]])
    table(root / "dataset" / "test.csv", header, [[103549, "--0w1YA1Hm4", 30, "A vehicle driving"]])
    wav(root / "audio" / "train" / "r1nicOVtvkQ.wav")
    wav(root / "audio" / "train" / "YUDGBjjwyaqE_20.flac".replace(".flac", ".wav"))
    wav(root / "audio" / "test" / "--0w1YA1Hm4.wav")
    pairs, output = prepare("audiocaps", root)
    assert summary(pairs) == {
        ("r1nicOVtvkQ.wav", "generate audio caption", "A woman talks nearby as water pours", "train"),
        ("YUDGBjjwyaqE_20.wav", "generate audio caption", "Multiple clanging and clanking sounds", "train"),
        ("--0w1YA1Hm4.wav", "generate audio caption", "A vehicle driving", "test")}
    assert re.search(r"problem: .*train.csv:4: no audio file for YouTube id -AheI8Epim4", output)


def test_clotho_aqa(tmp_path):
    root = tmp_path / "clotho_aqa"
    header = ["file_name", "QuestionText", "answer", "confidence"]
    table(root / "clotho_aqa_train.csv", header,
          [["a.wav", "Is it raining?", "yes", "yes"], ["a.wav", "Is it raining?", "no", "no"],
           ["a.wav", "What animal is heard?", "Dog", "maybe"]])
    table(root / "clotho_aqa_test.csv", header, [["b.wav", "Are there birds?", "no", "yes"]])
    wav(root / "audio_files" / "a.wav")
    wav(root / "audio_files" / "b.wav")
    pairs, _ = prepare("clotho-aqa", root)
    assert summary(pairs) == {("a.wav", "question: Is it raining?", "yes", "train"),
                              ("a.wav", "question: What animal is heard?", "dog", "train"),
                              ("b.wav", "question: Are there birds?", "no", "test")}
    assert {r["answer_type"] for _, r in pairs} == {"yes/no", "open"}


def test_esc50(tmp_path):
    root = tmp_path / "ESC-50-master"
    table(root / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
          [["1-100032-A-0.wav", 1, 0, "dog", "True", 100032, "A"],
           ["5-9032-A-0.wav", 5, 14, "chirping_birds", "False", 9032, "A"]])
    wav(root / "audio" / "1-100032-A-0.wav")
    wav(root / "audio" / "5-9032-A-0.wav")
    pairs, _ = prepare("esc50", root)
    assert summary(pairs) == {("1-100032-A-0.wav", "this is a sound of", "dog", "fold1"),
                              ("5-9032-A-0.wav", "this is a sound of", "chirping birds", "fold5")}


def test_urbansound8k(tmp_path):
    root = tmp_path / "UrbanSound8K"
    table(root / "metadata" / "UrbanSound8K.csv",
          ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"],
          [["100032-3-0-0.wav", 100032, 0.0, 0.317551, 1, 5, 3, "dog_bark"],
           ["100263-2-0-117.wav", 100263, 58.5, 62.5, 1, 10, 2, "children_playing"]])
    wav(root / "audio" / "fold5" / "100032-3-0-0.wav")
    wav(root / "audio" / "fold10" / "100263-2-0-117.wav")
    pairs, _ = prepare("urbansound8k", root)
    assert summary(pairs) == {("100032-3-0-0.wav", "this is a sound of", "dog bark", "fold5"),
                              ("100263-2-0-117.wav", "this is a sound of", "children playing", "fold10")}
    assert all(e.start is None for e, _ in pairs)  # slices are already cut out of the source files


def test_fsd50k_multi_label(tmp_path):
    root = tmp_path / "FSD50K"
    table(root / "FSD50K.ground_truth" / "dev.csv", ["fname", "labels", "mids", "split"],
          [[64760, "Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music",
            "/m/02sgy,/m/0342h,/m/0fx80y,/m/04szw,/m/04rlf", "train"],
           [16399, "Bark,Dog,Domestic_animals_and_pets,Animal", "/m/05tny_,/m/0bt9lr,/m/068hy,/m/0jbk", "val"]])
    table(root / "FSD50K.ground_truth" / "eval.csv", ["fname", "labels", "mids"],
          [[37199, "Speech,Human_voice", "/m/09x0r,/m/09l8g"]])
    wav(root / "FSD50K.dev_audio" / "64760.wav")
    wav(root / "FSD50K.dev_audio" / "16399.wav")
    wav(root / "FSD50K.eval_audio" / "37199.wav")
    pairs, _ = prepare("fsd50k", root)
    assert summary(pairs) == {
        ("64760.wav", "this is a sound of",
         "electric guitar, guitar, plucked string instrument, musical instrument, music", "train"),
        ("16399.wav", "this is a sound of", "bark, dog, domestic animals and pets, animal", "val"),
        ("37199.wav", "this is a sound of", "speech, human voice", "eval")}


def test_gtzan(tmp_path):
    root = tmp_path / "gtzan"
    for genre in ("blues", "hiphop"):
        for n in range(2):
            wav(root / "genres" / genre / f"{genre}.{n:05d}.wav", 0.1, 22050)
    pairs, _ = prepare("gtzan", root)
    assert summary(pairs) == {(f"{g}.{n:05d}.wav", "this music genre is", g, None)
                              for g in ("blues", "hiphop") for n in range(2)}


def test_nsynth(tmp_path):
    root = tmp_path / "nsynth"
    notes = {
        "keyboard_acoustic_004-060-025": {"note_str": "keyboard_acoustic_004-060-025", "pitch": 60, "velocity": 25,
                                          "instrument_family_str": "keyboard", "instrument_source_str": "acoustic",
                                          "qualities_str": ["dark", "reverb"], "sample_rate": 16000},
        "bass_synthetic_033-022-050": {"note_str": "bass_synthetic_033-022-050", "pitch": 22, "velocity": 50,
                                       "instrument_family_str": "bass", "instrument_source_str": "synthetic",
                                       "qualities_str": [], "sample_rate": 16000},
    }
    for split in ("valid", "test"):
        (root / f"nsynth-{split}" / "audio").mkdir(parents=True)
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(notes))
        for note in notes:
            wav(root / f"nsynth-{split}" / "audio" / f"{note}.wav", 0.1)
    pairs, _ = prepare("nsynth", root, "--split", "test")
    assert summary(pairs) == {
        ("keyboard_acoustic_004-060-025.wav", "this music note is produced by", "acoustic keyboard", "test"),
        ("keyboard_acoustic_004-060-025.wav", "this music note has pitch", "60", "test"),
        ("keyboard_acoustic_004-060-025.wav", "this music note has velocity", "25", "test"),
        ("keyboard_acoustic_004-060-025.wav", "this music note is", "dark, reverb", "test"),
        ("bass_synthetic_033-022-050.wav", "this music note is produced by", "synthetic bass", "test"),
        ("bass_synthetic_033-022-050.wav", "this music note has pitch", "22", "test"),
        ("bass_synthetic_033-022-050.wav", "this music note has velocity", "50", "test")}


def test_free_spoken_digit(tmp_path):
    root = tmp_path / "free-spoken-digit-dataset"
    for name in ("0_jackson_0.wav", "7_theo_12.wav", "readme.wav"):
        wav(root / "recordings" / name, 0.1, 8000)
    pairs, output = prepare("free-spoken-digit", root)
    assert summary(pairs) == {("0_jackson_0.wav", "question: which digit is spoken?", "zero", "test"),
                              ("7_theo_12.wav", "question: which digit is spoken?", "seven", "train")}
    assert "readme.wav: name is not <digit>_<speaker>_<index>.wav" in output


def test_prepare_errors_are_one_line(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "m.jsonl")
    cases = [
        (["data", "prepare", "esc-50", "--root", str(tmp_path), "--out", out], "did you mean 'esc50'"),
        (["data", "prepare", "esc50", "--root", str(tmp_path / "nope"), "--out", out], "is not a folder"),
        (["data", "prepare", "esc50", "--root", str(tmp_path), "--out", out], "metadata not found"),
    ]
    for args, pattern in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2 and pattern in result.output, result.output
    table(tmp_path / "meta" / "esc50.csv", ["filename", "fold", "category"], [["x.wav", 1, "dog"]])
    result = runner.invoke(main, ["data", "prepare", "esc50", "--root", str(tmp_path), "--out", out])
    assert result.exit_code == 2 and "no usable rows" in result.output  # x.wav is missing
    assert "x.wav: audio file not found" in result.output


def test_adapters_are_dataset_plugins():
    from pengi_kit import list_components

    names = {row["name"] for row in list_components("dataset")}
    assert names >= {"clotho", "audiocaps", "clotho-aqa", "esc50", "urbansound8k", "fsd50k", "gtzan", "nsynth",
                     "free-spoken-digit"}


def test_check_reports_every_broken_file_and_statistics(tmp_path):
    manifest, kinds, _ = make_broken_corpus(tmp_path / "corpus", max_seconds=5.0)
    result = CliRunner().invoke(main, ["data", "check", str(manifest), "--max-seconds", "5", "--no-progress"])
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
    for kind in kinds:
        hits = [p for p in problems if kind.name in p and re.search(kind.pattern, p)]
        assert len(hits) == 1, f"{kind.kind}: {hits or problems}"
    assert len(problems) == len(kinds)
    lines = [int(m.group(1)) for p in problems for m in [re.search(r"manifest.jsonl:(\d+):", p)]]
    assert lines == sorted(lines)  # in manifest order
    assert "rows: 40, clips: 40 (24 good, 16 bad), problems: 27" in result.output
    assert re.search(r"sample rates: 16000 Hz: 12, 44100 Hz: 6, 22050 Hz: 6", result.output)
    assert re.search(r"channels: 1: 18, 2: 6", result.output)
    assert re.search(r"formats: .*FLAC PCM_16: 6.*OGG VORBIS: 6", result.output)
    assert re.search(r"durations \(s\): min 0\.40, median 0\.50, mean 0\.48, max 0\.50", result.output)
    good = CliRunner().invoke(main, ["data", "check", str(tmp_path / "good.jsonl"), "--no-progress"])
    assert good.exit_code == 2 and "manifest not found" in good.output
