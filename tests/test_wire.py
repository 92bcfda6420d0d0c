"""Wire codec: msgpack bundles decode to exactly what the local engine's round trip gives."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch

from dsim.protocol import Field
from dsim.wire import (
    check_policy,
    decode_bundle,
    encode_bundle,
    encode_message,
    from_reals,
    message_nbytes,
    roundtrip,
    roundtrip_reals,
    to_reals,
)

FIELDS = (Field("X", "hermitian", (3, 3)), Field("Y", "complex", (2, 3)), Field("z", "real", (4,)))


def payload(B=3, E=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, E, 3, 3, dtype=torch.complex128, generator=g)
    return {"X": A @ A.mH, "Y": torch.randn(B, E, 2, 3, dtype=torch.complex128, generator=g),
            "z": torch.randn(B, E, 4, dtype=torch.float64, generator=g)}


def test_reals_counts_and_hermitian_packing():
    assert [f.reals for f in FIELDS] == [9, 12, 4]
    p = payload()
    r = to_reals(p["X"], FIELDS[0])
    assert r.shape == (3, 5, 9)
    torch.testing.assert_close(from_reals(r, FIELDS[0], torch.complex128), p["X"], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("policy", ["float64", "float32", "float16", "q8", "q12", "q3"])
def test_bundle_decodes_to_roundtrip(policy):
    """A bundle carries the present edges' messages: they decode to the local engine's round trip, absent
    edges to zeros, and its message bytes are (present messages) x (the msgpack size of one message)."""
    p = payload()
    eids = torch.tensor([4, 7, 8, 20, 21])
    mask = torch.tensor([[True, False, True, True, True], [False, False, True, True, False],
                         [True, True, True, True, True]])
    blob, msg_bytes = encode_bundle(eids, mask, p, FIELDS, policy)
    e, dec = decode_bundle(blob, FIELDS, policy, torch.complex128)
    assert torch.equal(e, eids)
    rt = roundtrip(p, FIELDS, policy)
    for f in FIELDS:
        present = mask.reshape(mask.shape + (1,) * len(f.shape))
        assert torch.equal(dec[f.name], torch.where(present, rt[f.name], torch.zeros_like(rt[f.name]))), f.name
    one = len(msgpack.packb([b"\0" * _sent_bytes(policy, f.reals) for f in FIELDS], use_bin_type=True))
    assert msg_bytes == int(mask.sum()) * one


def test_float16_error_bound():
    p = payload(seed=2)
    for f in FIELDS:
        r = to_reals(p[f.name], f)
        h = to_reals(roundtrip(p, FIELDS, "float16")[f.name], f)
        # round to nearest float16: half an ulp (2^-11 relative) for normals, 2^-25 absolute for subnormals
        assert bool(((h - r).abs() <= 2.0**-11 * r.abs() + 2.0**-25).all())
        torch.testing.assert_close(h, torch.from_numpy(r.numpy().astype(np.float16).astype(np.float64)),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 10, 16])
def test_quantizer_is_the_nearest_level_of_the_float32_range(bits):
    """q<b>: each message's reals go to the nearest of 2^b - 1 equal steps between its min and max, the
    endpoints sent as float32; checked level by level against the definition (exact, no tolerance factor)."""
    p = payload(seed=2)
    levels = 2**bits - 1
    for f in FIELDS:
        r = to_reals(p[f.name], f).numpy()  # (B, E, R) float64, one message per (b, e)
        q = to_reals(roundtrip(p, FIELDS, f"q{bits}")[f.name], f).numpy()
        lo32, hi32 = r.min(-1, keepdims=True).astype(np.float32), r.max(-1, keepdims=True).astype(np.float32)
        lo, hi = lo32.astype(np.float64), hi32.astype(np.float64)
        step = (hi32 - lo32).astype(np.float64) / levels  # the span of the two float32 as float32
        k = (q - lo) / step  # q sits on the grid lo + k step, k integer in [0, levels]
        assert np.abs(k - np.round(k)).max() < 1e-9 and k.min() > -1e-9 and k.max() < levels + 1e-9
        grid = lo[..., None] + np.arange(levels + 1) * step[..., None]  # (B, E, 1, levels+1)
        nearest = np.abs(grid - r[..., None]).min(-1)
        assert (np.abs(q - r) <= nearest + 1e-12 * np.abs(r).max()).all()
        # hence |q - r| <= step / 2 inside [lo, hi], plus the distance to the range outside it
        outside = np.maximum(np.maximum(lo - r, r - hi), 0.0)
        assert (np.abs(q - r) <= step / 2 + outside + 1e-12 * np.abs(r).max()).all()


def _sent_bytes(policy: str, n_reals: int) -> int:
    """Bytes one field of n_reals occupies in a message: n_reals wire floats, or for q<b> the range
    (two float32) and the b-bit codes packed into whole bytes."""
    if policy.startswith("q"):
        return 8 + -(-n_reals * int(policy[1:]) // 8)
    return n_reals * np.dtype(policy).itemsize


@pytest.mark.parametrize("policy", ["float64", "float32", "float16", "q2", "q5", "q8", "q16"])
def test_message_nbytes_is_the_msgpack_size(policy):
    """The ledger's bytes per message == msgpack.packb of one bin per field holding what the policy sends."""
    want = len(msgpack.packb([b"\0" * _sent_bytes(policy, f.reals) for f in FIELDS], use_bin_type=True))
    assert message_nbytes(FIELDS, policy) == want
    # and the encoded message really holds that: decode it by hand
    pl = payload()
    reals = [to_reals(pl[f.name], f)[1, 2].numpy() for f in FIELDS]
    blob = encode_message(reals, policy)
    assert len(blob) == want
    for f, r, b in zip(FIELDS, reals, msgpack.unpackb(blob)):
        if not policy.startswith("q"):
            assert np.array_equal(np.frombuffer(b, dtype=policy), r.astype(policy))
            continue
        bits = int(policy[1:])
        lo, hi = np.frombuffer(b[:8], dtype=np.float32)
        assert (lo, hi) == (np.float32(r.min()), np.float32(r.max()))
        code_bits = np.unpackbits(np.frombuffer(b[8:], dtype=np.uint8))[: f.reals * bits].reshape(f.reals, bits)
        codes = code_bits @ (1 << np.arange(bits))  # least significant bit first
        deq = np.float64(lo) + codes * (np.float64(hi - lo) / (2**bits - 1))
        assert np.allclose(deq, roundtrip_reals(torch.from_numpy(r)[None], policy)[0].numpy(), rtol=0, atol=1e-12)


def test_message_sizes_closed_form():
    # float32: msgpack array header 1 B (fixarray); per field a bin8 header 2 B + 4 B per real
    assert message_nbytes(FIELDS, "float32") == 1 + sum(2 + 4 * f.reals for f in FIELDS)
    # q8: per field bin8 header 2 B, range 8 B, one byte per code
    assert message_nbytes(FIELDS, "q8") == 1 + sum(2 + 8 + f.reals for f in FIELDS)
    # a bin of >= 256 bytes needs a bin16 header (3 B): 100 float64 reals = 800 B
    assert message_nbytes((Field("w", "real", (100,)),), "float64") == 1 + 3 + 800
    # q3 of 9 reals: 27 bits -> 4 bytes
    assert message_nbytes((Field("X", "hermitian", (3, 3)),), "q3") == 1 + 2 + 8 + 4


def test_policy_check():
    for ok in ("float64", "float32", "float16", "q2", "q16"):
        assert check_policy(ok) == ok
    for bad in ("q1", "q17", "int8", "float"):
        with pytest.raises(ValueError, match="allowed"):
            check_policy(bad)
