"""The wire: how message payloads become bytes (msgpack) and what the receiver sees (DESIGN.md §4).

Wire policies: ``float64`` | ``float32`` (default) | ``float16`` | ``q<b>`` (uniform b-bit quantization,
2 <= b <= 16, of each message's reals between that message's min and max, which travel as two float32).

Every field travels as its reals (:meth:`dsim.protocol.Field.reals`): real tensors as they are, complex as
(re, im) pairs, Hermitian ``n x n`` matrices as ``n`` diagonal reals plus the ``n(n-1)`` reals of the
strict upper triangle.  One message (one edge, one realization) is encoded as a msgpack array with one
``bin`` per field; the ledger's ``bytes`` is the size of that encoding, which depends only on the fields'
shapes and the policy (:func:`message_nbytes`).  The Ray engine really ships the bytes (a bundle of the
messages per destination, each message its own blob, :func:`encode_bundle`); the local engine applies the
same numeric round trip (:func:`roundtrip`), so both engines see identical numbers.
"""

from __future__ import annotations

import re
from functools import lru_cache

import msgpack
import numpy as np
import torch

from dsim.protocol import Field

Tensor = torch.Tensor

_FLOAT = {"float64": np.float64, "float32": np.float32, "float16": np.float16}
_QUANT = re.compile(r"^q([2-9]|1[0-6])$")


def check_policy(policy: str) -> str:
    """Return ``policy`` if valid, else ``ValueError`` listing the allowed policies."""
    if policy in _FLOAT or _QUANT.match(policy):
        return policy
    raise ValueError(f"wire dtype {policy!r} not allowed; allowed: float64, float32, float16, q2 … q16")


def _qbits(policy: str) -> int | None:
    m = _QUANT.match(policy)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------- reals <-> tensors
def to_reals(x: Tensor, f: Field) -> Tensor:
    """Tensor ``(..., *f.shape)`` -> its reals ``(..., f.reals)`` (real dtype)."""
    lead = x.shape[: x.dim() - len(f.shape)]
    if f.kind == "real":
        return x.reshape(*lead, -1)
    if f.kind == "complex":
        return torch.view_as_real(x.contiguous()).reshape(*lead, -1)
    n = f.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    diag = torch.diagonal(x, dim1=-2, dim2=-1).real
    up = x[..., iu[0], iu[1]]
    return torch.cat([diag, up.real, up.imag], dim=-1)


def from_reals(r: Tensor, f: Field, complex_dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`to_reals`: reals ``(..., f.reals)`` -> tensor ``(..., *f.shape)``."""
    lead = r.shape[:-1]
    if f.kind == "real":
        return r.reshape(*lead, *f.shape)
    if f.kind == "complex":
        c = torch.complex(r[..., 0::2], r[..., 1::2]).to(complex_dtype)
        return c.reshape(*lead, *f.shape)
    n = f.shape[0]
    m = n * (n - 1) // 2
    iu = torch.triu_indices(n, n, offset=1, device=r.device)
    out = torch.zeros(*lead, n, n, dtype=complex_dtype, device=r.device)
    idx = torch.arange(n, device=r.device)
    out[..., idx, idx] = r[..., :n].to(complex_dtype)
    up = torch.complex(r[..., n : n + m], r[..., n + m :]).to(complex_dtype)
    out[..., iu[0], iu[1]] = up
    out[..., iu[1], iu[0]] = up.conj()
    return out


# ----------------------------------------------------------------------------- numeric round trip
def _quantize(r: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-message uniform quantization of reals ``(..., R)`` -> (codes int64, lo f32, hi f32)."""
    lo = r.amin(dim=-1, keepdim=True).to(torch.float32)
    hi = r.amax(dim=-1, keepdim=True).to(torch.float32)
    levels = (1 << bits) - 1
    span = (hi - lo).to(r.dtype)
    scale = torch.where(span > 0, levels / span, torch.zeros_like(span))
    codes = torch.round((r - lo.to(r.dtype)) * scale).clamp_(0, levels).to(torch.int64)
    return codes, lo, hi


def _dequantize(codes: Tensor, lo: Tensor, hi: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    levels = (1 << bits) - 1
    return lo.to(dtype) + codes.to(dtype) * ((hi - lo).to(dtype) / levels)


def roundtrip_reals(r: Tensor, policy: str) -> Tensor:
    """What the receiver sees of reals ``(..., R)`` (one message per leading index) under ``policy``."""
    bits = _qbits(policy)
    if bits is not None:
        codes, lo, hi = _quantize(r, bits)
        return _dequantize(codes, lo, hi, bits, r.dtype)
    if policy == "float64" and r.dtype == torch.float64:
        return r
    return _round_to(r, _TORCH_FLOAT[policy]).to(r.dtype)


_TORCH_FLOAT = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16}


def _round_to(r: Tensor, dtype: torch.dtype) -> Tensor:
    """``r`` rounded to ``dtype`` exactly as numpy's ``astype`` does (round to nearest even, once), on any
    device.  torch casts float64 -> float16 through float32, which rounds twice (a float64 just above a
    float16 tie becomes the tie in float32, then goes to even); the float32 step is therefore rounded to
    odd (truncated, lowest bit set when inexact), with which the second rounding is exact (13 spare bits)."""
    if not (r.dtype == torch.float64 and dtype == torch.float16):
        return r.to(dtype)
    f = r.to(torch.float32)
    wide = f.to(torch.float64)
    inexact = wide != r
    f = torch.where(inexact & (wide.abs() > r.abs()), torch.nextafter(f, torch.zeros_like(f)), f)
    odd = (f.view(torch.int32) | 1).view(torch.float32)
    return torch.where(inexact & torch.isfinite(r), odd, f).to(torch.float16)


def roundtrip(payload: dict[str, Tensor], fields: tuple[Field, ...], policy: str) -> dict[str, Tensor]:
    """Payload ``{field: (B, E, *shape)}`` as the receiver sees it after the wire (local engine)."""
    out = {}
    for f in fields:
        x = payload[f.name]
        if policy == "float64" and f.kind != "hermitian" and x.dtype in (torch.float64, torch.complex128):
            out[f.name] = x
            continue
        r = to_reals(x, f)
        out[f.name] = from_reals(roundtrip_reals(r, policy), f, x.dtype if x.is_complex() else _cplx(x.dtype))
        if not x.is_complex():
            out[f.name] = out[f.name].to(x.dtype)
    return out


def _cplx(real: torch.dtype) -> torch.dtype:
    return torch.complex128 if real == torch.float64 else torch.complex64


# ----------------------------------------------------------------------------- bytes
def _rows_bytes(rows: Tensor, policy: str) -> list[bytes]:
    """Bytes of one field of M messages, reals ``(M, R)``: each row as the wire dtype, or q<b>: the row's
    lo and hi (float32) and its b-bit codes, bit-packed (least significant bit of each code first)."""
    bits = _qbits(policy)
    if bits is None:
        arr = _round_to(rows.detach(), _TORCH_FLOAT[policy]).cpu().numpy()  # the round trip's rounding
        return [row.tobytes() for row in arr]
    codes, lo, hi = _quantize(rows.detach().cpu(), bits)
    b = ((codes.numpy()[:, :, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(len(codes), -1)
    packed = np.packbits(b, axis=1)
    ends = np.concatenate([lo.numpy(), hi.numpy()], axis=1).astype(np.float32)
    return [e.tobytes() + p.tobytes() for e, p in zip(ends, packed)]


def _rows_from_bytes(blobs: list[bytes], n_reals: int, policy: str, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`_rows_bytes` -> reals ``(M, R)`` in ``dtype``, exactly what :func:`roundtrip_reals`
    gives the local engine."""
    bits = _qbits(policy)
    if bits is None:
        arr = np.frombuffer(b"".join(blobs), dtype=_FLOAT[policy]).reshape(len(blobs), n_reals)
        return torch.from_numpy(arr.astype(np.float64 if dtype == torch.float64 else np.float32)).to(dtype)
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
    ends = torch.from_numpy(raw[:, :8].copy().view(np.float32))  # (M, 2)
    b = np.unpackbits(raw[:, 8:], axis=1)[:, : n_reals * bits].reshape(len(blobs), n_reals, bits)
    codes = torch.from_numpy((b.astype(np.int64) << np.arange(bits)).sum(-1))
    return _dequantize(codes, ends[:, :1], ends[:, 1:], bits, dtype)


def encode_message(reals: list[np.ndarray], policy: str) -> bytes:
    """msgpack encoding of one message: an array with one ``bin`` per field (``reals``: (R_f,) each)."""
    rows = [_rows_bytes(torch.as_tensor(np.asarray(r, dtype=np.float64), device="cpu").reshape(1, -1), policy)[0]
            for r in reals]
    return msgpack.packb(rows, use_bin_type=True)


@lru_cache(maxsize=256)
def message_nbytes(fields: tuple[Field, ...], policy: str) -> int:
    """Size in bytes of one message with these fields under ``policy`` (the ledger's unit).

    Computed by encoding a message (its size depends only on shapes and policy).
    """
    return len(encode_message([np.zeros(f.reals) for f in fields], policy))


def encode_bundle(eids: Tensor, mask: Tensor, payload: dict[str, Tensor], fields: tuple[Field, ...],
                  policy: str) -> tuple[bytes, int]:
    """All messages one host sends to one destination host in a phase, as one msgpack blob.

    eids: (E,) global edge ids; mask: (B, E) bool, the edges present (only their messages are sent);
    payload: {field: (B, E, *shape)}.  Each message is its own :func:`encode_message` blob (``msgs``,
    realization-major), so the bundle carries exactly the ledger's bytes plus a small header (edge ids,
    mask, shape).  The numbers are what the receiver will see (the policy's rounding), so decoding is exact.
    Returns (the bundle, the bytes of its messages without the header).
    """
    B, E = mask.shape
    b_idx, e_idx = torch.nonzero(mask.cpu(), as_tuple=True)
    per_field = [_rows_bytes(to_reals(payload[f.name], f)[b_idx, e_idx], policy) for f in fields]
    msgs = [msgpack.packb(list(parts), use_bin_type=True) for parts in zip(*per_field)]
    body = {"eids": eids.cpu().numpy().astype(np.int64).tobytes(), "B": B, "E": E,
            "mask": np.packbits(mask.cpu().numpy().reshape(-1)).tobytes(),
            "dt": [str(payload[f.name].real.dtype).removeprefix("torch.") for f in fields], "msgs": msgs}
    return msgpack.packb(body, use_bin_type=True), sum(len(m) for m in msgs)


def decode_bundle(blob: bytes, fields: tuple[Field, ...], policy: str, complex_dtype: torch.dtype
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    """Inverse of :func:`encode_bundle` -> (eids (E,), {field: (B, E, *shape)}), zeros on absent edges."""
    body = msgpack.unpackb(blob, raw=False)
    eids = torch.from_numpy(np.frombuffer(body["eids"], dtype=np.int64).copy())
    B, E = int(body["B"]), int(body["E"])
    mask = np.unpackbits(np.frombuffer(body["mask"], dtype=np.uint8))[: B * E].reshape(B, E).astype(bool)
    b_idx, e_idx = (torch.from_numpy(i) for i in np.nonzero(mask))
    msgs = [msgpack.unpackb(m, raw=False) for m in body["msgs"]]
    out = {}
    for i, f in enumerate(fields):
        real_dtype = getattr(torch, body["dt"][i])
        r = torch.zeros(B, E, f.reals, dtype=real_dtype, device="cpu")
        if msgs:
            r[b_idx, e_idx] = _rows_from_bytes([m[i] for m in msgs], f.reals, policy, real_dtype)
        x = from_reals(r, f, complex_dtype)
        out[f.name] = x if f.kind != "real" else x.to(real_dtype)
    return eids, out
