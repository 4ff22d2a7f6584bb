"""The Python API: load a checkpoint and generate, describe or embed.

>>> import pengi_kit
>>> pengi = pengi_kit.load("runs/demo")                       # doctest: +SKIP
>>> pengi.generate(["clip.wav"], "generate audio caption")    # doctest: +SKIP
['two high tones followed by a noise burst']
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch

from pengi_kit.generation import Decoding, cut_at_stop, generate
from pengi_kit.model import PengiModel, build_model

AudioLike = Union[str, Path, np.ndarray, torch.Tensor, tuple]

DESCRIBE_PROMPTS = {  # the reference wrapper's describe()
    "caption": "generate audio caption",
    "metadata": "generate metadata",
    "sound_events": "this is a sound of",
}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> PengiModel:
    """A ``PengiModel`` from a checkpoint directory or a run directory (its newest intact checkpoint)."""
    from pengi_kit.engine import checkpoint as ckpt
    from pengi_kit.recipe import from_dict
    from pengi_kit.sources import resolve_relative

    path = ckpt.resolve(path)
    meta = ckpt.verify(path)
    # sources inside the checkpoint (an importer's lm/, text_encoder/) are relative to it
    model = build_model(from_dict(resolve_relative(ckpt.read_recipe(path), path)))
    ckpt.load_weights(model, path, meta.get("referenced", []))
    return model.to(device).eval()


class Pengi:
    """A loaded model with the everyday calls. Use :func:`load` to make one."""

    def __init__(self, model: PengiModel) -> None:
        self.model = model
        recipe = model.recipe or {}
        self.defaults = dict(recipe.get("generate", {}))
        self.crop = recipe.get("data", {}).get("eval_crop", "start")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs
    def _waveform(self, item: AudioLike, sample_rate: int | None) -> np.ndarray:
        from pengi_kit.data.audio import fit_length, load_audio

        target = self.model.sample_rate
        if isinstance(item, (str, Path)):
            wav = load_audio(item, target)
        else:
            if isinstance(item, tuple):
                item, sample_rate = item
            wav = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            wav = wav.astype(np.float32)
            if wav.ndim == 2:
                wav = wav.mean(axis=0 if wav.shape[0] < wav.shape[1] else 1)
            if sample_rate is None:
                raise ValueError("audio given as an array needs its sample rate: pass sample_rate= or (array, rate)")
            if sample_rate != target:
                import soxr

                wav = soxr.resample(wav, sample_rate, target).astype(np.float32)
        if self.model.clip_seconds:
            wav = fit_length(wav, int(round(self.model.clip_seconds * target)), self.crop)
        return wav

    def _batch(self, items: Sequence[AudioLike], sample_rate: int | None) -> torch.Tensor:
        waves = [self._waveform(it, sample_rate) for it in items]
        out = np.zeros((len(waves), max(len(w) for w in waves)), dtype=np.float32)
        for i, w in enumerate(waves):
            out[i, : len(w)] = w
        return torch.from_numpy(out).to(self.device)

    @staticmethod
    def _as_list(audio: AudioLike | Sequence[AudioLike]) -> list[AudioLike]:
        if isinstance(audio, (str, Path, np.ndarray, torch.Tensor, tuple)):
            return [audio]
        return list(audio)

    # ------------------------------------------------------------------ calls
    @torch.no_grad()
    def generate(self, audio: AudioLike | Sequence[AudioLike], prompts: str | Sequence[str],
                 *, sample_rate: int | None = None, batch_size: int = 32, progress: bool = False,
                 **decoding: Any) -> list[str]:
        """One text per (clip, prompt) pair: a single prompt applies to every clip.

        ``decoding`` overrides the recipe's [generate] table: ``method``, ``beam_size``,
        ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed`` ...
        """
        from tqdm.auto import tqdm

        clips = self._as_list(audio)
        prompts = [prompts] * len(clips) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(clips):
            raise ValueError(f"{len(clips)} clips but {len(prompts)} prompts: give one prompt, or one per clip")
        cfg = Decoding.from_dict({**self.defaults, **decoding})
        tok = self.model.lm.tokenizer
        texts: list[str] = []
        starts = range(0, len(clips), batch_size)
        for start in tqdm(starts, disable=not progress, unit="batch"):
            chunk = slice(start, start + batch_size)
            tokens = self.model.tokenize_prompts(prompts[chunk])
            prefix = self.model.prefix(self._batch(clips[chunk], sample_rate),
                                       tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))
            for ids in generate(self.model.lm, prefix, cfg):
                texts.append(cut_at_stop(tok.decode(ids, skip_special_tokens=True), cfg.stop).strip())
        return texts

    def describe(self, audio: AudioLike | Sequence[AudioLike], **kwargs: Any) -> list[dict[str, str]]:
        """Caption, metadata and sound events for each clip, as the reference ``describe`` does."""
        clips = self._as_list(audio)
        out: list[dict[str, str]] = [{} for _ in clips]
        for key, prompt in DESCRIBE_PROMPTS.items():
            for row, text in zip(out, self.generate(clips, prompt, **kwargs)):
                row[key] = text
        return out

    @torch.no_grad()
    def embed_audio(self, audio: AudioLike | Sequence[AudioLike], *, sample_rate: int | None = None,
                    batch_size: int = 32) -> torch.Tensor:
        """Projected (and, per the recipe, L2-normalised) audio embeddings (N, d_proj)."""
        clips = self._as_list(audio)
        return torch.cat([self.model.embed_audio(self._batch(clips[i:i + batch_size], sample_rate))
                          for i in range(0, len(clips), batch_size)])

    @torch.no_grad()
    def embed_text(self, texts: str | Iterable[str]) -> torch.Tensor:
        """Projected text embeddings (N, d_proj); needs a model with a text encoder."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = self.model.tokenize_prompts(texts)
        return self.model.embed_text(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))


def load(path: str | Path, device: str | torch.device = "cpu") -> Pengi:
    """Load a checkpoint directory (or a run directory) for inference."""
    return Pengi(load_model(path, device))
