"""Property-based tests (hypothesis): invariants that hold for every input."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gluon_hmm.numpy as ghn
from cases import make_problem, load_reference

ref = load_reference()

problems = st.builds(
    dict,
    B=st.integers(1, 5), T=st.integers(1, 12), N=st.integers(1, 6),
    init=st.sampled_from(["shared", "batch"]), trans=st.sampled_from(["shared", "batch", "time"]),
    dtype=st.sampled_from([np.float64, np.float32]),
    neg_inf=st.booleans(), unnormalised=st.booleans(), very_negative=st.booleans(),
    seed=st.integers(0, 2 ** 32 - 1),
)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def build(spec, **extra):
    spec = dict(spec)
    seed = spec.pop("seed")
    return make_problem(np.random.default_rng(seed), lengths="ragged", **spec, **extra)


def take(p, b):
    """Sequence b alone, as a batch of one."""
    li = p.log_init if p.log_init.ndim == 1 else p.log_init[b:b + 1]
    lt = p.log_trans if p.log_trans.ndim == 2 else p.log_trans[b:b + 1]
    return li, lt, p.log_emit[b:b + 1], p.lengths[b:b + 1]


@SETTINGS
@given(problems)
def test_batch_equals_each_sequence_alone(spec):
    p = build(spec)
    ll, g = ghn.value_and_grad(*p.args)
    vpath, vscore = ghn.viterbi(*p.args)
    for b in range(p.shape[0]):
        one = take(p, b)
        ll1, g1 = ghn.value_and_grad(*one)
        np.testing.assert_allclose(ll[b], ll1[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g.log_emit[b], g1.log_emit[0], rtol=1e-4, atol=1e-5)
        if p.log_trans.ndim > 2:
            np.testing.assert_allclose(g.log_trans[b], g1.log_trans[0], rtol=1e-4, atol=1e-5)
        path1, score1 = ghn.viterbi(*one)
        np.testing.assert_array_equal(vpath[b], path1[0])


@SETTINGS
@given(problems, st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 0.0]))
def test_padding_content_has_no_effect(spec, fill):
    p = build(spec)
    T = p.shape[1]
    pad = np.arange(T)[None, :] >= p.lengths[:, None]
    le = np.where(pad[:, :, None], fill, p.log_emit).astype(p.dtype)
    lt = p.log_trans
    if lt.ndim == 4:
        padt = pad.copy()
        padt[:, 0] = True
        lt = np.where(padt[:, :, None, None], fill, lt).astype(p.dtype)
    a = ghn.value_and_grad(*p.args)
    b = ghn.value_and_grad(p.log_init, lt, le, p.lengths)
    np.testing.assert_array_equal(a[0], b[0])
    for x, y in zip(a[1], b[1]):
        np.testing.assert_array_equal(x, y)
    assert np.all(b[1].log_emit[pad] == 0)
    np.testing.assert_array_equal(ghn.viterbi(*p.args).path,
                                  ghn.viterbi(p.log_init, lt, le, p.lengths).path)


@SETTINGS
@given(problems)
def test_posteriors_sum_to_one_and_match_reference(spec):
    p = build(spec)
    gamma, counts = ghn.posterior(*p.args)
    valid = np.arange(p.shape[1])[None, :] < p.lengths[:, None]
    np.testing.assert_allclose(gamma.sum(-1)[valid], 1.0, rtol=1e-4)
    r = ref.posterior(*p.astype(np.float64).args)
    np.testing.assert_allclose(gamma, r.gamma, rtol=2e-4, atol=2e-4)
    # expected transition counts sum to the number of transitions
    total = np.maximum(p.lengths.astype(np.int64) - 1, 0).sum()
    np.testing.assert_allclose(np.sum(counts, dtype=np.float64), total, rtol=1e-4, atol=1e-4)
