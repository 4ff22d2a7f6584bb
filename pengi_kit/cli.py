"""The ``pengi-kit`` command. It only parses arguments and calls the public API."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import click

from pengi_kit.errors import PengiKitError
from pengi_kit.registry import KINDS

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


class _Listing(click.Command):
    """A command whose ``--help`` ends with what is registered as ``kind``, read from the plugins
    only when that help is shown (``pengi-kit --help`` stays fast and loads no plugin)."""

    def __init__(self, *args: Any, kind: str, title: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind, self.title = kind, title

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from pengi_kit.plugins import registry

        with formatter.section(self.title):
            formatter.write_dl([(s.name, s.description + (f" (also: {', '.join(s.aliases)})" if s.aliases else ""))
                                for s in registry().specs(self.kind)])
        super().format_epilog(ctx, formatter)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pengi-kit", prog_name="pengi-kit")
def main() -> None:
    """pengi-kit: audio language models of the Pengi kind."""


@main.command("list-components")
@click.option("--kind", help=f"Only this kind ({', '.join(KINDS)}).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects instead of a table.")
def list_components_cmd(kind: str | None, as_json: bool) -> None:
    """List registered components, evaluation tasks and checkpoint importers (imports no torch)."""
    from pengi_kit import list_components

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
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects instead of a table.")
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
    """Check a recipe: keys, types, ranges, component names and arguments, and that the files
    it names exist. Loads no weights."""
    from pengi_kit.recipe import check_files, load_recipe

    resolved = load_recipe(recipe, overrides)
    check_files(resolved)
    parts = ", ".join(f"{slot}={table['name']}" for slot, table in resolved["model"].items() if isinstance(table, dict))
    click.echo(f"ok: {recipe} ({parts})")


@main.group("recipes", invoke_without_command=True, subcommand_metavar="[COMMAND] [ARGS]...")  # optional: it lists
@click.pass_context
def recipes_group(ctx: click.Context) -> None:
    """List the recipes that ship with pengi-kit (usable by name from any directory: pengi-kit
    train pengi_base), or copy one to edit (recipes copy)."""
    if ctx.invoked_subcommand is not None:
        return
    from pengi_kit.recipe import shipped_recipes

    for name, path in shipped_recipes().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        about = next((line.lstrip("# ").strip() for line in lines if line.startswith("#")), "")
        click.echo(f"{name:<28} {about}")


@recipes_group.command("copy")
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def recipes_copy_cmd(name: str, dest: Path, force: bool) -> None:
    """Copy shipped recipe NAME's source file (comments and extends included) to DEST, to edit.
    (`pengi-kit show` prints a recipe resolved instead.)"""
    from pengi_kit.recipe import shipped_recipes

    recipes = shipped_recipes()
    if name not in recipes:
        raise PengiKitError(f"'{name}' is not a shipped recipe; `pengi-kit recipes` lists them")
    if dest.is_dir():
        dest = dest / recipes[name].name
    if dest.exists() and not force:
        raise PengiKitError(f"{dest} exists; choose another name or pass --force")
    dest.write_bytes(recipes[name].read_bytes())
    click.echo(f"wrote {dest} (a copy of {name}); train it with: pengi-kit train {dest}")


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
@click.option("--resume", is_flag=True, help="Continue the run in the output directory from its newest intact "
              "checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete the run already in the output directory (its checkpoints, "
              "best/, metrics.jsonl and tensorboard/; nothing else) and start over.")
@click.option("--device", default=None, help="cpu, cuda ... (default: cuda when available; each process "
              "takes the GPU of its local rank).")
@click.option("--nproc-per-node", type=int, default=1, show_default=True,
              help="Processes on this machine, launched through torch.distributed.run.")
@click.option("--nnodes", default="1", show_default=True, help="Machines (or MIN:MAX for elastic runs).")
@click.option("--node-rank", type=int, default=0, show_default=True, help="This machine's rank.")
@click.option("--rdzv-endpoint", default="", help="host:port of the rendezvous (multi-machine runs).")
@click.option("--rdzv-backend", default="c10d", show_default=True, help="Rendezvous backend (multi-machine runs).")
@click.option("--rdzv-id", default="pengi-kit", show_default=True, help="Job id shared by every machine.")
@click.option("--max-restarts", type=int, default=0, show_default=True,
              help="Restart the workers this often on failure; a restart continues the run from its newest "
                   "checkpoint.")
def train_cmd(recipe: str, overrides: tuple[str, ...], resume: bool, overwrite: bool, device: str | None,
              nproc_per_node: int, nnodes: str, node_rank: int, rdzv_endpoint: str, rdzv_backend: str, rdzv_id: str,
              max_restarts: int) -> None:
    """Train a recipe, on one process or, with --nproc-per-node/--nnodes, many (DDP).

    The run goes to train.output_dir (default runs/<name>). A directory that already
    holds a run is refused: --resume continues that run, --overwrite starts over.
    Ctrl-C or SIGTERM stops after the current step with a checkpoint and the command
    that continues the run (exit status 130 or 143); a second one aborts at once.
    """
    import os

    import pengi_kit

    resolved = pengi_kit.check_training(recipe, overrides, resume=resume, overwrite=overwrite, device=device,
                                        nproc_per_node=nproc_per_node)  # fail fast, before any process starts
    args = _train_args(recipe, overrides)  # this command line, less --resume and --overwrite
    if (nproc_per_node > 1 or nnodes != "1") and "LOCAL_RANK" not in os.environ:
        worker = args + (["--resume"] if resume else []) + (["--overwrite"] if overwrite else [])
        sys.exit(pengi_kit.launch_training(worker, nproc_per_node=nproc_per_node, nnodes=nnodes,
                                           node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                                           rdzv_backend=rdzv_backend, rdzv_id=rdzv_id, max_restarts=max_restarts))
    with _reporting_interruptions(args):
        path = pengi_kit.train(resolved, resume=resume, overwrite=overwrite, device=device)
    if path is not None:
        click.echo(f"checkpoint: {path}")


def _train_args(recipe: str, overrides: tuple[str, ...]) -> list[str]:
    """The arguments of the running ``train`` command that rebuild its run, without ``--resume``
    and ``--overwrite``: what a worker process gets, and what the continue-line repeats."""
    ctx = click.get_current_context()
    args = [recipe, *[a for o in overrides for a in ("-s", o)]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Option) and not param.is_flag and param.name != "overrides" \
                and value is not None and value != param.default:
            args += [param.opts[0], str(value)]
    return args


@contextlib.contextmanager
def _reporting_interruptions(args: list[str]) -> Iterator[None]:
    """On SIGINT/SIGTERM during training: one line with the checkpoint and the command that
    continues the run, then exit status 130/143 (every process; the one that writes checkpoints
    prints)."""
    import shlex

    import pengi_kit

    try:
        yield
    except pengi_kit.TrainingInterrupted as exc:
        if exc.main:
            click.echo(f"{exc}; continue with: {shlex.join(['pengi-kit', 'train', *args, '--resume'])}", err=True)
        sys.exit(exc.exit_status)
    except pengi_kit.TrainingAborted as exc:
        if exc.main:
            click.echo(f"{exc} (no checkpoint of the current step; --resume continues from the newest "
                       f"checkpoint in {exc.out})", err=True)
        sys.exit(128 + exc.signum)


def _decoding_options(f: Any) -> Any:
    """A flag per decoding option: the fields of :class:`~pengi_kit.decoding.Decoding`, as the
    recipe's [generate] table derives them. A flag not given leaves the recipe's value."""
    from pengi_kit.recipe import SCHEMA

    for name, field in reversed(SCHEMA["generate"].items()):
        flag, kind = "--" + name.replace("_", "-"), field.type[0]
        help_text = field.help + " [recipe: [generate]]"
        if kind is bool:
            f = click.option(f"{flag}/--no-{flag[2:]}", default=None, help=help_text)(f)
            continue
        choice = click.Choice(field.choices) if field.choices else None
        f = click.option(flag, type=choice or (str if kind is list else kind), multiple=kind is list,
                         help=help_text)(f)
    return f


def _inference_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--format", "fmt", type=click.Choice(["text", "jsonl", "csv"]), default="text",
                     show_default=True, help="Output: tab-separated text, JSON lines or CSV."),
        click.option("--json", "as_json", is_flag=True, help="Same as --format jsonl."),
        click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the results to this file instead of standard output."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... or auto."),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Rows decoded together."),
        click.option("--progress/--no-progress", default=None,
                     help="Progress bar on standard error (default: when it is a terminal)."),
    ]):
        f = opt(f)
    return f


def _writable(out: Path | None) -> None:
    """``--out`` names a file in an existing folder (checked before a model loads)."""
    if out is not None and not out.parent.is_dir():
        raise PengiKitError(f"--out {out}: folder {out.parent} does not exist; create it first (mkdir -p {out.parent})")


def _given(**options: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if v not in (None, ())}


class _Writer:
    r"""Results as text, JSON lines or CSV, one row at a time (flushed, so long runs stream).

    Text: one line per row, columns tab-separated; a backslash, newline, carriage return
    or tab inside a value is written as ``\\``, ``\n``, ``\r``, ``\t``, so every other
    character (leading and trailing spaces included) is printed as it is and nothing is lost.
    """

    ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})

    def __init__(self, fmt: str, out: Path | None, columns: list[str]) -> None:
        import csv

        self.fmt, self.columns = fmt, columns
        self.stream = open(out, "w", encoding="utf-8", newline="") if out else sys.stdout
        self.csv = csv.DictWriter(self.stream, columns, extrasaction="ignore") if fmt == "csv" else None
        if self.csv:
            self.csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif self.csv:
            self.csv.writerow(row)
        else:
            self.stream.write("\t".join(str(row.get(c, "")).translate(self.ESCAPES) for c in self.columns) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


def _run_inference(checkpoint: str, inputs: tuple[str, ...], prompts: list[str], fmt: str, as_json: bool,
                   out: Path | None, device: str, batch_size: int, progress: bool | None,
                   decoding: dict[str, Any], describe: bool) -> None:
    """Shared by generate and describe: expand inputs, report bad ones, stream results."""
    import pengi_kit
    from pengi_kit.devices import resolve_device
    from pengi_kit.progress import say

    fmt = "jsonl" if as_json else fmt
    pengi_kit.checkpoint_folder(checkpoint), resolve_device(device), _writable(out)  # before the model loads
    jobs, problems = pengi_kit.collect_inputs(inputs, prompts)
    for problem in problems:
        say(f"skipped: {problem}")
    if describe:  # one row per clip
        jobs = list({(j.audio, j.name): j for j in jobs}.values())
    if not jobs:
        raise PengiKitError("nothing to do: no usable input among " + ", ".join(inputs))
    pengi = pengi_kit.load(checkpoint, device=device)
    try:
        pengi.decoding(**decoding)
    except (TypeError, ValueError) as exc:
        raise PengiKitError(f"decoding options: {exc}") from None
    skipped = len(problems)

    def report(item: Any, exc: Exception) -> None:
        nonlocal skipped
        skipped += 1
        name = str(getattr(item, "path", item))
        message = " ".join(str(exc).split()) or type(exc).__name__
        named = message.startswith((name, str(Path(name))))
        say(f"skipped: {message}" if named else f"skipped: {name}: {message}")

    # jsonl/csv carry start/end fields; the text format names a segment in its audio column
    extra = ["start", "end"] if fmt != "text" and any(j.segment for j in jobs) else []
    clips = [j.audio for j in jobs]
    options = dict(batch_size=batch_size, progress=progress, on_error=report, **decoding)  # None: on a terminal
    if describe:
        columns = ["audio", *extra, *pengi_kit.DESCRIBE_PROMPTS, "summary"]
        writer = _Writer(fmt, out, columns if fmt != "text" else ["audio", *extra, "summary"])
        results = ((jobs[i], row) for i, row in pengi.iter_describe(clips, **options))
    else:
        one_prompt = len({j.prompt for j in jobs}) == 1
        columns = ["audio", *extra, "prompt", "text"]
        writer = _Writer(fmt, out, columns if fmt != "text" or not one_prompt else ["audio", *extra, "text"])
        pairs = [(i, j.prompt) for i, j in enumerate(jobs)]
        results = ((jobs[i], None if text is None else {"prompt": jobs[i].prompt, "text": text})
                   for i, text in pengi.generate_pairs(clips, pairs, **options))
    written = 0
    try:
        for job, row in results:
            if row is not None:
                audio = job.name
                if fmt == "text" and job.segment:
                    end = job.segment.get("end")
                    audio += f"[{job.segment.get('start', 0):g}-{'' if end is None else format(end, 'g')}]"
                writer.write({"audio": audio, **job.segment, **row})
                written += 1
    finally:
        writer.close()
    if not written:
        raise PengiKitError(f"nothing generated: all {skipped} input(s) were skipped")
    if skipped:
        sys.exit(1)


@main.command("generate")
@click.argument("checkpoint")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--prompt", "prompts", multiple=True,
              help="Prompt for files and folders, and for manifest rows without one; repeatable (each clip "
                   "gets every prompt, encoded once). [default: generate audio caption]")
@_inference_options
@_decoding_options
def generate_cmd(checkpoint: str, inputs: tuple[str, ...], prompts: tuple[str, ...], fmt: str, as_json: bool,
                 out: Path | None, device: str, batch_size: int, progress: bool | None, **decoding: Any) -> None:
    """Generate text for INPUTS: audio files, folders (searched recursively) and manifests
    (.jsonl/.csv rows with audio and prompt or task, optional start/end).

    Bad inputs are reported on standard error, one line each, and skipped (exit status 1;
    2 when nothing could be generated).
    """
    _run_inference(checkpoint, inputs, list(prompts), fmt, as_json, out, device, batch_size, progress,
                   _given(**decoding), describe=False)


@main.command("chat")
@click.argument("checkpoint")
@click.argument("prompt")
@click.option("--audio", "audios", multiple=True, type=click.Path(dir_okay=False),
              help="A clip; repeatable, in order. The clips go where PROMPT says <audio>, else before its text.")
@click.option("--system", help="A system prompt before the user's turn.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... or auto.")
@_decoding_options
def chat_cmd(checkpoint: str, prompt: str, audios: tuple[str, ...], system: str | None, device: str,
             **decoding: Any) -> None:
    """Ask a model of the chat layout (model.layout = "chat") PROMPT about one or more clips, and
    print its answer:

        pengi-kit chat runs/chat --audio a.wav --audio b.wav "which one is louder?"
    """
    import pengi_kit

    pieces = prompt.split("<audio>")
    if len(pieces) == 1:
        pieces = [""] * len(audios) + pieces
    elif len(pieces) - 1 != len(audios):
        raise PengiKitError(f"PROMPT places {len(pieces) - 1} clips with <audio> but {len(audios)} --audio are "
                            "given; give one --audio per <audio>")
    parts: list[dict[str, Any]] = []
    for n, text in enumerate(pieces):
        if n:
            parts.append({"type": "audio", "audio": audios[n - 1]})
        if text:
            parts.append({"type": "text", "text": text})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": parts}]
    pengi_kit.checkpoint_folder(checkpoint)  # before the model loads
    pengi = pengi_kit.load(checkpoint, device=device)
    try:
        answer = pengi.chat(messages, **_given(**decoding))
    except ValueError as exc:
        raise PengiKitError(str(exc)) from None
    click.echo(answer)


@main.command("serve")
@click.argument("checkpoint")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the server to other machines (set --api-key).")
@click.option("--port", default=8000, show_default=True, type=int, help="Port; 0 picks a free one (printed).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... or auto.")
@click.option("--max-batch", default=32, show_default=True, type=int,
              help="Rows decoded together (a choice is a row; a beam search takes beam_size rows).")
@click.option("--max-queue", default=256, show_default=True, type=int,
              help="Requests waiting for a row; more are refused with 429 and Retry-After.")
@click.option("--max-body", default=32 * 2**20, show_default=True, type=int,
              help="Largest request body in bytes (base64 audio included); larger ones get 413.")
@click.option("--max-length", default=2048, show_default=True, type=int,
              help="Positions per row (prompt, audio tokens and generated tokens), at most the LM's.")
@click.option("--api-key", envvar="PENGI_KIT_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (all routes but /health). Also read from "
                   "PENGI_KIT_API_KEY.")
@click.option("--allow-local-files", is_flag=True,
              help="Accept audio_url parts with file:// URLs (files on the server's machine).")
@click.option("--model-name", default=None, help="The model's id in requests and /v1/models. [default: the "
                                                 "checkpoint folder's name]")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level.")
def serve_cmd(checkpoint: str, **options: Any) -> None:
    """Serve CHECKPOINT with OpenAI's API (chat completions with audio, embeddings) until
    Ctrl-C or SIGTERM, which let the requests in flight finish (docs/serving.md):

        pengi-kit serve runs/demo --port 8000
    """
    import pengi_kit

    pengi_kit.checkpoint_folder(checkpoint)  # before the model loads
    pengi_kit.serve(checkpoint, **options)


@main.command("describe")
@click.argument("checkpoint")
@click.argument("inputs", nargs=-1, required=True)
@_inference_options
@_decoding_options
def describe_cmd(checkpoint: str, inputs: tuple[str, ...], fmt: str, as_json: bool, out: Path | None, device: str,
                 batch_size: int, progress: bool | None, **decoding: Any) -> None:
    """Caption, metadata and sound events of each clip in INPUTS (as the reference
    describe()); text output prints the summary, jsonl and csv every field."""
    _run_inference(checkpoint, inputs, [], fmt, as_json, out, device, batch_size, progress,
                   _given(**decoding), describe=True)


@main.command("evaluate", cls=_Listing, kind="task", title="Tasks")
@click.argument("checkpoint", required=False)
@click.option("--task", metavar="NAME", help="One task on --manifest (or use --suite); the tasks are listed below.")
@click.option("--manifest", help="The evaluation manifest (.jsonl/.csv) for --task.")
@click.option("--suite", help="A suite of many tasks: a shipped one by name (eval/pengi_paper, eval/demo) or a file.")
@click.option("--data-root", help="Folder the suite's manifests are relative to (default: the suite's data_root).")
@click.option("--train-manifest", help="linear-probe: the clips the classifier is fitted on.")
@click.option("--classes", type=click.Path(dir_okay=False), help="classification/linear-probe: a file with one "
              "class name per line (default: every label in the manifest).")
@click.option("--multi-label/--single-label", default=None,
              help="Labels are comma-separated sets, scored by mAP (default: multi-label when a clip has several).")
@click.option("--scoring", type=click.Choice(["generate", "likelihood", "embedding", "auto"]),
              help="classification: generate (Pengi's way, the default for Pengi), likelihood, or embedding "
                   "(CLAP's zero-shot way, the default for a CLAP folder); retrieval: embedding, likelihood or "
                   "auto (default).")
@click.option("--matcher", type=click.Choice(["auto", "text-encoder", "words"]),
              help="classification by generation: how generated text is matched to class names.")
@click.option("--prompt", help="Ask this prompt instead of the manifest rows' prompts (classification by "
              "embedding: the class texts are \"PROMPT <class>\", default \"this is a sound of <class>\").")
@click.option("--limit", type=int, help="Only the first N clips (or questions) of each manifest.")
@click.option("--predictions", type=click.Path(dir_okay=False, path_type=Path),
              help="multiple-choice, no CHECKPOINT: score a benchmark file (MMAU, MMAR, AIR-Bench layout) that "
                   "holds another model's answers.")
@click.option("--benchmark", type=click.Choice(["mmau", "mmar", "air-bench"]),
              help="--predictions: the file's benchmark (default: told by its layout).")
@click.option("--prediction-key", help="--predictions: the key of the answers (default: the official script's: "
              "model_output, answer_prediction, response).")
@click.option("--export-predictions", type=click.Path(dir_okay=False),
              help="multiple-choice: also write the benchmark's own file with the generated answers, for its "
                   "leaderboard (.json, or .jsonl).")
@click.option("--reproduce", type=click.Path(dir_okay=False, path_type=Path),
              help="Rerun what a results.json describes (its card) and report every difference; no CHECKPOINT.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write results.json, results.md and the predictions here.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="A bad manifest line or clip: report it and leave it out, or stop.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 ... or auto.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows run together.")
@_decoding_options
def evaluate_cmd(checkpoint: str | None, task: str | None, manifest: str | None, suite: str | None,
                 data_root: str | None, out: Path | None, device: str, predictions: Path | None,
                 benchmark: str | None, prediction_key: str | None, reproduce: Path | None, **options: Any) -> None:
    """Score CHECKPOINT on downstream tasks and print one table (see docs/evaluation.md); or,
    with --task multiple-choice --predictions FILE, score answers another model made.

    Exit status 1 when no task could be scored (every one skipped or failed)."""
    if predictions is not None:
        if checkpoint or manifest or suite or (task and task != "multiple-choice"):
            raise click.UsageError("--predictions scores a file on its own: give only --task multiple-choice, "
                                   "--benchmark, --prediction-key and --out")
        _score_predictions(predictions, benchmark, prediction_key, out)
        return
    if reproduce is not None:
        if checkpoint or task or manifest or suite:
            raise click.UsageError("--reproduce reruns what results.json describes: give no CHECKPOINT, --task, "
                                   "--manifest or --suite")
        _reproduce(reproduce, device if device != "auto" else None)
        return
    if checkpoint is None:
        raise click.UsageError("give CHECKPOINT (or --predictions FILE for answers made elsewhere)")
    if options["export_predictions"] and task != "multiple-choice":
        raise click.UsageError("--export-predictions goes with --task multiple-choice")
    if suite and (task or manifest):
        raise click.UsageError("give --suite, or --task with --manifest, not both")
    if not suite and not (task and manifest):
        raise click.UsageError("give --task and --manifest, or --suite")
    if task:
        from pengi_kit.plugins import registry

        registry().get("task", task, where="--task")  # before the model loads
    import pengi_kit  # torch loads only once the command line is known to be good
    from pengi_kit.devices import resolve_device

    pengi_kit.checkpoint_folder(checkpoint), resolve_device(device)
    task_options = {k: options.pop(k) for k in ("train_manifest", "classes", "multi_label", "matcher", "prompt",
                                                 "limit", "export_predictions", "scoring")}
    if suite:
        name, specs = pengi_kit.load_suite(suite, data_root)
        for spec in specs:  # the command line wins over the suite file
            spec.options.update(_given(**{k: v for k, v in task_options.items() if k != "classes"}))
    else:
        name = f"{task} on {manifest}"
        specs = [pengi_kit.TaskSpec(task, task, manifest, options=_given(**task_options))]
    pengi = pengi_kit.load(checkpoint, device=device)
    common = {"on_error": options.pop("on_error"), "batch_size": options.pop("batch_size"), **_given(**options)}
    pengi_kit.run_suite(pengi, specs, **common)
    click.echo(pengi_kit.results_table(specs))
    for spec in specs:
        problems = spec.result.problems if spec.result else []
        for p in problems[:10]:
            click.echo(f"warning: [{spec.name}] {p}", err=True)
        if len(problems) > 10:
            click.echo(f"warning: [{spec.name}] ... {len(problems) - 10} more (see results.json)", err=True)
    if out:
        pengi_kit.write_report(out, name, specs, checkpoint, pengi_kit.evaluation_card(pengi, checkpoint, **common))
        click.echo(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    if not any(s.status == "ok" for s in specs):
        click.echo("error: no task could be scored (see the table)", err=True)
        sys.exit(1)


def _reproduce(results: Path, device: str | None) -> None:
    """``evaluate --reproduce``: exit 0 when every figure came out the same, 1 otherwise."""
    import pengi_kit

    specs, setting, differences = pengi_kit.reproduce(results, device=device)
    click.echo(pengi_kit.results_table(specs))
    for line in setting:
        click.echo(f"note: ran differently: {line}", err=True)
    for line in differences:
        click.echo(f"differs: {line}", err=True)
    if differences:
        click.echo(f"error: {len(differences)} difference(s) from {results}", err=True)
        sys.exit(1)
    click.echo(f"reproduced {results}: every figure is the same")


def _score_predictions(path: Path, benchmark: str | None, key: str | None, out: Path | None) -> None:
    """``evaluate --predictions``: the official report, and results.json / items.jsonl in ``out``."""
    import pengi_kit

    lines, written = pengi_kit.score_predictions(path, benchmark=benchmark, key=key, out=out)
    click.echo("\n".join(lines))
    if written:
        click.echo(f"wrote {' and '.join(str(p) for p in written)}")


@main.command("export")
@click.argument("checkpoint")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The folder to write (replaced if it exists).")
def export_cmd(checkpoint: str, out: Path) -> None:
    """Write the folder that users take away from CHECKPOINT (a run directory or a checkpoint).

    Encoder pretraining (docs/pretraining.md): a tagging run gives an encoder folder, which a
    Pengi recipe loads with [model.audio_encoder] pretrained = "OUT"; a contrastive run gives
    a CLAP folder, as `pengi-kit import laion-clap` writes. The trainer writes the same
    folder (RUN/encoder, RUN/clap) after training; this command exports any other checkpoint
    of the run, e.g. RUN/best.

    A Pengi checkpoint gives a checkpoint for inference, without training state; LoRA adapters
    ([model.lm.lora]) are merged into the LM, so that it generates as CHECKPOINT does with no
    adapters and no lora table in its recipe.
    """
    import pengi_kit

    folder = pengi_kit.export(checkpoint, out)
    usage = folder / "usage.toml"  # an encoder or CLAP folder says how a recipe uses it
    if usage.is_file():
        click.echo(f"wrote {folder}; use it with:")
        click.echo(usage.read_text(encoding="utf-8"), nl=False)
        return
    merged = "LoRA adapters merged into the LM" if "lora" in _recipe_of(checkpoint)["model"]["lm"] \
        else "no LoRA adapters to merge"
    click.echo(f"wrote {folder} ({merged}); use it as any checkpoint, e.g. pengi-kit generate {folder} ...")


def _recipe_of(checkpoint: str) -> dict[str, Any]:
    import pengi_kit
    from pengi_kit.recipe import load_recipe

    return load_recipe(pengi_kit.checkpoint_folder(checkpoint) / "recipe.toml")


@main.command("demo")
@click.option("--recipe", default="demo", show_default=True, help="The demo recipe to train (a shipped name or a path).")
@overrides_option
@click.option("--device", default=None, help="cpu, cuda ... (default: cuda when available).")
def demo_cmd(recipe: str, overrides: tuple[str, ...], device: str | None) -> None:
    """Train the demo recipe offline on synthetic clips and score held-out clips.

    The demo is meant to be re-run: each run starts over in train.output_dir (default
    runs/demo), deleting the previous run there (checkpoints, best/, metrics); the
    pretrained tagger kept in that folder stays and is reused. To train the demo recipe
    further without losing a run, use `pengi-kit train` with another train.output_dir.
    """
    import pengi_kit
    from pengi_kit.devices import resolve_device
    from pengi_kit.recipe import load_recipe

    resolved = load_recipe(recipe, overrides)
    resolve_device(device)  # one line, before the tagger trains
    args = [recipe, *[a for o in overrides for a in ("-s", o)], *(["--device", device] if device else [])]
    with _reporting_interruptions(args):
        pengi_kit.run_demo(resolved, echo=click.echo, device=device)


@main.command("import", cls=_Listing, kind="importer", title="Formats")
@click.argument("fmt", metavar="FORMAT")
@click.argument("source")
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
    """Import a published checkpoint (Pengi, PANNs, LAION-CLAP, Microsoft CLAP/CLAPCap, or a
    plugin's format) of FORMAT, one of the formats listed below.

    SOURCE is the downloaded file, or a published tag (pengi base, base_no_text_enc; panns
    cnn14-32k, cnn14-16k; laion-clap 630k-audioset-best, music-audioset; ms-clap 2022, 2023;
    ms-clapcap 2023), which is downloaded into the cache ($PENGI_KIT_CACHE, default
    ~/.cache/pengi-kit) and checked against its publisher's checksum first (Pengi's: its md5 is
    printed, to compare with the record's). Every key of SOURCE is mapped or knowingly ignored (see
    docs/checkpoints.md).
    """
    import pengi_kit

    report = pengi_kit.import_checkpoint(fmt, source, out, force=force, lm=lm, text_encoder=text_encoder)
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


@data_group.command("prepare", cls=_Listing, kind="dataset", title="Datasets")
@click.argument("name")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="The unpacked corpus.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The JSONL manifest to write.")
@click.option("--split", "splits", multiple=True, help="Keep only this split (repeatable; default: all).")
def data_prepare_cmd(name: str, root: Path, out: Path, splits: tuple[str, ...]) -> None:
    """Write a manifest for corpus NAME, one of the datasets listed below."""
    import pengi_kit

    report = pengi_kit.prepare_dataset(name, root, out, splits=splits)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    parts = ", ".join(f"{split or '-'}: {n}" for split, n in sorted(report.splits.items()))
    tasks = ", ".join(f"{task}: {n}" for task, n in report.tasks.most_common())
    click.echo(f"wrote {report.rows} rows for {report.clips} clips to {out} (splits {parts}; tasks {tasks}); "
               f"{len(report.problems)} problem(s)")


@data_group.command("check")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Decoding processes.")
@click.option("--max-seconds", type=float, default=3600.0, show_default=True,
              help="Longer clips or segments are problems.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on standard error (default: when it is a terminal).")
@click.option("--format", "fmt", type=click.Choice(["llama-factory", "sharegpt", "af3", "openai"]),
              help="Conversation files whose rows do not tell their format (detected otherwise).")
def data_check_cmd(manifests: tuple[Path, ...], jobs: int, max_seconds: float, progress: bool,
                   fmt: str | None) -> None:
    """Decode every clip of each MANIFEST (or conversation file, .json/.jsonl); one line per problem,
    then statistics (per file when there are several). Exit 1 on problems in any."""
    import pengi_kit

    ok = True
    for manifest in manifests:
        report = pengi_kit.check_manifest(manifest, jobs=jobs, max_seconds=max_seconds, progress=progress,
                                          format=fmt)
        if len(manifests) > 1:
            click.echo(f"== {manifest}")
        for problem in report.problems:
            click.echo(f"problem: {problem}")
        for line in report.summary():
            click.echo(line)
        ok &= report.ok
    if not ok:
        sys.exit(1)


@data_group.command("shard")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the shards.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard.")
@click.option("--prefix", default="train", show_default=True, help="Shard names: PREFIX-000000.tar ...")
@click.option("--shuffle/--no-shuffle", default=True, show_default=True, help="Shuffle rows before sharding.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle.")
def data_shard_cmd(manifest: Path, out: Path, shard_size: int, prefix: str, shuffle: bool, seed: int) -> None:
    """Write MANIFEST's rows (or a conversation file's) and audio into webdataset-style tar shards."""
    import pengi_kit

    report = pengi_kit.write_shards(manifest, out, shard_size, prefix=prefix, shuffle=shuffle, seed=seed)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"wrote {report.samples} samples in {len(report.shards)} shards: {report.pattern}; "
               f"{len(report.problems)} problem(s) left out")


@data_group.command("tokenizer")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write the tokenizer to.")
@click.option("--kind", type=click.Choice(["word", "bpe"]), default="word", show_default=True,
              help="word: one token per word (labels, short answers); bpe: byte-level BPE (free-form captions).")
@click.option("--vocab-size", type=int, default=None,
              help="Most tokens, special ones included (default: word, every word; bpe, 1000).")
@click.option("--min-count", type=int, default=1, show_default=True,
              help="word: rarer words become [UNK]; bpe: rarer merges are not learned.")
@click.option("--text", "texts", multiple=True,
              help="A further text to cover, e.g. a recipe's data prompt (repeatable).")
def data_tokenizer_cmd(manifests: tuple[Path, ...], out: Path, kind: str, vocab_size: int | None,
                       min_count: int, texts: tuple[str, ...]) -> None:
    """Build a tokenizer from the texts and prompts of MANIFEST... for an LM trained from scratch."""
    import pengi_kit

    folder = pengi_kit.build_tokenizer(manifests, out, kind=kind, vocab_size=vocab_size, min_count=min_count,
                                       texts=texts)
    doc = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    size = len(set(doc["model"]["vocab"].values()) | {t["id"] for t in doc.get("added_tokens", [])})
    click.echo(f"wrote a {kind} tokenizer of {size} tokens to {folder}; "
               f"use it with [model.lm] tokenizer = \"{folder}\"")


if __name__ == "__main__":
    main()
