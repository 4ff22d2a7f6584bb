"""Spoken digits in real-world conditions: Pengi from scratch against the two-stage path.

One command (about 8.5 minutes on one CPU core, ``OMP_NUM_THREADS=1``)::

    python scripts/real_audio_experiment.py --out runs/real_audio

From the 20 Free Spoken Digit recordings of ``../shared/data/real_audio`` (2 speakers x 10
digits, 8 kHz) it makes validation and test clips with real-world variation: speed and pitch
changes (0.85-1.15x), gain (-18 to -1 dB), a random position in a 1 s clip, room
reverberation (half the clips) and background sound from the folder's other recordings (read
speech, humpback whale song, a trumpet) or white noise at 0-20 dB SNR, the backgrounds taken
from the last 30% of each recording. The training clips get the same kinds of variation on
the fly, from the data pipeline's augmentation (``[data.augment]``, docs/data.md: speed,
shift, room reverberation, background from the first 70% of one of the recordings or white
noise, at an SNR against the speech, gain), drawn afresh each epoch from the 20 recordings
themselves (``--variation pipeline``, the default). ``--variation offline`` synthesises a fixed
training set of the same kinds of variation instead (what this script did before the pipeline
had augmentation), and ``--variation none`` trains on the 20 recordings as they are.
``--fixed-epochs N`` makes the pipeline's first N epochs repeat epoch 0's draws
(``[data.augment] fixed_epochs``). ``--split speaker`` trains on one speaker and tests on the
other. The figures are in docs/training.md.

It then runs, through the ``pengi-kit`` CLI (each command is printed):

1. ``data tokenizer``: a word-level tokenizer of the answers and the prompt;
2. (a) ``train``: a Pengi from scratch (CNN14 width 8 + small GPT-2), asked "what digit is
   spoken?" by the manifest table's ``prompt`` and answering the digit's word;
3. (b) ``train`` a tagger (``task = "tagging"``, the same CNN14 and clips, labels = the digit
   words), which exports an encoder folder, then ``train`` the same Pengi with that encoder
   frozen;
4. ``evaluate --task aqa`` (exact answer) and ``--task listening`` on the test clips for both.

The front-end (window 256, hop 80, fmax 4000) follows from ``sample_rate = 8000`` alone.
Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RATE = 8000
CLIP = 1.0
PROMPT = "what digit is spoken?"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BACKGROUNDS = ["198-209-0000.hq.ogg", "glacier-bay-humpback.ogg", "sorohanro_-_solo-trumpet-06.hq.ogg"]
HERE = Path(__file__).resolve()
DEFAULT_AUDIO = HERE.parents[2] / "shared" / "data" / "real_audio"


# ---------------------------------------------------------------- the corpus

def _load(path: Path) -> np.ndarray:
    from pengi_kit.data.audio import load_audio

    return load_audio(path, RATE)


def _reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Convolution with exponentially decaying noise: a room of RT60 0.1-0.5 s."""
    rt60 = rng.uniform(0.1, 0.5)
    t = np.arange(int(rt60 * RATE)) / RATE
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0 / rng.uniform(0.3, 1.0)  # the direct path, louder than the reflections
    n = len(x) + len(ir) - 1
    wet = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[: len(x)]
    return wet / (np.abs(wet).max() + 1e-9) * np.abs(x).max()


def _clip(digit: np.ndarray, background: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """One training clip of ``digit``: speed, reverberation, position, background, gain."""
    import soxr

    total = int(CLIP * RATE)
    speed = rng.uniform(0.85, 1.15)  # faster and higher, or slower and lower, as a tape would
    voice = soxr.resample(digit, RATE * speed, RATE)[:total]
    voice = voice / (np.abs(voice).max() + 1e-9)
    if rng.random() < 0.5:
        voice = _reverb(voice, rng)
    out = np.zeros(total)
    start = int(rng.integers(0, total - len(voice) + 1))
    out[start:start + len(voice)] = voice
    speech_power = np.mean(voice ** 2)
    if background is not None:  # a stretch of a real recording
        offset = int(rng.integers(0, len(background) - total))
        noise = background[offset:offset + total].astype(np.float64)
    else:
        noise = rng.standard_normal(total)
    snr = rng.uniform(0.0, 20.0)
    noise *= np.sqrt(speech_power / (np.mean(noise ** 2) + 1e-12) / 10 ** (snr / 10))
    mix = out + noise
    gain = 10 ** (rng.uniform(-18.0, -1.0) / 20)
    return (mix / (np.abs(mix).max() + 1e-9) * gain).astype(np.float32)


def make_corpus(audio_dir: Path, out: Path, sizes: dict[str, int], split_by: str, seed: int = 0,
                variation: str = "pipeline") -> dict[str, Path]:
    """Write ``<out>/clips/<split>/*.wav`` and ``<out>/<split>.jsonl`` for train, valid and test.

    Train rows have no prompt (the recipe's data table gives it); valid and test rows carry it, so
    that ``pengi-kit evaluate`` reads them as they are. With ``variation = "pipeline"`` the training
    rows are the clean recordings, centred in 1 s of silence (``[data.augment]`` varies them), and
    ``<out>/background<n>.jsonl`` names the first 70% of each background recording."""
    import soundfile as sf

    from pengi_kit.data.manifest import write_manifest

    recordings = {(d, s): _load(audio_dir / f"fsdd_{d}_{s}_0.wav") for d in range(10) for s in ("george", "jackson")}
    backgrounds = [_load(audio_dir / name) for name in BACKGROUNDS]
    speakers = {"train": ["george", "jackson"], "valid": ["george", "jackson"], "test": ["george", "jackson"]}
    if split_by == "speaker":
        speakers = {"train": ["george"], "valid": ["george"], "test": ["jackson"]}
    manifests = {}
    if variation in ("pipeline", "none"):
        sizes = {split: n for split, n in sizes.items() if split != "train"}
        manifests["train"] = _clean_training_rows(recordings, speakers["train"], out, seed)
        for n, (name, b) in enumerate(zip(BACKGROUNDS, backgrounds)):  # one noise source each, as offline
            manifests[f"background{n}"] = out / f"background{n}.jsonl"
            write_manifest(manifests[f"background{n}"], [
                {"audio": audio_dir / name, "text": "background", "start": 0.0, "end": round(0.7 * len(b) / RATE, 3)}])
    for i, (split, n) in enumerate(sizes.items(), start=0 if variation == "offline" else 1):
        rng = np.random.default_rng([seed, i])
        # training clips take their background from the first 70% of each recording, the others from the rest
        parts = [b[: int(0.7 * len(b))] if split == "train" else b[int(0.7 * len(b)):] for b in backgrounds]
        folder = out / "clips" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for k in range(n):
            digit, speaker = k % 10, speakers[split][int(rng.integers(len(speakers[split])))]
            kind = int(rng.integers(len(parts) + 1))  # each recording, or white noise
            audio = _clip(recordings[digit, speaker], parts[kind] if kind < len(parts) else None, rng)
            path = folder / f"{k:05d}.wav"
            sf.write(path, audio, RATE, subtype="PCM_16")
            row = {"audio": path, "text": DIGITS[digit], "speaker": speaker}
            rows.append(row if split == "train" else {**row, "prompt": PROMPT})
        manifests[split] = out / f"{split}.jsonl"
        write_manifest(manifests[split], rows)
    return manifests


def _clean_training_rows(recordings: dict, speakers: list[str], out: Path, seed: int) -> Path:
    """Each training recording once, centred in 1 s of silence, normalised: what the pipeline's
    augmentation starts from (the loader would otherwise repeat a short clip to fill 1 s)."""
    import soundfile as sf

    from pengi_kit.data.manifest import write_manifest

    folder = out / "clips" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rows, total = [], int(CLIP * RATE)
    for (digit, speaker), voice in sorted(recordings.items()):
        if speaker not in speakers:
            continue
        voice = voice[:total] / (np.abs(voice).max() + 1e-9) * 0.5
        clip = np.zeros(total, dtype=np.float32)
        start = (total - len(voice)) // 2
        clip[start:start + len(voice)] = voice
        path = folder / f"{speaker}_{digit}.wav"
        sf.write(path, clip, RATE, subtype="PCM_16")
        rows.append({"audio": path, "text": DIGITS[digit], "speaker": speaker})
    path = out / "train.jsonl"
    write_manifest(path, rows)
    return path


AUGMENT = """
[data.augment]
speed = [0.85, 1.15]
shift = 0.3
reverb = "room"
reverb_prob = 0.5
rt60 = [0.1, 0.5]
noise = {noise}
noise_prob = 1.0
snr_db = [0.0, 20.0]
gain_db = [-18.0, -1.0]
fixed_epochs = {fixed}
"""

# ---------------------------------------------------------------- the recipes

TRAINING = """[optim]
lr = {lr}
weight_decay = 0.01
warmup_steps = 50

[train]
batch_size = 32
epochs = {epochs}
log_every = 25
output_dir = "{run}"
"""

ENCODER = """[model.audio_encoder]
name = "cnn14"
sample_rate = 8000        # window 256, hop 80, fmax 4000 follow from it
clip_seconds = 1.0
width = 8
spec_augment = false
{extra}
"""

PENGI = """name = "{name}"
seed = 0

[model]
projection_dim = 128
prompt_length = 8
target_length = 4
projection_dropout = 0.0

{encoder}
[model.audio_mapper]
name = "transformer"
prefix_length = 8
num_layers = 2
num_heads = 4

[model.text_mapper]
name = "transformer"
prefix_length = 8
num_layers = 1
num_heads = 4

[model.lm]
name = "gpt2"
pretrained = ""
tokenizer = "{tokenizer}"
n_layer = 2
n_embd = 128
n_head = 4
n_positions = 32
dropout = 0.0
trainable = true

[data]
train = [{{manifest = "{train}", prompt = "{prompt}", weight = {weight}}}]
valid = [{{manifest = "{valid}"}}]
{augment}
{training}
[generate]
method = "greedy"
max_new_tokens = 4
"""

TAGGER = """name = "digits_tagger"
task = "tagging"
seed = 0

{encoder}
[data]
train = [{{manifest = "{train}", weight = {weight}}}]
valid = "{valid}"
{augment}
{training}"""


def run(cmd: list[str], log: Path) -> float:
    """Run a pengi-kit command, echo it, keep its output in ``log``; returns the seconds it took."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}); see {log}:\n" + "".join(open(log).readlines()[-15:]))
    return seconds


def last_validation(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next((r for r in reversed(rows) if "valid_loss" in r), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real_audio"))
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help="the real_audio folder")
    parser.add_argument("--split", choices=["seed", "speaker"], default="seed",
                        help="held-out clips: new augmentations of both speakers, or the other speaker")
    parser.add_argument("--train-clips", type=int, default=1500)
    parser.add_argument("--test-clips", type=int, default=500)
    parser.add_argument("--pengi-epochs", type=int, default=8)
    parser.add_argument("--tagger-epochs", type=int, default=20)
    parser.add_argument("--variation", choices=["pipeline", "offline", "none"], default="pipeline",
                        help="training clips varied on the fly by [data.augment] from the 20 recordings, "
                             "synthesised once, or those recordings as they are")
    parser.add_argument("--fixed-epochs", type=int, default=0,
                        help="--variation pipeline: the first N epochs repeat epoch 0's draws ([data.augment] "
                             "fixed_epochs)")
    parser.add_argument("--seed", type=int, default=0, help="of the clips made and of the runs")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pk = [sys.executable, "-m", "pengi_kit"]

    t0 = time.perf_counter()
    m = make_corpus(args.audio, out, {"train": args.train_clips, "valid": 200, "test": args.test_clips}, args.split,
                    args.seed, args.variation)
    recordings = len(m["train"].read_text().splitlines())
    # the pipeline's rows are the recordings: drawn as often as the offline set has clips, in every epoch
    weight = round(args.train_clips / recordings, 3) if args.variation != "offline" else 1.0
    augment = ""
    if args.variation == "pipeline":  # each clip draws one noise source: a background recording or white noise
        augment = AUGMENT.format(noise=json.dumps([str(m[f"background{n}"]) for n in range(len(BACKGROUNDS))]
                                                  + ["white"]), fixed=args.fixed_epochs)
    print(f"corpus: {args.train_clips} training draws per epoch ({args.variation}), 200 valid, {args.test_clips} "
          f"test clips (held out by {args.split}) in {time.perf_counter() - t0:.0f} s", flush=True)
    seconds: dict[str, float] = {}
    seconds["tokenizer"] = run([*pk, "data", "tokenizer", str(m["train"]), "--out", str(out / "tok"),
                                "--text", PROMPT], out / "tokenizer.log")

    encoder = ENCODER.format(extra="trainable = true")
    fill = dict(tokenizer=out / "tok", train=m["train"], valid=m["valid"], prompt=PROMPT, weight=weight,
                augment=augment)

    def training(name: str, epochs: int) -> str:
        return TRAINING.format(lr=1e-3, epochs=epochs, run=out / "runs" / name)

    recipes = {
        "scratch": PENGI.format(name="digits_scratch", encoder=encoder, training=training("scratch", args.pengi_epochs),
                                **fill),
        "tagger": TAGGER.format(encoder=encoder, train=m["train"], valid=m["valid"], weight=weight, augment=augment,
                                training=training("tagger", args.tagger_epochs)),
        "two_stage": PENGI.format(
            name="digits_two_stage", training=training("two_stage", args.pengi_epochs), **fill,
            encoder=ENCODER.format(extra=f'pretrained = "{out / "runs/tagger/encoder"}"\ntrainable = false')),
    }
    for name, text in recipes.items():
        (out / f"{name}.toml").write_text(text.replace("seed = 0", f"seed = {args.seed}"))
    for name in ("scratch", "tagger", "two_stage"):
        seconds[name] = run([*pk, "train", str(out / f"{name}.toml"), "--overwrite"], out / f"{name}.log")

    report = {}
    for name in ("scratch", "two_stage"):
        run_dir = out / "runs" / name
        scores = {}
        for task in ("aqa", "listening"):
            folder = out / "eval" / name / task
            run([*pk, "evaluate", str(run_dir), "--task", task, "--manifest", str(m["test"]), "--out", str(folder)],
                out / f"eval_{name}_{task}.log")
            scores.update(json.loads((folder / "results.json").read_text())["tasks"][0]["metrics"])
        report[name] = {"test_accuracy": scores["accuracy"], "test_listening": scores["listening"],
                        "valid_listening": last_validation(run_dir).get("listening"),
                        "train_seconds": round(seconds[name])}
    tagger = last_validation(out / "runs" / "tagger")
    report["tagger"] = {"valid_accuracy": tagger.get("valid_accuracy"), "train_seconds": round(seconds["tagger"])}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
