"""The server's decoder: one thread owns the model and runs every request through one
:class:`~pengi_kit.generation.Stream` (continuous batching).

Requests that arrive while others decode join at the next step (a beam-search request as its
group of beams), finished ones leave, and a request whose client went away leaves at once.
Each request's prefix is built as ``pengi-kit generate`` builds it for that request alone (its
clips encoded together, its prompt on its own), so a greedy request gets the tokens it gets
offline at any concurrency. A clip is encoded once (its audio tokens are kept by the hash of
its bytes), and requests with the same clips and text share one prefix tensor, which the
stream runs once. ``compat = "pengi"`` requests decode as the reference does: the ones waiting
together run as one batch of :func:`~pengi_kit.generation.generate` between steps.
"""
from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from pengi_kit.api import Pengi
from pengi_kit.generation import Decoding, Stream, generate, pad_prefixes, stop_token_id
from pengi_kit.models.pengi import split_prefix
from pengi_kit.server.metrics import Metrics
from pengi_kit.server.protocol import ApiError

_CACHED = 64  # audio tokens and prefixes kept, most recently used first
_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """A request: its clips (waveforms, and their bytes' hashes), its text (the Pengi layout's
    prompt, or the chat layout's messages), how to decode, and where its events go.

    Events (``notify`` is called from the decoder's thread): ``("start", prompt_tokens)``;
    ``("text", choice, text)`` with the text so far, for a streamed request;
    ``("end", choice, text, finish_reason, tokens)``; ``("error", ApiError)``."""

    waves: list[torch.Tensor]
    digests: tuple[str, ...]
    text: str | list[dict[str, str]]
    cfg: Decoding
    notify: Callable[[tuple[Any, ...]], None]
    n: int = 1
    stream: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    prefix: torch.Tensor | None = None
    left: int = 0  # choices still decoding


class Scheduler:
    """Runs :class:`Job` s on ``pengi``'s model in a thread of its own (:meth:`start`).

    ``max_batch``: rows decoded together (a beam search takes ``beam_size``); ``max_queue``:
    requests waiting to join before :meth:`submit` refuses with 429; ``length``: positions per
    row (prefix and generated tokens), at most the LM's."""

    def __init__(self, pengi: Pengi, max_batch: int = 32, max_queue: int = 256, length: int = 2048,
                 metrics: Metrics | None = None) -> None:
        self.pengi, self.max_batch, self.max_queue = pengi, max_batch, max_queue
        self.length = min(pengi.model.max_positions, length)
        self.stream = Stream(pengi.model.lm, rows=max_batch, length=self.length)
        self.metrics = metrics or Metrics()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.jobs: dict[int, Job] = {}  # decoding, by id
        self.waiting: dict[int, Job] = {}  # submitted, not yet all rows in the stream
        self.lock = threading.Lock()
        self.audio: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self.prefixes: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
        self.prompts: dict[str, torch.Tensor] = {}
        self.thread = threading.Thread(target=self._loop, name="pengi-kit-decoder", daemon=True)

    # ------------------------------------------------------------------ the HTTP side
    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``, or refuse it with 429 when ``max_queue`` requests wait already."""
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise ApiError(429, f"the server's queue is full ({self.max_queue} requests wait for a slot); retry "
                               "in a moment", code="queue_full", headers={"Retry-After": "1"})
            self.waiting[job.id] = job
        self.inbox.put(job)

    def cancel(self, job: Job) -> None:
        """Drop ``job`` (its client went away): its rows leave at the next step."""
        self.inbox.put(("cancel", job))

    def close(self) -> None:
        """Finish what runs, then stop the thread."""
        self.inbox.put(None)
        self.thread.join()

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def running(self) -> int:
        return len(self.stream.owners)

    # ------------------------------------------------------------------ the decoder's thread
    def _loop(self) -> None:
        stopping = False
        while not stopping or self.stream.busy:
            items = [] if self.stream.busy else [self.inbox.get()]  # idle: wait for work
            while True:
                try:
                    items.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            stopping = stopping or None in items
            try:
                reference: list[Job] = []
                for item in items:
                    if isinstance(item, tuple):
                        self._cancel(item[1])
                    elif item is not None:
                        self._begin(item, reference)
                self._reference(reference)
                if self.stream.busy:
                    self._step()
            except Exception as exc:  # noqa: BLE001 - a fault fails what runs; the thread goes on
                self._reset(_internal(exc))

    def _begin(self, job: Job, reference: list[Job]) -> None:
        try:
            with torch.inference_mode():
                job.prefix = self._prefix(job)
            need = len(job.prefix) + job.cfg.max_tokens
            if need > self.length:
                raise ApiError(400, f"the request needs {need} positions ({len(job.prefix)} of prompt and audio, "
                               f"{job.cfg.max_tokens} to generate) and this server has {self.length} per row: ask for "
                               "fewer tokens (max_tokens) or send less", param="max_tokens")
            width = job.cfg.beam_size if job.cfg.method == "beam" else 1
            if width > self.max_batch:
                raise ApiError(400, f"beam_size {width} is more than the server's {self.max_batch} rows (--max-batch)",
                               param="beam_size")
        except ApiError as error:
            return self._fail(job, error)
        except Exception as exc:  # noqa: BLE001 - the client gets one line, the log the traceback
            return self._fail(job, _internal(exc))
        job.notify(("start", len(job.prefix)))
        job.left = job.n
        self.jobs[job.id] = job
        if job.cfg.compat == "pengi":
            reference.append(job)
            return
        for i in range(job.n):  # choice i samples with seed + i: n different draws that repeat
            cfg = job.cfg if i == 0 or job.cfg.seed is None else replace(job.cfg, seed=job.cfg.seed + i)
            self.stream.add((job.id, i), job.prefix, cfg)

    def _prefix(self, job: Job) -> torch.Tensor:
        """The request's LM prefix (P, D), as ``generate`` (or ``chat``) builds it for the request alone."""
        key = (job.digests, repr(job.text), job.cfg.compat)
        if key in self.prefixes:
            self.prefixes.move_to_end(key)
            return self.prefixes[key]
        model = self.pengi.model
        if job.digests not in self.audio:
            self.audio[job.digests] = (self.pengi._audio_prefix(job.waves) if job.waves
                                       else torch.zeros(0, 1, 1, device=self.pengi.device))
        self.audio.move_to_end(job.digests)
        tokens = self.audio[job.digests]
        if model.layout == "chat":
            prefix = model.chat_prefix(tokens, [job.text])
        else:
            prefix = model.join_prefix(tokens, self.pengi._prompt_prefix([job.text], job.cfg.compat, 1, self.prompts))
        self.prefixes[key] = split_prefix(prefix)[0][0]
        for cache in (self.audio, self.prefixes):
            while len(cache) > _CACHED:
                cache.popitem(last=False)
        if len(self.prompts) > 16 * _CACHED:
            self.prompts.clear()
        return self.prefixes[key]

    def _reference(self, jobs: list[Job]) -> None:
        """compat = "pengi" jobs: those of equal options decode together, as the reference's search."""
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(repr(job.cfg), []).append(job)
        for group in groups.values():
            for start in range(0, len(group), self.max_batch):
                part = group[start:start + self.max_batch]
                cfg = part[0].cfg
                try:
                    with torch.inference_mode():
                        embeds, mask = pad_prefixes([job.prefix for job in part])
                        rows = generate(self.pengi.model.lm, embeds, cfg, prefix_mask=mask, keep_stop=not cfg.stop)
                except Exception as exc:  # noqa: BLE001
                    for job in part:
                        self._fail(job, _internal(exc))
                    continue
                self.metrics.step(len(part))
                for job, row in zip(part, rows):
                    self._started(job)
                    for i in range(job.n):
                        self._end(job, i, row)

    def _step(self) -> None:
        ended = self.stream.step()
        self.metrics.step(self.stream.stepped)
        unplaced = {r.key[0] for r in self.stream.waiting}  # rows still waiting for a slot
        with self.lock:
            begun = [job_id for job_id in self.waiting if job_id in self.jobs and job_id not in unplaced]
        for job_id in begun:
            self._started(self.jobs[job_id])
        for (job_id, i), tokens in ended:
            if job_id in self.jobs:
                self._end(self.jobs[job_id], i, tokens)
        if not any(job.stream for job in self.jobs.values()):
            return
        for (job_id, i), tokens in self.stream.live().items():  # streamed requests: their text so far
            job = self.jobs.get(job_id)
            if job is not None and job.stream and tokens:
                job.notify(("text", i, _stable(self.pengi.texts([tokens], job.cfg)[0], job.cfg.stop)))

    def _reset(self, error: ApiError) -> None:
        """Fail every request that has begun, and start over with an empty stream."""
        for job in list(self.jobs.values()):
            self._fail(job, error)
        self.stream = Stream(self.pengi.model.lm, rows=self.max_batch, length=self.length)

    def _end(self, job: Job, choice: int, tokens: list[int]) -> None:
        cfg = job.cfg
        ids = tokens[:-1] if cfg.compat == "pengi" and tokens and tokens[-1] == stop_token_id(self.pengi.model.lm, cfg) else tokens
        text = self.pengi.texts([tokens], cfg)[0]
        self.metrics.generated(len(ids))
        job.notify(("end", choice, text, "length" if len(ids) >= cfg.max_tokens else "stop", len(ids)))
        job.left -= 1
        if job.left == 0:
            self.jobs.pop(job.id, None)

    def _cancel(self, job: Job) -> None:
        for i in range(job.n):
            self.stream.cancel((job.id, i))
        self.jobs.pop(job.id, None)
        self._started(job)

    def _started(self, job: Job) -> None:
        with self.lock:
            self.waiting.pop(job.id, None)

    def _fail(self, job: Job, error: ApiError) -> None:
        self._cancel(job)
        job.notify(("error", error))


def _stable(text: str, stops: list[str]) -> str:
    """The part of a text so far that more tokens will not change: without a trailing partial
    character, trailing spaces (the final text is stripped) or the start of a stop string."""
    text = text.rstrip("\ufffd").rstrip()
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                text = text[:-k].rstrip()
                break
    return text


def _internal(exc: Exception) -> ApiError:
    print(f"pengi-kit serve: a request failed at {time.strftime('%H:%M:%S')}:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    return ApiError(500, f"the server failed on this request ({type(exc).__name__}); its log has the details",
                    code="internal_error")
