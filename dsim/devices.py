"""Torch devices (DESIGN §11): the ``device`` option of the engine and of training.

Every tensor dsim creates takes its device from its inputs (``device=x.device``, ``x.new_zeros``, ...);
random draws use CPU generators and are moved afterwards, so a seed gives the same numbers on every
device.  This module only resolves the option and compares devices.
"""

from __future__ import annotations

import torch

#: allowed values of ``engine.device`` / ``train.device``
DEVICES = ("cpu", "cuda", "auto")


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """``'cpu'`` | ``'cuda'`` | ``'cuda:<i>'`` | ``'auto'`` (cuda when available, else cpu) -> a torch device;
    None -> cpu.  ``'cuda'`` without CUDA is a ``RuntimeError`` saying so."""
    if spec is None:
        return torch.device("cpu")
    if isinstance(spec, str) and spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(spec)!r} asked for, but CUDA is not available here (torch "
                           f"{torch.__version__}); use device: cpu or auto")
    return dev


def same_device(have: torch.device, want: torch.device | str) -> bool:
    """Whether a tensor on ``have`` is already on ``want`` (``'cuda'`` without an index matches any GPU)."""
    want = torch.device(want)
    return have.type == want.type and (want.index is None or have.index == want.index)
