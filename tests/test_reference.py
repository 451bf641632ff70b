"""The float64 NumPy reference (gluon_hmm/reference.py), proven against
brute-force enumeration of every state path, finite differences, and a
published worked example.  Every other implementation is tested against this
reference, so this file must not depend on anything but NumPy/SciPy.
"""

import doctest
import pathlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cases import (EDGE_SIZES, FLAG_SETS, SHAPE_VARIANTS, SMALL_SIZES, Problem,  # noqa: E402
                   iter_cases, load_reference, make_problem, tol)

ref = load_reference()

F64 = tol(np.float64)
# Finite differences: central, step H; truncation O(H**2) and rounding
# O(eps * |loglik| / H) (|loglik| up to ~1e5 with very negative emissions).
FD_CASES = (list(iter_cases(sizes=((3, 3, 2),)))
            + list(iter_cases(sizes=((2, 2, 3),), flags=("ragged", "all"))))
FD_STEP = 1e-5
FD_TOL = dict(rtol=1e-6, atol=2e-6)


def case_ids(spec):
    return spec.id


def grouped(sizes, flags=tuple(FLAG_SETS)):
    """One parameter per shape variant x flag set, holding the specs of every size
    (fewer, larger tests: pytest's per-test overhead dominates otherwise)."""
    return [pytest.param(list(iter_cases(sizes=sizes, variants=(v,), flags=(f,))),
                         id=f"{v.id}-{f}")
            for v in SHAPE_VARIANTS for f in flags]


def problems(rng, specs, **extra):
    """(spec id, Problem) for each spec, drawn from ``rng`` in order."""
    for spec in specs:
        yield spec.id, make_problem(rng, **spec.kwargs, **extra)



SMALL_GROUPS = grouped(SMALL_SIZES)


def assert_same_statistics(actual, expected, name="", **tolerance):
    for field in ref.Posterior._fields:
        a, e = getattr(actual, field), getattr(expected, field)
        assert a.shape == e.shape, (name, field)
        np.testing.assert_allclose(a, e, err_msg=f"{name} {field}", **tolerance)


# ---------------------------------------------------------------------------
# against brute force
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("specs", SMALL_GROUPS)
def test_log_likelihood_matches_brute_force(rng, specs):
    for name, p in problems(rng, specs):
        expected = ref.brute_force_log_likelihood(*p.args)
        assert np.all(np.isfinite(expected)), name
        for method in ("log", "scaled"):
            got = ref.log_likelihood(*p.args, method=method)
            assert got.dtype == np.float64 and got.shape == (p.shape[0],), name
            np.testing.assert_allclose(got, expected, err_msg=f"{name} {method}", **F64)


@pytest.mark.parametrize("specs", SMALL_GROUPS)
def test_posterior_matches_brute_force(rng, specs):
    for name, p in problems(rng, specs):
        got = ref.posterior(*p.args)
        assert got.gamma.shape == p.log_emit.shape, name
        assert got.trans_counts.shape == p.log_trans.shape, name
        assert got.init_counts.shape == p.log_init.shape, name
        assert_same_statistics(got, ref.brute_force_posterior(*p.args), name=name, **F64)


@pytest.mark.parametrize("specs", SMALL_GROUPS)
def test_gamma_sums_to_one(rng, specs):
    for name, p in problems(rng, specs):
        post = ref.posterior(*p.args)
        B, T, N = p.shape
        valid = np.arange(T)[None, :] < p.lengths[:, None]
        for field in ref.Posterior._fields:
            assert np.all(np.isfinite(getattr(post, field))), (name, field)
        np.testing.assert_allclose(post.gamma.sum(axis=2), valid.astype(float), err_msg=name,
                                   **F64)
        assert np.all(post.gamma >= 0), name
        # Expected transitions: one per step 1 <= t < L in total.
        np.testing.assert_allclose(post.trans_counts.sum(),
                                   np.maximum(p.lengths.astype(float) - 1, 0).sum(),
                                   err_msg=name, **F64)
        np.testing.assert_allclose(post.init_counts.sum(), float(np.sum(p.lengths > 0)),
                                   err_msg=name, **F64)


def check_viterbi_against_brute_force(name, p):
    got = ref.viterbi(*p.args)
    expected = ref.brute_force_viterbi(*p.args)
    assert got.path.dtype == np.int32 and got.path.shape == p.shape[:2], name
    np.testing.assert_array_equal(got.path, expected.path, err_msg=name)
    # Same summation order as the enumeration: the score is bit-identical.
    np.testing.assert_array_equal(got.score, expected.score, err_msg=name)
    np.testing.assert_array_equal(ref.path_log_score(*p.args[:3], got.path, p.lengths),
                                  got.score, err_msg=name)
    assert np.all(got.score <= ref.log_likelihood(*p.args) + 1e-12), name


@pytest.mark.parametrize("specs", SMALL_GROUPS)
def test_viterbi_matches_brute_force(rng, specs):
    for name, p in problems(rng, specs):
        check_viterbi_against_brute_force(name, p)


TIE_FLAGS = ("ragged", "veryneg", "neginf")


@pytest.mark.parametrize("specs", grouped(SMALL_SIZES, TIE_FLAGS))
def test_viterbi_tie_rule_matches_brute_force(rng, specs):
    """Dyadic potentials make exact ties common: the lowest-index backtracking
    must pick the same path as the enumerated rule (smallest z[L-1], then
    smallest z[L-2], ...)."""
    for name, p in problems(rng, specs, ties=True):
        check_viterbi_against_brute_force(name, p)


def test_tie_cases_really_tie():
    """Guard against the tie test passing vacuously."""
    rng = np.random.default_rng(0)
    tied = 0
    for spec in iter_cases(flags=TIE_FLAGS):
        p = make_problem(rng, ties=True, **spec.kwargs)
        for b in range(p.shape[0]):
            dist = ref.brute_force_path_distribution(*p.args, b=b)
            tied += int(np.sum(dist.log_scores == dist.log_scores.max()) > 1)
    assert tied > 50


def test_viterbi_tie_rule_is_last_step_first():
    """Two best paths, (0, 1) and (1, 0): the documented rule takes the lowest
    final state, so (1, 0), not the lexicographically smaller (0, 1)."""
    log_trans = np.array([[-1.0, 0.0], [0.0, -1.0]])
    got = ref.viterbi(np.zeros(2), log_trans, np.zeros((1, 2, 2)))
    assert got.path.tolist() == [[1, 0]]
    assert got.score.tolist() == [0.0]
    # All paths tie: all zeros.
    got = ref.viterbi(np.zeros(3), np.zeros((3, 3)), np.zeros((2, 4, 3)), np.array([4, 2]))
    assert got.path.tolist() == [[0, 0, 0, 0], [0, 0, -1, -1]]


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------

def _numerical_gradient(p, name):
    """Central finite differences of sum(loglik) w.r.t. one input."""
    base = {"log_init": p.log_init, "log_trans": p.log_trans, "log_emit": p.log_emit}
    x = base[name]
    grad = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        values = []
        for sign in (1.0, -1.0):
            moved = x.copy()
            moved[idx] += sign * FD_STEP
            args = dict(base, **{name: moved})
            values.append(ref.log_likelihood(args["log_init"], args["log_trans"],
                                             args["log_emit"], p.lengths).sum())
        grad[idx] = (values[0] - values[1]) / (2 * FD_STEP)
    return grad


@pytest.mark.parametrize("spec", FD_CASES, ids=case_ids)
def test_posterior_statistics_are_gradients(rng, spec):
    """d sum(loglik) / d (log_emit, log_trans, log_init) = (gamma, trans_counts, init_counts),
    including zeros at -inf entries, NaN padding and the unused step 0."""
    p = make_problem(rng, **spec.kwargs)
    post = ref.posterior(*p.args)
    np.testing.assert_allclose(_numerical_gradient(p, "log_emit"), post.gamma, **FD_TOL)
    np.testing.assert_allclose(_numerical_gradient(p, "log_trans"), post.trans_counts, **FD_TOL)
    np.testing.assert_allclose(_numerical_gradient(p, "log_init"), post.init_counts, **FD_TOL)


# ---------------------------------------------------------------------------
# scaled recursion, longer sequences
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("specs", grouped(EDGE_SIZES + ((4, 60, 6),),
                                           ("ragged", "neginf", "veryneg", "all")))
def test_scaled_equals_log(rng, specs):
    for name, p in problems(rng, specs):
        log = ref.log_likelihood(*p.args, method="log")
        scaled = ref.log_likelihood(*p.args, method="scaled")
        assert np.all(np.isfinite(log)), name
        np.testing.assert_allclose(scaled, log, rtol=1e-11, atol=1e-11, err_msg=name)


def test_scaled_extreme_values():
    """Log weights far outside exp's range, and -inf, in both directions."""
    rng = np.random.default_rng(1)
    log_emit = rng.normal(0, 1, (2, 5, 3)) + np.array([800.0, -2000.0, 0.0])[:, None, None][:2]
    log_emit[0, 2] += 5e4
    log_emit[1, 3, 1:] = -np.inf
    log_trans = rng.normal(0, 1, (3, 3)) - 900.0
    log_trans[0, 2] = -np.inf
    log_init = np.array([700.0, -700.0, 0.0])
    expected = ref.brute_force_log_likelihood(log_init, log_trans, log_emit)
    np.testing.assert_allclose(ref.log_likelihood(log_init, log_trans, log_emit, method="scaled"),
                               expected, rtol=1e-13)
    np.testing.assert_allclose(ref.log_likelihood(log_init, log_trans, log_emit),
                               expected, rtol=1e-13)


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------

def _path_index(paths, N, L):
    """Lexicographic index (z_0 most significant) of each (S, T) path's first L steps."""
    return paths[:, :L].astype(np.int64) @ (N ** np.arange(L - 1, -1, -1, dtype=np.int64))


@pytest.mark.parametrize("flags", ["unnorm", "neginf"])
def test_sample_matches_path_distribution(rng, flags):
    """Chi-square goodness of fit of 20000 posterior samples per sequence against
    the enumerated path distribution (bins of expected count < 5 merged).

    Each sequence's test fails with probability 1e-4 when the sampler is exact
    (p-value threshold 1e-4); at most 3 sequences per case, 2 cases, so a false
    alarm rate under 1e-3 for a run.  With the default seed the run is
    deterministic; change GLUON_HMM_TEST_SEED to redraw.  Paths of zero
    probability must never be drawn.
    """
    num_samples = 20000
    p = make_problem(rng, B=4, T=4, N=3, init="batch", trans="time",
                     lengths=np.array([4, 3, 1, 0]), **{k: v for k, v in FLAG_SETS[flags].items()
                                                       if k != "lengths"})
    draws = ref.sample(*p.args, num_samples=num_samples, rng=rng)
    assert draws.shape == (4, num_samples, 4) and draws.dtype == np.int32
    for b in range(4):
        L = int(p.lengths[b])
        assert np.all(draws[b, :, L:] == -1)
        if L == 0:
            continue
        dist = ref.brute_force_path_distribution(*p.args, b=b)
        counts = np.bincount(_path_index(draws[b], 3, L), minlength=len(dist.probs))
        assert np.all(counts[dist.probs == 0] == 0)
        expected = dist.probs * num_samples
        small = expected < 5
        observed = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
        keep = expected > 0
        if keep.sum() < 2:                            # one possible path: no test statistic
            assert observed[keep].sum() == num_samples
            continue
        result = stats.chisquare(observed[keep], expected[keep])
        assert result.pvalue > 1e-4, (b, result)


def test_sample_is_reproducible_and_padding_free(rng):
    p = make_problem(rng, B=5, T=6, N=3, init="batch", trans="time", lengths="ragged",
                     nan_padding=True)
    first = ref.sample(*p.args, num_samples=7, rng=123)
    again = ref.sample(*p.args, num_samples=7, rng=np.random.default_rng(123))
    np.testing.assert_array_equal(first, again)
    clean = make_problem(np.random.default_rng(0), B=5, T=6, N=3, init="batch", trans="time",
                         lengths=p.lengths)
    filled = _fill_padding(clean, 0.0)
    padded = _fill_padding(clean, np.nan)
    np.testing.assert_array_equal(ref.sample(*filled.args, num_samples=7, rng=5),
                                  ref.sample(*padded.args, num_samples=7, rng=5))
    assert ref.sample(*p.args, num_samples=0).shape == (5, 0, 6)


# ---------------------------------------------------------------------------
# published worked example
# ---------------------------------------------------------------------------

def test_wikipedia_healthy_fever_example():
    """Wikipedia "Viterbi algorithm": states Healthy (0), Fever (1); observations
    normal (0), cold (1), dizzy (2); observed normal, cold, dizzy.  The most
    likely path is Healthy, Healthy, Fever with probability 0.01512, and the
    observations have total probability 0.03628."""
    start = np.array([0.6, 0.4])
    trans = np.array([[0.7, 0.3], [0.4, 0.6]])
    emit = np.array([[0.5, 0.4, 0.1], [0.1, 0.3, 0.6]])
    obs = [0, 1, 2]

    # By hand.  Forward: alpha_0 = (0.6*0.5, 0.4*0.1) = (0.3, 0.04)
    #   alpha_1 = ((0.3*0.7 + 0.04*0.4)*0.4, (0.3*0.3 + 0.04*0.6)*0.3)        = (0.0904, 0.0342)
    #   alpha_2 = ((0.0904*0.7 + 0.0342*0.4)*0.1, (0.0904*0.3 + 0.0342*0.6)*0.6)
    #           = (0.007696, 0.028584)
    total = 0.007696 + 0.028584
    assert round(total, 5) == 0.03628
    # Viterbi: v_0 = (0.3, 0.04);
    #   v_1 = (0.3*0.7*0.4, 0.3*0.3*0.3) = (0.084, 0.027), both from Healthy;
    #   v_2 = (max(0.084*0.7, 0.027*0.4)*0.1, max(0.084*0.3, 0.027*0.6)*0.6) = (0.00588, 0.01512),
    #   the best ends in Fever, reached from Healthy, reached from Healthy.
    best = max(0.084 * 0.7, 0.027 * 0.4) * 0.1, max(0.084 * 0.3, 0.027 * 0.6) * 0.6
    assert round(best[1], 5) == 0.01512 and best[1] > best[0]

    log_emit = np.log(emit[:, obs].T)[None]                                # (1, 3, 2)
    args = (np.log(start), np.log(trans), log_emit)
    for method in ("log", "scaled"):
        prob = float(np.exp(ref.log_likelihood(*args, method=method)[0]))
        assert round(prob, 5) == 0.03628
        assert prob == pytest.approx(total, rel=1e-12)
    path, score = ref.viterbi(*args)
    assert path.tolist() == [[0, 0, 1]]                                    # Healthy, Healthy, Fever
    assert round(float(np.exp(score[0])), 5) == 0.01512
    assert float(np.exp(score[0])) == pytest.approx(best[1], rel=1e-12)
    np.testing.assert_allclose(ref.brute_force_log_likelihood(*args), np.log([total]), rtol=1e-13)


def test_docstring_examples():
    result = doctest.testmod(ref, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


# ---------------------------------------------------------------------------
# padding, batching, edge cases
# ---------------------------------------------------------------------------

def _fill_padding(p, value):
    """``p`` with every padded entry (see make_problem's nan_padding) set to ``value``."""
    B, T, N = p.shape
    pad = np.arange(T)[None, :] >= p.lengths[:, None]
    log_emit = np.where(pad[:, :, None], value, p.log_emit)
    log_trans = p.log_trans
    if log_trans.ndim == 4:
        pad_trans = pad.copy()
        pad_trans[:, :1] = True
        log_trans = np.where(pad_trans[:, :, None, None], value, log_trans)
    log_init = p.log_init
    if log_init.ndim == 2:
        log_init = np.where((p.lengths == 0)[:, None], value, log_init)
    return Problem(log_init, log_trans, log_emit, p.lengths)


def _all_outputs(p):
    post = ref.posterior(*p.args)
    vit = ref.viterbi(*p.args)
    return dict(loglik=ref.log_likelihood(*p.args),
                scaled=ref.log_likelihood(*p.args, method="scaled"),
                gamma=post.gamma, trans_counts=post.trans_counts,
                init_counts=post.init_counts, path=vit.path, score=vit.score,
                path_score=ref.path_log_score(*p.args[:3], vit.path, p.lengths))


@pytest.mark.parametrize("variant", SHAPE_VARIANTS, ids=lambda v: v.id)
def test_padding_has_no_effect(rng, variant):
    p = make_problem(rng, B=7, T=5, N=3, init=variant.init, trans=variant.trans,
                     lengths="ragged", neg_inf=True)
    outputs = [_all_outputs(_fill_padding(p, value))
               for value in (0.0, np.nan, np.inf, -np.inf, 1e300)]
    for other in outputs[1:]:
        for key, value in outputs[0].items():
            np.testing.assert_array_equal(other[key], value, err_msg=key)
    post = ref.posterior(*_fill_padding(p, np.nan).args)
    pad = np.arange(5)[None, :] >= p.lengths[:, None]
    assert np.all(post.gamma[pad] == 0)
    if variant.trans == "time":
        assert np.all(post.trans_counts[pad] == 0) and np.all(post.trans_counts[:, 0] == 0)


def _single(p, b):
    """Sequence b alone, cut to its own length."""
    L = int(p.lengths[b])
    init = p.log_init if p.log_init.ndim == 1 else p.log_init[b:b + 1]
    trans = {2: p.log_trans, 3: p.log_trans[b:b + 1], 4: p.log_trans[b:b + 1, :L]}[p.log_trans.ndim]
    return Problem(init, trans, p.log_emit[b:b + 1, :L], p.lengths[b:b + 1])


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 32 - 1), B=st.integers(1, 5), T=st.integers(0, 6),
       N=st.integers(1, 4), variant=st.sampled_from(SHAPE_VARIANTS),
       flags=st.sampled_from(sorted(FLAG_SETS)))
def test_batched_equals_per_sequence(seed, B, T, N, variant, flags):
    kwargs = dict(FLAG_SETS[flags], lengths="ragged")
    p = make_problem(np.random.default_rng(seed), B=B, T=T, N=N, init=variant.init,
                     trans=variant.trans, **kwargs)
    batch = ref.posterior(*p.args)
    vit = ref.viterbi(*p.args)
    trans_sum = np.zeros((N, N))
    for b in range(B):
        L = int(p.lengths[b])
        one = _single(p, b)
        single = ref.posterior(*one.args)
        np.testing.assert_allclose(single.loglik, batch.loglik[b:b + 1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(single.gamma[0], batch.gamma[b, :L], rtol=1e-12, atol=1e-12)
        single_vit = ref.viterbi(*one.args)
        np.testing.assert_array_equal(single_vit.path[0], vit.path[b, :L])
        np.testing.assert_array_equal(single_vit.score, vit.score[b:b + 1])
        trans_sum += single.trans_counts.reshape(-1, N, N).sum(axis=0)
    np.testing.assert_allclose(trans_sum, batch.trans_counts.reshape(-1, N, N).sum(axis=0),
                               rtol=1e-12, atol=1e-12)


def test_empty_sequences_batches_and_steps():
    # L = 0 next to a normal sequence.
    p = make_problem(np.random.default_rng(3), B=2, T=3, N=2, init="batch", trans="time",
                     lengths=np.array([0, 3]), nan_padding=True)
    post = ref.posterior(*p.args)
    assert post.loglik[0] == 0 and np.all(post.gamma[0] == 0)
    assert np.all(post.init_counts[0] == 0) and np.all(post.trans_counts[0] == 0)
    vit = ref.viterbi(*p.args)
    assert vit.path[0].tolist() == [-1, -1, -1] and vit.score[0] == 0
    assert ref.log_likelihood(*p.args, method="scaled")[0] == 0
    # T = 0 and B = 0.
    for B, T in ((2, 0), (0, 3)):
        q = make_problem(np.random.default_rng(4), B=B, T=T, N=3, init="batch", trans="time")
        assert ref.log_likelihood(*q.args).tolist() == [0.0] * B
        assert ref.log_likelihood(*q.args, method="scaled").tolist() == [0.0] * B
        post = ref.posterior(*q.args)
        assert post.gamma.shape == (B, T, 3) and post.trans_counts.shape == (B, T, 3, 3)
        assert ref.viterbi(*q.args).path.shape == (B, T)
        assert ref.sample(*q.args, num_samples=2).shape == (B, 2, T)
        assert ref.brute_force_log_likelihood(*q.args).shape == (B,)


def test_impossible_sequence_gets_minus_inf_and_zero_statistics():
    p = make_problem(np.random.default_rng(5), B=3, T=4, N=3, init="batch", trans="batch",
                     lengths=np.array([4, 3, 2]))
    log_emit = p.log_emit.copy()
    log_emit[1, 2, :] = -np.inf                                           # step 2 impossible
    q = Problem(p.log_init, p.log_trans, log_emit, p.lengths)
    post = ref.posterior(*q.args)
    assert post.loglik[1] == -np.inf
    assert ref.log_likelihood(*q.args, method="scaled")[1] == -np.inf
    assert ref.brute_force_log_likelihood(*q.args)[1] == -np.inf
    for field in ("gamma", "trans_counts", "init_counts"):
        value = getattr(post, field)
        assert np.all(np.isfinite(value)) and np.all(value[1] == 0), field
    assert_same_statistics(post, ref.brute_force_posterior(*q.args), **F64)
    # The other sequences are untouched.
    clean = ref.posterior(*p.args)
    np.testing.assert_array_equal(post.gamma[[0, 2]], clean.gamma[[0, 2]])
    vit = ref.viterbi(*q.args)
    assert vit.score[1] == -np.inf
    assert np.all(vit.path[1, :3] >= 0) and vit.path[1, 3] == -1
    assert np.all(ref.sample(*q.args, num_samples=3, rng=0)[1] == -1)
    dist = ref.brute_force_path_distribution(*q.args, b=1)
    assert np.all(dist.probs == 0)


def test_lengths_none_dtypes_and_float32_inputs(rng):
    p = make_problem(rng, B=3, T=4, N=3, init="batch", trans="time")
    full = ref.log_likelihood(*p.args[:3])
    for dtype in (np.int32, np.int64, np.uint8):
        np.testing.assert_array_equal(
            ref.log_likelihood(*p.args[:3], p.lengths.astype(dtype)), full)
    np.testing.assert_array_equal(ref.log_likelihood(*p.args[:3], [4, 4, 4]), full)
    p32 = p.astype(np.float32)
    got = ref.posterior(*p32.args)
    expected = ref.posterior(*p32.astype(np.float64).args)
    assert got.gamma.dtype == np.float64 and got.loglik.dtype == np.float64
    assert_same_statistics(got, expected, rtol=0, atol=0)


def test_inputs_are_not_modified(rng):
    p = make_problem(rng, B=4, T=4, N=3, init="batch", trans="time", lengths="ragged",
                     nan_padding=True, neg_inf=True)
    keep = p.copy()
    for array in p.args:
        array.flags.writeable = False                                     # writes would raise
    path = ref.viterbi(*p.args).path
    path.flags.writeable = False
    ref.log_likelihood(*p.args)
    ref.log_likelihood(*p.args, method="scaled")
    ref.posterior(*p.args)
    ref.path_log_score(*p.args[:3], path, p.lengths)
    ref.sample(*p.args, num_samples=2, rng=0)
    ref.brute_force_log_likelihood(*p.args)
    ref.brute_force_posterior(*p.args)
    ref.brute_force_viterbi(*p.args)
    ref.brute_force_path_distribution(*p.args, b=1)
    for before, after in zip(keep.args, p.args):
        np.testing.assert_array_equal(after, before)


def test_path_log_score_ignores_padding_and_matches_enumeration(rng):
    p = make_problem(rng, B=4, T=3, N=3, init="batch", trans="time", lengths="ragged")
    for b in range(4):
        dist = ref.brute_force_path_distribution(*p.args, b=b)
        for k in range(len(dist.paths)):
            path = np.zeros((4, 3), dtype=np.int64)
            path[b] = np.where(dist.paths[k] < 0, 99, dist.paths[k])          # t >= L: ignored
            score = ref.path_log_score(*p.args[:3], path, p.lengths)[b]
            assert score == dist.log_scores[k]


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _good():
    return dict(log_init=np.zeros(4), log_trans=np.zeros((4, 4)), log_emit=np.zeros((2, 5, 4)),
                lengths=np.array([5, 3]))


@pytest.mark.parametrize("change, error, message", [
    (dict(log_trans=np.zeros((3, 3))), ValueError,
     r"log_trans must have shape \(N, N\), \(B, N, N\) or \(B, T, N, N\) "
     r"with N=4, B=2, T=5, got \(3, 3\)"),
    (dict(log_trans=np.zeros((2, 4, 4, 4))), ValueError, r"log_trans .* got \(2, 4, 4, 4\)"),
    (dict(log_init=np.zeros((3, 4))), ValueError,
     r"log_init must have shape \(N,\) or \(B, N\) with N=4, B=2, got \(3, 4\)"),
    (dict(log_emit=np.zeros((5, 4))), ValueError,
     r"log_emit must have shape \(B, T, N\), got \(5, 4\)"),
    (dict(log_emit=np.zeros((2, 5, 0)), log_init=np.zeros(0), log_trans=np.zeros((0, 0))),
     ValueError, r"at least one state"),
    (dict(lengths=np.array([5, 6])), ValueError,
     r"lengths must satisfy 0 <= lengths\[b\] <= T=5, got lengths\[1\]=6"),
    (dict(lengths=np.array([-1, 2])), ValueError, r"got lengths\[0\]=-1"),
    (dict(lengths=np.array([5])), ValueError,
     r"lengths must have shape \(B,\) with B=2, got \(1,\)"),
    (dict(lengths=np.array([5.0, 3.0])), TypeError, r"lengths must be integers .* float64"),
    (dict(log_emit=np.zeros((2, 5, 4), dtype=complex)), TypeError, r"log_emit must hold real"),
])
def test_validation_messages(change, error, message):
    args = dict(_good(), **change)
    for fn in (ref.log_likelihood, ref.posterior, ref.viterbi, ref.brute_force_posterior):
        with pytest.raises(error, match=message):
            fn(**args)


def test_validation_of_other_arguments():
    args = _good()
    with pytest.raises(ValueError, match=r"method must be 'log' or 'scaled', got 'exact'"):
        ref.log_likelihood(**args, method="exact")
    with pytest.raises(ValueError, match=r"num_samples must be a non-negative integer, got -1"):
        ref.sample(**args, num_samples=-1)
    with pytest.raises(ValueError,
                       match=r"path must have shape \(B, T\) with B=2, T=5, got \(2, 4\)"):
        ref.path_log_score(path=np.zeros((2, 4), dtype=int), **args)
    path = np.zeros((2, 5), dtype=int)
    path[1, 2] = 4
    with pytest.raises(ValueError, match=r"path must hold states in \[0, N\) with N=4 .* "
                                         r"got path\[1, 2\]=4"):
        ref.path_log_score(path=path, **args)
    path[1, 2] = 0
    path[1, 4] = 4                                                        # beyond L = 3: ignored
    ref.path_log_score(path=path, **args)
    with pytest.raises(ValueError, match=r"b must be an integer in \[0, B\) with B=2, got 2"):
        ref.brute_force_path_distribution(**args, b=2)
    big = dict(log_init=np.zeros(10), log_trans=np.zeros((10, 10)), log_emit=np.zeros((1, 7, 10)))
    with pytest.raises(ValueError, match=r"10\*\*7 = 10000000 paths"):
        ref.brute_force_log_likelihood(**big)
    # Enumeration bounds the longest valid length, not T.
    assert ref.brute_force_log_likelihood(**big, lengths=np.array([2])).shape == (1,)
