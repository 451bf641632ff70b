"""Posteriors, Viterbi and posterior sampling: NumPy and MXNet front ends.

Checked against the float64 reference and brute-force enumeration of all
state paths on tiny cases.
"""
import mxnet as mx
import numpy as np
import pytest
from scipy import stats

import gluon_hmm as gh
import gluon_hmm.numpy as ghn
from cases import EDGE_SIZES, SMALL_SIZES, iter_cases, load_reference, make_problem, tol

ref = load_reference()

CASES = list(iter_cases(sizes=SMALL_SIZES + EDGE_SIZES, dtypes=(np.float64, np.float32)))
TINY = list(iter_cases(sizes=SMALL_SIZES, flags=("ragged", "neginf", "unnorm", "veryneg",
                                                 "nanpad", "all")))


def mx_args(p):
    arrs = [mx.nd.array(a, dtype=a.dtype) for a in p.args[:3]]
    return arrs + [mx.nd.array(p.lengths, dtype=p.lengths.dtype)]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.id)
def test_posterior_matches_reference(rng, spec):
    p = make_problem(rng, **spec.kwargs)
    r = ref.posterior(*p.astype(np.float64).args)
    t = tol(p.dtype)
    s = ghn.posterior_stats(*p.args)
    np.testing.assert_allclose(s.gamma, r.gamma, **t)
    np.testing.assert_allclose(s.trans_counts, r.trans_counts, **t)
    np.testing.assert_allclose(s.init_counts, r.init_counts, **t)
    np.testing.assert_allclose(s.loglik, r.loglik, **t)
    gamma, counts = ghn.posterior(*p.args)
    np.testing.assert_array_equal(gamma, s.gamma)
    if p.shape[0] > 0:
        valid = np.arange(p.shape[1])[None, :] < p.lengths[:, None]
        np.testing.assert_allclose(gamma.sum(-1)[valid], 1.0, **t)
        assert np.all(gamma[~valid] == 0)


@pytest.mark.parametrize("spec", TINY[::3], ids=lambda s: s.id)
def test_mxnet_posterior_equals_gradients(rng, spec):
    p = make_problem(rng, **spec.kwargs)
    args = mx_args(p)
    for a in args[:3]:
        a.attach_grad()
    with mx.autograd.record():
        ll = gh.log_likelihood(*args)
    ll.backward()
    post = gh.posterior_stats(*args)
    np.testing.assert_allclose(post.gamma.asnumpy(), args[2].grad.asnumpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(post.trans_counts.asnumpy(), args[1].grad.asnumpy(), rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_allclose(post.init_counts.asnumpy(), args[0].grad.asnumpy(), rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_allclose(post.loglik.asnumpy(), ll.asnumpy(), rtol=1e-12)
    gamma, counts = gh.posterior(*args)
    assert gamma.shape == p.log_emit.shape and counts.shape == p.log_trans.shape


@pytest.mark.parametrize("spec", TINY, ids=lambda s: s.id)
def test_viterbi_is_the_best_enumerated_path(rng, spec):
    p = make_problem(rng, **spec.kwargs)
    best_path, best_score = ref.brute_force_viterbi(*p.args)
    for dt in (np.float64, np.float32):
        q = p.astype(dt)
        path, score = ghn.viterbi(*q.args)
        assert path.dtype == np.int32
        # the returned path's score (in float64 on the given inputs) is the optimum
        own = ref.path_log_score(*q.astype(np.float64).args[:3], path, p.lengths)
        ok = np.isfinite(best_score)
        np.testing.assert_allclose(own[ok], best_score[ok], rtol=1e-5 if dt == np.float32 else 1e-12)
        np.testing.assert_allclose(score[ok], own[ok], **tol(dt))
        if dt == np.float64:
            np.testing.assert_array_equal(path, best_path)
        T = p.shape[1]
        assert np.all(path[np.arange(T)[None, :] >= p.lengths[:, None]] == -1)


def test_viterbi_ties_go_to_the_lower_state(rng):
    for _ in range(20):
        p = make_problem(rng, 4, 4, 3, ties=True, lengths="ragged")
        path, score = ghn.viterbi(*p.args)
        best_path, best_score = ref.brute_force_viterbi(*p.args)
        np.testing.assert_array_equal(path, best_path)
        np.testing.assert_allclose(score, best_score, rtol=0, atol=0)
        mpath, mscore = gh.viterbi(*mx_args(p))
        np.testing.assert_array_equal(mpath.asnumpy(), best_path)


def test_viterbi_float32_agrees_with_float64_at_length(rng):
    p = make_problem(rng, 6, 300, 8, trans="batch", lengths="ragged", neg_inf=True)
    a, sa = ghn.viterbi(*p.args)
    b, sb = ghn.viterbi(*p.astype(np.float32).args)
    assert np.mean(a == b) > 0.99
    np.testing.assert_allclose(sb, sa, rtol=1e-5)


def test_viterbi_mxnet_matches_numpy(rng):
    p = make_problem(rng, 5, 9, 4, trans="time", lengths="ragged")
    path, score = gh.viterbi(*mx_args(p))
    a, s = ghn.viterbi(*p.args)
    np.testing.assert_array_equal(path.asnumpy(), a)
    np.testing.assert_allclose(score.asnumpy(), s, rtol=1e-12)


@pytest.mark.parametrize("variant", [("shared", "shared"), ("batch", "batch"), ("shared", "time")])
def test_sample_path_frequencies_match_enumerated_posterior(rng, variant):
    """Chi-square goodness of fit of 20000 samples against the exact path posterior.

    The false-alarm rate of each test is 1e-4 (p < 1e-4 fails) and the seeds
    are fixed, so the outcome is deterministic.
    """
    p = make_problem(rng, 2, 4, 3, init=variant[0], trans=variant[1])
    S = 20000
    samples = ghn.sample(*p.args, num_samples=S, seed=12345)
    for b in range(2):
        dist = ref.brute_force_path_distribution(*p.args, b=b)
        paths, probs = dist.paths, dist.probs
        index = {tuple(int(v) for v in path): k for k, path in enumerate(paths)}
        counts = np.zeros(len(paths))
        for s in samples[b]:
            counts[index[tuple(int(v) for v in s)]] += 1
        keep = probs * S >= 5
        obs = np.append(counts[keep], counts[~keep].sum())
        exp = np.append(probs[keep] * S, probs[~keep].sum() * S)
        obs, exp = obs[exp > 0], exp[exp > 0]
        pvalue = stats.chisquare(obs, exp).pvalue
        assert pvalue > 1e-4, pvalue


def test_sample_marginals_match_gamma(rng):
    p = make_problem(rng, 3, 50, 5, trans="batch", lengths="ragged", neg_inf=True)
    S = 4000
    samples = ghn.sample(*p.args, num_samples=S, seed=7)
    gamma = ref.posterior(*p.args).gamma
    freq = np.stack([(samples == j).mean(axis=1) for j in range(5)], axis=-1)
    # 5 standard errors of a frequency at S=4000 is at most 0.04
    assert np.abs(freq - gamma).max() < 0.04
    T = p.shape[1]
    pad = np.arange(T)[None, None, :] >= p.lengths[:, None, None]
    assert np.all(samples[np.broadcast_to(pad, samples.shape)] == -1)
    # every sampled path has positive probability (respects -inf structural zeros)
    scores = ref.path_log_score(p.log_init, p.log_trans, p.log_emit,
                                samples[:, 0], p.lengths)
    assert np.all(np.isfinite(scores))


def test_sample_reproducible_and_thread_independent(rng):
    p = make_problem(rng, 9, 20, 4, lengths="ragged")
    a = ghn.sample(*p.args, num_samples=5, seed=99, num_threads=1)
    b = ghn.sample(*p.args, num_samples=5, seed=99, num_threads=2)
    c = ghn.sample(*p.args, num_samples=5, seed=100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = ghn.sample(*p.astype(np.float32).args, num_samples=5, seed=99)
    assert np.mean(a == d) > 0.95


def test_mxnet_sample_uses_mxnet_seed(rng):
    p = make_problem(rng, 3, 12, 4, lengths="ragged")
    args = mx_args(p)
    mx.random.seed(42)
    a = gh.sample(*args, num_samples=3).asnumpy()
    mx.random.seed(42)
    b = gh.sample(*args, num_samples=3).asnumpy()
    c = gh.sample(*args, num_samples=3).asnumpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)
    assert a.shape == (3, 3, 12) and a.dtype == np.int32


class Decoder(mx.gluon.HybridBlock):
    def hybrid_forward(self, F, li, lt, le, lengths):
        path, score = gh.viterbi(li, lt, le, lengths)
        samples = gh.sample(li, lt, le, lengths, num_samples=2)
        gamma, _ = gh.posterior(li, lt, le, lengths)
        ll = gh.log_likelihood(li, lt, le, lengths)
        return ll, path, score, samples, gamma


def test_inference_ops_in_hybridized_block_under_autograd(rng):
    """Non-differentiable outputs must not break the graph; samples are fresh per call."""
    p = make_problem(rng, 3, 10, 4, lengths="ragged").astype(np.float32)
    args = mx_args(p)
    net = Decoder()
    net.hybridize()
    for a in args[:3]:
        a.attach_grad()
    with mx.autograd.record():
        ll, path, score, s1, gamma = net(*args)
    ll.backward()
    np.testing.assert_allclose(args[2].grad.asnumpy(), gamma.asnumpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(path.asnumpy(), ghn.viterbi(*p.args).path)
    draws = [net(*args)[3].asnumpy() for _ in range(4)]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])


@pytest.mark.parametrize("size", [(3, 1, 4), (4, 6, 1), (2, 0, 3), (0, 3, 2)])
def test_edge_shapes(rng, size):
    p = make_problem(rng, *size, lengths="ragged")
    path, score = ghn.viterbi(*p.args)
    samples = ghn.sample(*p.args, num_samples=2, seed=1)
    assert path.shape == size[:2] and samples.shape == (size[0], 2, size[1])
    if size[2] == 1:
        valid = np.arange(size[1])[None, :] < p.lengths[:, None]
        assert np.all(path[valid] == 0) and np.all(samples[:, 0][valid] == 0)
    np.testing.assert_allclose(score, ref.viterbi(*p.args)[1], rtol=1e-12)


def test_impossible_sequence_samples_are_minus_one(rng):
    p = make_problem(rng, 2, 5, 3)
    le = p.log_emit.copy()
    le[0, 2, :] = -np.inf
    s = ghn.sample(p.log_init, p.log_trans, le, num_samples=3, seed=3)
    assert np.all(s[0] == -1) and np.all(s[1] >= 0)
    path, score = ghn.viterbi(p.log_init, p.log_trans, le)
    assert score[0] == -np.inf and np.isfinite(score[1])
