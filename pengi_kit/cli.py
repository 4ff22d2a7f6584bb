"""The ``pengi-kit`` command. It only parses arguments and calls the public API."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from pengi_kit.errors import PengiKitError

overrides_option = click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                                help="Override a recipe value, e.g. -s train.batch_size=8 (repeatable).")


class _Group(click.Group):
    """Errors a user can cause end in one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PengiKitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pengi-kit")
def main() -> None:
    """pengi-kit: audio language models of the Pengi kind."""


@main.command("list-components")
@click.option("--kind", help="Only this kind (audio_encoder, text_encoder, mapper, causal_lm, dataset).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def list_components_cmd(kind: str | None, as_json: bool) -> None:
    """List registered components (imports no torch)."""
    from pengi_kit import list_components
    from pengi_kit.registry import KINDS

    if kind is not None and kind not in KINDS:
        raise PengiKitError(f"--kind {kind!r} is not a kind; use one of {', '.join(KINDS)}")
    rows = list_components(kind)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        click.echo(f"{r['kind']:<14} {r['name']:<{width}}  {r['plugin']:<10} {r['description']}")


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True)
def plugins_cmd(as_json: bool) -> None:
    """List loaded plugins with their versions and hooks."""
    from pengi_kit.plugins import state

    rows = [vars(p) for p in state().plugins]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for p in rows:
        status = f"FAILED: {p['error']}" if p["error"] else ", ".join(p["hooks"])
        click.echo(f"{p['name']:<16} {p['distribution']} {p['version']:<10} {status}")


@main.command("validate")
@click.argument("recipe")
@overrides_option
def validate_cmd(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check a recipe: keys, types, component names and arguments. Loads no weights."""
    from pengi_kit.recipe import load_recipe

    resolved = load_recipe(recipe, overrides)
    parts = ", ".join(f"{slot}={table['name']}" for slot, table in resolved["model"].items() if isinstance(table, dict))
    click.echo(f"ok: {recipe} ({parts})")


@main.command("show")
@click.argument("recipe")
@overrides_option
def show_cmd(recipe: str, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved recipe as TOML."""
    from pengi_kit.recipe import dumps, load_recipe

    click.echo(dumps(load_recipe(recipe, overrides)), nl=False)


@main.command("train")
@click.argument("recipe")
@overrides_option
@click.option("--resume", is_flag=True, help="Continue from the newest intact checkpoint in the output directory.")
@click.option("--device", default=None, help="cpu, cuda ... (default: cuda when available; each process "
              "takes the GPU of its local rank).")
@click.option("--nproc-per-node", type=int, default=1, show_default=True,
              help="Processes on this machine, launched through torch.distributed.run.")
@click.option("--nnodes", default="1", show_default=True, help="Machines (or MIN:MAX for elastic runs).")
@click.option("--node-rank", type=int, default=0, show_default=True, help="This machine's rank.")
@click.option("--rdzv-endpoint", default="", help="host:port of the rendezvous (multi-machine runs).")
@click.option("--rdzv-backend", default="c10d", show_default=True)
@click.option("--rdzv-id", default="pengi-kit", show_default=True, help="Job id shared by every machine.")
@click.option("--max-restarts", type=int, default=0, show_default=True,
              help="Restart the workers this often on failure (use with --resume).")
def train_cmd(recipe: str, overrides: tuple[str, ...], resume: bool, device: str | None, nproc_per_node: int,
              nnodes: str, node_rank: int, rdzv_endpoint: str, rdzv_backend: str, rdzv_id: str,
              max_restarts: int) -> None:
    """Train a recipe, on one process or, with --nproc-per-node/--nnodes, many (DDP)."""
    import os

    from pengi_kit.recipe import load_recipe

    resolved = load_recipe(recipe, overrides)  # fail fast, before any process starts
    if (nproc_per_node > 1 or nnodes != "1") and "LOCAL_RANK" not in os.environ:
        from torch.distributed.run import main as torchrun

        launch = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}"]
        if rdzv_endpoint:
            launch += [f"--node-rank={node_rank}", f"--rdzv-endpoint={rdzv_endpoint}",
                       f"--rdzv-backend={rdzv_backend}", f"--rdzv-id={rdzv_id}"]
        else:
            launch += ["--standalone"]
        worker = ["-m", "pengi_kit", "train", recipe, *[a for o in overrides for a in ("-s", o)]]
        worker += (["--resume"] if resume else []) + (["--device", device] if device else [])
        torchrun(launch + worker)
        return
    from pengi_kit.engine.trainer import Trainer

    path = Trainer(resolved, resume=resume, device=device).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"checkpoint: {path}")


def _decoding_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--method", type=click.Choice(["beam", "greedy", "sample"]), help="Decoding method."),
        click.option("--beam-size", type=int), click.option("--max-new-tokens", type=int),
        click.option("--temperature", type=float), click.option("--top-k", type=int),
        click.option("--top-p", type=float), click.option("--seed", type=int, help="Seed for sampling."),
    ]):
        f = opt(f)
    return f


def _given(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


@main.command("generate")
@click.argument("checkpoint")
@click.argument("audio", nargs=-1, required=True)
@click.option("--prompt", default="generate audio caption", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--device", default="cpu", show_default=True)
@_decoding_options
def generate_cmd(checkpoint: str, audio: tuple[str, ...], prompt: str, as_json: bool, device: str,
                 **decoding: Any) -> None:
    """Generate text for audio files given a prompt."""
    import pengi_kit

    pengi = pengi_kit.load(checkpoint, device=device)
    for path, text in zip(audio, pengi.generate(list(audio), prompt, **_given(**decoding))):
        click.echo(json.dumps({"audio": path, "prompt": prompt, "text": text}) if as_json else f"{path}\t{text}")


@main.command("demo")
@click.option("--recipe", default="recipes/demo.toml", show_default=True)
@overrides_option
@click.option("--device", default=None)
def demo_cmd(recipe: str, overrides: tuple[str, ...], device: str | None) -> None:
    """Train the demo recipe offline on synthetic clips and score held-out clips."""
    import time

    import pengi_kit
    from pengi_kit.data.dataset import synthetic_corpus
    from pengi_kit.demo import evaluate_synthetic, report
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.recipe import load_recipe

    resolved = load_recipe(recipe, overrides)
    start = time.perf_counter()
    path = Trainer(resolved, device=device).fit()
    trained = time.perf_counter() - start
    pengi = pengi_kit.load(path, device=device or "cpu")
    held_out = synthetic_corpus(resolved, "valid", pengi.model.sample_rate, pengi.model.clip_seconds)
    accuracy, samples = evaluate_synthetic(pengi, held_out)
    click.echo(report(accuracy, samples))
    click.echo(f"\ntrained in {trained:.0f} s, total {time.perf_counter() - start:.0f} s; checkpoint: {path}")
    example = Path(path).parent.parent / "example.wav"
    _write_example(held_out, example)
    click.echo(f"try: pengi-kit generate {Path(path).parent.parent} {example} --prompt \"this is a sound of\"")


def _write_example(corpus: Any, path: Path) -> None:
    import soundfile as sf

    sf.write(path, corpus.clip(0).audio, corpus.sample_rate)


@main.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["pengi", "panns", "laion-clap", "ms-clap", "ms-clapcap"]))
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--lm", default=None, help="pengi, ms-clapcap: config and tokenizer of the LM (hub id or local "
                                          "folder; default gpt2). Its weights come from SOURCE.")
@click.option("--text-encoder", default=None,
              help="pengi: CLIP text config and tokenizer (default openai/clip-vit-base-patch16); laion-clap, "
                   "ms-clap: the text tower's config and tokenizer (default roberta-base / bert-base-uncased / "
                   "gpt2). Weights come from SOURCE.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
def import_cmd(fmt: str, source: str, out: str, lm: str | None, text_encoder: str | None, force: bool,
               as_json: bool) -> None:
    """Import a published checkpoint (Pengi, PANNs, LAION-CLAP, Microsoft CLAP/CLAPCap).

    Every key of SOURCE is mapped or knowingly ignored (see docs/checkpoints.md).
    """
    from pengi_kit.convert import import_checkpoint

    report = import_checkpoint(fmt, source, out, force=force, lm=lm, text_encoder=text_encoder)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"imported {source} ({report.get('variant') or fmt}): {report['mapped']} keys mapped -> {out}")
    for reason, keys in report["ignored"].items():
        click.echo(f"  ignored {len(keys)} ({reason})")
    if report.get("usage"):
        click.echo(report["usage"], nl=False)


@main.group("data")
def data_group() -> None:
    """Prepare, check and shard training data (see docs/data.md)."""


@data_group.command("prepare")
@click.argument("name")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="The unpacked corpus.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The JSONL manifest to write.")
@click.option("--split", "splits", multiple=True, help="Keep only this split (repeatable; default: all).")
def data_prepare_cmd(name: str, root: Path, out: Path, splits: tuple[str, ...]) -> None:
    """Write a manifest for corpus NAME (`pengi-kit list-components --kind dataset` lists them)."""
    from pengi_kit.data.adapters import prepare

    report = prepare(name, root, out, splits=splits)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    parts = ", ".join(f"{split or '-'}: {n}" for split, n in sorted(report.splits.items()))
    tasks = ", ".join(f"{task}: {n}" for task, n in report.tasks.most_common())
    click.echo(f"wrote {report.rows} rows for {report.clips} clips to {out} (splits {parts}; tasks {tasks}); "
               f"{len(report.problems)} problem(s)")


@data_group.command("check")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Decoding processes.")
@click.option("--max-seconds", type=float, default=3600.0, show_default=True,
              help="Longer clips or segments are problems.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def data_check_cmd(manifest: Path, jobs: int, max_seconds: float, progress: bool) -> None:
    """Decode every clip of MANIFEST; one line per problem, then statistics. Exit 1 on problems."""
    from pengi_kit.data.check import check_manifest

    report = check_manifest(manifest, jobs=jobs, max_seconds=max_seconds, progress=progress)
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    for line in report.summary():
        click.echo(line)
    if not report.ok:
        sys.exit(1)


@data_group.command("shard")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the shards.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard.")
@click.option("--prefix", default="train", show_default=True, help="Shard names: PREFIX-000000.tar ...")
@click.option("--shuffle/--no-shuffle", default=True, show_default=True, help="Shuffle rows before sharding.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_shard_cmd(manifest: Path, out: Path, shard_size: int, prefix: str, shuffle: bool, seed: int) -> None:
    """Write MANIFEST's rows and audio into webdataset-style tar shards."""
    from pengi_kit.data.shards import write_shards

    report = write_shards(manifest, out, shard_size, prefix=prefix, shuffle=shuffle, seed=seed)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"wrote {report.samples} samples in {len(report.shards)} shards: {report.pattern}; "
               f"{len(report.problems)} problem(s) left out")


if __name__ == "__main__":
    main()
