"""The vectorised bundle codec (dsim.wire.encode_bundle / decode_bundle) against the per-message reference
(each message msgpack-packed on its own, :func:`dsim.wire.encode_bundle_plain`): byte-identical bundles and
message byte counts for every wire policy, real / complex / Hermitian fields, float64 and float32 payloads,
ragged masks (any subset of edges present, none, all), and every msgpack header size (fixarray / array16 /
array32 messages, bin8 / bin16 / bin32 fields and messages); decoding gives the local engine's round trip."""

from __future__ import annotations

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsim.protocol import Field
from dsim.wire import decode_bundle, encode_bundle, encode_bundle_plain, message_nbytes, roundtrip

POLICIES = ["float64", "float32", "float16"] + [f"q{b}" for b in range(2, 17)]
SETTINGS = settings(max_examples=60, deadline=None, database=None)


def _payload(fields, B, E, real_dtype, seed, scale=1.0, constant=False):
    g = torch.Generator().manual_seed(seed)
    cdt = torch.complex128 if real_dtype == torch.float64 else torch.complex64
    out = {}
    for f in fields:
        if f.kind == "real":
            x = torch.randn(B, E, *f.shape, dtype=real_dtype, generator=g)
        elif f.kind == "complex":
            x = torch.randn(B, E, *f.shape, dtype=cdt, generator=g)
        else:
            a = torch.randn(B, E, *f.shape, dtype=cdt, generator=g)
            x = a @ a.mH
        out[f.name] = torch.ones_like(x) if constant else x * scale
    return out


def _decoded_expected(payload, fields, mask, policy):
    """What the receiver must see: the local engine's round trip on present edges, zeros elsewhere."""
    rt = roundtrip(payload, fields, policy)
    return {f.name: torch.where(mask.reshape(mask.shape + (1,) * len(f.shape)), rt[f.name],
                                torch.zeros_like(rt[f.name])) for f in fields}


def _check(fields, B, E, mask, policy, real_dtype, seed, scale=1.0, constant=False):
    p = _payload(fields, B, E, real_dtype, seed, scale, constant)
    eids = torch.arange(E, dtype=torch.int64) * 7 + seed % 5
    fast = encode_bundle(eids, mask, p, fields, policy)
    plain = encode_bundle_plain(eids, mask, p, fields, policy)
    assert fast[0] == plain[0]  # the same bytes, header and every message
    assert fast[1] == plain[1] == int(mask.sum()) * message_nbytes(fields, policy)
    body = msgpack.unpackb(fast[0], raw=False)
    assert [len(m) for m in body["msgs"]] == [message_nbytes(fields, policy)] * int(mask.sum())
    cdt = torch.complex128 if real_dtype == torch.float64 else torch.complex64
    e, dec = decode_bundle(fast[0], fields, policy, cdt)
    assert torch.equal(e, eids)
    want = _decoded_expected(p, fields, mask, policy)
    for f in fields:
        assert dec[f.name].dtype == want[f.name].dtype and dec[f.name].shape == want[f.name].shape
        assert torch.equal(torch.nan_to_num(dec[f.name]), torch.nan_to_num(want[f.name])), (f.name, policy)
    return fast[0], dec


_field = st.one_of(
    st.tuples(st.just("real"), st.lists(st.integers(1, 5), min_size=1, max_size=2)),
    st.tuples(st.just("complex"), st.lists(st.integers(1, 4), min_size=1, max_size=2)),
    st.tuples(st.just("hermitian"), st.integers(1, 4).map(lambda n: [n, n])),
    st.tuples(st.just("real"), st.integers(30, 80).map(lambda n: [n])),  # bin16 fields at float64/float32
)


@SETTINGS
@given(specs=st.lists(_field, min_size=1, max_size=4), B=st.integers(1, 4), E=st.integers(1, 12),
       policy=st.sampled_from(POLICIES), real_dtype=st.sampled_from([torch.float64, torch.float32]),
       density=st.sampled_from([0.0, 0.3, 0.8, 1.0]), scale=st.sampled_from([1.0, 1e-6, 3e4]),
       constant=st.booleans(), seed=st.integers(0, 10_000))
def test_vectorised_bundle_equals_per_message_encoding(specs, B, E, policy, real_dtype, density, scale,
                                                        constant, seed):
    fields = tuple(Field(f"f{i}", kind, tuple(shape)) for i, (kind, shape) in enumerate(specs))
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(B, E, generator=g) < density
    _check(fields, B, E, mask, policy, real_dtype, seed, scale, constant)


@pytest.mark.parametrize("policy", ["float64", "float16", "q3"])
def test_large_headers(policy):
    """array16 / array32 message counts and bin32 fields and messages (> 65535 bytes)."""
    _check((Field("a", "real", (1,)),), 1, 70_000, torch.ones(1, 70_000, dtype=torch.bool), policy,
           torch.float64, 1)  # 70000 messages: array32
    big = (Field("w", "real", (40_000,)), Field("c", "complex", (2,)))  # a >65535-byte field at float64/32
    _check(big, 2, 3, torch.tensor([[True, False, True], [True, True, True]]), policy, torch.float32, 2)


def test_decode_falls_back_to_per_message_for_other_layouts():
    """A valid bundle that is not laid out as the encoder writes it (``msgs`` not last, or messages with
    other headers) decodes message by message to the same numbers."""
    fields = (Field("X", "hermitian", (2, 2)), Field("y", "real", (3,)))
    B, E = 2, 5
    mask = torch.tensor([[True, False, True, True, False], [True, True, True, False, True]])
    blob, dec = _check(fields, B, E, mask, "float32", torch.float64, 3)
    body = msgpack.unpackb(blob, raw=False)
    reordered = msgpack.packb({"msgs": body["msgs"], **{k: v for k, v in body.items() if k != "msgs"}},
                              use_bin_type=True)
    # the same messages with their bins re-packed as bin16 (valid msgpack, other header bytes)
    rebinned = []
    for m in body["msgs"]:
        parts = msgpack.unpackb(m, raw=False)
        rebinned.append(b"\x92" + b"".join(b"\xc5" + len(x).to_bytes(2, "big") + x for x in parts))
    other = msgpack.packb({**body, "msgs": rebinned}, use_bin_type=True)
    for variant in (reordered, other):
        e, got = decode_bundle(variant, fields, "float32", torch.complex128)
        assert torch.equal(e, torch.tensor([0, 7, 14, 21, 28]) + 3)
        for f in fields:
            assert torch.equal(got[f.name], dec[f.name])


def test_empty_bundle_bytes():
    """No edge present: the msgs array is empty and the bundle is what msgpack writes for it."""
    fields = (Field("u", "complex", (2,)),)
    blob, _ = _check(fields, 3, 4, torch.zeros(3, 4, dtype=torch.bool), "q8", torch.float64, 4)
    assert blob.endswith(b"\xa4msgs\x90")
