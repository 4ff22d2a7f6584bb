"""Which torch device a command runs on: one place that parses ``--device`` and says, in one
line, why a device is not usable (used by training and inference alike)."""
from __future__ import annotations

import torch

from pengi_kit.errors import PengiKitError


def resolve_device(device: str | torch.device | None, local_rank: int = 0,
                   world_size: int = 1) -> torch.device:
    """The device this process trains on, or a one-line PengiKitError for a device that does not
    parse or is not there (checked before a model is built or a process group joined).

    ``None`` or ``"auto"``: the GPU of the local rank when CUDA is available, else the CPU. With many
    processes each takes the GPU of its local rank, whatever index ``device`` names.
    """
    if device is None or device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)  # a torch.device passes through
    except (RuntimeError, ValueError, TypeError):
        raise PengiKitError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "" if torch.version.cuda else f" (this torch {torch.__version__} is built without CUDA)"
            raise PengiKitError(f"--device {device}: torch sees no CUDA GPU on this machine{build}; "
                                "use --device cpu")
        index = local_rank if world_size > 1 or dev.index is None else dev.index
        if index >= count:
            who = f"local rank {local_rank} needs" if world_size > 1 else f"--device {device} names"
            raise PengiKitError(f"{who} GPU {index}, but torch sees {count} GPU(s) (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    available = getattr(getattr(torch, dev.type, None), "is_available", None)
    if callable(available) and not available():
        raise PengiKitError(f"--device {device}: torch finds no {dev.type} device on this machine; use --device cpu")
    return dev
