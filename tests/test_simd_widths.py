"""The CPU kernels at each SIMD width against the float64 reference.

The engine compiles its kernels for 256-bit vectors (AVX2 and baseline clones)
and, on x86-64, for 512-bit vectors (AVX-512), and picks one per call: 512 bits
when the CPU has AVX-512 and the padded rows are whole 512-bit vectors (N > 8
in float32, N > 4 in float64).  Most of the suite uses small N, so this module
sweeps N across the vector boundaries, every transition mode and the
fallback-prone inputs, with the width capped at 256 bits and at 512 bits in
turn; each result is checked against the reference, and the two widths against
each other.
"""
import numpy as np
import pytest

import gluon_hmm as gh
import gluon_hmm.numpy as ghn
from cases import assert_grads_match, load_reference, make_problem, tol

ref = load_reference()

WIDEST = ghn.set_cpu_vector_bits(0)
HAS_512 = WIDEST == 512

# N around the vector sizes of both widths and dtypes: 4/8 (one 256-bit vector),
# 8/16 (one 512-bit vector), and several vectors with and without a partial one.
STATES = (3, 5, 8, 9, 12, 16, 17, 31, 33, 50)
FLAGS = {
    "plain": dict(),
    "ragged": dict(lengths="ragged"),
    "neginf": dict(lengths="ragged", neg_inf=True),
    "very_negative": dict(very_negative=True),
}


@pytest.fixture
def bits(request):
    """Caps the width for one test and restores the default afterwards."""
    got = gh.set_cpu_vector_bits(request.param)
    yield got
    gh.set_cpu_vector_bits(0)


def _widths():
    return [256, 512] if HAS_512 else [256]


@pytest.mark.parametrize("bits", _widths(), indirect=True, ids=lambda b: "%dbit" % b)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("flags", list(FLAGS), ids=str)
@pytest.mark.parametrize("trans", ["shared", "batch", "time"])
@pytest.mark.parametrize("N", STATES)
def test_width_matches_reference(rng, bits, dtype, flags, trans, N):
    # B = 6 with a shared matrix: lockstep groups of 4 and 2.
    B, T = (6, 23) if trans != "time" else (3, 9)
    p = make_problem(rng, B, T, N, trans=trans, dtype=dtype, **FLAGS[flags])
    expected = ref.posterior(*p.astype(np.float64).args)
    loglik, g = ghn.value_and_grad(*p.args)
    assert_grads_match(loglik, *g, expected, dtype)
    t = tol(dtype)
    # Viterbi and sampling run through the same forward kernels (sampling) or
    # are width-independent (Viterbi): still exact.
    v = ghn.viterbi(*p.args)
    np.testing.assert_allclose(v.score, ref.viterbi(*p.astype(np.float64).args).score, **t)


@pytest.mark.skipif(not HAS_512, reason="this CPU has no AVX-512: one width only")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N", (9, 17, 50, 130))
def test_widths_agree_to_rounding(rng, dtype, N):
    p = make_problem(rng, 5, 300, N, lengths="ragged", dtype=dtype)
    out = {}
    try:
        for b in (256, 512):
            assert gh.set_cpu_vector_bits(b) == b
            out[b] = ghn.value_and_grad(*p.args)
    finally:
        gh.set_cpu_vector_bits(0)
    (l1, g1), (l2, g2) = out[256], out[512]
    close = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(l2, l1, **close)
    for a, b in zip(g2, g1):
        np.testing.assert_allclose(a, b, **close)


def test_width_control():
    try:
        assert gh.set_cpu_vector_bits(256) == 256
        assert ghn.get_cpu_vector_bits() == 256
        # 512 is granted only where the CPU has AVX-512
        assert gh.set_cpu_vector_bits(512) == WIDEST
        assert gh.set_cpu_vector_bits(0) == WIDEST
        assert ghn.get_cpu_vector_bits() == WIDEST
    finally:
        gh.set_cpu_vector_bits(0)
    for bad in (128, 1024, -1, 300):
        with pytest.raises(ValueError, match=r"bits must be 0 .*256 or 512, got %d" % bad):
            gh.set_cpu_vector_bits(bad)
        with pytest.raises(ValueError, match="bits"):
            ghn.set_cpu_vector_bits(bad)
    assert ghn.get_cpu_vector_bits() == WIDEST


@pytest.mark.skipif(not HAS_512, reason="this CPU has no AVX-512: one width only")
def test_mxnet_op_follows_the_width(rng):
    """gh.set_cpu_vector_bits reaches the op library loaded into MXNet too: its
    results match the NumPy binding's at each width bit for bit (same kernels)."""
    import mxnet as mx
    p = make_problem(rng, 4, 50, 20, dtype=np.float32)
    try:
        for b in (256, 512):
            gh.set_cpu_vector_bits(b)
            args = [mx.nd.array(a, dtype=a.dtype) for a in p.args]
            got = gh.log_likelihood(*args).asnumpy()
            np.testing.assert_array_equal(got, ghn.log_likelihood(*p.args))
    finally:
        gh.set_cpu_vector_bits(0)


@pytest.mark.skipif(not HAS_512, reason="this CPU has no AVX-512: one width only")
@pytest.mark.parametrize("order", [(256, 512), (512, 256)], ids=["fwd256-bwd512", "fwd512-bwd256"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("N", (6, 12, 50))
def test_saved_state_crosses_widths(rng, order, dtype, N):
    """A saved state is valid for either width: the forward at one, the backward at
    the other (the 256-bit kernels cover fewer padded lanes than the 512-bit ones)."""
    from gluon_hmm import _native
    p = make_problem(rng, 5, 40, N, lengths="ragged", dtype=dtype)
    expected = ref.posterior(*p.astype(np.float64).args)
    call = _native._Call(*p.args, 1)
    try:
        gh.set_cpu_vector_bits(order[0])
        loglik, saved = call.forward()
        gh.set_cpu_vector_bits(order[1])
        gi, gt, ge = call.backward(saved, None)
    finally:
        gh.set_cpu_vector_bits(0)
    assert_grads_match(loglik, gi, gt, ge, expected, dtype)
