"""Gluon blocks (gluon_hmm/blocks.py) and Baum-Welch (gluon_hmm/em.py).

Values are compared with the float64 reference (gluon_hmm/reference.py),
parameter gradients with their closed forms from the reference posteriors,
EM steps with a scaled forward-backward written here in NumPy, and the CRF
with brute-force enumeration.
"""
import doctest
import itertools
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cases import load_reference, make_lengths, tol  # noqa: E402

mx = pytest.importorskip("mxnet")
gh = pytest.importorskip("gluon_hmm")
from gluon_hmm.blocks import CategoricalHMM, GaussianHMM, HMM, LinearChainCRF  # noqa: E402

ref = load_reference()
ROOT = pathlib.Path(__file__).resolve().parents[1]
KINDS = ("hmm", "categorical", "gaussian", "crf")
MODES = ("imperative", "hybrid", "static")
N, V, D = 3, 4, 2
LOG_2PI = np.log(2 * np.pi)


# ------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------

def log_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def block_params(block):
    """{short name: float64 value} of a block's parameters."""
    return {p.name.split("_", 1)[1]: p.data().asnumpy().astype(np.float64)
            for p in block.collect_params().values()}


class Case:
    """A block with random parameters and random inputs.

    ``inputs(True)`` are padded batches with ragged lengths whose padded entries
    hold garbage (NaN, -1); ``inputs(False)`` are the same arrays with valid values
    everywhere and no lengths.
    """

    def __init__(self, kind, rng, dtype="float32", B=5, T=6, ragged=True):
        self.kind, self.dtype = kind, dtype
        self.block = {"hmm": lambda: HMM(N), "categorical": lambda: CategoricalHMM(N, V),
                      "gaussian": lambda: GaussianHMM(N, D),
                      "crf": lambda: LinearChainCRF(N)}[kind]()
        self.block.initialize()
        self.block.cast(dtype)
        for p in self.block.collect_params().values():
            p.set_data(mx.nd.array(rng.normal(0, 1, p.shape), dtype=dtype))
        self.lengths = make_lengths(rng, B, T, "ragged" if ragged else "full")
        pad = np.arange(T)[None, :] >= self.lengths[:, None]
        if kind == "hmm":
            clean = [rng.normal(-1.5, 1.0, (B, T, N))]
        elif kind == "categorical":
            clean = [rng.integers(0, V, (B, T))]
        elif kind == "gaussian":
            clean = [rng.normal(0, 1.5, (B, T, D))]
        else:
            clean = [rng.normal(0, 1.5, (B, T, N)), rng.integers(0, N, (B, T))]
        self.clean, self.padded = [], []
        for a in clean:
            garbage = a.copy()
            garbage[pad] = -1 if a.dtype.kind == "i" else np.nan
            dt = "int32" if a.dtype.kind == "i" else dtype
            self.clean.append(mx.nd.array(a, dtype=dt))
            self.padded.append(mx.nd.array(garbage, dtype=dt))
        self.x = self.padded
        self.nd_lengths = mx.nd.array(self.lengths, dtype="int32")

    def params(self):
        return block_params(self.block)

    def inputs(self, with_lengths=True):
        return self.padded + [self.nd_lengths] if with_lengths else list(self.clean)

    def np_potentials(self, with_lengths=True):
        """(log_init, log_trans, log_emit) in float64, written independently of the blocks."""
        p = self.params()
        x = (self.padded if with_lengths else self.clean)[0].asnumpy().astype(np.float64)
        if self.kind == "crf":
            return p["start"], p["trans"], x
        log_init, log_trans = log_softmax(p["init_logits"]), log_softmax(p["trans_logits"])
        if self.kind == "hmm":
            return log_init, log_trans, x
        if self.kind == "categorical":
            log_b = log_softmax(p["emit_logits"])                           # (N, V)
            return log_init, log_trans, log_b.T[np.clip(x.astype(int), 0, V - 1)]
        mu, log_s = p["means"], p["log_scales"]
        z = (x[:, :, None, :] - mu) / np.exp(log_s)
        return log_init, log_trans, (-0.5 * (z ** 2).sum(-1) - log_s.sum(-1) - 0.5 * D * LOG_2PI)

    def expected(self, with_lengths=True):
        lengths = self.lengths if with_lengths else None
        log_init, log_trans, log_emit = self.np_potentials(with_lengths)
        ll = ref.log_likelihood(log_init, log_trans, log_emit, lengths)
        if self.kind != "crf":
            return ll
        tags = (self.padded if with_lengths else self.clean)[1].asnumpy().astype(int)
        return ll - ref.path_log_score(log_init, log_trans, log_emit, tags, lengths)

    def expected_grads(self, with_lengths=True):
        """Closed-form gradients of sum(output) w.r.t. every parameter, from reference posteriors."""
        lengths = self.lengths if with_lengths else None
        B, T = self.x[0].shape[:2]
        L = self.lengths if with_lengths else np.full(B, T)
        mask = np.arange(T)[None, :] < L[:, None]
        log_init, log_trans, log_emit = self.np_potentials(with_lengths)
        post = ref.posterior(log_init, log_trans, log_emit, lengths)
        p = self.params()
        data = self.padded if with_lengths else self.clean
        if self.kind == "crf":
            tags = data[1].asnumpy().astype(int)
            onehot = np.eye(N)[np.clip(tags, 0, N - 1)] * mask[:, :, None]
            gold_init = onehot[:, 0].sum(0) if T else np.zeros(N)
            gold_trans = np.einsum("bti,btj->ij", onehot[:, :-1], onehot[:, 1:])
            return {"start": post.init_counts - gold_init, "trans": post.trans_counts - gold_trans}

        def through_softmax(counts, logits):
            return counts - np.exp(log_softmax(logits)) * counts.sum(-1, keepdims=True)

        grads = {"init_logits": through_softmax(post.init_counts, p["init_logits"]),
                 "trans_logits": through_softmax(post.trans_counts, p["trans_logits"])}
        gamma = post.gamma
        x = data[0].asnumpy().astype(np.float64)
        if self.kind == "categorical":
            counts = np.zeros((N, V))
            s = x.astype(int)
            for b, t in zip(*np.nonzero(mask)):
                counts[:, s[b, t]] += gamma[b, t]
            grads["emit_logits"] = through_softmax(counts, p["emit_logits"])
        elif self.kind == "gaussian":
            xv = np.where(mask[:, :, None], x, 0.0)
            inv_s = np.exp(-p["log_scales"])
            z = (xv[:, :, None, :] - p["means"]) * inv_s                     # (B, T, N, D)
            w = gamma[..., None]
            grads["means"] = (w * z * inv_s).sum((0, 1))
            grads["log_scales"] = (w * (z ** 2 - 1)).sum((0, 1))
        return grads


def set_mode(block, mode):
    if mode == "imperative":
        block.hybridize(False)
    else:
        block.hybridize(True, static_alloc=(mode == "static"))


def run(block, inputs, grad_req="write"):
    params = block.collect_params()
    params.setattr("grad_req", grad_req)
    with mx.autograd.record():
        out = block(*inputs)
    out.backward()
    return out.asnumpy(), {k.split("_", 1)[1]: v.grad().asnumpy() for k, v in params.items()}


# ------------------------------------------------------------------------------------
# forward and gradients vs the reference, in every mode and dtype
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_in_every_mode(rng, kind, dtype):
    case = Case(kind, rng, dtype=dtype)
    t = tol(dtype)
    results = {}
    for mode in MODES:
        set_mode(case.block, mode)
        for with_lengths in (True, False, True):      # switching lengths on a cached graph
            out, grads = run(case.block, case.inputs(with_lengths))
            assert out.dtype == np.dtype(dtype)
            np.testing.assert_allclose(out, case.expected(with_lengths), **t)
            for name, g in case.expected_grads(with_lengths).items():
                np.testing.assert_allclose(grads[name], g, **t, err_msg=name)
            results.setdefault(with_lengths, []).append(out)
    for outs in results.values():     # hybridized == imperative
        for o in outs[1:]:
            np.testing.assert_allclose(o, outs[0], **t)


@pytest.mark.parametrize("mode", MODES)
def test_hmm_input_gradient_is_posterior(rng, mode):
    case = Case("hmm", rng, dtype="float64")
    set_mode(case.block, mode)
    log_emit = case.x[0]
    log_emit.attach_grad()
    with mx.autograd.record():
        out = case.block(log_emit, case.nd_lengths)
    out.backward()
    gamma = ref.posterior(*case.np_potentials(), case.lengths).gamma
    np.testing.assert_allclose(log_emit.grad.asnumpy(), gamma, **tol(np.float64))


def test_blocks_agree_with_functional_api(rng):
    case = Case("categorical", rng, dtype="float64")
    log_init, log_trans, log_emit = case.block.log_probs(case.x[0], case.nd_lengths)
    direct = gh.log_likelihood(log_init, log_trans, log_emit, case.nd_lengths)
    np.testing.assert_allclose(case.block(*case.inputs()).asnumpy(), direct.asnumpy(),
                               **tol(np.float64))
    post = case.block.posterior(*case.inputs())
    fpost = gh.posterior(log_init, log_trans, log_emit, case.nd_lengths)
    np.testing.assert_allclose(post.gamma.asnumpy(), fpost.gamma.asnumpy(), **tol(np.float64))


# ------------------------------------------------------------------------------------
# posterior, viterbi, sample
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hmm", "categorical", "gaussian"])
def test_inference_methods(rng, kind):
    case = Case(kind, rng, dtype="float64")
    pot = case.np_potentials()
    rpost = ref.posterior(*pot, case.lengths)
    post = case.block.posterior(*case.inputs())
    np.testing.assert_allclose(post.gamma.asnumpy(), rpost.gamma, **tol(np.float64))
    np.testing.assert_allclose(post.trans_counts.asnumpy(), rpost.trans_counts, **tol(np.float64))
    path, score = case.block.viterbi(*case.inputs())
    rvit = ref.viterbi(*pot, case.lengths)
    np.testing.assert_array_equal(path.asnumpy(), rvit.path)
    np.testing.assert_allclose(score.asnumpy(), rvit.score, **tol(np.float64))
    mx.random.seed(7)
    paths = case.block.sample(*case.inputs(), num_samples=3000).asnumpy()
    B, T = case.x[0].shape[:2]
    assert paths.shape == (B, 3000, T) and paths.dtype == np.int32
    valid = np.arange(T)[None, None, :] < case.lengths[:, None, None]
    assert np.all(paths[~np.broadcast_to(valid, paths.shape)] == -1)
    assert np.all((paths >= 0)[np.broadcast_to(valid, paths.shape)])
    freq = (paths[..., None] == np.arange(N)).mean(axis=1)                # (B, T, N)
    np.testing.assert_allclose(freq, rpost.gamma, atol=0.05)


def test_methods_without_lengths_and_under_autograd(rng):
    case = Case("gaussian", rng, ragged=False)
    with mx.autograd.record():
        path, _ = case.block.viterbi(case.x[0])
        gamma = case.block.posterior(case.x[0]).gamma
    assert path.shape == case.x[0].shape[:2] and gamma.shape == case.x[0].shape[:2] + (N,)
    assert case.block.sample(case.x[0]).shape == case.x[0].shape[:2][:1] + (1,) + \
        case.x[0].shape[1:2]


# ------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------

def test_distributions_are_normalised(rng):
    cat = Case("categorical", rng, dtype="float64").block
    log_init, log_trans = cat.log_probs()
    np.testing.assert_allclose(np.exp(log_init.asnumpy()).sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_trans.asnumpy()).sum(axis=1), np.ones(N), rtol=1e-12)
    # each state's emission distribution over the V symbols sums to 1
    _, _, log_emit = cat.log_probs(mx.nd.array(np.arange(V)[None], dtype="int32"))
    np.testing.assert_allclose(np.exp(log_emit.asnumpy()[0]).sum(axis=0), np.ones(N),
                               rtol=1e-12)
    # the whole model: p(x) summed over every sequence of length 3 is 1
    seqs = np.array(list(itertools.product(range(V), repeat=3)), dtype=np.int32)
    total = np.exp(cat(mx.nd.array(seqs, dtype="int32")).asnumpy()).sum()
    np.testing.assert_allclose(total, 1.0, rtol=1e-10)
    # Gaussian: each state's density integrates to 1 (D = 1, trapezoid on a fine grid)
    g = GaussianHMM(2, 1)
    g.initialize()
    g.cast("float64")
    g.means.set_data(mx.nd.array([[-1.0], [2.0]], dtype="float64"))
    g.log_scales.set_data(mx.nd.array([[-0.5], [0.3]], dtype="float64"))
    grid = np.linspace(-15, 15, 20001)
    _, _, log_emit = g.log_probs(mx.nd.array(grid[None, :, None], dtype="float64"))
    dens = np.exp(log_emit.asnumpy()[0])                                  # (G, 2)
    np.testing.assert_allclose(np.trapz(dens, grid, axis=0), [1.0, 1.0], rtol=1e-8)


# ------------------------------------------------------------------------------------
# CRF against brute force
# ------------------------------------------------------------------------------------

def test_crf_matches_brute_force(rng):
    for B, T, n in [(3, 1, 2), (4, 3, 3), (2, 4, 3)]:
        crf = LinearChainCRF(n)
        crf.initialize()
        crf.cast("float64")
        start, trans = rng.normal(0, 1, n), rng.normal(0, 1, (n, n))
        crf.start.set_data(mx.nd.array(start, dtype="float64"))
        crf.trans.set_data(mx.nd.array(trans, dtype="float64"))
        scores = rng.normal(0, 1, (B, T, n))
        lengths = rng.integers(1, T + 1, B)
        tags = rng.integers(0, n, (B, T))
        nll = crf(mx.nd.array(scores, dtype="float64"), mx.nd.array(tags, dtype="int32"),
                  mx.nd.array(lengths, dtype="int32")).asnumpy()
        path, best = crf.decode(mx.nd.array(scores, dtype="float64"),
                                mx.nd.array(lengths, dtype="int32"))
        for b in range(B):
            L = lengths[b]

            def s(y):
                return (start[y[0]] + scores[b, 0, y[0]]
                        + sum(trans[y[t - 1], y[t]] + scores[b, t, y[t]] for t in range(1, L)))
            all_y = list(itertools.product(range(n), repeat=int(L)))
            all_s = np.array([s(y) for y in all_y])
            log_z = np.log(np.exp(all_s - all_s.max()).sum()) + all_s.max()
            np.testing.assert_allclose(nll[b], log_z - s(tags[b, :L]), rtol=1e-10, atol=1e-10)
            assert tuple(path.asnumpy()[b, :L]) == all_y[int(np.argmax(all_s))]
            assert np.all(path.asnumpy()[b, L:] == -1)
            np.testing.assert_allclose(best.asnumpy()[b], all_s.max(), rtol=1e-10)


# ------------------------------------------------------------------------------------
# grad_req='add' accumulates (library ops overwrite: the blocks route around it)
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_grad_req_add_accumulates(rng, kind, mode):
    case = Case(kind, rng)
    set_mode(case.block, mode)
    _, once = run(case.block, case.inputs(), grad_req="write")
    case.block.collect_params().setattr("grad_req", "add")
    case.block.collect_params().zero_grad()
    for _ in range(2):
        _, twice = run(case.block, case.inputs(), grad_req="add")
    for name in once:
        assert np.abs(once[name]).max() > 0, name
        np.testing.assert_allclose(twice[name], 2 * once[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    if kind == "hmm":      # a leaf input with grad_req='add' accumulates too
        x = case.x[0]
        x.attach_grad(grad_req="add")
        for _ in range(2):
            with mx.autograd.record():
                out = case.block(x, case.nd_lengths)
            out.backward()
        gamma = ref.posterior(*case.np_potentials(), case.lengths).gamma
        np.testing.assert_allclose(x.grad.asnumpy(), 2 * gamma, **tol(np.float32))


# ------------------------------------------------------------------------------------
# padding
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_padding_content_is_ignored(rng, kind):
    case = Case(kind, rng, dtype="float64")
    out1, g1 = run(case.block, case.inputs())
    pad = np.arange(case.x[0].shape[1])[None, :] >= case.lengths[:, None]
    other = []
    for a in case.x:
        v = a.asnumpy()
        v[pad] = 0 if v.dtype.kind == "i" else 123.0
        other.append(mx.nd.array(v, dtype=a.dtype))
    out2, g2 = run(case.block, other + [case.nd_lengths])
    assert np.all(np.isfinite(out1)) and all(np.all(np.isfinite(g)) for g in g1.values())
    np.testing.assert_allclose(out1, out2, rtol=1e-12)
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-12, atol=1e-12, err_msg=name)


# ------------------------------------------------------------------------------------
# EM
# ------------------------------------------------------------------------------------

def np_forward_backward(pi, A, emit_prob):
    """Scaled forward-backward of one sequence (float64): loglik, gamma (T, N), xi_sum (N, N)."""
    T = emit_prob.shape[0]
    alpha = np.zeros((T, len(pi)))
    c = np.zeros(T)
    a = pi * emit_prob[0]
    c[0] = a.sum()
    alpha[0] = a / c[0]
    for t in range(1, T):
        a = (alpha[t - 1] @ A) * emit_prob[t]
        c[t] = a.sum()
        alpha[t] = a / c[t]
    beta = np.ones_like(alpha)
    for t in range(T - 2, -1, -1):
        beta[t] = A @ (emit_prob[t + 1] * beta[t + 1]) / c[t + 1]
    gamma = alpha * beta
    xi = np.zeros_like(A)
    for t in range(1, T):
        xi += np.outer(alpha[t - 1], emit_prob[t] * beta[t]) * A / c[t]
    return np.log(c).sum(), gamma, xi


def sample_hmm(rng, pi, A, emit_fn, lengths):
    seqs = []
    for L in lengths:
        z = [rng.choice(len(pi), p=pi)]
        for _ in range(L - 1):
            z.append(rng.choice(len(pi), p=A[z[-1]]))
        seqs.append(np.array([emit_fn(k) for k in z]))
    return seqs


def test_one_em_step_matches_numpy_baum_welch(rng):
    # categorical
    seqs = [rng.integers(0, V, L) for L in (7, 3, 12, 1, 5)]
    cat = CategoricalHMM(N, V)
    cat.initialize()
    cat.cast("float64")
    for p in cat.collect_params().values():
        p.set_data(mx.nd.array(rng.normal(0, 1, p.shape), dtype="float64"))
    prm = block_params(cat)
    pi, A = np.exp(log_softmax(prm["init_logits"])), np.exp(log_softmax(prm["trans_logits"]))
    Bm = np.exp(log_softmax(prm["emit_logits"]))
    init_c, trans_c, emit_c, total = np.zeros(N), np.zeros((N, N)), np.zeros((N, V)), 0.0
    for s in seqs:
        ll, gamma, xi = np_forward_backward(pi, A, Bm[:, s].T)
        total += ll
        init_c += gamma[0]
        trans_c += xi
        for t, v in enumerate(s):
            emit_c[:, v] += gamma[t]
    history = cat.fit_em(seqs, max_iter=1)
    np.testing.assert_allclose(history, [total], rtol=1e-10)
    new = block_params(cat)
    np.testing.assert_allclose(np.exp(log_softmax(new["init_logits"])), init_c / init_c.sum(),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.exp(log_softmax(new["trans_logits"])),
                               trans_c / trans_c.sum(1, keepdims=True), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.exp(log_softmax(new["emit_logits"])),
                               emit_c / emit_c.sum(1, keepdims=True), rtol=1e-9, atol=1e-12)

    # Gaussian, given as a padded batch with lengths
    lengths = np.array([6, 2, 9, 4])
    x = rng.normal(0, 1, (4, 9, D))
    gauss = GaussianHMM(N, D)
    gauss.initialize()
    gauss.cast("float64")
    for p in gauss.collect_params().values():
        p.set_data(mx.nd.array(rng.normal(0, 0.5, p.shape), dtype="float64"))
    prm = block_params(gauss)
    pi, A = np.exp(log_softmax(prm["init_logits"])), np.exp(log_softmax(prm["trans_logits"]))
    mu, sd = prm["means"], np.exp(prm["log_scales"])
    init_c, trans_c, total = np.zeros(N), np.zeros((N, N)), 0.0
    w_sum, wx, wxx = np.zeros(N), np.zeros((N, D)), np.zeros((N, D))
    for b, L in enumerate(lengths):
        xs = x[b, :L]
        dens = np.prod(np.exp(-0.5 * ((xs[:, None] - mu) / sd) ** 2) / (np.sqrt(2 * np.pi) * sd),
                       axis=-1)
        ll, gamma, xi = np_forward_backward(pi, A, dens)
        total += ll
        init_c += gamma[0]
        trans_c += xi
        w_sum += gamma.sum(0)
        wx += gamma.T @ xs
        wxx += gamma.T @ xs ** 2
    new_mu = wx / w_sum[:, None]
    new_var = wxx / w_sum[:, None] - new_mu ** 2
    x_garbage = x.copy()
    x_garbage[np.arange(9)[None, :] >= lengths[:, None]] = np.nan
    history = gauss.fit_em(x_garbage, lengths=lengths, max_iter=1)
    np.testing.assert_allclose(history, [total], rtol=1e-10)
    new = block_params(gauss)
    np.testing.assert_allclose(np.exp(log_softmax(new["init_logits"])), init_c / init_c.sum(),
                               rtol=1e-9)
    np.testing.assert_allclose(np.exp(log_softmax(new["trans_logits"])),
                               trans_c / trans_c.sum(1, keepdims=True), rtol=1e-9)
    np.testing.assert_allclose(new["means"], new_mu, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.exp(2 * new["log_scales"]), new_var, rtol=1e-8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_em_history_non_decreasing_and_agrees_with_hmmlearn(rng, dtype):
    pi = np.array([0.7, 0.2, 0.1])
    A = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    means = np.array([[-2.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    lengths = rng.integers(20, 60, 12)
    seqs = sample_hmm(rng, pi, A, lambda k: rng.normal(means[k], 0.7), lengths)
    gauss = GaussianHMM(N, D)
    gauss.initialize()
    gauss.cast(dtype)
    start_means = means + rng.normal(0, 1.0, means.shape)
    gauss.means.set_data(mx.nd.array(start_means, dtype=dtype))
    history = gauss.fit_em(seqs, max_iter=40, tol=0)
    assert 5 < len(history) <= 40
    assert np.all(np.diff(history) >= -1e-7 * np.abs(history[:-1])), np.diff(history)
    assert history[-1] > history[0]

    hmmlearn = pytest.importorskip("hmmlearn.hmm")
    theirs = hmmlearn.GaussianHMM(N, covariance_type="diag", n_iter=40, tol=-np.inf,
                                  init_params="", params="stmc", covars_prior=0.0)
    theirs.startprob_ = np.full(N, 1.0 / N)
    theirs.transmat_ = np.full((N, N), 1.0 / N)
    theirs.means_ = start_means
    theirs.covars_ = np.ones((N, D))
    theirs.fit(np.concatenate(seqs), lengths)
    ours = GaussianHMM(N, D)
    ours.initialize()
    ours.cast(dtype)
    for name in ("init_logits", "trans_logits", "means", "log_scales"):
        getattr(ours, name).set_data(getattr(gauss, name).data())
    final_ours = ours(mx.nd.array(np.stack([np.pad(s, ((0, max(lengths) - len(s)), (0, 0)))
                                            for s in seqs]), dtype=dtype),
                      mx.nd.array(lengths, dtype="int32")).asnumpy().sum()
    final_theirs = theirs.score(np.concatenate(seqs), lengths)
    assert abs(final_ours - final_theirs) < (1e-6 if dtype == "float64" else 1e-2) * abs(
        final_theirs)
    np.testing.assert_allclose(gauss.means.data().asnumpy(), theirs.means_, rtol=1e-3, atol=1e-3)


def test_categorical_em_non_decreasing_and_input_layouts(rng):
    pi = np.array([0.5, 0.3, 0.2])
    A = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    E = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.05, 0.05, 0.45, 0.45]])
    lengths = rng.integers(1, 40, 15)
    seqs = sample_hmm(rng, pi, A, lambda k: rng.choice(V, p=E[k]), lengths)
    start = {"init_logits": rng.normal(0, 1, N), "trans_logits": rng.normal(0, 1, (N, N)),
             "emit_logits": rng.normal(0, 1, (N, V))}
    padded = np.full((len(seqs), lengths.max()), -1)
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    histories = []
    for data, lens in ((seqs, None), (mx.nd.array(padded, dtype="int32"), lengths)):
        cat = CategoricalHMM(N, V)
        cat.initialize()
        for name, value in start.items():
            getattr(cat, name).set_data(mx.nd.array(value))
        hist = cat.fit_em(data, lengths=lens, max_iter=60, tol=1e-9)
        assert np.all(np.diff(hist) >= -1e-6), np.diff(hist)
        assert hist[-1] > hist[0]
        histories.append(hist)
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-9)


def test_em_progress_bar_and_missing_tqdm(rng, monkeypatch):
    cat = CategoricalHMM(2, 3)
    cat.initialize()
    pytest.importorskip("tqdm")
    assert len(cat.fit_em([[0, 1, 2, 2, 1]], max_iter=3, tol=0, progress=True)) == 3
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match="tqdm"):
        cat.fit_em([[0, 1, 2]], max_iter=2, progress=True)


# ------------------------------------------------------------------------------------
# gradient training, neural emissions
# ------------------------------------------------------------------------------------

def test_gradient_training_lowers_nll(rng):
    E = np.array([[0.8, 0.1, 0.05, 0.05], [0.05, 0.05, 0.1, 0.8], [0.25, 0.25, 0.25, 0.25]])
    A = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]])
    seqs = sample_hmm(rng, np.ones(N) / N, A, lambda k: rng.choice(V, p=E[k]), [30] * 16)
    x = mx.nd.array(np.stack(seqs), dtype="int32")
    for block, inputs in [(CategoricalHMM(N, V), [x]),
                          (LinearChainCRF(V), [mx.nd.array(rng.normal(0, 1, (16, 30, V))), x])]:
        block.initialize()
        block.hybridize()
        trainer = mx.gluon.Trainer(block.collect_params(), "adam", {"learning_rate": 0.05})
        losses = []
        for _ in range(60):
            with mx.autograd.record():
                out = block(*inputs)
                loss = out.mean() if isinstance(block, LinearChainCRF) else -out.mean()
            loss.backward()
            trainer.step(1)
            losses.append(float(loss.asscalar()))
        assert losses[-1] < losses[0] - 0.1, losses[::10]


class NeuralHMM(mx.gluon.HybridBlock):
    """Emissions from a small network: log p(x_t | z_t = j) = log_softmax(net(x_t))[j] (a toy)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.net = mx.gluon.nn.Dense(N, flatten=False)
            self.hmm = HMM(N)

    def hybrid_forward(self, F, x, lengths):
        return self.hmm(F.log_softmax(self.net(x), axis=-1), lengths)


@pytest.mark.parametrize("mode", MODES)
def test_neural_hmm_end_to_end(rng, mode):
    model = NeuralHMM()
    model.initialize(mx.init.Xavier())
    set_mode(model, mode)
    x = mx.nd.array(rng.normal(0, 1, (8, 10, 5)))
    lengths = mx.nd.array(rng.integers(1, 11, 8), dtype="int32")
    trainer = mx.gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 0.05})
    losses = []
    for _ in range(20):
        with mx.autograd.record():
            loss = -model(x, lengths).mean()
        loss.backward()
        grads = {k: float(v.grad().abs().sum().asscalar())
                 for k, v in model.collect_params().items()}
        trainer.step(1)
        losses.append(float(loss.asscalar()))
    assert all(g > 0 for g in grads.values()), grads
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------
# export / import in a fresh process
# ------------------------------------------------------------------------------------

IMPORT_SCRIPT = textwrap.dedent("""
    import sys
    import mxnet as mx
    import numpy as np
    import gluon_hmm  # registers the operators
    folder = sys.argv[1]
    for name in sys.argv[2:]:
        data = mx.nd.load("%s/%s-data.nd" % (folder, name))
        inputs = [data["in%d" % i] for i in range(len(data) - 1)]
        block = mx.gluon.SymbolBlock.imports(
            "%s/%s-symbol.json" % (folder, name), ["data%d" % i for i in range(len(inputs))],
            "%s/%s-0000.params" % (folder, name))
        out = block(*inputs).asnumpy()
        np.testing.assert_allclose(out, data["out"].asnumpy(), rtol=1e-6, atol=1e-6)
        print(name, "ok")
""")


def test_export_import_round_trip_in_fresh_process(rng, tmp_path):
    names = []
    for kind in KINDS:
        for dtype in ("float32", "float64"):
            case = Case(kind, rng, dtype=dtype)
            case.block.hybridize(static_alloc=True)
            no_lengths = case.block(*case.inputs(False)) if kind == "categorical" else None
            out = case.block(*case.inputs())
            name = "%s-%s" % (kind, dtype)
            case.block.export(str(tmp_path / name))
            data = {"in%d" % i: a for i, a in enumerate(case.inputs())}
            data["out"] = out
            mx.nd.save(str(tmp_path / ("%s-data.nd" % name)), data)
            names.append(name)
            assert no_lengths is None or no_lengths.shape == out.shape
    proc = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT, str(tmp_path)] + names,
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [w for n in names for w in (n, "ok")]


# ------------------------------------------------------------------------------------
# public names, convenience inputs, docstring examples
# ------------------------------------------------------------------------------------

def test_parameter_names_are_public_api():
    expected = {HMM(2): ["init_logits", "trans_logits"],
                CategoricalHMM(2, 3): ["init_logits", "trans_logits", "emit_logits"],
                GaussianHMM(2, 3): ["init_logits", "trans_logits", "means", "log_scales"],
                LinearChainCRF(2): ["start", "trans"]}
    for block, names in expected.items():
        keys = list(block.collect_params().keys())
        assert len(keys) == len(names)
        for key, name in zip(keys, names):
            assert key == block.prefix + name


def test_lengths_as_list_or_numpy(rng):
    case = Case("categorical", rng, dtype="float64")
    want = case.block(*case.inputs()).asnumpy()
    for lengths in (list(case.lengths), case.lengths.astype(np.int64)):
        got = case.block(case.padded[0], lengths).asnumpy()
        np.testing.assert_allclose(got, want, **tol(np.float64))


def test_docstring_examples():
    import gluon_hmm.blocks as blocks
    if not hasattr(gh, "HMM"):
        pytest.skip("the blocks are not exported from gluon_hmm/__init__.py yet "
                    "(the docstrings use gh.HMM etc.)")
    mx.random.seed(0)
    result = doctest.testmod(blocks, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------

def test_clear_errors(rng):
    cat = CategoricalHMM(2, 3)
    cat.initialize()
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, num_symbols\) = \[0, 3\).*"
                                         r"from 0 to 3"):
        cat(mx.nd.array([[0, 1, 3]], dtype="int32"))
    with pytest.raises(ValueError, match=r"symbols must have shape \(B, T\), got \(3,\)"):
        cat(mx.nd.array([0, 1, 2], dtype="int32"))
    with pytest.raises(ValueError, match="non-integer"):
        cat(mx.nd.array([[0, 1.5]]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\) = \(1,\), got \(2,\)"):
        cat(mx.nd.array([[0, 1]], dtype="int32"), mx.nd.array([1, 2], dtype="int32"))
    with pytest.raises(TypeError, match="lengths must have dtype int32 or int64, got float32"):
        cat(mx.nd.array([[0, 1]], dtype="int32"), mx.nd.array([1]))
    with pytest.raises(mx.base.MXNetError, match=r"lengths must lie in \[0, T\]"):
        cat(mx.nd.array([[0, 1]], dtype="int32"), mx.nd.array([3], dtype="int32")).asnumpy()
    with pytest.raises(ValueError, match=r"data must lie in \[0, num_symbols\) = \[0, 3\)"):
        cat.fit_em([[0, 4]])
    hmm = HMM(4)
    hmm.initialize()
    with pytest.raises(ValueError, match=r"log_emit must have shape \(B, T, N=4\), got "
                                         r"\(2, 5, 3\)"):
        hmm(mx.nd.zeros((2, 5, 3)))
    g = GaussianHMM(2, 3)
    g.initialize()
    with pytest.raises(TypeError, match="x must have dtype float32 like the block's parameters"):
        g(mx.nd.zeros((1, 4, 3), dtype="float64"))
    with pytest.raises(ValueError, match=r"data must be a list of sequences or a padded array "
                                         r"of shape \(B, T, 3\)"):
        g.fit_em(np.zeros((2, 4, 2)))
    crf = LinearChainCRF(3)
    crf.initialize()
    with pytest.raises(ValueError, match=r"tags must lie in \[0, num_tags\) = \[0, 3\)"):
        crf(mx.nd.zeros((1, 2, 3)), mx.nd.array([[0, 5]], dtype="int32"))
    with pytest.raises(ValueError, match=r"tags must have shape \(B, T\) = \(1, 2\) like scores"):
        crf(mx.nd.zeros((1, 2, 3)), mx.nd.array([[0, 1, 1]], dtype="int32"))
    with pytest.raises(ValueError, match="num_states must be a positive int, got 0"):
        HMM(0)
    with pytest.raises(RuntimeError, match="not initialized"):
        CategoricalHMM(2, 2).fit_em([[0, 1]])
