"""The 16-bit codecs of --compress: in-place packing, exact against references."""
import numpy as np
import pytest

pytest.importorskip('mpi4py')
from layerasync.comm import compress as C  # noqa: E402


def values(n=3 * C.BLOCK + 123, seed=0):
    """float32s of every kind: normal, tiny, huge, infinite, NaN, zeros of both signs."""
    x = (np.random.default_rng(seed).standard_normal(n) * 3).astype(np.float32)
    x[:8] = [np.nan, np.inf, -np.inf, 3.4e38, 1e-40, -0.0, 0.0, 65519.0]
    return x


def bf16_reference(x):
    """Round to nearest even on the bits, NaN kept quiet."""
    bits = x.view(np.uint32).astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def test_fp16_packs_in_place_as_numpy_rounds():
    x = values()
    y, scratch = x.copy(), np.empty(C.BLOCK, np.float32)
    wire = C.pack_fp16(y, np.float32(0.25), scratch)
    with np.errstate(over='ignore'):
        expected = (x * np.float32(0.25)).astype(np.float16)
    assert np.shares_memory(wire, y)
    np.testing.assert_array_equal(wire.view(np.uint16), expected.view(np.uint16))
    C.unpack_fp16(y, np.float32(4), scratch)
    np.testing.assert_array_equal(y, expected.astype(np.float32) * np.float32(4))


def test_bf16_packs_in_place_and_adds_to_nearest_even():
    x = values(seed=1)
    y = x.copy()
    wire = C.pack_bf16(y)
    assert np.shares_memory(wire, y)
    np.testing.assert_array_equal(wire, bf16_reference(x))
    C.unpack_bf16(y)
    np.testing.assert_array_equal(y.view(np.uint32), bf16_reference(x).astype(np.uint32) << 16)
    a, b = bf16_reference(values(seed=2)[8:]), bf16_reference(values(seed=3)[8:])
    into = b.copy()
    C.add_bf16(a, into)
    exact = ((a.astype(np.uint32) << 16).view(np.float32)
             + (b.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_array_equal(into, bf16_reference(exact))


def test_unknown_codec_is_named():
    with pytest.raises(ValueError, match="unknown compression 'int8'; known: fp16, bf16, "
                                         "topk:RATIO, powersgd:RANK"):
        C.make_codec('int8', 2)
    for bad in ('topk', 'topk:0', 'topk:1.5', 'topk:x'):
        with pytest.raises(ValueError, match='topk:RATIO needs 0 < RATIO <= 1'):
            C.make_codec(bad, 2)
    for bad in ('powersgd', 'powersgd:0', 'powersgd:2.5'):
        with pytest.raises(ValueError, match='powersgd:RANK needs a rank >= 1'):
            C.make_codec(bad, 2)
    assert C.make_codec(None, 2) is None
