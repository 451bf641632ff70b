"""gluon_hmm on NumPy arrays: the engine's C++ kernels through Cython, without MXNet.

Same conventions as the MXNet operators (see the README's conventions table):
``log_init`` (N,) or (B, N); ``log_trans`` (N, N), (B, N, N) or (B, T, N, N);
``log_emit`` (B, T, N); ``lengths`` (B,) int32/int64 or None (all T).  float32
or float64; results in the dtype of ``log_emit``.  The GIL is released while
the kernels run, so calls from several threads proceed in parallel.
"""
from collections import namedtuple

import numpy as np

from . import _native

__all__ = ["log_likelihood", "value_and_grad", "posterior", "posterior_stats", "viterbi",
           "sample", "Posterior", "PosteriorStats", "Viterbi", "Gradients"]

Posterior = namedtuple("Posterior", ["gamma", "trans_counts"])
PosteriorStats = namedtuple("PosteriorStats", ["gamma", "trans_counts", "init_counts", "loglik"])
Viterbi = namedtuple("Viterbi", ["path", "score"])
Gradients = namedtuple("Gradients", ["log_init", "log_trans", "log_emit"])


def _call(log_init, log_trans, log_emit, lengths, num_threads=0):
    return _native._Call(log_init, log_trans, log_emit, lengths, int(num_threads))


def log_likelihood(log_init, log_trans, log_emit, lengths=None, num_threads=0):
    """Log-likelihood of each sequence, shape (B,).

    Examples
    --------
    >>> import numpy as np, gluon_hmm.numpy as ghn
    >>> ghn.log_likelihood(np.log([0.5, 0.5]), np.log([[0.9, 0.1], [0.1, 0.9]]),
    ...                    np.zeros((1, 3, 2))).round(6)
    array([0.])
    """
    return _call(log_init, log_trans, log_emit, lengths, num_threads).forward()[0]


def value_and_grad(log_init, log_trans, log_emit, lengths=None, grad_loglik=None,
                   num_threads=0):
    """Log-likelihood (B,) and the gradients of ``sum(grad_loglik * loglik)``.

    ``grad_loglik`` (B,) defaults to ones.  Returns ``(loglik, Gradients(log_init,
    log_trans, log_emit))``, each gradient shaped like its input.  One pass over the
    batch (the C ABI's ``hmm_forward_backward``): each group of sequences runs its
    backward right after its forward; the numbers are those of the two passes run apart.
    """
    loglik, grads = _call(log_init, log_trans, log_emit, lengths,
                          num_threads).value_and_grad(grad_loglik)
    return loglik, Gradients(*grads)


def posterior(log_init, log_trans, log_emit, lengths=None, num_threads=0):
    """Posterior marginals gamma (B, T, N) and expected transition counts (shape of log_trans).

    gamma[b, t] = p(z_t | x_b) for t < lengths[b], 0 after; the counts are
    sum_t p(z_{t-1}=i, z_t=j | x_b), summed over b (and t) as the shape of
    ``log_trans`` says.  These are the gradients of sum(loglik).
    """
    s = posterior_stats(log_init, log_trans, log_emit, lengths, num_threads)
    return Posterior(s.gamma, s.trans_counts)


def posterior_stats(log_init, log_trans, log_emit, lengths=None, num_threads=0):
    """Everything an EM step needs in one pass: gamma, trans_counts, init_counts, loglik."""
    c = _call(log_init, log_trans, log_emit, lengths, num_threads)
    return PosteriorStats(*c.posterior())


def viterbi(log_init, log_trans, log_emit, lengths=None, num_threads=0):
    """MAP state path (B, T) int32 (-1 beyond each length) and its joint log score (B,).

    Ties break towards the lower state index.
    """
    return Viterbi(*_call(log_init, log_trans, log_emit, lengths, num_threads).viterbi())


def _is_integer(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _num_samples(x):
    """num_samples as a Python int (also from NumPy integers); bools and negatives refused."""
    if not _is_integer(x) or x < 0:
        raise ValueError("num_samples must be a non-negative integer, got %r" % (x,))
    return int(x)


def _seed_pair(seed):
    if seed is None:
        return np.random.default_rng().integers(0, 2 ** 32, size=2, dtype=np.uint64)
    if _is_integer(seed):
        s = int(seed)
        if not 0 <= s < 2 ** 64:
            raise ValueError("seed must be an integer in [0, 2**64), got %d" % s)
        return np.array([(s >> 32) & 0xFFFFFFFF, s & 0xFFFFFFFF], dtype=np.uint64)
    if isinstance(seed, np.random.Generator):
        return seed.integers(0, 2 ** 32, size=2, dtype=np.uint64)
    raise ValueError("seed must be None, a non-negative int or a numpy.random.Generator, "
                     "got %r" % (seed,))


def sample(log_init, log_trans, log_emit, lengths=None, num_samples=1, seed=None,
           num_threads=0):
    """Exact posterior samples of state paths, (B, num_samples, T) int32, -1 beyond each length.

    Forward filtering, backward sampling.  ``seed`` (int, Generator or None for
    fresh entropy) keys a counter-based generator: the same seed gives the same
    paths, on any thread count.  A sequence of probability zero gets paths of -1.
    """
    num_samples = _num_samples(num_samples)
    c = _call(log_init, log_trans, log_emit, lengths, num_threads)
    return c.sample(num_samples, _seed_pair(seed).astype(np.int64))


def set_num_threads(n):
    """Default CPU thread count of the NumPy binding (0: GLUON_HMM_NUM_THREADS or all cores)."""
    _native.set_num_threads(int(n))


def _check_vector_bits(bits, where):
    bits = int(bits)
    if bits not in (0, 256, 512):
        raise ValueError("%s: bits must be 0 (the widest this CPU runs), 256 or 512, got %d"
                         % (where, bits))
    return bits


def set_cpu_vector_bits(bits):
    """Cap the SIMD width of the NumPy binding's CPU kernels: 256, 512, or 0 for the
    widest this CPU runs (the default, or ``GLUON_HMM_CPU_VECTOR_BITS``).  Results
    agree across widths to rounding, not bit for bit.  Returns the width now in
    effect: asking for 512 on a CPU without AVX-512 gives 256."""
    return _native.set_cpu_vector_bits(_check_vector_bits(bits, "set_cpu_vector_bits"))


def get_cpu_vector_bits():
    """The widest SIMD width, in bits, the NumPy binding's CPU kernels use now."""
    return _native.get_cpu_vector_bits()
