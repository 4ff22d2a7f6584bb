"""A frozen audio encoder's outputs kept on disk (``train.encoder_cache``): later epochs and
validations load them instead of running the encoder again.

One file per clip, named by a hash of the clip's samples (exactly what the encoder is given, so
a changed file, segment, rate or crop is another entry) in a folder named by a hash of the
encoder's weights (changed weights: another folder, the old entries are never read). A frame
encoder's entry is the clip's kept frames; another encoder's, its embedding. Clips that vary
every epoch (``[data.augment]``) would never be read again, so a recipe cannot ask for both.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["EncoderCache"]


def _weights_digest(module: nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EncoderCache:
    """``cache(audio, lengths)``: what ``encoder`` gives for the batch, each clip's entry read from
    ``folder`` when there and written when not. ``hits`` and ``misses`` count clips."""

    def __init__(self, folder: str | Path, encoder: nn.Module) -> None:
        self.encoder, self.frames = encoder, bool(getattr(encoder, "frames", False))
        self.folder = Path(folder) / _weights_digest(encoder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, clip: torch.Tensor) -> Path:
        samples = clip.detach().float().cpu().contiguous().numpy().tobytes()
        return self.folder / f"{hashlib.blake2b(samples, digest_size=16).hexdigest()}.pt"

    def _write(self, path: Path, value: torch.Tensor) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(fd)
        torch.save(value.detach().cpu().clone(), tmp)
        os.replace(tmp, path)  # whole or absent: a killed run leaves no half entry

    def __call__(self, audio: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        sizes = [audio.shape[1]] * len(audio) if lengths is None else [int(n) for n in lengths]
        paths = [self._path(row[:n]) for row, n in zip(audio, sizes)]
        rows: list[torch.Tensor | None] = [None] * len(paths)
        for i, path in enumerate(paths):
            if path.is_file():
                try:
                    rows[i] = torch.load(path, map_location=audio.device, weights_only=True)
                except Exception:  # noqa: BLE001 - an unreadable entry is computed and written again
                    rows[i] = None
        first = {path: i for i, path in reversed(list(enumerate(paths)))}  # a clip twice in a batch: once
        missing = [i for path, i in first.items() if rows[i] is None]
        self.hits, self.misses = self.hits + len(rows) - len(missing), self.misses + len(missing)
        if missing:
            index = torch.tensor(missing, device=audio.device)
            with torch.no_grad():
                if self.frames:
                    frames, mask = self.encoder(audio[index], None if lengths is None else lengths[index])
                    computed = [f[m.bool()] for f, m in zip(frames, mask)]
                else:
                    computed = list(self.encoder(audio[index]))
            done = {}
            for i, value in zip(missing, computed):
                self._write(paths[i], value)
                done[paths[i]] = value
            rows = [done.get(path, row) if row is None else row for path, row in zip(paths, rows)]
        if not self.frames:
            return torch.stack(rows)
        width = max(len(r) for r in rows)
        frames = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=frames.device)
        for i, r in enumerate(rows):
            frames[i, :len(r)], mask[i, :len(r)] = r, True
        return frames, mask
