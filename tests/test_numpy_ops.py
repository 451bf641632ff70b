"""gluon_hmm.numpy (the C++ engine through Cython) against the float64 reference.

The reference is itself proven against brute-force enumeration in
test_reference.py; here every fast path is compared with it, never with itself.
"""
import numpy as np
import pytest

import gluon_hmm.numpy as ghn
from cases import (EDGE_SIZES, SMALL_SIZES, assert_grads_match, iter_cases, load_reference,
                   make_problem, tol)

ref = load_reference()

CASES = list(iter_cases(sizes=SMALL_SIZES + EDGE_SIZES, dtypes=(np.float64, np.float32)))


def _finite_rows(p):
    """Mask (B,) of sequences whose reference loglik is finite (all of them here)."""
    return np.isfinite(ref.log_likelihood(*p.astype(np.float64).args))


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.id)
def test_loglik_and_gradients_match_reference(rng, spec):
    p = make_problem(rng, **spec.kwargs)
    p64 = p.astype(np.float64)
    before = p.copy()
    expected = ref.posterior(*p64.args)
    loglik, grads = ghn.value_and_grad(*p.args)
    assert loglik.dtype == p.dtype and grads.log_emit.dtype == p.dtype
    t = tol(p.dtype)
    np.testing.assert_allclose(loglik, expected.loglik, **t)
    np.testing.assert_allclose(grads.log_emit, expected.gamma, **t)
    np.testing.assert_allclose(grads.log_trans, expected.trans_counts, **t)
    np.testing.assert_allclose(grads.log_init, expected.init_counts, **t)
    np.testing.assert_allclose(ghn.log_likelihood(*p.args), loglik, rtol=0, atol=0)
    for a, b in zip(p.args, before.args):  # inputs never modified
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("trans", ["batch", "shared"])
@pytest.mark.parametrize("sign", [1.0, -1.0, "mixed", "equal", "equal in a group"])
def test_gradient_exact_for_any_upstream_weights(rng, sign, trans):
    """Weights of any sign; "equal" ones take the engine's path that applies one weight
    per lockstep group to the transition sums (groups of 4 with a shared matrix)."""
    B = 6
    p = make_problem(rng, B, 9, 4, trans=trans, lengths="ragged", neg_inf=True)
    if sign == "mixed":
        w = rng.normal(size=B) * 3
    elif sign == "equal":
        w = np.full(B, -1.75)
    elif sign == "equal in a group":
        w = np.concatenate([np.full(4, 2.5), rng.normal(size=B - 4)])
    else:
        w = np.full(B, sign) * rng.uniform(0.5, 2, B)
    _, g = ghn.value_and_grad(*p.args, grad_loglik=w)
    post = ref.posterior(*p.args)
    np.testing.assert_allclose(g.log_emit, w[:, None, None] * post.gamma, rtol=1e-9, atol=1e-12)
    if trans == "batch":
        expected_trans = w[:, None, None] * post.trans_counts
    else:  # shared: the weighted sum over the batch of the per-sequence counts
        li, lt, le, lens = p.args
        expected_trans = sum(
            w[b] * ref.posterior(li, lt, le[b:b + 1], None if lens is None else lens[b:b + 1])
            .trans_counts for b in range(B))
    np.testing.assert_allclose(g.log_trans, expected_trans, rtol=1e-9, atol=1e-12)
    first = w[:, None] * post.gamma[:, 0]
    np.testing.assert_allclose(g.log_init, first.sum(0) if p.log_init.ndim == 1 else first,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("trans", ["shared", "batch", "time"])
def test_directional_derivative_float32_realistic_size(rng, trans):
    """Random direction d: <grad, d> equals the central difference of float64 loglik."""
    p = make_problem(rng, 4, 60, 12, trans=trans, lengths="ragged")
    w = rng.normal(size=4)
    _, g = ghn.value_and_grad(*p.astype(np.float32).args, grad_loglik=w.astype(np.float32))
    dirs = [rng.normal(size=a.shape) for a in p.args[:3]]
    eps = 1e-5

    def f(s):
        args = [a + s * d for a, d in zip(p.args[:3], dirs)]
        return float(np.dot(w, ref.log_likelihood(*args, p.lengths)))

    numeric = (f(eps) - f(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(gi.astype(np.float64) * d)) for gi, d in zip(g, dirs))
    assert abs(analytic - numeric) <= 1e-4 * max(1.0, abs(numeric))


def test_float32_long_sequence_accuracy(rng):
    """float32 stays accurate at T=100000: gradients within 1e-3 relative of float64."""
    p = make_problem(rng, 1, 100000, 8)
    ll64, g64 = ghn.value_and_grad(*p.args)
    ll32, g32 = ghn.value_and_grad(*p.astype(np.float32).args)
    assert abs(float(ll32[0]) - ll64[0]) <= 1e-5 * abs(ll64[0])
    for a, b in zip(g32, g64):
        rel = np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b)
        assert rel <= 1e-3, rel


# The group kernels read the partial last vector of an emission row (N not a
# multiple of the SIMD width: 8 floats, 4 doubles) with one shifted load and a
# permute; these sizes put 1 to W-1 states in it behind one or two whole vectors.
@pytest.mark.parametrize("flags", ["plain", "all"])
@pytest.mark.parametrize("dtype,N", [(np.float32, 9), (np.float32, 12), (np.float32, 15),
                                     (np.float32, 17), (np.float64, 5), (np.float64, 7),
                                     (np.float64, 10)],
                         ids=lambda v: getattr(v, "__name__", v))
def test_partial_last_vector_of_emission_rows(rng, dtype, N, flags):
    from cases import FLAG_SETS
    p = make_problem(rng, 5, 30, N, dtype=dtype, **FLAG_SETS[flags])
    expected = ref.posterior(*p.astype(np.float64).args)
    loglik, g = ghn.value_and_grad(*p.args)
    assert_grads_match(loglik, *g, expected, dtype)


def _left_to_right(N):
    """A left-to-right band model: start in state 0, stay (0.9) or move one state on (0.1)."""
    lt = np.full((N, N), -np.inf)
    for i in range(N):
        lt[i, i] = np.log(0.9)
        if i + 1 < N:
            lt[i, i + 1] = np.log(0.1)
    lt[N - 1, N - 1] = 0.0
    li = np.full(N, -np.inf)
    li[0] = 0.0
    return li, lt


def test_underflow_cases_are_exact(rng):
    """Where a naive scaled forward underflows the engine stays exact (log-space fallback)."""
    N, T = 5, 40
    li, lt = _left_to_right(N)
    le = rng.normal(size=(2, T, N))
    le[0, 5] = -1e4                      # every state very unlikely at one step
    le[1, 3, :] = [-1e4, 0, 0, 0, 0]     # only unreachable states explain step 3
    le[1, 3, 0] = -3e3
    for dt in (np.float64, np.float32):
        args = (li.astype(dt), lt.astype(dt), le.astype(dt))
        ll, g = ghn.value_and_grad(*args)
        post = ref.posterior(li, lt, le)
        np.testing.assert_allclose(ll, post.loglik, rtol=1e-6 if dt == np.float32 else 1e-12)
        np.testing.assert_allclose(g.log_emit, post.gamma, **tol(dt))
        np.testing.assert_allclose(g.log_trans, post.trans_counts, **tol(dt))
        assert np.all(np.isfinite(g.log_trans)) and np.all(np.isfinite(g.log_emit))


# One sequence per work item with one SIMD vector per state row (N <= 8 in
# float32, N <= 4 in float64) runs a kernel of its own (state kept in a
# register, emissions computed a few steps ahead, statistics beside the chain).
# B = 1 with a shared matrix, or a per-sequence matrix, takes it; T = 300
# crosses its look-ahead, ring and float64-flush boundaries several times.
ONE_VECTOR = [(np.float32, 1), (np.float32, 5), (np.float32, 8), (np.float64, 3), (np.float64, 4)]


@pytest.mark.parametrize("flags", ["plain", "ragged", "neginf", "veryneg", "all"])
@pytest.mark.parametrize("trans", ["shared", "batch"])
@pytest.mark.parametrize("dtype,N", ONE_VECTOR, ids=lambda v: getattr(v, "__name__", v))
def test_one_vector_kernel_matches_reference(rng, dtype, N, trans, flags):
    from cases import FLAG_SETS
    B = 1 if trans == "shared" else 3
    p = make_problem(rng, B, 300, N, trans=trans, init="batch" if trans == "batch" else "shared",
                     dtype=dtype, **FLAG_SETS[flags])
    expected = ref.posterior(*p.astype(np.float64).args)  # on the very inputs given
    w = rng.uniform(0.5, 2.0, B).astype(dtype)
    loglik, g = ghn.value_and_grad(*p.args, grad_loglik=w)
    t = tol(dtype)
    np.testing.assert_allclose(loglik, expected.loglik, **t)
    np.testing.assert_allclose(g.log_emit, w[:, None, None] * expected.gamma, **t)

    def weighted(x):  # per-sequence statistics carry w[b]; shared ones (B = 1 here) w[0]
        return w.reshape((B,) + (1,) * (x.ndim - 1)) * x if trans == "batch" else w[0] * x

    np.testing.assert_allclose(g.log_trans, weighted(expected.trans_counts), **t)
    np.testing.assert_allclose(g.log_init, weighted(expected.init_counts), **t)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("step", [3, 5, 25, 130])
def test_one_vector_kernel_falls_back_exactly(rng, dtype, step):
    """The one-vector kernel's underflow exit, before and after its look-ahead: up to
    `step` only state 0 explains the data (the others at exp(-1000) = 0 even in
    float64), then only states 2 and 3 do, which state 0 cannot reach in one move
    (a left-to-right band): the scaled forward's normaliser is exactly 0 at `step`
    and the sequence is redone in log space."""
    N, T = 4, 200
    li, lt = _left_to_right(N)
    le = rng.normal(size=(1, T, N))
    le[0, :step, 1:] = -1e3
    le[0, step, :2] = -3e3
    post = ref.posterior(li, lt, le.astype(dtype).astype(np.float64))
    assert np.isfinite(post.loglik).all()
    ll, g = ghn.value_and_grad(li.astype(dtype), lt.astype(dtype), le.astype(dtype))
    np.testing.assert_allclose(ll, post.loglik, rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(g.log_emit, post.gamma, **tol(dtype))
    np.testing.assert_allclose(g.log_trans, post.trans_counts, **tol(dtype))
    np.testing.assert_allclose(g.log_init, post.init_counts, **tol(dtype))


def test_impossible_sequence_gives_minus_inf_and_zero_gradients(rng):
    p = make_problem(rng, 3, 6, 3)
    le = p.log_emit.copy()
    le[1, 2, :] = -np.inf
    ll, g = ghn.value_and_grad(p.log_init, p.log_trans, le)
    assert ll[1] == -np.inf and np.all(np.isfinite(ll[[0, 2]]))
    assert np.all(g.log_emit[1] == 0)
    for a in g:
        assert np.all(np.isfinite(a))
    other = ghn.value_and_grad(p.log_init, p.log_trans, le[[0, 2]])
    np.testing.assert_allclose(g.log_emit[[0, 2]], other[1].log_emit, rtol=1e-12)


def test_nan_in_valid_position_stays_in_its_sequence(rng):
    p = make_problem(rng, 3, 6, 3)
    le = p.log_emit.copy()
    le[1, 2, 1] = np.nan
    ll, g = ghn.value_and_grad(p.log_init, np.ascontiguousarray(p.log_trans), le)
    assert np.isnan(ll[1])
    np.testing.assert_allclose(ll[[0, 2]], ref.log_likelihood(p.log_init, p.log_trans,
                                                                le[[0, 2]]), rtol=1e-12)
    assert np.all(np.isfinite(g.log_emit[[0, 2]]))


def test_thread_count_does_not_change_results(rng):
    p = make_problem(rng, 13, 50, 7, lengths="ragged")
    a = ghn.value_and_grad(*p.args, num_threads=1)
    b = ghn.value_and_grad(*p.args, num_threads=2)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-13)
    for x, y in zip(a[1], b[1]):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15)


def test_noncontiguous_and_readonly_inputs(rng):
    p = make_problem(rng, 4, 7, 3, lengths="ragged")
    le = np.asfortranarray(p.log_emit)
    lt = p.log_trans.T.copy().T
    for a in (le, lt):
        a.setflags(write=False)
    np.testing.assert_allclose(ghn.log_likelihood(p.log_init, lt, le, p.lengths),
                               ref.log_likelihood(*p.args), rtol=1e-12)


def test_int64_and_python_list_lengths(rng):
    p = make_problem(rng, 3, 5, 2, lengths="ragged")
    expected = ref.log_likelihood(*p.args)
    for lengths in (p.lengths.astype(np.int64), list(map(int, p.lengths))):
        np.testing.assert_allclose(ghn.log_likelihood(*p.args[:3], lengths), expected, rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(log_emit=np.zeros((2, 3))), r"log_emit must have shape \(B, T, N\).*got \(2, 3\)"),
    (dict(log_trans=np.zeros((3, 3))), r"log_trans must have shape \(N, N\), \(B, N, N\) or "
                                       r"\(B, T, N, N\) with B=2, T=5, N=4, got \(3, 3\)"),
    (dict(log_init=np.zeros((3, 4))), r"log_init must have shape \(N,\) or \(B, N\).*got \(3, 4\)"),
    (dict(log_emit=np.zeros((2, 5, 4), np.float16)), r"log_emit must have dtype float32 or "
                                                     r"float64, got float16"),
    (dict(log_init=np.zeros(4, np.float32)), r"log_init must have the dtype of log_emit "
                                             r"\(float64\), got float32"),
    (dict(lengths=np.array([1, 6])), r"lengths must lie in \[0, T\] with T=5, got lengths\[1\]=6"),
    (dict(lengths=np.array([-1, 2])), r"lengths\[0\]=-1"),
    (dict(lengths=np.array([1.0, 2.0])), r"lengths must have dtype int32 or int64, got float64"),
    (dict(lengths=np.array([1, 2, 3])), r"lengths must have shape \(B,\) with B=2, got \(3,\)"),
    (dict(log_emit=np.zeros((2, 5, 0))), r"at least one state"),
])
def test_clear_errors(bad, match):
    args = dict(log_init=np.zeros(4), log_trans=np.zeros((4, 4)), log_emit=np.zeros((2, 5, 4)),
                lengths=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ghn.log_likelihood(**args)


def test_empty_batch_and_zero_steps():
    ll, g = ghn.value_and_grad(np.zeros(3), np.zeros((3, 3)), np.zeros((0, 4, 3)))
    assert ll.shape == (0,) and g.log_emit.shape == (0, 4, 3)
    np.testing.assert_array_equal(g.log_trans, 0) and np.testing.assert_array_equal(g.log_init, 0)
    ll, g = ghn.value_and_grad(np.zeros(3), np.zeros((3, 3)), np.zeros((2, 0, 3)))
    np.testing.assert_array_equal(ll, 0)


def _saved_flags(saved, B, T, N, dtype):
    """The per-sequence flags of a CPU saved state (layout: src/hmm/common.h): 1 where
    the scaled forward pass gave up on a sequence and recomputed it in log space."""
    w = 4 if dtype == np.float64 else 8
    Np = w if N <= w else -(-N // (2 * w)) * (2 * w)
    start = B * T * Np + B * T
    return saved[start:start + B]


def _fallback_problem(rng, B, T, N, dtype):
    """Left-to-right models where the last two sequences underflow the scaled
    recursion (the last lockstep group: the groups before it finish their backward
    in the one-pass plan before the flag is seen)."""
    li, lt = _left_to_right(N)
    le = rng.normal(size=(B, T, N))
    # At step 3 only states 0..3 are reachable; the best emission is state N-1's,
    # every reachable state's is e^-1e4 below it: the scaled step underflows.
    le[-2:, 3, :] = -1e4
    le[-2:, 3, N - 1] = 0.0
    return li.astype(dtype), lt.astype(dtype), le.astype(dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["shared", "batch", "time", "ragged-all", "fallback"])
def test_value_and_grad_is_forward_then_backward_bitwise(rng, kind, dtype, threads):
    """value_and_grad runs forward and backward as one pass over the batch
    (hmm_forward_backward); its numbers are those of the two passes run apart,
    bit for bit, including when sequences fall back to log space (the one-pass
    plan is then dropped for the separate backward)."""
    from gluon_hmm import _native
    B, T, N = 11, 37, 13
    if kind == "fallback":
        args = _fallback_problem(rng, B, T, 6, dtype) + (None,)
    elif kind == "ragged-all":
        from cases import FLAG_SETS
        args = make_problem(rng, B, T, N, dtype=dtype, **FLAG_SETS["all"]).args
    else:
        args = make_problem(rng, B, T, N, trans=kind, dtype=dtype, lengths="ragged").args
    w = rng.normal(size=B).astype(dtype)
    call = _native._Call(*args, threads)
    loglik, saved = call.forward()
    separate = call.backward(saved, w)
    flags = _saved_flags(saved, B, T, args[2].shape[2], dtype)
    if kind == "fallback":
        np.testing.assert_array_equal(np.nonzero(flags)[0], [B - 2, B - 1])
    ll, grads = ghn.value_and_grad(*args, grad_loglik=w, num_threads=threads)
    np.testing.assert_array_equal(ll, loglik)
    for got, want in zip(grads, separate):
        np.testing.assert_array_equal(got, want)
    gamma, counts = ghn.posterior(*args, num_threads=threads)   # the same pass, weights 1
    _, ones = ghn.value_and_grad(*args, num_threads=threads)
    np.testing.assert_array_equal(gamma, ones.log_emit)
    np.testing.assert_array_equal(counts, ones.log_trans)
