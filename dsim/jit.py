"""Opt-in ``torch.compile`` of an algorithm's hot pure tensor functions (``train.compile``).

An agents module marks the functions that carry its per-layer math (pure: tensors and constants in, tensors
out, no state) with :func:`compilable`.  Outside :func:`compiling` they are the plain eager functions; inside
``with compiling(True):`` each runs as ``torch.compile(fn, dynamic=False)``: TorchInductor fuses the broadcast
sums, products and concatenations of a layer and of its backward into a few generated kernels (C++/OpenMP on
the CPU, Triton on CUDA).  The math stays in one place, the decorated function; compilation changes only the
order of floating-point operations (results agree with eager to float rounding, not bit for bit).

Every distinct input shape, dtype and grad mode compiles once (static shapes: dynamic-shape kernels measured
slower here); the recompile limit is raised to :data:`RECOMPILE_LIMIT` while compiling so that the layers of
several widths, the training and the validation batch all stay compiled.  Compilation needs a C++ compiler on
the CPU (:func:`compile_unavailable` says why it cannot run).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

#: dynamo's per-function recompile limit while :func:`compiling` (its default, 8, is below the variants of a
#: deep model's layers x train/validation batch x grad mode)
RECOMPILE_LIMIT = 64

#: Inductor's own warnings while it compiles, not the user's to act on: complex views (Re/Im of the channel)
#: left to eager kernels, and a deprecation inside torch
QUIET = ("Torchinductor does not support code generation for complex operators",
         r"`torch._prims_common.check` is deprecated")

_ON = [False]


def enabled() -> bool:
    """True inside ``with compiling(True):``."""
    return _ON[0]


def compilable(fn: F) -> F:
    """Mark ``fn`` (a pure tensor function) to run compiled inside :func:`compiling`; eager otherwise.  The
    compiled version is made on first use; called from another compilable function it is traced into that one's
    graph; ``wrapper.eager`` is ``fn`` itself."""
    compiled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not _ON[0] or torch.compiler.is_compiling():  # eager, or traced inline into a compiled caller
            return fn(*args, **kwargs)
        if not compiled:
            compiled.append(torch.compile(fn, dynamic=False))
        return compiled[0](*args, **kwargs)

    call.eager = fn  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


@contextlib.contextmanager
def compiling(on: bool = True) -> Iterator[None]:
    """Run :func:`compilable` functions compiled (``on``) or eager inside the block; restores the previous
    mode and dynamo's recompile limit on exit."""
    cfg = torch._dynamo.config
    prev_on, prev_limit = _ON[0], cfg.recompile_limit
    _ON[0] = bool(on)
    if on:
        cfg.recompile_limit = max(prev_limit, RECOMPILE_LIMIT)
    try:
        with warnings.catch_warnings():
            for msg in QUIET:
                warnings.filterwarnings("ignore", message=msg)
            yield
    finally:
        _ON[0] = prev_on
        cfg.recompile_limit = prev_limit


def compile_unavailable(device: torch.device | str = "cpu") -> str | None:
    """None when ``torch.compile`` works on ``device`` (a two-operation function compiles and runs); else the
    first line of the reason (e.g. no C++ compiler, no Triton)."""
    try:
        f = torch.compile(lambda t: t * 2.0 + 1.0, dynamic=False)
        out = f(torch.ones(3, device=device))
        if not torch.equal(out.cpu(), torch.full((3,), 3.0)):
            return "a compiled test function gave a wrong result"
    except Exception as exc:  # noqa: BLE001 -- any backend failure means: not available
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    return None
