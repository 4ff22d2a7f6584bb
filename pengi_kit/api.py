"""The Python API: load a checkpoint and generate, describe or embed.

>>> import pengi_kit
>>> pengi = pengi_kit.load("runs/demo")                                      # doctest: +SKIP
>>> pengi.generate(["clip.wav"], "generate audio caption")                   # doctest: +SKIP
['two high tones followed by a noise burst']
>>> pengi.generate("clip.wav", ["generate metadata", "this is a sound of"])  # doctest: +SKIP
['...', '...']
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from pengi_kit.data.audio import load_audio, prepare_waveform
from pengi_kit.data.inputs import Clip
from pengi_kit.errors import PengiKitError
from pengi_kit.generation import Decoding, cut_at_stop, generate as decode, reference_text, score
from pengi_kit.models import load_model
from pengi_kit.models.listening import listening_sums, partners
from pengi_kit.models.pengi import PengiModel, Prefix, prefix_rows, split_prefix, stack_rows, take_rows

AudioLike = Union[str, Path, Clip, np.ndarray, torch.Tensor, tuple]
OnError = Union[str, Callable[[Any, Exception], None]]

DESCRIBE_PROMPTS = {  # the reference wrapper's describe(), in its order
    "caption": "generate audio caption",
    "metadata": "generate metadata",
    "sound_events": "this is a sound of",
}
_TEXT_PREFIX_CACHE = 4096  # prompt prefixes kept across batches (a run's prompts are usually few)


class Pengi:
    """A loaded model with the everyday calls. Use :func:`load` to make one.

    Audio items may be file paths, :class:`Clip` segments, or 1-D (or channels x time)
    numpy arrays / torch tensors with a sample rate (``sample_rate=`` for all, or
    ``(array, rate)`` pairs). Clips are loaded in background threads while the model
    runs; each clip is encoded once however many prompts it is asked.
    """

    generates = True  # a model that generates text (a CLAP model, :class:`Clap`, only embeds)

    def __init__(self, model: PengiModel, num_workers: int | None = None) -> None:
        self.model = model
        recipe = getattr(model, "recipe", None) or {}
        self.defaults = dict(recipe.get("generate", {}))
        self.crop = recipe.get("data", {}).get("eval_crop", "start")
        self.num_workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs
    def _waveform(self, item: AudioLike, sample_rate: int | None) -> torch.Tensor:
        """One clip as a 1-D float32 CPU tensor at the encoder's rate and clip length."""
        target, seconds = self.model.sample_rate, self.model.clip_seconds
        if isinstance(item, (str, Path, Clip)):
            clip = item if isinstance(item, Clip) else Clip(item)
            return torch.from_numpy(load_audio(clip.path, target, start=clip.start, end=clip.end,
                                               clip_seconds=seconds, crop=self.crop))
        if isinstance(item, io.IOBase):  # a file's bytes (a chat message's input_audio)
            return torch.from_numpy(load_audio(item, target, clip_seconds=seconds, crop=self.crop, name="input_audio"))
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError("audio given as a tuple must be (array, sample_rate)")
            item, sample_rate = item
        if sample_rate is None:
            raise ValueError("audio given as an array needs its sample rate: pass sample_rate= or (array, rate)")
        if isinstance(item, torch.Tensor):
            item = item.detach().float().cpu().numpy()
        return torch.from_numpy(prepare_waveform(item, int(sample_rate), target, clip_seconds=seconds,
                                                 crop=self.crop))

    def _stack(self, waves: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, T) on the model's device, shorter clips zero-padded at the end."""
        out = torch.zeros(len(waves), max(len(w) for w in waves), dtype=torch.float32,
                          pin_memory=self.device.type == "cuda")
        for i, w in enumerate(waves):
            out[i, : len(w)] = w
        return out.to(self.device, non_blocking=True)

    def _batch(self, items: Sequence[AudioLike], sample_rate: int | None) -> torch.Tensor:
        return self._stack([self._waveform(it, sample_rate) for it in items])

    @staticmethod
    def _is_single(audio: Any) -> bool:
        return isinstance(audio, (str, Path, Clip, np.ndarray, torch.Tensor, tuple))

    @classmethod
    def _as_list(cls, audio: AudioLike | Sequence[AudioLike]) -> list[AudioLike]:
        return [audio] if cls._is_single(audio) else list(audio)

    @staticmethod
    def _key(item: AudioLike, sample_rate: int | None) -> Any:
        """Equal keys mean the same clip (encoded once)."""
        if isinstance(item, (str, Path)):
            return ("file", str(item), None, None)
        if isinstance(item, Clip):
            return ("file", str(item.path), item.start, item.end)
        if isinstance(item, tuple):
            return ("array", id(item[0]), item[1])
        return ("array", id(item), sample_rate)

    # ------------------------------------------------------------------ generation
    def decoding(self, **overrides: Any) -> Decoding:
        """The decoding settings a call would use: the recipe's [generate] table, then ``overrides``."""
        return Decoding.from_dict({**self.defaults, **overrides})

    def generate(self, audio: AudioLike | Sequence[AudioLike],
                 prompts: str | Sequence[str] | Sequence[Sequence[str]], *, sample_rate: int | None = None,
                 batch_size: int = 32, progress: bool | None = False, on_error: OnError = "raise",
                 **decoding: Any) -> list[Any]:
        """Text for each (clip, prompt) pair.

        - ``prompts`` a string: that prompt for every clip; one text per clip.
        - a list with one prompt per clip: one text per clip.
        - a list with one *list* of prompts per clip: a list of texts per clip.
        - one clip (not in a list) and a list of prompts: one text per prompt.

        ``decoding`` overrides the recipe's [generate] table: ``method``, ``beam_size``,
        ``max_new_tokens``, ``min_new_tokens``, ``length_penalty``, ``temperature``,
        ``top_k``, ``top_p``, ``no_repeat_ngram_size``, ``stop``, ``seed``, ``compat`` ...
        (every field of :class:`pengi_kit.decoding.Decoding`). ``batch_size`` is the number of
        (clip, prompt) rows decoded together (each holds ``beam_size`` beams). ``progress``:
        a labelled bar on standard error (``None``: only when it is a terminal).
        ``on_error``: ``"raise"`` (default), ``"skip"`` (a bad clip gives ``None``), or a
        function ``(item, error)`` called for each bad clip, which is then skipped.
        """
        single = self._is_single(audio)
        clips = self._as_list(audio)
        if isinstance(prompts, str):
            per_clip: list[list[str]] = [[prompts] for _ in clips]
            nested = False
        elif single:
            per_clip, nested = [list(prompts)], True
        else:
            prompts = list(prompts)
            if len(prompts) != len(clips):
                raise ValueError(f"{len(clips)} clips but {len(prompts)} prompts: give one prompt, "
                                 "one per clip, or a list of prompts per clip")
            nested = any(not isinstance(p, str) for p in prompts)
            per_clip = [[p] if isinstance(p, str) else list(p) for p in prompts]
        pairs = [(i, p) for i, ps in enumerate(per_clip) for p in ps]
        texts = [text for _, text in self.generate_pairs(clips, pairs, sample_rate=sample_rate,
                                                          batch_size=batch_size, progress=progress,
                                                          on_error=on_error, **decoding)]
        if not nested:
            return texts
        out, at = [], 0
        for ps in per_clip:
            out.append(texts[at: at + len(ps)])
            at += len(ps)
        return out[0] if single else out

    def generate_pairs(self, clips: Sequence[AudioLike], pairs: Sequence[tuple[int, str]], *,
                       sample_rate: int | None = None, batch_size: int = 32, progress: bool | None = False,
                       on_error: OnError = "raise", **decoding: Any) -> Iterator[tuple[int, str | None]]:
        """Yield ``(pair index, text)`` in order for ``pairs`` of (index into ``clips``, prompt).

        Streams: results come batch by batch. Clips that several pairs share (or that
        appear several times in ``clips``) are loaded and encoded once.
        """
        from pengi_kit.progress import bar as progress_bar

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cfg = self.decoding(**decoding)
        handle = self._error_handler(on_error)
        unique: dict[Any, int] = {}
        clip_of = [unique.setdefault(self._key(clips[c], sample_rate), len(unique)) for c, _ in pairs]
        first_item: dict[int, AudioLike] = {}
        for (c, _), u in zip(pairs, clip_of):
            first_item.setdefault(u, clips[c])
        rows_of: dict[int, list[int]] = {}
        for row, u in enumerate(clip_of):
            rows_of.setdefault(u, []).append(row)
        order = list(range(len(unique)))
        chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        results: dict[int, str | None] = {}
        prompt_cache: dict[str, torch.Tensor] = {}  # per call: weights may change between calls
        emitted = 0
        bar = progress_bar(len(pairs), "generating", "text", enabled=progress)
        with ThreadPoolExecutor(max(1, self.num_workers)) as pool:
            def submit(chunk: list[int]) -> list[Any]:
                return [pool.submit(self._waveform, first_item[u], sample_rate) for u in chunk]

            pending = submit(chunks[0]) if chunks else []
            for n, chunk in enumerate(chunks):
                loading, pending = pending, (submit(chunks[n + 1]) if n + 1 < len(chunks) else [])
                good, waves = [], []
                for u, future in zip(chunk, loading):
                    try:
                        waves.append(future.result())
                        good.append(u)
                    except Exception as exc:  # noqa: BLE001 - reported or re-raised by the handler
                        handle(first_item[u], exc)
                        for row in rows_of[u]:
                            results[row] = None
                        bar.update(len(rows_of[u]))
                if good:
                    rows = [row for u in good for row in rows_of[u]]
                    with torch.inference_mode():  # not across the yield below: that is the caller's time
                        audio_prefix = self._audio_prefix(waves)
                        slot = {u: i for i, u in enumerate(good)}
                        for start in range(0, len(rows), batch_size):
                            part = rows[start: start + batch_size]
                            index = torch.tensor([slot[clip_of[r]] for r in part], device=self.device)
                            prompt_prefix = self._prompt_prefix([pairs[r][1] for r in part], cfg.compat, batch_size,
                                                               prompt_cache)
                            prefix = self.model.join_prefix(take_rows(audio_prefix, index), prompt_prefix)
                            for r, text in zip(part, self._decode(prefix, cfg)):
                                results[r] = text
                            bar.update(len(part))
                while emitted in results:
                    yield emitted, results.pop(emitted)
                    emitted += 1
        bar.close()

    def _error_handler(self, on_error: OnError) -> Callable[[Any, Exception], None]:
        if callable(on_error):
            return on_error
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise', 'skip' or a function, got {on_error!r}")

        def handle(item: Any, exc: Exception) -> None:
            if on_error == "raise":
                raise exc

        return handle

    def _prompt_prefix(self, prompts: list[str], compat: str, batch_size: int,
                       cache: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Prompt prefixes (B, k, D), each distinct prompt computed once and kept in ``cache``; without a
        prompt branch, the model's own (None, or the chat layout's prompts)."""
        if self.model.text_mapper is None:
            return self.model.prompt_prefix(prompts, compat)
        missing = list(dict.fromkeys(p for p in prompts if p not in cache))
        if len(cache) + len(missing) > _TEXT_PREFIX_CACHE:
            cache.clear()
            missing = list(dict.fromkeys(prompts))
        for start in range(0, len(missing), batch_size):
            part = missing[start: start + batch_size]
            cache.update(zip(part, self.model.prompt_prefix(part, compat)))
        return torch.stack([cache[p] for p in prompts])

    def _decode(self, prefix: Prefix, cfg: Decoding) -> list[str]:
        """Generated texts (:meth:`texts`) of a batch of prefixes."""
        embeds, mask = split_prefix(prefix)
        # the reference keeps the stop id (GPT-2: a trailing space) in its text
        return self.texts(decode(self.model.lm, embeds, cfg, prefix_mask=mask,
                                 keep_stop=cfg.compat == "pengi" and not cfg.stop), cfg)

    def texts(self, rows: Sequence[Sequence[int]], cfg: Decoding) -> list[str]:
        """The texts of generated token ids: tidied (special tokens dropped, ends stripped), or with
        ``compat="pengi"`` exactly the reference wrapper's strings (:func:`reference_text`)."""
        tok = self.model.lm.tokenizer
        if cfg.compat == "pengi":
            texts = [cut_at_stop(reference_text(tok, list(row)), cfg.stop) for row in rows]
        else:
            texts = [cut_at_stop(t, cfg.stop).strip() for t in tok.batch_decode(rows, skip_special_tokens=True)]
        return [t.capitalize() for t in texts] if cfg.capitalize else texts

    def chat(self, conversation: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]], *,
             sample_rate: int | None = None, batch_size: int = 32, **decoding: Any) -> str | list[str]:
        """The assistant's next answer to a conversation, or to each of a list of them, from a
        model of the chat layout (``model.layout = "chat"``).

        A conversation is a list of messages ``{"role": "system" | "user" | "assistant",
        "content": ...}``; a content is a string, or a list of parts: ``{"type": "text", "text":
        ...}``, ``{"type": "audio", "audio": <path, Clip, array or (array, rate)>}`` and OpenAI's
        ``{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"}}``. Clips go
        where their parts stand, as many as a turn holds. ``decoding`` as for :meth:`generate`;
        rows of different lengths decode together (``batch_size`` conversations at a time)::

            pengi.chat([{"role": "user", "content": [{"type": "audio", "audio": "a.wav"},
                                                      {"type": "audio", "audio": "b.wav"},
                                                      {"type": "text", "text": "which one is louder?"}]}])
        """
        if self.model.layout != "chat":
            raise PengiKitError("this model answers a clip and a prompt (Pengi's prefix layout), not a conversation: "
                                "use generate(), or train a model with model.layout = \"chat\"")
        single = bool(conversation) and isinstance(conversation[0], dict)
        conversations = [conversation] if single else list(conversation)
        cfg = self.decoding(**decoding)
        texts: list[str] = []
        with ThreadPoolExecutor(max(1, self.num_workers)) as pool:
            for start in range(0, len(conversations), batch_size):
                chunk = [_chat_messages(c) for c in conversations[start:start + batch_size]]
                clips = [clip for _, conv_clips in chunk for clip in conv_clips]
                waves = list(pool.map(lambda item: self._waveform(item, sample_rate), clips))
                with torch.inference_mode():
                    tokens = self._audio_prefix(waves) if waves else torch.zeros(0, 1, 1, device=self.device)
                    texts += self._decode(self.model.chat_prefix(tokens, [m for m, _ in chunk]), cfg)
        return texts[0] if single else texts

    def describe(self, audio: AudioLike | Sequence[AudioLike], **kwargs: Any) -> Any:
        """Caption, metadata and sound events, asked with the reference ``describe`` prompts.

        Returns a dict per clip (a list of them for a list of clips) with ``caption``,
        ``metadata``, ``sound_events`` and ``summary``, the reference's one-string
        description ``"<caption> <metadata> this audio contains sound events: <events>."``.
        Each clip is encoded once for the three prompts. ``kwargs`` as for
        :meth:`generate`; with ``on_error="skip"`` a bad clip gives ``None``.
        """
        clips = self._as_list(audio)
        out = [row for _, row in self.iter_describe(clips, **kwargs)]
        return out[0] if self._is_single(audio) else out

    def iter_describe(self, clips: Sequence[AudioLike], **kwargs: Any) -> Iterator[tuple[int, dict[str, str] | None]]:
        """Yield ``(clip index, description or None)`` in order, batch by batch (see :meth:`describe`)."""
        from dataclasses import fields

        prompts = list(DESCRIBE_PROMPTS.values())
        pairs = [(i, p) for i in range(len(clips)) for p in prompts]
        names = {f.name for f in fields(Decoding)}
        compat = self.decoding(**{k: v for k, v in kwargs.items() if k in names}).compat
        row: list[str | None] = []
        for index, text in self.generate_pairs(clips, pairs, **kwargs):
            row.append(text)
            if len(row) < len(prompts):
                continue
            item = None
            if all(t is not None for t in row):
                item = dict(zip(DESCRIBE_PROMPTS, row))
                if compat == "pengi":  # the reference's exact concatenation of its untrimmed texts
                    item["summary"] = (item["caption"] + item["metadata"] + "this audio contains sound events: "
                                       + item["sound_events"][:-1] + ".")
                else:
                    item["summary"] = (f"{item['caption']} {item['metadata']} "
                                       f"this audio contains sound events: {item['sound_events']}.")
            yield index // len(prompts), item
            row = []

    # ------------------------------------------------------------------ embeddings
    def _load(self, pool: ThreadPoolExecutor, items: Sequence[AudioLike], sample_rate: int | None,
              handle: Callable[[Any, Exception], None]) -> tuple[list[int], list[torch.Tensor]]:
        """Load ``items`` in ``pool``: the positions that loaded and their waveforms; each one
        that fails goes to ``handle``."""
        futures = [pool.submit(self._waveform, item, sample_rate) for item in items]
        good, waves = [], []
        for i, (item, future) in enumerate(zip(items, futures)):
            try:
                waves.append(future.result())
                good.append(i)
            except Exception as exc:  # noqa: BLE001 - reported or re-raised by the handler
                handle(item, exc)
        return good, waves

    def _audio_prefix(self, waves: Sequence[torch.Tensor]) -> Prefix:
        """The audio half of the prefix of each clip (zero-padded together; a frame encoder keeps
        each clip's own frames)."""
        return self.model.audio_prefix(self._stack(waves), self._lengths(waves))

    def _lengths(self, waves: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.tensor([len(w) for w in waves], device=self.device)

    def embed_audio(self, audio: AudioLike | Sequence[AudioLike], *, sample_rate: int | None = None,
                    batch_size: int = 32, progress: bool | None = False, projected: bool = True,
                    on_error: OnError = "raise") -> torch.Tensor:
        """Projected (and, per the recipe, L2-normalised) audio embeddings (N, d_proj);
        with ``projected=False`` the audio encoder's own embeddings (N, embed_dim).
        ``on_error`` as for :meth:`generate`; a skipped clip's row is NaN."""
        from pengi_kit.progress import bar as progress_bar

        clips = self._as_list(audio)
        handle = self._error_handler(on_error)
        embed = self.model.embed_audio if projected else self.model.encode_clips
        out = torch.full((len(clips), self._audio_width(projected)), float("nan"))
        bar = progress_bar(len(clips), "embedding audio", "clip", enabled=progress)
        with ThreadPoolExecutor(max(1, self.num_workers)) as pool, torch.inference_mode():
            for i in range(0, len(clips), batch_size):
                good, waves = self._load(pool, clips[i:i + batch_size], sample_rate, handle)
                if good:
                    out[[i + g for g in good]] = embed(self._stack(waves), self._lengths(waves)).float().cpu()
                bar.update(len(clips[i:i + batch_size]))
        bar.close()
        return out

    def _audio_width(self, projected: bool) -> int:
        return self.model.audio_projection.linear2.out_features if projected else self.model.audio_encoder.embed_dim

    def log_likelihood(self, audio: AudioLike | Sequence[AudioLike], prompt: str | Sequence[str],
                       texts: Sequence[str] | Sequence[Sequence[str]], *, sample_rate: int | None = None,
                       batch_size: int = 64, progress: bool | None = False, on_error: OnError = "raise",
                       reduction: str = "mean") -> torch.Tensor | list[torch.Tensor]:
        """How likely the model finds each of ``texts`` as the answer to ``prompt`` about each
        clip: the mean log-probability per token (end-of-text included), or with
        ``reduction="sum"`` the summed log-probability of the whole answer.

        ``prompt``: one for every clip, or one per clip. ``texts``: the same candidates for every
        clip, giving a tensor (clips, texts); or a list of candidates per clip (the choices of
        each multiple-choice item), giving a list of 1-D tensors. Ranks class names for
        zero-shot classification and captions for retrieval without a text encoder.

        Each clip's prefix runs once and its candidates are scored over copies of its KV cache
        (:func:`pengi_kit.generation.score`); ``batch_size`` counts the candidates run through
        the LM together. ``on_error`` as for :meth:`generate`; a skipped clip's scores are NaN.
        """
        from pengi_kit.progress import bar as progress_bar

        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        clips = self._as_list(audio)
        shared = all(isinstance(t, str) for t in texts)
        candidates = [list(texts)] * len(clips) if shared else [list(t) for t in texts]
        prompts = [prompt] * len(clips) if isinstance(prompt, str) else list(prompt)
        for what, given in (("prompts", prompts), ("lists of texts", candidates)):
            if len(given) != len(clips):
                raise ValueError(f"{len(clips)} clips but {len(given)} {what}: give one for all clips or one per clip")
        distinct = list(dict.fromkeys(t for c in candidates for t in c))
        target = self.model.tokenize_targets(distinct) if distinct else {"attention_mask": torch.zeros(0, 1)}
        ids = {t: row[: int(n)].tolist() for t, row, n in zip(distinct, target["input_ids"],
                                                                target["attention_mask"].sum(1))}
        out = [torch.full((len(c),), float("nan")) for c in candidates]
        handle = self._error_handler(on_error)
        bar = progress_bar(sum(map(len, candidates)), "scoring texts", "pair", enabled=progress)
        cache: dict[str, torch.Tensor] = {}
        with ThreadPoolExecutor(max(1, self.num_workers)) as pool, torch.inference_mode():
            for c0 in range(0, len(clips), batch_size):  # batch_size clips, then their candidates in groups
                part = range(c0, min(c0 + batch_size, len(clips)))
                keys = [self._key(clips[c], sample_rate) for c in part]  # a clip asked several times loads once
                distinct = list(dict.fromkeys(keys))
                loaded, waves = self._load(pool, [clips[c0 + keys.index(k)] for k in distinct], sample_rate, handle)
                slot = {distinct[d]: n for n, d in enumerate(loaded)}
                good = [g for g, k in enumerate(keys) if k in slot]
                bar.update(sum(len(candidates[c0 + g]) for g in range(len(part)) if g not in good))
                if not good:
                    continue
                rows = [c0 + g for g in good]
                audio = take_rows(self._audio_prefix(waves),
                                  torch.tensor([slot[keys[g]] for g in good], device=self.device))
                prefix = self.model.join_prefix(audio,
                                                self._prompt_prefix([prompts[c] for c in rows], "none", batch_size,
                                                                    cache))
                # groups of at most batch_size candidates; a clip with more is scored in several
                groups: list[list[tuple[int, int]]] = []
                size = 0
                for i, c in enumerate(rows):
                    for t0 in range(0, len(candidates[c]), batch_size):
                        n = len(candidates[c][t0:t0 + batch_size])
                        if groups and size + n <= batch_size:
                            groups[-1].append((i, t0))
                            size += n
                        else:
                            groups.append([(i, t0)])
                            size = n
                for group in groups:
                    index = torch.tensor([i for i, _ in group], device=self.device)
                    seqs = [[ids[t] for t in candidates[rows[i]][t0:t0 + batch_size]] for i, t0 in group]
                    embeds, mask = split_prefix(take_rows(prefix, index))
                    for (i, t0), sums, seq in zip(group, score(self.model.lm, embeds, seqs, prefix_mask=mask), seqs):
                        lengths = torch.tensor([len(x) if reduction == "mean" else 1 for x in seq],
                                               dtype=torch.float64)
                        out[rows[i]][t0:t0 + len(seq)] = (sums / lengths).float()
                    bar.update(sum(map(len, seqs)))
        bar.close()
        return torch.stack(out) if shared and out else out

    def listening(self, audio: AudioLike | Sequence[AudioLike], rows: Sequence[tuple[int, str, str]], *,
                  sample_rate: int | None = None, batch_size: int = 32, progress: bool | None = False,
                  on_error: OnError = "raise", seed: int = 0) -> dict[str, float]:
        """The listening check (:mod:`pengi_kit.models.listening`, docs/training.md) on ``audio``'s
        clips: ``rows`` are (clip index, prompt, reference text). Each row's reference is scored
        with its own clip and with the clip of a partner row of another clip (a random pairing
        drawn from ``seed``; rows of one clip are never paired). Returns ``listening`` (how much
        less likely the references become with the other audio, in nats per answer, end-of-text
        included; about 0 when the model ignores its audio, at least about ln K for a model that
        tells K balanced classes apart), ``listening_per_token``, ``listening_differing`` (over
        the pairs whose answers differ), ``loss`` and ``loss_shuffled`` (nats per token), and the
        ``clips``, ``answers`` and ``tokens`` counted. Needs two readable clips; ``on_error`` as
        for :meth:`generate` (a skipped clip's rows are left out)."""
        clips = self._as_list(audio)
        handle = self._error_handler(on_error)
        prefixes: dict[int, torch.Tensor] = {}
        with ThreadPoolExecutor(max(1, self.num_workers)) as pool, torch.inference_mode():
            for i in range(0, len(clips), batch_size):
                good, waves = self._load(pool, clips[i:i + batch_size], sample_rate, handle)
                if good:
                    for g, prefix in zip(good, prefix_rows(self._audio_prefix(waves))):
                        prefixes[i + g] = prefix
            if len(prefixes) < 2:
                raise ValueError("the listening check needs two readable clips or more")
            kept = [r for r in rows if r[0] in prefixes]
            index = partners([self._key(clips[c], sample_rate) for c, _, _ in kept], seed)
            if min(index, default=-1) < 0:
                raise ValueError("the listening check needs rows of two clips or more")
            partner = [kept[p] for p in index]
            sums: dict[str, torch.Tensor] = {}
            for r0 in range(0, len(kept), batch_size):
                chunk, others = kept[r0:r0 + batch_size], partner[r0:r0 + batch_size]
                target = self.model.tokenize_targets([text for _, _, text in chunk])
                ids, mask = target["input_ids"].to(self.device), target["attention_mask"].to(self.device)
                text_prefix = self.model.prompt_prefix([prompt for _, prompt, _ in chunk])
                own, tokens = self.model.reference_nll(stack_rows([prefixes[c] for c, _, _ in chunk]), text_prefix,
                                                       ids, mask)
                swapped, _ = self.model.reference_nll(stack_rows([prefixes[c] for c, _, _ in others]), text_prefix,
                                                      ids, mask)
                differ = torch.tensor([text != other for (_, _, text), (_, _, other) in zip(chunk, others)],
                                      device=own.device)
                part = listening_sums(own, swapped, tokens, torch.ones_like(differ), differ)
                sums = {k: sums[k] + v.cpu() if k in sums else v.cpu() for k, v in part.items()}

        def mean(name: str) -> float:
            total, count = sums[name].tolist()
            return total / count if count else float("nan")

        shuffled, gain = mean("valid_loss_shuffled"), mean("listening_per_token")  # per token, both
        return {"listening": mean("listening"), "listening_per_token": gain,
                "listening_differing": mean("listening_differing"), "loss": shuffled - gain,
                "loss_shuffled": shuffled, "clips": len(prefixes), "answers": len(kept),
                "tokens": int(sums["listening_per_token"][1])}

    def embed_text(self, texts: str | Iterable[str], *, batch_size: int = 256,
                   progress: bool | None = False) -> torch.Tensor:
        """Projected (and, per the recipe, L2-normalised) text embeddings (N, d_proj); needs a text encoder."""
        from pengi_kit.progress import bar as progress_bar

        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        bar = progress_bar(len(texts), "embedding texts", "text", enabled=progress)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                out.append(self._embed_texts(texts[i:i + batch_size]))
                bar.update(len(texts[i:i + batch_size]))
        bar.close()
        return torch.cat(out)

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.model.tokenize_prompts(texts)
        return self.model.embed_text(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))


class Clap(Pengi):
    """A CLAP model: a folder written by ``pengi-kit import laion-clap|ms-clap`` or by contrastive
    pretraining (docs/pretraining.md), or a checkpoint of a contrastive run. It embeds clips and
    texts in one space (:meth:`embed_audio`, :meth:`embed_text`: retrieval, zero-shot
    classification, the linear probe) but generates no text: those calls raise one line."""

    generates = False

    def _audio_width(self, projected: bool) -> int:
        return self.model.projection_dim if projected else self.model.audio_encoder.embed_dim

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.embed_text(texts)

    def _refuse(self, what: str) -> Any:
        raise PengiKitError(f"{what}: a CLAP model embeds audio and text but generates no text; evaluate it with "
                            "--task retrieval, classification or linear-probe, or plug its encoders into a Pengi "
                            "recipe (usage.toml)")

    def generate_pairs(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("generate")

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("chat")

    def log_likelihood(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("log-likelihood scoring")

    def listening(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("the listening check (of a model that answers from audio and a prompt)")


def _chat_messages(conversation: Sequence[dict[str, Any]]) -> tuple[list[dict[str, str]], list[Any]]:
    """A conversation of :meth:`Pengi.chat` as the chat layout reads it
    (:func:`pengi_kit.data.conversations.api_messages`), a clip held as its bytes opened as a file."""
    from pengi_kit.data.conversations import InlineAudio, _Bad, api_messages

    try:
        messages, clips = api_messages(list(conversation))
    except _Bad as bad:  # the format checks' one line
        raise ValueError(str(bad)) from None
    return messages, [io.BytesIO(c.data) if isinstance(c, InlineAudio) else c for c in clips]


def load(path: str | Path, device: str | torch.device = "cpu", num_workers: int | None = None) -> Pengi:
    """Load a checkpoint directory (or a run directory, or an imported folder) for inference.

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... or ``"auto"``. ``num_workers``:
    threads that load and resample audio while the model runs (default: up to 4).
    A CLAP folder or a contrastive run gives a :class:`Clap`, which embeds but does not generate.
    """
    model = load_model(path, device)
    if isinstance(model, PengiModel):
        return Pengi(model, num_workers=num_workers)
    if hasattr(model, "embed_text"):  # a CLAP model (pengi_kit.models.clap, imported only for one)
        return Clap(model, num_workers=num_workers)
    raise PengiKitError(f"{path}: a checkpoint of an audio tagger, which neither generates nor embeds text; "
                        "its encoder is for Pengi: the run's encoder/ folder (written after training, or by "
                        "`pengi-kit export`) is what a recipe's [model.audio_encoder] pretrained names")
