"""The one trainer: any recipe, one process or many (torchrun / DDP)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from pengi_kit import checkpoint as ckpt
from pengi_kit.data.build import build_dataset
from pengi_kit.data.loader import TrainLoader, eval_loader
from pengi_kit.engine.distributed import Dist, all_reduce_sum, barrier, setup, shard
from pengi_kit.engine.flops import peak_flops
from pengi_kit.engine.optim import build_optimizer, build_scheduler
from pengi_kit.devices import TrainingThreads
from pengi_kit.errors import PengiKitError
from pengi_kit.models import build_model
from pengi_kit.progress import bar as progress_bar, say


class TrainingError(PengiKitError):
    """Training cannot go on (bad data under the 'fail' policy, a diverging loss ...)."""


class TrainingInterrupted(PengiKitError):
    """SIGINT or SIGTERM stopped :meth:`Trainer.fit` between two steps; ``checkpoint`` holds the
    last completed step, from which ``resume=True`` continues exactly."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted at step {step}: checkpoint {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class TrainingAborted(KeyboardInterrupt):
    """A second SIGINT or SIGTERM while :meth:`Trainer.fit` was stopping: no checkpoint of the step."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"aborted by a second {signal.Signals(signum).name}")
        self.signum = signum


def run_dir_taken(out: str | Path) -> str | None:
    """Why a fresh run may not write into ``out`` (it holds another run), or None."""
    what = ckpt.existing_run(out)
    if what is None:
        return None
    return (f"{out} holds another run ({what}); continue it with --resume, or start over with --overwrite "
            "(deletes it), or set train.output_dir")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Train the model a resolved recipe describes: a Pengi model, or an encoder to pretrain
    (``task = "tagging" | "contrastive"``); the trainer knows only their common protocol
    (:class:`pengi_kit.contracts.Trainable`).

    ``Trainer(recipe).fit()`` returns the final checkpoint directory. Metrics go to
    ``<output_dir>/metrics.jsonl``; checkpoints to ``<output_dir>/checkpoints/step-N``.
    ``validate_hook(model, step) -> dict`` adds task metrics to each validation.

    An output directory that holds another run is refused (:class:`TrainingError`)
    unless ``resume`` continues it or ``overwrite`` deletes it first (rank 0, before
    any process goes on). SIGINT or SIGTERM during :meth:`fit` stops it after the
    current step with a checkpoint (:class:`TrainingInterrupted`).
    """

    def __init__(self, recipe: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
                 device: str | None = None, progress: bool = True,
                 validate_hook: Callable[[torch.nn.Module, int], dict] | None = None) -> None:
        if resume and overwrite:
            raise TrainingError("resume continues the run in train.output_dir and overwrite deletes it: "
                                "choose one (--resume or --overwrite)")
        self.recipe, self.progress, self.validate_hook = recipe, progress, validate_hook
        self._tensorboard: Any = None
        self.dist: Dist = setup(device)
        # on the CPU: torch threads for the cores other work leaves free, re-chosen at each log line
        self.threads = TrainingThreads() if self.dist.device.type == "cpu" else None
        self.out = Path(recipe["train"]["output_dir"])
        self.resume = self._claim_output_dir(resume, overwrite)
        # local sources copied into the run folder, paths absolute: checkpoints load from anywhere
        self.recipe = recipe = ckpt.adopt_sources(recipe, self.out, copy=self.dist.is_main)
        barrier(self.dist)
        self._setup_model()
        self._setup_data()
        self._setup_optimizer()
        self.step = self.epoch = self.batch_in_epoch = self.skipped_steps = 0
        self.bad_examples: list[str] = []
        self.valid_errors: set[str] = set()
        self.best_value: float | None = None
        self._best_missing_reported = False
        self._saved_step: int | None = None  # the step of this run's newest step checkpoint
        self._signal = 0  # the first SIGINT/SIGTERM fit() received
        # steps whose loss (a device tensor, NaN when skipped) the host has not read yet, the
        # non-finite steps in a row so far, and this log window's tokens (device) and FLOPs
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._bad_in_row = 0
        self._window_tokens: torch.Tensor | None = None  # None: the model has no LM (Trainable.lm_tokens)
        self._window_flops = 0.0
        for dataset in (self.train_data, self.valid_data):  # bad manifest lines, reported like bad clips
            self._report_bad(list(dataset.load_errors) if dataset is not None else [])
        if self.resume:
            self._resume()

    # ------------------------------------------------------------------ setup
    def _setup_model(self) -> None:
        """Build the model on this process's device; shard it (FSDP) or wrap it for DDP, and compile,
        as the recipe says."""
        recipe, train = self.recipe, self.recipe["train"]
        seed_everything(recipe["seed"])  # the same initial weights on every rank
        self.model = build_model(recipe).to(self.dist.device)
        if train["encoder_cache"]:
            self.model.use_encoder_cache(train["encoder_cache"])
        self._freeze_unused()  # on one process too: checkpoints resume on any number of processes
        if not any(p.requires_grad for p in self.model.parameters()):
            raise TrainingError("every component is frozen: set trainable = true on at least one [model.*] table")
        precision = train["precision"]
        # MFU needs a GPU's peak (None on the CPU) and the model's FLOPs, counted before wrapping
        self.peak_flops = peak_flops(self.dist.device, precision, train["peak_flops"])
        if self.peak_flops:
            self.model.flops(self.model.example_inputs(1))
        if train["activation_checkpointing"]:
            self._enable_activation_checkpointing()
        self.module: torch.nn.Module = self.model
        self.fsdp = train["strategy"] == "fsdp" and self.dist.enabled
        if self.fsdp:  # in place: self.model's parameters become shards (DTensors)
            shard(self.model, bf16=train["precision"] == "bf16")
        elif self.dist.enabled:  # frozen parameters have requires_grad=False: DDP leaves them out
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            # _freeze_unused left every trainable parameter on the loss's path: no search per step
            self.module = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                    find_unused_parameters=False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if train["compile"]:
            self.module = torch.compile(self.module)
        if precision == "fp16" and self.dist.device.type != "cuda":
            raise TrainingError("train.precision = 'fp16' needs a GPU; use 'bf16' or 'fp32' on the CPU")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def _freeze_unused(self) -> None:
        """Freeze the trainable parameters that the loss does not reach (the encoders'
        classifier heads: CNN14's fc_audioset, HTSAT's tscam_conv and head), found once by a
        backward pass over one example, so that DDP needs no search for unused parameters
        each step. They would get no gradient anyway: training is unchanged."""
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.model.eval()  # no batch-norm statistics drift, no dropout; RNG untouched below
        devices = [self.dist.device] if self.dist.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            loss = self.model(**self.model.example_inputs(2))["loss_sum"]
            grads = torch.autograd.grad(loss, [p for _, p in trainable], allow_unused=True)
        self.model.train()
        unused = [n for (n, p), g in zip(trainable, grads) if g is None]
        for name, param in trainable:
            if name in unused:
                param.requires_grad_(False)
        if unused:  # in the log, not on the console: it is the same every run (CNN14's fc_audioset ...)
            self._log({"event": "not_trained", "reason": "the loss does not use them", "parameters": unused})

    def _setup_data(self) -> None:
        """The datasets at the encoder's input contract, and a loader whose batches depend on
        (seed, epoch, rank) only: any num_workers, exact mid-epoch resume."""
        recipe, data = self.recipe, self.recipe["data"]
        seed_everything(recipe["seed"] + self.dist.rank)  # dropout and crops differ per rank
        rate, seconds = self.model.sample_rate, self.model.clip_seconds
        self.train_data = build_dataset(recipe, "train", rate, seconds)
        self.valid_data = build_dataset(recipe, "valid", rate, seconds)
        check = getattr(self.model, "check_conversation", None)  # rows it cannot read: reported, not trained
        for dataset in (self.train_data, self.valid_data):
            if check is not None and dataset is not None:
                dataset.vet(check)
        if self.train_data is None:
            raise TrainingError("data.train is empty: name a manifest or 'synthetic'")
        self.batch_size = recipe["train"]["batch_size"]
        self.loader = TrainLoader(self.train_data, self.batch_size, seed=recipe["seed"], rank=self.dist.rank,
                                  world_size=self.dist.world_size, num_workers=data["num_workers"],
                                  pin_memory=self.dist.device.type == "cuda",
                                  bucket_batches=data["bucket_batches"] if self.model.text_targets else 0,
                                  mixup=data["augment"]["mixup"], batch_seconds=recipe["train"]["batch_seconds"])
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            size = self.train_data.num_examples()
            raise TrainingError(f"the training data has {size} examples, fewer than one batch of "
                                f"{self.batch_size} per process; lower train.batch_size")
        used, drawn = self.loader.examples_per_epoch()
        if drawn > used:  # only whole batches train: say so, once
            self._log_line(f"each epoch uses {used} of {drawn} examples ({drawn - used} left out per epoch, "
                           "different ones each epoch)")

    def _setup_optimizer(self) -> None:
        """Optimiser over the trainable parameters and the learning-rate schedule over the run's steps."""
        train, optim = self.recipe["train"], self.recipe["optim"]
        self.total_steps = train["max_steps"] or train["epochs"] * self.steps_per_epoch
        # fused Adam(W) skips a non-finite step on the device (found_inf): no wait for the GPU
        self.optimizer = build_optimizer(self.model, optim, fused=self.dist.device.type in ("cuda", "cpu"))
        self.scheduler = build_scheduler(self.optimizer, optim, self.total_steps)

    # ------------------------------------------------------------------ state
    def _claim_output_dir(self, resume: bool, overwrite: bool) -> bool:
        """Refuse an output directory that holds another run, or delete that run (``overwrite``);
        rank 0 decides for every rank. Returns ``resume``, which a torchrun restart implies."""
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and (
                overwrite or os.environ.get("PENGI_KIT_RUN_CHECKED") == "1"):
            # the first attempt started this run in a directory free of others: a restart continues it
            self._log_line("torchrun restarted the workers: continuing this run from its newest checkpoint")
            return True
        if resume:
            return True
        problem = run_dir_taken(self.out) if self.dist.is_main else None
        if self.dist.enabled:
            flag = torch.tensor([float(problem is not None)], device=self.dist.device)
            if float(all_reduce_sum(flag, self.dist)) > 0 and problem is None:
                problem = run_dir_taken(self.out) or f"{self.out} holds another run (rank 0 found it)"
        if problem is not None and not overwrite:
            raise TrainingError(problem)
        if problem is not None and self.dist.is_main:
            self._log_line(f"starting over: deleting the previous run in {self.out} ({ckpt.existing_run(self.out)})")
            ckpt.remove_run(self.out)
        barrier(self.dist)  # no rank writes before rank 0 has deleted
        return False

    def _resume(self) -> None:
        try:
            path = ckpt.resolve(self.out)
        except ckpt.CheckpointError:
            if not ckpt.checkpoints(self.out):
                self._log_line(f"no checkpoint in {self.out}/checkpoints: starting from scratch")
                return
            raise
        skipped = [p for p in ckpt.checkpoints(self.out) if p > path]
        for bad in skipped:
            self._log_line(f"ignoring damaged checkpoint {bad}")
        meta = ckpt.verify(path)
        state, rng = ckpt.load_training_state(path, self.dist.rank)
        sharded = state["optimizer"] is None  # written by train.strategy = "fsdp"
        if sharded != self.fsdp:
            written, now = ("fsdp", "ddp or one process") if sharded else ("ddp or one process", "fsdp")
            raise TrainingError(f"{path}: its optimiser state was written with {written}, this run uses {now}; "
                                "resume with the same train.strategy (and, for fsdp, several processes)")
        if self.fsdp:
            self._load_sharded(path)
        else:
            ckpt.load_weights(self.model, path, meta.get("referenced", []))
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the schedule follows this recipe (a run may be resumed with more steps): recompute the lr
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.skipped_steps = state.get("skipped_steps", 0)
        if path.parent == self.out / "checkpoints":
            self._saved_step = self.step  # that checkpoint is this run's step: fit() need not write it again
        if rng is not None and state.get("world_size", 1) == self.dist.world_size:
            ckpt.set_rng_state(rng)
        self._log_line(f"resumed from {path} at step {self.step}")
        best = self.out / "best" / ckpt.META
        if best.is_file():
            meta = json.loads(best.read_text(encoding="utf-8"))
            if meta.get("best_metric") == self.recipe["train"]["best_metric"]:
                self.best_value = meta.get("best_value")

    def _enable_activation_checkpointing(self) -> None:
        """Ask each component with trainable weights (or the Hugging Face model it wraps) to recompute
        activations."""
        done = []
        for slot, component in self.model.named_children():
            if not any(p.requires_grad for p in component.parameters()):
                continue
            for target in (component, getattr(component, "model", None)):
                enable = getattr(target, "gradient_checkpointing_enable", None)
                if enable is not None and getattr(target, "supports_gradient_checkpointing", True):
                    enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                    done.append(slot)
                    break
        self._log_line(f"activation checkpointing: {', '.join(done) if done else 'no trainable component supports it'}")

    def _load_sharded(self, path: Path) -> None:
        """FSDP: every rank takes its shards of the full weights and of the optimiser state
        (torch.distributed.checkpoint, one file per rank under ``optimizer/``)."""
        import torch.distributed.checkpoint as dcp
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict)

        full = load_file(str(path / ckpt.WEIGHTS))
        set_model_state_dict(self.model, full, options=StateDictOptions(full_state_dict=True, strict=False))
        state = {"optimizer": get_optimizer_state_dict(self.model, self.optimizer)}
        dcp.load(state, checkpoint_id=str(path / "optimizer"))
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])

    def _sharded_state(self, path: Path) -> tuple[dict[str, torch.Tensor], Callable[[Path], None]]:
        """FSDP, every rank: the full weights (gathered on rank 0, on the CPU) and a function that
        moves the optimiser state, which every rank has just written in shards, into the checkpoint."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict)

        weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        staging = path.parent / f".{path.name}.optimizer"
        if self.dist.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        barrier(self.dist)
        dcp.save({"optimizer": get_optimizer_state_dict(self.model, self.optimizer)}, checkpoint_id=str(staging))
        barrier(self.dist)
        return weights, lambda folder: os.replace(staging, folder / "optimizer")

    def save(self) -> Path:
        """Write a checkpoint of the current step (rank 0 writes; every rank's RNG goes in)."""
        path = self._write(self.out / "checkpoints" / f"step-{self.step:08d}", {})
        self._saved_step = self.step
        if self.dist.is_main:  # keep_last: this one and the newest older ones (a damaged later one,
            # which a resumed run skipped and now redoes, neither counts nor pushes this one out)
            older = [p for p in ckpt.checkpoints(self.out) if p.name[5:].isdigit() and int(p.name[5:]) < self.step]
            for old in older[: max(0, len(older) - (self.recipe["train"]["keep_last"] - 1))]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(self.dist)
        return path

    def _write(self, path: Path, meta: dict[str, Any]) -> Path:
        """Every rank gathers its RNG state; rank 0 writes the checkpoint at ``path``."""
        self._check_steps()  # skipped_steps must be exact in the checkpoint
        states = [ckpt.rng_state()]
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        weights, extra = self._sharded_state(path) if self.fsdp else (None, None)
        if self.dist.is_main:
            training_state = {"optimizer": None if self.fsdp else self.optimizer.state_dict(),
                              "scheduler": self.scheduler.state_dict(),
                              "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                              "world_size": self.dist.world_size, "skipped_steps": self.skipped_steps}
            ckpt.save_checkpoint(path, self.model, self.recipe, training_state, dict(enumerate(states)),
                                 meta={"step": self.step, "epoch": self.epoch, **meta}, extra=extra, weights=weights,
                                 run_dir=self.out)
        return path

    def _keep_best(self, metrics: dict[str, float]) -> None:
        """Save ``<output_dir>/best`` when ``train.best_metric`` improved (rank 0 decides for all)."""
        train = self.recipe["train"]
        name = train["best_metric"]
        if not name or not metrics:
            return
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            if value is None and not self._best_missing_reported:
                self._best_missing_reported = True
                self._log_line(f"train.best_metric {name!r} is not among the validation metrics {sorted(metrics)}; "
                               "no best checkpoint is kept")
            return
        better = self.best_value is None or (value < self.best_value if train["best_mode"] == "min"
                                             else value > self.best_value)
        flag = torch.tensor([float(better and self.dist.is_main)], device=self.dist.device)
        if float(all_reduce_sum(flag, self.dist)) == 0.0:
            return
        self.best_value = value
        self._write(self.out / "best", {"best_metric": name, "best_value": value, "best_mode": train["best_mode"]})
        barrier(self.dist)
        self._log_line(f"step {self.step}: best {name} {value:.4f}, saved to {self.out}/best")

    def _validate_and_log(self) -> None:
        metrics = self.validate()
        self._log({"step": self.step, **metrics})
        if "valid_loss" in metrics:
            names = ["valid_loss", *(n for n in metrics if n != "valid_loss" and isinstance(metrics[n], float))]
            parts = [f"{name} {metrics[name]:.4f}" for name in names]
            self._log_line(f"step {self.step}: {', '.join(parts)}")
        self._keep_best(metrics)

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
            self._log_tensorboard(record)

    def _log_tensorboard(self, record: dict[str, Any]) -> None:
        """The numeric fields of a metrics line as TensorBoard scalars, when tensorboard is installed."""
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: metrics.jsonl only
                self._tensorboard = False
                return
            self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))
        if self._tensorboard is False or "step" not in record:
            return
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tensorboard.add_scalar(key, value, record["step"])

    def _log_line(self, text: str) -> None:
        if self.dist.is_main:
            say(f"pengi-kit: {text}")

    def _report_bad(self, errors: list[str]) -> None:
        if not errors:
            return
        if self.recipe["data"]["on_error"] == "fail":
            raise TrainingError(f"{errors[0]} (data.on_error = 'fail'; set 'skip' to report and go on)")
        self.bad_examples.extend(errors)
        for error in errors:
            self._log_line(f"skipped: {error}")
        self._log({"event": "skipped_examples", "step": self.step, "errors": errors})

    # ------------------------------------------------------------------ steps
    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients across processes only after the last micro-batch of a step."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(sync)
        elif self.dist.enabled and not sync:
            return self.module.no_sync()
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.autocast_dtype)

    def _inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.dist.device, non_blocking=True) for k, v in self.model.batch_inputs(batch).items()}

    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One optimiser step over ``grad_accum`` micro-batches; the loss is the mean over
        every term (target token, clip: the model's ``loss_units``) of the global batch, on
        any number of processes.

        Returns the loss as a 0-dim tensor on the device, NaN where the loss or the gradient
        was not finite and the step left the weights and optimiser state as they were. Nothing
        here waits for the device: the loop reads losses only every few steps (_check_steps)."""
        inputs = self._inputs(batch)
        if self.peak_flops:  # a function of the shapes, which the host knows: no wait
            self._window_flops += self.model.flops(inputs)
        lm_tokens = self.model.lm_tokens(inputs)
        if lm_tokens is not None:
            self._window_tokens = lm_tokens.double() + (0 if self._window_tokens is None else self._window_tokens)
        accum = self.recipe["train"]["grad_accum"]
        tokens = all_reduce_sum(self.model.loss_units(inputs).double(), self.dist)
        scale = self.dist.world_size / tokens.clamp(min=1)  # DDP averages gradients over ranks
        n = len(next(iter(inputs.values())))
        bounds = [round(i * n / accum) for i in range(accum + 1)]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        for i in range(accum):
            part = {k: v[bounds[i]:bounds[i + 1]] for k, v in inputs.items()}
            with self._gradient_sync(i == accum - 1), self._autocast():
                out = self.module(**part)
                loss = out["loss_sum"] * scale.to(out["loss_sum"].dtype)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += out["loss_sum"].detach().double()
        loss_mean = all_reduce_sum(loss_sum, self.dist) / tokens
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.recipe["optim"]["grad_clip"]
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
        finite = torch.isfinite(loss_mean) & torch.isfinite(norm)
        if self.scaler:  # GradScaler skips a step whose gradients are not finite, on the device
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif getattr(self.optimizer, "_step_supports_amp_scaling", False):  # fused: found_inf skips on the device
            self.optimizer.found_inf = (~finite).float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif bool(finite):  # an optimiser that cannot skip on the device: one wait here
            self.optimizer.step()
        self.scheduler.step()  # a skipped step still counts in the schedule: the host does not know yet
        self.optimizer.zero_grad(set_to_none=True)
        return torch.where(finite, loss_mean, torch.full_like(loss_mean, math.nan))

    def validate(self) -> dict[str, float]:
        """Validation loss (and the hook's metrics); training RNG streams are left as they were,
        so that a run validated at other steps, or resumed, trains identically."""
        if self.valid_data is None:
            return {}
        rng = ckpt.rng_state()
        if self.fsdp:  # the blocks gather their shards as they run; the root's parts are gathered here
            self.model.unshard()
        try:
            return self._validate()
        finally:
            if self.fsdp:
                self.model.reshard()
            ckpt.set_rng_state(rng)
            self.model.train()

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        self.model.eval()
        loader = eval_loader(self.valid_data, self.batch_size, rank=self.dist.rank, world_size=self.dist.world_size,
                             num_workers=self.recipe["data"]["num_workers"], seed=self.recipe["seed"])
        sums: dict[str, torch.Tensor] = {}  # metric -> [sum, count] (the model's validation_sums)
        errors: list[str] = []
        size = None if isinstance(self.valid_data, torch.utils.data.IterableDataset) else len(loader)  # no length
        bar = progress_bar(size, f"validating (step {self.step})", "batch",
                           enabled=None if self.progress and self.dist.is_main else False)
        for batch in loader:
            bar.update(1)
            errors += batch["errors"]
            if not batch["prompts"]:
                continue
            with self._autocast():
                for name, value in self.model.validation_sums(self._inputs(batch)).items():
                    sums[name] = sums[name] + value if name in sums else value
        bar.close()
        names = sorted(sums)
        if self.dist.enabled:  # a rank may have had no batch, or no batch of two clips: agree on the names
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, (names, errors))
            names = sorted({n for part, _ in gathered for n in part})
            errors = [e for _, part in gathered for e in part]
        zero = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        total = all_reduce_sum(torch.stack([sums.get(n, zero) for n in names]) if names else zero[None], self.dist)
        new = [e for e in dict.fromkeys(errors) if e not in self.valid_errors]  # each reported once per run
        self.valid_errors.update(new)
        self._report_bad(new)
        metrics = {n: float(total[i, 0] / total[i, 1]) for i, n in enumerate(names) if total[i, 1] > 0}
        metrics.setdefault("valid_loss", math.nan)  # nothing could be scored
        warning = getattr(self.model, "validation_warning", lambda _: None)(metrics)
        if warning and self.dist.is_main and not getattr(self, "_warned", False):
            self._warned = True  # once a run; metrics.jsonl has every validation's values
            say(warning)
        if self.validate_hook is not None:
            metrics.update(self.validate_hook(self.model, self.step))
        return metrics

    # ------------------------------------------------------------------ loop
    def _loader(self) -> Iterable[dict[str, Any]]:
        return self.loader.epoch(self.epoch, start_batch=self.batch_in_epoch)

    def fit(self) -> Path:
        """Train to the end; returns the final checkpoint, a checkpoint of this run's last step.

        SIGINT or SIGTERM (a scheduler's warning before it kills) lets the current step
        finish, writes a checkpoint of it and raises :class:`TrainingInterrupted`; every
        process stops at the same step. A second signal aborts at once
        (:class:`TrainingAborted`). The previous signal handlers are restored on return.
        """
        with self._stop_on_signals():
            return self._fit()

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Any:
        self._signal = 0
        if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
            yield
            return
        previous: dict[int, Any] = {}

        def restore() -> None:
            for number, handler in previous.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)

        def on_signal(number: int, frame: Any) -> None:
            if self._signal:
                restore()
                raise TrainingAborted(number)
            self._signal = number
            if self.dist.is_main:  # os.write: safe wherever the handler interrupts the main thread
                again = "Ctrl-C again" if number == signal.SIGINT else "another SIGTERM"
                lead = "\n" if sys.stderr.isatty() else ""  # off the progress bar's line
                os.write(2, (f"{lead}pengi-kit: {signal.Signals(number).name}: stopping after the current step "
                             f"to write a checkpoint ({again} aborts at once)\n").encode())

        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, on_signal)
        try:
            yield
        finally:
            restore()

    def _fit(self) -> Path:
        train = self.recipe["train"]
        self.model.train()
        bar = progress_bar(self.total_steps, "training", "step", initial=self.step,
                           enabled=None if self.progress and self.dist.is_main else False)
        window_start, window_samples = time.perf_counter(), 0
        window_audio = [0, 0]  # this process's audio samples in the window's batches: real, with padding
        check_every = min(train["log_every"], train["max_nonfinite_steps"])
        stop = 0
        while self.step < self.total_steps and not stop:
            for batch in self._loader():
                usable, errors, stop = self._batch_status(batch)
                if stop:  # every rank learns it here, at the same step: the batch is left for the resumed run
                    break
                self._report_bad(errors)
                loss = self.train_step(batch) if usable else None
                self.step += 1
                self.batch_in_epoch += 1
                window_samples += len(batch["prompts"]) * self.dist.world_size
                if usable and "audio_lengths" in batch:  # a CPU tensor, read at the log step only
                    window_audio[0] = batch["audio_lengths"].sum() + window_audio[0]
                    window_audio[1] += batch["audio"].numel()
                if loss is None:
                    self._log_line(f"step {self.step}: every example of a batch was skipped; step skipped")
                    self._log({"event": "empty_batch", "step": self.step})
                else:
                    self._pending.append((self.step, loss))
                bar.update(1)
                log_now = self.step % train["log_every"] == 0 or self.step == self.total_steps
                losses = self._check_steps() if log_now or self.step % check_every == 0 else {}
                if log_now and math.isfinite(losses.get(self.step, math.nan)):
                    seconds = max(time.perf_counter() - window_start, 1e-9)
                    record = self._speed(window_samples, seconds)
                    if window_audio[1]:  # how much of the audio the encoder ran on is padding
                        record["audio_padding"] = round(1 - float(window_audio[0]) / window_audio[1], 4)
                    mfu = record["mfu"]
                    bar.set_postfix(loss=f"{losses[self.step]:.3f}", samples_s=f"{record['samples_per_s']:.0f}",
                                    **({"tokens_s": f"{record['tokens_per_s']:.0f}"} if "tokens_per_s" in record else {}),
                                    mfu=f"{mfu:.1%}" if mfu is not None else self._no_mfu)
                    self._log({"step": self.step, "epoch": self.epoch, "loss": losses[self.step],
                               "lr": self.scheduler.get_last_lr()[0], **record})
                if log_now:
                    if self.threads is not None:
                        self.threads.update()
                    window_start, window_samples, window_audio = time.perf_counter(), 0, [0, 0]
                    self._window_tokens = None
                    self._window_flops = 0.0
                if train["eval_every"] and self.step % train["eval_every"] == 0:
                    self._validate_and_log()
                if train["save_every"] and self.step % train["save_every"] == 0:
                    self.save()
                if self.step >= self.total_steps:
                    break
            if not stop and self.batch_in_epoch >= self.steps_per_epoch:
                self._end_epoch(train)
        bar.close()
        if stop:
            path = self._checkpoint()
            self._log({"event": "interrupted", "step": self.step, "signal": signal.Signals(stop).name,
                       "checkpoint": str(path)})
            self._close_tensorboard()
            raise TrainingInterrupted(stop, self.step, path)
        if self.batch_in_epoch and not train["eval_every"]:  # max_steps ended mid-epoch
            self._validate_and_log()
        path = self._checkpoint()
        if hasattr(self.model, "export") and self.dist.is_main:  # pretraining: the folder a recipe or evaluate loads
            self._export()
        barrier(self.dist)
        if self.bad_examples:
            self._log_line(f"{len(self.bad_examples)} example(s) skipped in this run; see {self.out}/metrics.jsonl")
        self._close_tensorboard()
        return path

    def _export(self) -> Path:
        """The model's take-away folder (``export``), of the best validation's weights
        (``train.export = "best"``, when a best checkpoint exists) or of the last step's."""
        best = self.out / "best"
        if self.recipe["train"]["export"] == "best" and (best / ckpt.META).is_file():
            from pengi_kit.models import load_model

            model = load_model(best)
        else:
            model = self.model
            model.origin = {"checkpoint": "last step", "step": self.step}
        folder = model.export(self.out)
        which = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in model.origin.items()
                          if k != "checkpoint")
        self._log_line(f"exported {folder} (weights of the {'best checkpoint' if model is not self.model else 'last step'}"
                       f"{': ' + which if which else ''})")
        return folder

    def _checkpoint(self) -> Path:
        """A checkpoint of the current step written by this run: the one already saved, or a new one."""
        if self._saved_step == self.step:
            return self.out / "checkpoints" / f"step-{self.step:08d}"
        return self.save()

    def _close_tensorboard(self) -> None:
        if self._tensorboard:
            self._tensorboard.close()

    def _batch_status(self, batch: dict[str, Any]) -> tuple[bool, list[str], int]:
        """Whether every rank's batch kept an example, every rank's skipped examples, and the
        signal (SIGTERM over SIGINT; 0 for none) that any rank received: stop before this batch.

        All ranks step or none does (a rank stepping alone would wait forever in the
        gradient all-reduce), and all ranks see every problem: rank 0 reports them, and
        under 'fail' all ranks stop together. One all-reduce of a CPU tensor carries it all
        (gloo: it never waits for the GPU); one process needs no tensor."""
        if not self.dist.enabled:
            return bool(batch["prompts"]), batch["errors"], int(self._signal)
        local = torch.tensor([float(not batch["prompts"]), float(len(batch["errors"])),
                              float(self._signal == signal.SIGINT), float(self._signal == signal.SIGTERM)])
        total = all_reduce_sum(local, self.dist, self.dist.control).tolist()
        stop = signal.SIGTERM if total[3] > 0 else signal.SIGINT if total[2] > 0 else 0
        errors = batch["errors"]
        if total[1] > 0 and not stop:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, errors)
            errors = [e for part in gathered for e in part]
        return total[0] == 0.0, errors, int(stop)

    @property
    def _no_mfu(self) -> str:
        return "n/a on CPU" if self.dist.device.type == "cpu" else "n/a (set train.peak_flops)"

    def _speed(self, samples: int, seconds: float) -> dict[str, Any]:
        """A log window's throughput: samples/s, LM tokens/s (the model's ``lm_tokens``: positions
        the LM computes, padding aside, all processes) and MFU (this process's model FLOPs / time /
        the GPU's peak; None without a peak, e.g. on the CPU). Reads the window's token count: one
        wait (every process calls this at the same step)."""
        mfu = self._window_flops / seconds / self.peak_flops if self.peak_flops else None
        record = {"samples_per_s": samples / seconds, "mfu": None if mfu is None else round(mfu, 4)}
        if self._window_tokens is not None:
            record["tokens_per_s"] = float(all_reduce_sum(self._window_tokens, self.dist)) / seconds
        return record

    def _check_steps(self) -> dict[int, float]:
        """Read the losses of the steps since the last check in one wait for the device; count
        and report the non-finite ones (which the device already skipped), and stop the run
        with a checkpoint when ``max_nonfinite_steps`` came in a row. The loop checks every
        min(log_every, max_nonfinite_steps) steps and before each checkpoint."""
        pending, self._pending = self._pending, []
        if not pending:
            return {}
        values = torch.stack([loss for _, loss in pending]).tolist()
        for (step, _), value in zip(pending, values):
            if math.isfinite(value):
                self._bad_in_row = 0
                continue
            self._bad_in_row += 1
            self.skipped_steps += 1
            self._log_line(f"step {step}: non-finite loss or gradient, step skipped ({self._bad_in_row} in a row)")
            self._log({"event": "nonfinite", "step": step})
        if self._bad_in_row >= self.recipe["train"]["max_nonfinite_steps"]:
            path = self.save()
            raise TrainingError(f"{self._bad_in_row} non-finite steps in a row at step {self.step}: the run "
                                f"diverged; lower optim.lr or check the data. Checkpoint: {path}")
        return {step: value for (step, _), value in zip(pending, values)}

    def _end_epoch(self, train: dict[str, Any]) -> None:
        if self.bad_examples:
            self._log_line(f"epoch {self.epoch}: {len(self.bad_examples)} example(s) skipped so far:")
            for error in self.bad_examples:
                self._log_line(f"  {error}")
        self._log({"event": "epoch_end", "epoch": self.epoch, "step": self.step,
                   "skipped_examples": len(self.bad_examples)})
        if not train["eval_every"]:
            self._validate_and_log()
        self.epoch += 1
        self.batch_in_epoch = 0
        if not train["save_every"]:
            self.save()
