"""Wire codec: msgpack bundles decode to exactly what the local engine's round trip gives."""

from __future__ import annotations

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
    p = payload()
    eids = torch.tensor([4, 7, 8, 20, 21])
    e, dec = decode_bundle(encode_bundle(eids, p, FIELDS, policy), FIELDS, policy, torch.complex128)
    assert torch.equal(e, eids)
    rt = roundtrip(p, FIELDS, policy)
    for f in FIELDS:
        assert torch.equal(dec[f.name], rt[f.name]), f.name


def test_lossy_error_bounds():
    p = payload(seed=2)
    for f in FIELDS:
        r = to_reals(p[f.name], f)
        span = (r.amax(-1, keepdim=True) - r.amin(-1, keepdim=True))
        for bits in (4, 10):
            q = to_reals(roundtrip(p, FIELDS, f"q{bits}")[f.name], f)
            # uniform quantizer: half a step (+ float32 rounding of the range endpoints)
            assert bool(((q - r).abs() <= span / (2 * (2**bits - 1)) * (1 + 1e-5) + 1e-6 * r.abs().amax()).all())
        h = to_reals(roundtrip(p, FIELDS, "float16")[f.name], f)
        assert bool(((h - r).abs() <= 2.0**-11 * r.abs() + 6.2e-5).all())


def test_message_nbytes_is_the_msgpack_size():
    p = payload()
    for policy in ("float64", "float32", "float16", "q8", "q5"):
        reals = [to_reals(p[f.name], f)[1, 2].numpy() for f in FIELDS]
        assert message_nbytes(FIELDS, policy) == len(encode_message(reals, policy))
    # closed form for float32: msgpack array header 1 B; bin8 header 2 B per field + 4 B per real
    assert message_nbytes(FIELDS, "float32") == 1 + sum(2 + 4 * f.reals for f in FIELDS)
    # q8: 8 B (lo, hi float32) + ceil(reals*8/8) codes
    assert message_nbytes(FIELDS, "q8") == 1 + sum(2 + 8 + f.reals for f in FIELDS)


def test_policy_check():
    for ok in ("float64", "float32", "float16", "q2", "q16"):
        assert check_policy(ok) == ok
    for bad in ("q1", "q17", "int8", "float"):
        with pytest.raises(ValueError, match="allowed"):
            check_policy(bad)
    assert np.isfinite(message_nbytes(FIELDS, "q16"))
