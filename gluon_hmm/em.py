"""Baum-Welch (EM) for the categorical and Gaussian HMM blocks, on NumPy float64.

The E-step is one call of :func:`gluon_hmm.numpy.posterior_stats` (the C++
engine) over a padded batch of sequences of different lengths; the M-step is
closed form.  Each iteration, for sequences b with lengths L_b::

    E-step   gamma[b, t, j] = p(z_t = j | x_b)            (t < L_b)
             xi_sum[i, j]   = sum_b sum_{t=1}^{L_b-1} p(z_{t-1} = i, z_t = j | x_b)
             init[j]        = sum_b gamma[b, 0, j]         (sequences with L_b > 0)
    M-step   pi_j   = init[j] / sum_j init[j]
             A_ij   = xi_sum[i, j] / sum_j xi_sum[i, j]
             categorical:  B_jv = sum_{b,t: x=v} gamma[b,t,j] / sum_{b,t} gamma[b,t,j]
             Gaussian:     mu_j = sum gamma[., j] x / sum gamma[., j]
                           var_j = max(sum gamma[., j] (x - mu_j)^2 / sum gamma[., j], min_variance)

Guards (documented in the blocks' ``fit_em``):

* Probabilities are floored at :data:`PROB_FLOOR` before the log, so that the
  logits stay finite (a plain zero would give ``-inf`` logits, which turn into
  NaN under weight decay or momentum).  The floor is far below anything a
  float32 or float64 log-likelihood can resolve.
* A distribution whose expected counts are all zero (a state the posterior
  never visits, or no transitions at all) keeps its previous parameters.
* Gaussian variances are floored at ``min_variance``.
"""
import numpy as np

from . import numpy as _ghn

__all__ = ["PROB_FLOOR", "as_padded", "log_softmax", "e_step", "normalise_counts",
           "categorical_emission_counts", "gaussian_moments", "run"]

#: Probabilities below this are raised to it before taking logs in the M-step.
PROB_FLOOR = 1e-30


def log_softmax(x, axis=-1):
    """Stable log_softmax in float64; -inf entries stay -inf."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return x - (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)))


def _to_numpy(a):
    if hasattr(a, "asnumpy"):
        return a.asnumpy()
    return np.asarray(a)


def as_padded(data, lengths, event_shape, name="data"):
    """A padded batch (B, T, *event_shape) and int64 lengths (B,) from any accepted layout.

    ``data`` may be a list of sequences (each (T_i, *event_shape)), one
    sequence (T, *event_shape), or a padded batch (B, T, *event_shape), as
    NumPy arrays, nested lists or NDArrays.  With ``lengths`` given, ``data``
    is a padded batch; ``lengths=None`` with a padded batch means every
    sequence has length T.
    """
    event_ndim = len(event_shape)
    if lengths is None and isinstance(data, (list, tuple)) and len(data) > 0 \
            and np.ndim(_to_numpy(data[0])) == event_ndim + 1:
        seqs = [np.asarray(_to_numpy(s)) for s in data]
        for i, s in enumerate(seqs):
            if s.ndim != event_ndim + 1 or tuple(s.shape[1:]) != tuple(event_shape):
                raise ValueError("%s[%d] must have shape (T, %s), got %s"
                                 % (name, i, ", ".join(map(str, event_shape)) or "", s.shape))
        lens = np.array([s.shape[0] for s in seqs], dtype=np.int64)
        T = int(lens.max()) if len(lens) else 0
        padded = np.zeros((len(seqs), T) + tuple(event_shape), dtype=np.result_type(*seqs))
        for i, s in enumerate(seqs):
            padded[i, :s.shape[0]] = s
        return padded, lens
    arr = np.asarray(_to_numpy(data))
    if arr.ndim == event_ndim + 1:
        if lengths is not None:
            raise ValueError("lengths must be None when %s is a single sequence of shape %s"
                             % (name, arr.shape))
        arr = arr[None]
    if arr.ndim != event_ndim + 2 or tuple(arr.shape[2:]) != tuple(event_shape):
        want = ", ".join(["B", "T"] + [str(d) for d in event_shape])
        raise ValueError("%s must be a list of sequences or a padded array of shape (%s), got "
                         "shape %s" % (name, want, arr.shape))
    B, T = arr.shape[:2]
    if lengths is None:
        lens = np.full(B, T, dtype=np.int64)
    else:
        lens = np.asarray(_to_numpy(lengths))
        if lens.shape != (B,) or not np.issubdtype(lens.dtype, np.integer):
            raise ValueError("lengths must be an integer array of shape (%d,), got %s %s"
                             % (B, lens.dtype, lens.shape))
        if lens.size and (lens.min() < 0 or lens.max() > T):
            raise ValueError("lengths must lie in [0, T] = [0, %d], got values from %d to %d"
                             % (T, lens.min(), lens.max()))
        lens = lens.astype(np.int64)
    return arr, lens


def valid_mask(lengths, T):
    """(B, T) bool, True at t < lengths[b]."""
    return np.arange(T)[None, :] < lengths[:, None]


def e_step(log_init, log_trans, log_emit, lengths):
    """Posterior statistics (gamma, trans_counts, init_counts, loglik), all float64."""
    return _ghn.posterior_stats(np.ascontiguousarray(log_init, dtype=np.float64),
                                np.ascontiguousarray(log_trans, dtype=np.float64),
                                np.ascontiguousarray(log_emit, dtype=np.float64),
                                np.ascontiguousarray(lengths, dtype=np.int64))


def normalise_counts(counts, previous_log_probs):
    """log of counts normalised along the last axis, floored; all-zero rows keep ``previous``."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = np.where(total > 0, counts / np.where(total > 0, total, 1.0), 0.0)
    new = np.log(np.maximum(probs, PROB_FLOOR))
    new = log_softmax(new)          # renormalise exactly after flooring
    return np.where(total > 0, new, previous_log_probs)


def categorical_emission_counts(gamma, symbols, lengths, num_symbols):
    """Expected emission counts (N, V): sum over valid (b, t) with symbols[b, t] = v of gamma."""
    mask = valid_mask(lengths, symbols.shape[1])
    g = gamma[mask]                                   # (M, N)
    s = symbols[mask].astype(np.int64)                # (M,)
    return np.stack([np.bincount(s, weights=g[:, j], minlength=num_symbols)
                     for j in range(g.shape[1])])


def gaussian_moments(gamma, x, lengths, previous_means, previous_var, min_variance):
    """Posterior-weighted means (N, D) and variances (N, D), floored; unvisited states keep theirs."""
    mask = valid_mask(lengths, x.shape[1])
    w = gamma[mask]                                   # (M, N)
    X = x[mask].astype(np.float64)                    # (M, D)
    occ = w.sum(axis=0)                               # (N,)
    means = np.array(previous_means, dtype=np.float64, copy=True)
    var = np.array(previous_var, dtype=np.float64, copy=True)
    for j in range(w.shape[1]):
        if occ[j] > 0:
            means[j] = w[:, j] @ X / occ[j]
            var[j] = w[:, j] @ np.square(X - means[j]) / occ[j]
    return means, np.maximum(var, min_variance)


def run(e_step_fn, m_step_fn, max_iter, tol, progress, desc):
    """The EM loop shared by the blocks.

    ``e_step_fn()`` returns the posterior statistics under the current
    parameters; ``m_step_fn(stats)`` updates them.  Returns the list of total
    log-likelihoods, one per iteration, each under the parameters that the
    iteration started from.  Stops after ``max_iter`` iterations or when the
    improvement falls below ``tol``.
    """
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError("max_iter must be a non-negative int, got %r" % (max_iter,))
    if not tol >= 0:
        raise ValueError("tol must be >= 0, got %r" % (tol,))
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("fit_em(progress=True) needs the tqdm package: "
                              "pip install tqdm (or pass progress=False)") from None
        bar = tqdm(total=max_iter, desc=desc, leave=False)
    history = []
    try:
        for _ in range(max_iter):
            stats = e_step_fn()
            total = float(np.sum(stats.loglik))
            if not np.isfinite(total):
                raise FloatingPointError(
                    "fit_em: the data has log-likelihood %r under the current parameters "
                    "(a sequence with probability zero); re-initialise the parameters"
                    % total)
            history.append(total)
            m_step_fn(stats)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loglik="%.6g" % total)
            if len(history) > 1 and history[-1] - history[-2] < tol:
                break
    finally:
        if bar is not None:
            bar.close()
    return history
