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
from typing import Any

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
def _rows_array(rows: Tensor, policy: str) -> np.ndarray:
    """Bytes of one field of M messages, reals ``(M, R)`` -> ``(M, nbytes)`` uint8: each row as the wire
    dtype (little endian), or q<b>: the row's lo and hi (float32) and its b-bit codes, bit-packed (least
    significant bit of each code first)."""
    bits = _qbits(policy)
    if bits is None:
        arr = _round_to(rows.detach(), _TORCH_FLOAT[policy]).cpu().numpy()  # the round trip's rounding
        arr = np.ascontiguousarray(arr, dtype=np.dtype(_FLOAT[policy]).newbyteorder("<"))
        return arr.view(np.uint8).reshape(len(arr), arr.shape[1] * arr.itemsize)
    codes, lo, hi = _quantize(rows.detach().cpu(), bits)
    b = ((codes.numpy()[:, :, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(len(codes), codes.shape[1] * bits)
    packed = np.packbits(b, axis=1)
    ends = np.concatenate([lo.numpy(), hi.numpy()], axis=1).astype("<f4")
    return np.concatenate([ends.view(np.uint8).reshape(len(ends), 8), packed], axis=1)


def _rows_bytes(rows: Tensor, policy: str) -> list[bytes]:
    """:func:`_rows_array` as one ``bytes`` per message."""
    return [row.tobytes() for row in _rows_array(rows, policy)]


def _row_nbytes(n_reals: int, policy: str) -> int:
    """Bytes of one message's field of ``n_reals`` reals under ``policy`` (:func:`_rows_array`)."""
    bits = _qbits(policy)
    if bits is None:
        return n_reals * np.dtype(_FLOAT[policy]).itemsize
    return 8 + (n_reals * bits + 7) // 8


def _rows_from_array(raw: np.ndarray, n_reals: int, policy: str, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`_rows_array`: ``(M, nbytes)`` uint8 -> reals ``(M, R)`` in ``dtype``, exactly what
    :func:`roundtrip_reals` gives the local engine."""
    M = len(raw)
    bits = _qbits(policy)
    if bits is None:
        arr = np.ascontiguousarray(raw).view(np.dtype(_FLOAT[policy]).newbyteorder("<")).reshape(M, n_reals)
        return torch.from_numpy(arr.astype(np.float64 if dtype == torch.float64 else np.float32)).to(dtype)
    ends = torch.from_numpy(np.ascontiguousarray(raw[:, :8]).view("<f4").astype(np.float32))  # (M, 2)
    b = np.unpackbits(raw[:, 8:], axis=1)[:, : n_reals * bits].reshape(M, n_reals, bits)
    codes = torch.from_numpy((b.astype(np.int64) << np.arange(bits)).sum(-1))
    return _dequantize(codes, ends[:, :1], ends[:, 1:], bits, dtype)


def _rows_from_bytes(blobs: list[bytes], n_reals: int, policy: str, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`_rows_bytes` (one blob per message) -> reals ``(M, R)`` in ``dtype``."""
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
    return _rows_from_array(raw, n_reals, policy, dtype)


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


# msgpack headers (the spec's smallest form, which msgpack.packb writes): big-endian lengths
def _array_header(n: int) -> bytes:
    if n <= 15:
        return bytes([0x90 | n])
    if n <= 0xFFFF:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _bin_header(n: int) -> bytes:
    if n <= 0xFF:
        return b"\xc4" + n.to_bytes(1, "big")
    if n <= 0xFFFF:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


@lru_cache(maxsize=256)
def _message_layout(fields: tuple[Field, ...], policy: str
                    ) -> tuple[np.ndarray, tuple[tuple[int, int], ...], np.ndarray]:
    """The fixed layout of one message as an item of the bundle's ``msgs`` array (a ``bin``): its S bytes
    (uint8 (S,): the bin header, the message's array header and each field's bin header, zeros where the
    fields' bytes go), each field's (start, end) in them, and the mask (S,) of the header bytes.
    S = the bin header + :func:`message_nbytes`."""
    sizes = [_row_nbytes(f.reals, policy) for f in fields]
    msg = _array_header(len(fields)) + b"".join(_bin_header(n) + bytes(n) for n in sizes)
    outer = _bin_header(len(msg))
    spans, at = [], len(outer) + len(_array_header(len(fields)))
    for n in sizes:
        at += len(_bin_header(n))
        spans.append((at, at + n))
        at += n
    template = np.frombuffer(outer + msg, dtype=np.uint8).copy()
    fixed = np.ones(len(template), dtype=bool)
    for lo, hi in spans:
        fixed[lo:hi] = False
    template.flags.writeable = fixed.flags.writeable = False
    return template, tuple(spans), fixed


_MSGS_KEY_EMPTY = msgpack.packb("msgs", use_bin_type=True) + _array_header(0)


def encode_bundle(eids: Tensor, mask: Tensor, payload: dict[str, Tensor], fields: tuple[Field, ...],
                  policy: str) -> tuple[bytes, int]:
    """All messages one host sends to one destination host in a phase, as one msgpack blob.

    eids: (E,) global edge ids; mask: (B, E) bool, the edges present (only their messages are sent);
    payload: {field: (B, E, *shape)}.  Each message is its own :func:`encode_message` blob (``msgs``,
    realization-major), so the bundle carries exactly the ledger's bytes plus a small header (edge ids,
    mask, shape).  The numbers are what the receiver will see (the policy's rounding), so decoding is exact.
    Returns (the bundle, the bytes of its messages without the header).

    Vectorised: every message of a phase has the same layout (:func:`_message_layout`), so the ``msgs``
    array is written as one (messages x layout) byte matrix -- byte for byte what packing each message on
    its own gives (:func:`encode_bundle_plain`, the reference).
    """
    B, E = mask.shape
    mask = mask.cpu()
    b_idx, e_idx = torch.nonzero(mask, as_tuple=True)
    M = len(b_idx)
    template, spans, _ = _message_layout(fields, policy)
    rows = np.empty((M, len(template)), dtype=np.uint8)
    rows[:] = template
    full = M == B * E  # every edge present: the messages are the payload's rows in order
    for f, (lo, hi) in zip(fields, spans):
        r = to_reals(payload[f.name], f)
        rows[:, lo:hi] = _rows_array(r.reshape(M, -1) if full else r[b_idx, e_idx], policy)
    head = _bundle_head(eids, mask, payload, fields, [])
    if not head.endswith(_MSGS_KEY_EMPTY):  # pragma: no cover - msgpack always writes the last key last
        return encode_bundle_plain(eids, mask, payload, fields, policy)
    blob = b"".join((head[: -len(_array_header(0))], _array_header(M), rows.tobytes()))
    return blob, M * message_nbytes(fields, policy)


def _bundle_head(eids: Tensor, mask: Tensor, payload: dict[str, Tensor], fields: tuple[Field, ...],
                 msgs: list[bytes]) -> bytes:
    """The bundle's msgpack map with the messages ``msgs`` (``msgs`` last)."""
    B, E = mask.shape
    body = {"eids": eids.cpu().numpy().astype(np.int64).tobytes(), "B": B, "E": E,
            "mask": np.packbits(mask.cpu().numpy().reshape(-1)).tobytes(),
            "dt": [str(payload[f.name].real.dtype).removeprefix("torch.") for f in fields], "msgs": msgs}
    return msgpack.packb(body, use_bin_type=True)


def encode_bundle_plain(eids: Tensor, mask: Tensor, payload: dict[str, Tensor], fields: tuple[Field, ...],
                        policy: str) -> tuple[bytes, int]:
    """:func:`encode_bundle` one message at a time (each message packed by msgpack on its own): the
    reference the vectorised encoder is checked against."""
    b_idx, e_idx = torch.nonzero(mask.cpu(), as_tuple=True)
    per_field = [_rows_bytes(to_reals(payload[f.name], f)[b_idx, e_idx], policy) for f in fields]
    msgs = [msgpack.packb(list(parts), use_bin_type=True) for parts in zip(*per_field)]
    return _bundle_head(eids, mask, payload, fields, msgs), sum(len(m) for m in msgs)


def _split_bundle(blob: bytes) -> tuple[dict[str, Any], memoryview | None, int]:
    """The bundle's map and, when ``msgs`` is its last key, the raw bytes of the ``msgs`` array's items
    (not unpacked) and their count; otherwise ``msgs`` is unpacked into the map and the view is ``None``."""
    un = msgpack.Unpacker(raw=False, max_buffer_size=max(len(blob), 1024))
    un.feed(blob)
    body: dict[str, Any] = {}
    n_keys = un.read_map_header()
    for i in range(n_keys):
        key = un.unpack()
        if key == "msgs" and i == n_keys - 1:
            n = un.read_array_header()
            return body, memoryview(blob)[un.tell():], n
        body[key] = un.unpack()
    return body, None, 0


def decode_bundle(blob: bytes, fields: tuple[Field, ...], policy: str, complex_dtype: torch.dtype
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    """Inverse of :func:`encode_bundle` -> (eids (E,), {field: (B, E, *shape)}), zeros on absent edges.

    The messages are read as one byte matrix when they have the phase's fixed layout (its headers checked
    byte for byte); any other valid msgpack falls back to unpacking each message on its own."""
    body, raw, n = _split_bundle(blob)
    eids = torch.from_numpy(np.frombuffer(body["eids"], dtype=np.int64).copy())
    B, E = int(body["B"]), int(body["E"])
    mask = np.unpackbits(np.frombuffer(body["mask"], dtype=np.uint8))[: B * E].reshape(B, E).astype(bool)
    b_idx, e_idx = (torch.from_numpy(i) for i in np.nonzero(mask))
    cols = None
    if raw is not None:
        template, spans, fixed = _message_layout(fields, policy)
        S = len(template)
        if len(raw) == n * S:
            mat = np.frombuffer(raw, dtype=np.uint8).reshape(n, S)
            if bool((mat[:, fixed] == template[fixed]).all()):
                cols = [mat[:, lo:hi] for lo, hi in spans]
        if cols is None:  # not the fixed layout: the messages one by one
            body["msgs"] = msgpack.unpackb(bytes(_array_header(n)) + bytes(raw), raw=False)
    if cols is None:
        msgs = [msgpack.unpackb(m, raw=False) for m in body["msgs"]]
        n = len(msgs)
        cols = [np.frombuffer(b"".join(m[i] for m in msgs), dtype=np.uint8).reshape(n, -1) if n else None
                for i in range(len(fields))]
    out = {}
    for i, f in enumerate(fields):
        real_dtype = getattr(torch, body["dt"][i])
        if n and n == B * E == len(b_idx):  # every edge present: the rows in order
            r = _rows_from_array(cols[i], f.reals, policy, real_dtype).reshape(B, E, f.reals)
        else:
            r = torch.zeros(B, E, f.reals, dtype=real_dtype, device="cpu")
            if n:
                r[b_idx, e_idx] = _rows_from_array(cols[i], f.reals, policy, real_dtype)
        x = from_reals(r, f, complex_dtype)
        out[f.name] = x if f.kind != "real" else x.to(real_dtype)
    return eids, out
