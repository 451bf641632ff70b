"""gluon_hmm: hidden Markov models as fast, exact, differentiable operators for MXNet/Gluon.

``import gluon_hmm as gh`` loads the C++ operator library into MXNet once.

* Functional ops (NDArray and Symbol): :func:`log_likelihood`, :func:`posterior`,
  :func:`viterbi`, :func:`sample`.
* NumPy: :mod:`gluon_hmm.numpy` (same kernels, no MXNet engine).
* Gluon blocks: :class:`HMM`, :class:`CategoricalHMM`, :class:`GaussianHMM`,
  :class:`LinearChainCRF` (softmax-parameterised, hybridizable, EM for the
  categorical and Gaussian HMMs).
* Float64 reference: :mod:`gluon_hmm.reference`.
"""
from . import _library

_library.load()

from . import numpy  # noqa: E402  (the NumPy binding, as gh.numpy)
from .ops import InputError, log_likelihood, posterior, posterior_stats, sample, viterbi  # noqa: E402
from ._native import has_cuda  # noqa: E402
from .blocks import HMM, CategoricalHMM, GaussianHMM, LinearChainCRF  # noqa: E402

__version__ = "0.1.0"


def set_num_threads(n):
    """Default CPU thread count of every gluon_hmm kernel (0: GLUON_HMM_NUM_THREADS or all cores)."""
    n = int(n)
    if n < 0:
        raise ValueError("set_num_threads: n must be >= 0, got %d" % n)
    numpy.set_num_threads(n)
    _library.load().hmm_set_num_threads(n)


def set_cpu_vector_bits(bits):
    """Cap the SIMD width of every gluon_hmm CPU kernel (the MXNet ops and
    :mod:`gluon_hmm.numpy`): 256, 512, or 0 for the widest this CPU runs (the
    default, or the ``GLUON_HMM_CPU_VECTOR_BITS`` environment variable).
    Results agree across widths to rounding, not bit for bit.  Returns the
    width now in effect (512 needs AVX-512: without it, 256)."""
    in_effect = numpy.set_cpu_vector_bits(bits)  # checks bits
    _library.load().hmm_set_cpu_vector_bits(int(bits))
    return in_effect


__all__ = ["log_likelihood", "posterior", "posterior_stats", "viterbi", "sample", "InputError", "numpy",
           "set_num_threads", "set_cpu_vector_bits", "has_cuda", "HMM", "CategoricalHMM", "GaussianHMM",
           "LinearChainCRF"]
