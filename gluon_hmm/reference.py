"""Float64 NumPy reference implementation of the gluon_hmm operators.

This module is the ground truth that every fast path (C++ CPU engine, CUDA
kernels, MXNet operators, Cython binding) is tested against.  It is written
for clarity, not speed: plain NumPy, float64 everywhere, one Python loop over
time steps.  It imports nothing from the rest of ``gluon_hmm`` and not MXNet,
so it can be loaded on its own.

Model and conventions (DESIGN.md).  N hidden states, batch B, T steps; for
sequence b with valid length L = lengths[b]::

    loglik[b] = log sum_{z_0..z_{L-1}} exp( log_init[z_0] + log_emit[b,0,z_0]
                  + sum_{t=1}^{L-1} ( log_trans[z_{t-1}, z_t] + log_emit[b,t,z_t] ) )

========== ============================================================
input      shapes
========== ============================================================
log_init   (N,) shared, or (B, N)
log_trans  (N, N) shared; (B, N, N) per sequence; (B, T, N, N) time-varying,
           where ``[b, t]`` is the transition INTO step t and ``[b, 0]`` is unused
log_emit   (B, T, N)
lengths    (B,) integers with 0 <= L <= T, or None (every sequence has length T)
========== ============================================================

* ``log_trans[..., i, j]`` is the log weight of moving FROM state i TO state j.
  Potentials need not be normalised (linear-chain CRF use): ``loglik`` is then
  the log-partition function.
* ``-inf`` entries are structural zeros.
* Entries at padded positions t >= L (of ``log_emit``, of a time-varying
  ``log_trans``, its unused step 0, and a per-sequence ``log_init`` row of a
  sequence with L = 0) are ignored completely: they may hold anything, NaN
  included, and get zero statistics.
* L = 0 gives loglik 0 and all-zero statistics.  A sequence with no path of
  positive weight has loglik -inf and all-zero (finite) statistics.

All results are float64 (int32 for paths) whatever the input dtype, and the
inputs are never modified.

Example: the Wikipedia "healthy/fever" HMM, observations normal, cold, dizzy.

>>> import numpy as np
>>> log_init = np.log([0.6, 0.4])
>>> log_trans = np.log([[0.7, 0.3], [0.4, 0.6]])
>>> emit = np.array([[0.5, 0.4, 0.1], [0.1, 0.3, 0.6]])     # (state, symbol)
>>> log_emit = np.log(emit[:, [0, 1, 2]].T)[None]           # (1, 3, 2)
>>> round(float(np.exp(log_likelihood(log_init, log_trans, log_emit)[0])), 5)
0.03628
>>> path, score = viterbi(log_init, log_trans, log_emit)
>>> path.tolist(), round(float(np.exp(score[0])), 5)
([[0, 0, 1]], 0.01512)
"""

from collections import namedtuple
import numbers

import numpy as np

__all__ = [
    "Posterior",
    "ViterbiResult",
    "PathDistribution",
    "BRUTE_FORCE_MAX_PATHS",
    "log_likelihood",
    "posterior",
    "viterbi",
    "path_log_score",
    "sample",
    "brute_force_log_likelihood",
    "brute_force_posterior",
    "brute_force_viterbi",
    "brute_force_path_distribution",
]

Posterior = namedtuple("Posterior", ["gamma", "trans_counts", "init_counts", "loglik"])
Posterior.__doc__ = """Posterior statistics of a batch of sequences.

gamma : (B, T, N) float64
    Posterior state marginals p(z_t = j | x); 0 at t >= L.
    Equals d sum(loglik) / d log_emit.
trans_counts : float64, the shape of log_trans
    Expected transition counts sum_t p(z_{t-1} = i, z_t = j | x): summed over t
    (and over b when log_trans is shared); per step for a time-varying
    log_trans, whose step 0 and padded steps are 0.
    Equals d sum(loglik) / d log_trans.
init_counts : float64, the shape of log_init
    gamma[:, 0] (summed over b when log_init is shared).
    Equals d sum(loglik) / d log_init.
loglik : (B,) float64
    Log-likelihood (log-partition function) of each sequence.
"""

ViterbiResult = namedtuple("ViterbiResult", ["path", "score"])
ViterbiResult.__doc__ = """Most probable state paths.

path : (B, T) int32
    Best path, -1 at t >= L.
score : (B,) float64
    Joint log score of that path (0 when L = 0, -inf when no path has a finite score).
"""

PathDistribution = namedtuple("PathDistribution", ["paths", "probs", "log_scores"])
PathDistribution.__doc__ = """Every state path of one sequence with its posterior probability.

paths : (K, T) int32
    All K = N**L paths in lexicographic order (z_0 most significant), -1 at t >= L.
probs : (K,) float64
    Posterior probability p(z | x) of each path (all 0 when loglik is -inf).
log_scores : (K,) float64
    Joint log score of each path.
"""

#: Largest number of state paths the brute-force functions enumerate.
BRUTE_FORCE_MAX_PATHS = 10 ** 6

_SHAPE_HINT = {
    "log_init": "(N,) or (B, N)",
    "log_trans": "(N, N), (B, N, N) or (B, T, N, N)",
}

# The checked, broadcast and sanitised form of one call's inputs.
#   init  (B, N)        log_init per sequence; rows of L = 0 sequences are 0.
#   trans (B, T, N, N)  transition INTO step t (a read-only broadcast view when
#                       shared or per sequence); for time-varying input, step 0
#                       and steps t >= L are 0.
#   emit  (B, T, N)     log_emit, 0 at t >= L.
#   lengths (B,) int64; mask (B, T) bool, t < L.
#   init_kind "shared" | "batch"; trans_kind "shared" | "batch" | "time".
_Model = namedtuple("_Model", ["init", "trans", "emit", "lengths", "mask",
                               "init_kind", "trans_kind"])


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------

def _float_array(x, name):
    """``x`` as a float64 array (no copy when it already is one)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (a float or integer dtype), "
                        f"got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_lengths(lengths, B, T):
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers (int32 or int64), got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) with B={B}, got {arr.shape}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr > T))
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"lengths must satisfy 0 <= lengths[b] <= T={T}, "
                         f"got lengths[{b}]={int(arr[b])}")
    return arr


def _prepare(log_init, log_trans, log_emit, lengths):
    """Check the inputs and bring them to the internal ``_Model`` form."""
    emit = _float_array(log_emit, "log_emit")
    if emit.ndim != 3:
        raise ValueError(f"log_emit must have shape (B, T, N), got {emit.shape}")
    B, T, N = emit.shape
    if N < 1:
        raise ValueError(f"log_emit must have at least one state (N >= 1), got shape {emit.shape}")
    lengths = _check_lengths(lengths, B, T)
    mask = np.arange(T)[None, :] < lengths[:, None]

    init = _float_array(log_init, "log_init")
    if init.shape == (N,):
        init_kind = "shared"
        init_b = np.broadcast_to(init, (B, N))
    elif init.shape == (B, N):
        init_kind = "batch"
        init_b = init
    else:
        raise ValueError(f"log_init must have shape {_SHAPE_HINT['log_init']} "
                         f"with N={N}, B={B}, got {init.shape}")
    # A per-sequence initial row of an empty sequence sits at a padded position.
    init_b = np.where((lengths > 0)[:, None], init_b, 0.0)

    trans = _float_array(log_trans, "log_trans")
    if trans.shape == (N, N):
        trans_kind = "shared"
        trans_bt = np.broadcast_to(trans, (B, T, N, N))
    elif trans.shape == (B, N, N):
        trans_kind = "batch"
        trans_bt = np.broadcast_to(trans[:, None], (B, T, N, N))
    elif trans.shape == (B, T, N, N):
        trans_kind = "time"
        used = mask & (np.arange(T)[None, :] >= 1)
        trans_bt = np.where(used[:, :, None, None], trans, 0.0)
    else:
        raise ValueError(f"log_trans must have shape {_SHAPE_HINT['log_trans']} "
                         f"with N={N}, B={B}, T={T}, got {trans.shape}")

    emit = np.where(mask[:, :, None], emit, 0.0)
    return _Model(init_b, trans_bt, emit, lengths, mask, init_kind, trans_kind)


def _check_path(path, B, T, N, mask):
    arr = np.asarray(path)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"path must hold integer state indices, got dtype {arr.dtype}")
    if arr.shape != (B, T):
        raise ValueError(f"path must have shape (B, T) with B={B}, T={T}, got {arr.shape}")
    arr = arr.astype(np.int64)
    bad = np.argwhere(mask & ((arr < 0) | (arr >= N)))
    if bad.size:
        b, t = (int(v) for v in bad[0])
        raise ValueError(f"path must hold states in [0, N) with N={N} at t < lengths[b], "
                         f"got path[{b}, {t}]={int(arr[b, t])}")
    return np.where(mask, arr, 0)


# --------------------------------------------------------------------------
# numerics helpers
# --------------------------------------------------------------------------

def _finite_shift(m):
    """Replace non-finite maxima by 0 so that ``x - m`` never produces NaN."""
    return np.where(np.isfinite(m), m, 0.0)


def _logsumexp(x, axis):
    """log(sum(exp(x), axis)); -inf (no warning) when every term is -inf."""
    m = _finite_shift(np.max(x, axis=axis, keepdims=True))
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def _shifted_exp(x, axis):
    """(exp(x - m), m) with m the max over ``axis`` (0 where not finite), keepdims."""
    m = _finite_shift(np.max(x, axis=axis, keepdims=True))
    return np.exp(x - m), m


def _forward_log(model):
    """Log-space forward pass: alpha (B, T, N) and loglik (B,).

    alpha[b, t, :] is only meaningful for t < L; beyond it holds alpha[b, L-1, :].
    """
    B, T, N = model.emit.shape
    alpha = np.zeros((B, T, N))
    if T == 0:
        return alpha, np.zeros(B)
    # alpha[b, 0, j] = log_init[b, j] + log_emit[b, 0, j]
    a = model.init + model.emit[:, 0]
    alpha[:, 0] = a
    for t in range(1, T):
        # alpha[b, t, j] = logsumexp_i(alpha[b, t-1, i] + log_trans[b, t, i, j]) + log_emit[b, t, j]
        new = _logsumexp(a[:, :, None] + model.trans[:, t], axis=1) + model.emit[:, t]
        a = np.where(model.mask[:, t, None], new, a)
        alpha[:, t] = a
    # loglik[b] = logsumexp_j alpha[b, L-1, j]   (0 when L = 0)
    loglik = np.where(model.lengths > 0, _logsumexp(a, axis=1), 0.0)
    return alpha, loglik


def _backward_log(model):
    """Log-space backward pass: beta (B, T, N), 0 at t >= L - 1."""
    B, T, N = model.emit.shape
    beta = np.zeros((B, T, N))
    bt = np.zeros((B, N))
    for t in range(T - 2, -1, -1):
        # beta[b, t, i] = logsumexp_j(log_trans[b, t+1, i, j] + log_emit[b, t+1, j] + beta[b, t+1, j])
        #                 for t + 1 < L, else 0
        new = _logsumexp(model.trans[:, t + 1] + (model.emit[:, t + 1] + bt)[:, None, :], axis=2)
        bt = np.where(model.mask[:, t + 1, None], new, 0.0)
        beta[:, t] = bt
    return beta


def _forward_scaled(model):
    """Scaled (probability-space) forward pass: loglik (B,).

    Each step works on exponentials shifted by their maxima (emissions by the
    per-step max over states, the transition matrix by its per-row max, folded
    into the carried state), and the carried vector is normalised to sum 1.
    The log normalisers and shifts add up to loglik.
    """
    B, T, N = model.emit.shape
    loglik = np.zeros(B)
    if T == 0:
        return loglik
    with np.errstate(divide="ignore"):
        # Step 0: v[b, j] = exp(log_init - mi) * exp(log_emit[:, 0] - me);  c = sum_j v;
        #         a_hat = v / c;  loglik = log c + mi + me
        p0, mi = _shifted_exp(model.init, axis=1)
        e0, me = _shifted_exp(model.emit[:, 0], axis=1)
        v = p0 * e0
        c = v.sum(axis=1)
        loglik = np.log(c) + mi[:, 0] + me[:, 0]
        a_hat = v / np.where(c > 0, c, 1.0)[:, None]
        for t in range(1, T):
            # A[b, i, j] = exp(log_trans[b, t, i, j] - r[b, i])   (r: row maxima)
            # u[b, i]    = a_hat[b, i] * exp(r[b, i] - R[b]),  R = max_i (log a_hat[b, i] + r[b, i])
            # v[b, j]    = sum_i u[b, i] A[b, i, j] * exp(log_emit[b, t, j] - me[b])
            # c = sum_j v;  a_hat <- v / c;  loglik += log c + R + me
            A, r = _shifted_exp(model.trans[:, t], axis=2)
            w = np.log(a_hat) + r[:, :, 0]
            R = _finite_shift(np.max(w, axis=1, keepdims=True))
            u = np.exp(w - R)
            e, me = _shifted_exp(model.emit[:, t], axis=1)
            v = np.einsum("bi,bij->bj", u, A) * e
            c = v.sum(axis=1)
            step = np.log(c) + R[:, 0] + me[:, 0]
            active = model.mask[:, t]
            loglik = np.where(active, loglik + step, loglik)
            a_hat = np.where(active[:, None], v / np.where(c > 0, c, 1.0)[:, None], a_hat)
    return np.where(model.lengths > 0, loglik, 0.0)


# --------------------------------------------------------------------------
# public operators
# --------------------------------------------------------------------------

def log_likelihood(log_init, log_trans, log_emit, lengths=None, method="log"):
    """Log-likelihood (log-partition function) of each sequence.

    Parameters
    ----------
    log_init : array_like, (N,) or (B, N)
        Log initial-state weights.
    log_trans : array_like, (N, N), (B, N, N) or (B, T, N, N)
        Log transition weights, ``[..., i, j]`` FROM i TO j; for (B, T, N, N),
        ``[b, t]`` is the transition into step t and ``[b, 0]`` is unused.
    log_emit : array_like, (B, T, N)
        Log emission weights.
    lengths : array_like of int, (B,), optional
        Valid length of each sequence, 0 <= L <= T; default: all T.
    method : {"log", "scaled"}
        "log": forward recursion in log space (logsumexp per step).
        "scaled": forward recursion in probability space, normalised every step
        with per-step max shifts of the emissions and of the transition rows.
        Both agree to rounding.

    Returns
    -------
    loglik : (B,) float64
        0 for L = 0; -inf when no path has positive weight.

    Raises
    ------
    ValueError, TypeError
        On inputs of the wrong shape, dtype, or lengths out of range.

    Examples
    --------
    >>> import numpy as np
    >>> log_likelihood(np.zeros(2), np.zeros((2, 2)), np.zeros((1, 3, 2)))  # 2**3 paths
    array([2.07944154])
    """
    model = _prepare(log_init, log_trans, log_emit, lengths)
    if method == "log":
        return _forward_log(model)[1]
    if method == "scaled":
        return _forward_scaled(model)
    raise ValueError(f"method must be 'log' or 'scaled', got {method!r}")


def _reduce_trans_counts(model, xi_sum_t, xi_per_t):
    if model.trans_kind == "shared":
        return xi_sum_t.sum(axis=0)
    if model.trans_kind == "batch":
        return xi_sum_t
    return xi_per_t


def _reduce_init_counts(model, gamma0):
    return gamma0.sum(axis=0) if model.init_kind == "shared" else gamma0


def posterior(log_init, log_trans, log_emit, lengths=None):
    """Posterior marginals and expected counts (forward-backward in log space).

    Parameters
    ----------
    log_init, log_trans, log_emit, lengths
        As in :func:`log_likelihood`.

    Returns
    -------
    Posterior
        ``gamma`` (B, T, N), ``trans_counts`` (shape of log_trans),
        ``init_counts`` (shape of log_init), ``loglik`` (B,); all float64.
        These are the gradients of ``sum(loglik)`` with respect to log_emit,
        log_trans and log_init.  Sequences with L = 0 or loglik = -inf get
        all-zero statistics.

    Notes
    -----
    For t < L::

        gamma[b, t, j] = exp(alpha[b, t, j] + beta[b, t, j] - loglik[b])

    and for 1 <= t < L::

        xi[b, t, i, j] = exp(alpha[b, t-1, i] + log_trans[b, t, i, j] + log_emit[b, t, j]
                             + beta[b, t, j] - loglik[b])
    """
    model = _prepare(log_init, log_trans, log_emit, lengths)
    B, T, N = model.emit.shape
    alpha, loglik = _forward_log(model)
    beta = _backward_log(model)
    ok = model.mask & np.isfinite(loglik)[:, None]                 # (B, T)
    ll = np.where(np.isfinite(loglik), loglik, 0.0)

    log_gamma = np.where(ok[:, :, None], alpha + beta - ll[:, None, None], -np.inf)
    gamma = np.exp(log_gamma)

    xi_sum = np.zeros((B, N, N))
    xi_time = np.zeros((B, T, N, N)) if model.trans_kind == "time" else None
    for t in range(1, T):
        log_xi = (alpha[:, t - 1, :, None] + model.trans[:, t]
                  + (model.emit[:, t] + beta[:, t])[:, None, :] - ll[:, None, None])
        xi = np.exp(np.where(ok[:, t, None, None], log_xi, -np.inf))
        xi_sum += xi
        if xi_time is not None:
            xi_time[:, t] = xi
    trans_counts = _reduce_trans_counts(model, xi_sum, xi_time)
    gamma0 = gamma[:, 0] if T > 0 else np.zeros((B, N))
    init_counts = _reduce_init_counts(model, gamma0)
    return Posterior(gamma, trans_counts, init_counts, loglik)


def viterbi(log_init, log_trans, log_emit, lengths=None):
    """Most probable state path of each sequence (max-product recursion).

    Parameters
    ----------
    log_init, log_trans, log_emit, lengths
        As in :func:`log_likelihood`.

    Returns
    -------
    ViterbiResult
        ``path`` (B, T) int32 with -1 at t >= L, and ``score`` (B,) float64,
        the joint log score of that path (0 for L = 0).

    Notes
    -----
    Recursion (float64, summed in this order)::

        delta[b, 0, j] = log_init[b, j] + log_emit[b, 0, j]
        delta[b, t, j] = max_i( delta[b, t-1, i] + log_trans[b, t, i, j] ) + log_emit[b, t, j]
        psi[b, t, j]   = argmax_i( delta[b, t-1, i] + log_trans[b, t, i, j] )

    Tie rule: ``z[L-1]`` is the lowest j among the maximisers of
    ``delta[b, L-1, j]``, and each backtrack step ``z[t-1] = psi[b, t, z[t]]``
    takes the lowest i among the maximisers of ``delta[b, t-1, i] +
    log_trans[b, t, i, z[t]]``.  Under exact arithmetic this selects, among all
    best paths, the one that is smallest when paths are compared from the LAST
    step backwards (smallest z[L-1], then smallest z[L-2], ...); this is what
    :func:`brute_force_viterbi` enumerates.

    When no path has a finite score (score -inf) the same rule still produces
    a path (every candidate that is -inf ties and the lowest index wins), but
    that path is not meaningful.
    """
    model = _prepare(log_init, log_trans, log_emit, lengths)
    B, T, N = model.emit.shape
    path = np.full((B, T), -1, dtype=np.int32)
    if T == 0:
        return ViterbiResult(path, np.zeros(B))
    psi = np.zeros((B, T, N), dtype=np.int64)
    delta = model.init + model.emit[:, 0]
    for t in range(1, T):
        cand = delta[:, :, None] + model.trans[:, t]                    # (B, i, j)
        best_i = np.argmax(cand, axis=1)                                # first (lowest) maximiser
        best = np.take_along_axis(cand, best_i[:, None, :], axis=1)[:, 0]
        active = model.mask[:, t]
        delta = np.where(active[:, None], best + model.emit[:, t], delta)
        psi[:, t] = best_i
    last = np.argmax(delta, axis=1)
    score = np.where(model.lengths > 0, delta[np.arange(B), last], 0.0)
    cur = last
    rows = np.arange(B)
    for t in range(T - 1, -1, -1):
        active = model.mask[:, t]
        path[:, t] = np.where(active, cur, -1)
        if t > 0:
            cur = np.where(active, psi[rows, t, cur], cur)
    return ViterbiResult(path, score)


def path_log_score(log_init, log_trans, log_emit, path, lengths=None):
    """Joint log score of given state paths.

    Parameters
    ----------
    log_init, log_trans, log_emit, lengths
        As in :func:`log_likelihood`.
    path : array_like of int, (B, T)
        States in [0, N) at t < L; entries at t >= L are ignored.

    Returns
    -------
    score : (B,) float64
        ``log_init[z_0] + log_emit[0, z_0] + sum_{t=1}^{L-1} (log_trans[t, z_{t-1}, z_t]
        + log_emit[t, z_t])``, accumulated left to right in that order (the order
        :func:`viterbi` uses, so a Viterbi path's score is reproduced exactly);
        0 for L = 0.
    """
    model = _prepare(log_init, log_trans, log_emit, lengths)
    B, T, N = model.emit.shape
    z = _check_path(path, B, T, N, model.mask)
    if T == 0:
        return np.zeros(B)
    rows = np.arange(B)
    score = model.init[rows, z[:, 0]] + model.emit[rows, 0, z[:, 0]]
    for t in range(1, T):
        new = (score + model.trans[rows, t, z[:, t - 1], z[:, t]]) + model.emit[rows, t, z[:, t]]
        score = np.where(model.mask[:, t], new, score)
    return np.where(model.lengths > 0, score, 0.0)


def _draw(logits, u):
    """Inverse-CDF draw from unnormalised log weights along the last axis.

    ``logits`` (..., N) with at least one finite entry per row, ``u`` (...) in
    [0, 1).  State k is drawn when cdf[k-1] <= u * total < cdf[k], so states of
    zero weight are never drawn.
    """
    p = np.exp(logits - _finite_shift(np.max(logits, axis=-1, keepdims=True)))
    cdf = np.cumsum(p, axis=-1)
    x = u * cdf[..., -1]
    k = np.sum(cdf <= x[..., None], axis=-1)
    n = p.shape[-1]
    last_positive = n - 1 - np.argmax(p[..., ::-1] > 0, axis=-1)
    return np.minimum(k, last_positive)


def sample(log_init, log_trans, log_emit, lengths=None, num_samples=1, rng=None):
    """Exact samples from the posterior p(z | x) (forward filtering, backward sampling).

    Parameters
    ----------
    log_init, log_trans, log_emit, lengths
        As in :func:`log_likelihood`.
    num_samples : int, optional
        Number of paths per sequence (>= 0).
    rng : numpy.random.Generator, int, SeedSequence or None
        Source of randomness, passed to ``numpy.random.default_rng``.  One
        uniform per (b, sample, t) is drawn up front, as ``rng.random((B, S, T))``.

    Returns
    -------
    paths : (B, num_samples, T) int32
        -1 at t >= L.  A sequence whose loglik is -inf (no path of positive
        weight) gets -1 everywhere.

    Notes
    -----
    z[L-1] ~ softmax_j( alpha[b, L-1, j] );
    z[t]   ~ softmax_i( alpha[b, t, i] + log_trans[b, t+1, i, z[t+1]] )   for t = L-2 .. 0,
    with alpha the log-space forward variables of :func:`log_likelihood`.
    """
    if (isinstance(num_samples, (bool, np.bool_)) or not isinstance(num_samples, numbers.Integral)
            or num_samples < 0):
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    num_samples = int(num_samples)
    model = _prepare(log_init, log_trans, log_emit, lengths)
    B, T, N = model.emit.shape
    gen = np.random.default_rng(rng)
    u = gen.random((B, num_samples, T))
    alpha, loglik = _forward_log(model)
    out = np.full((B, num_samples, T), -1, dtype=np.int32)
    valid = np.isfinite(loglik) & (model.lengths > 0)                # (B,)
    cur = np.zeros((B, num_samples), dtype=np.int64)
    for t in range(T - 1, -1, -1):
        # Rows at their last step draw from alpha[t]; earlier rows condition on z[t+1].
        logits = np.broadcast_to(alpha[:, t, None, :], (B, num_samples, N))
        if t + 1 < T:
            into_next = np.swapaxes(model.trans[:, t + 1], 1, 2)     # (B, j, i)
            cond = np.take_along_axis(into_next, cur[:, :, None], axis=1)  # (B, S, i)
            inner = (t + 1 < model.lengths)[:, None, None]
            logits = np.where(inner, logits + cond, logits)
        active = valid & (t < model.lengths)
        logits = np.where(active[:, None, None], logits, 0.0)
        k = _draw(logits, u[:, :, t])
        cur = np.where(active[:, None], k, cur)
        out[:, :, t] = np.where(active[:, None], k, -1)
    return out


# --------------------------------------------------------------------------
# brute force by enumeration of every state path
# --------------------------------------------------------------------------

def _all_paths(N, L):
    """(N**L, L) int64, every path in lexicographic order (z_0 most significant)."""
    idx = np.arange(N ** L, dtype=np.int64)
    place = N ** np.arange(L - 1, -1, -1, dtype=np.int64)
    return (idx[:, None] // place[None, :]) % N


def _check_enumerable(model):
    B, T, N = model.emit.shape
    L = int(model.lengths.max()) if B else 0
    if N ** L > BRUTE_FORCE_MAX_PATHS:
        raise ValueError(f"brute force would enumerate N**L = {N}**{L} = {N ** L} paths "
                         f"(longest valid length L={L}), more than {BRUTE_FORCE_MAX_PATHS}; "
                         f"use a smaller case")


def _enumerate_scores(model, b):
    """Every path of sequence b and its joint log score, summed in Viterbi's order."""
    N = model.emit.shape[2]
    L = int(model.lengths[b])
    z = _all_paths(N, L)
    if L == 0:
        return z, np.zeros(1)
    score = model.init[b, z[:, 0]] + model.emit[b, 0, z[:, 0]]
    for t in range(1, L):
        score = (score + model.trans[b, t, z[:, t - 1], z[:, t]]) + model.emit[b, t, z[:, t]]
    return z, score


def brute_force_log_likelihood(log_init, log_trans, log_emit, lengths=None):
    """:func:`log_likelihood` by summing over all N**L paths.

    Same arguments and result as :func:`log_likelihood`.  Raises ValueError
    when N**L (L the longest valid length) exceeds ``BRUTE_FORCE_MAX_PATHS``.
    """
    model = _prepare(log_init, log_trans, log_emit, lengths)
    _check_enumerable(model)
    B = model.emit.shape[0]
    loglik = np.zeros(B)
    for b in range(B):
        if model.lengths[b] > 0:
            loglik[b] = _logsumexp(_enumerate_scores(model, b)[1], axis=0)
    return loglik


def brute_force_posterior(log_init, log_trans, log_emit, lengths=None):
    """:func:`posterior` by weighting every path with its posterior probability.

    Same arguments and result (a :class:`Posterior`) as :func:`posterior`.
    Raises ValueError when N**L exceeds ``BRUTE_FORCE_MAX_PATHS``.
    """
    model = _prepare(log_init, log_trans, log_emit, lengths)
    _check_enumerable(model)
    B, T, N = model.emit.shape
    gamma = np.zeros((B, T, N))
    xi = np.zeros((B, T, N, N))
    loglik = np.zeros(B)
    for b in range(B):
        L = int(model.lengths[b])
        if L == 0:
            continue
        z, score = _enumerate_scores(model, b)
        loglik[b] = _logsumexp(score, axis=0)
        if not np.isfinite(loglik[b]):
            continue
        w = np.exp(score - loglik[b])
        for t in range(L):
            gamma[b, t] = np.bincount(z[:, t], weights=w, minlength=N)
            if t > 0:
                pair = z[:, t - 1] * N + z[:, t]
                xi[b, t] = np.bincount(pair, weights=w, minlength=N * N).reshape(N, N)
    trans_counts = _reduce_trans_counts(model, xi.sum(axis=1), xi)
    init_counts = _reduce_init_counts(model, gamma[:, 0] if T > 0 else np.zeros((B, N)))
    return Posterior(gamma, trans_counts, init_counts, loglik)


def brute_force_viterbi(log_init, log_trans, log_emit, lengths=None):
    """Best path by enumeration.

    Scores are accumulated left to right exactly as in :func:`viterbi`, so the
    best score is bit-identical.  Tie rule: among all paths of maximal score,
    the one smallest when compared from the LAST step backwards (smallest
    z[L-1], then smallest z[L-2], ..., i.e. minimal sum_t z[t] * N**t).  This
    is the path :func:`viterbi`'s lowest-index backtracking selects whenever
    the tied scores are exact (e.g. dyadic inputs); with inexact sums a
    rounding tie could in principle be resolved differently.  When every path
    scores -inf the all-zeros path is returned (score -inf), which need not
    equal :func:`viterbi`'s path in that case.

    Returns a :class:`ViterbiResult`.  Raises ValueError when N**L exceeds
    ``BRUTE_FORCE_MAX_PATHS``.
    """
    model = _prepare(log_init, log_trans, log_emit, lengths)
    _check_enumerable(model)
    B, T, N = model.emit.shape
    path = np.full((B, T), -1, dtype=np.int32)
    score = np.zeros(B)
    for b in range(B):
        L = int(model.lengths[b])
        if L == 0:
            continue
        z, s = _enumerate_scores(model, b)
        best = np.max(s)
        tied = np.flatnonzero(s == best) if not np.isnan(best) else np.arange(len(s))
        key = z[tied] @ (N ** np.arange(L, dtype=np.int64))
        pick = tied[np.argmin(key)]
        path[b, :L] = z[pick]
        score[b] = best
    return ViterbiResult(path, score)


def brute_force_path_distribution(log_init, log_trans, log_emit, lengths=None, b=0):
    """Every path of sequence ``b`` with its posterior probability (for sampling tests).

    Parameters
    ----------
    log_init, log_trans, log_emit, lengths
        As in :func:`log_likelihood`.
    b : int
        Which sequence of the batch.

    Returns
    -------
    PathDistribution
        ``paths`` (K, T) int32 in lexicographic order (z_0 most significant),
        -1 at t >= L; ``probs`` (K,) summing to 1 (all 0 if loglik is -inf);
        ``log_scores`` (K,).  K = N**L (1 for L = 0: the empty path).
    """
    model = _prepare(log_init, log_trans, log_emit, lengths)
    B, T, N = model.emit.shape
    if isinstance(b, (bool, np.bool_)) or not isinstance(b, numbers.Integral) or not 0 <= b < B:
        raise ValueError(f"b must be an integer in [0, B) with B={B}, got {b!r}")
    L = int(model.lengths[b])
    if N ** L > BRUTE_FORCE_MAX_PATHS:
        raise ValueError(f"brute force would enumerate N**L = {N}**{L} = {N ** L} paths, "
                         f"more than {BRUTE_FORCE_MAX_PATHS}; use a smaller case")
    z, score = _enumerate_scores(model, int(b))
    ll = _logsumexp(score, axis=0)
    probs = np.exp(score - ll) if np.isfinite(ll) else np.zeros_like(score)
    paths = np.full((len(score), T), -1, dtype=np.int32)
    paths[:, :L] = z
    return PathDistribution(paths, probs, score)
