"""The functional MXNet API: one call for NDArray (imperative, autograd) and Symbol code.

Every function dispatches on the type of ``log_emit``: with ``mx.nd.NDArray``
inputs it runs imperatively (and records for autograd); with ``mx.sym.Symbol``
inputs it builds graph nodes, so the same call works inside
``hybrid_forward(F, ...)`` before and after ``hybridize()`` and in exported
models.  Shapes and conventions: see the README or ``gluon_hmm.numpy``.
"""
import ctypes
from collections import namedtuple

import mxnet as mx

from . import _library, _native
from .numpy import _num_samples

__all__ = ["log_likelihood", "posterior", "posterior_stats", "viterbi", "sample", "InputError"]


class InputError(mx.base.MXNetError, ValueError):
    """Invalid inputs to a gluon_hmm operator on NDArrays, raised at the call.

    Both an ``MXNetError`` (what MXNet operators raise) and a ``ValueError``
    (what ``gluon_hmm.numpy`` raises for the same inputs).
    """

Posterior = namedtuple("Posterior", ["gamma", "trans_counts"])
PosteriorStats = namedtuple("PosteriorStats", ["gamma", "trans_counts", "init_counts", "loglik"])
Viterbi = namedtuple("Viterbi", ["path", "score"])

_NAMES = ("log_init", "log_trans", "log_emit", "lengths")


def _bind_mxnet_api():
    """Give the Cython binding MXNet's C functions for an NDArray's shape and dtype."""
    from mxnet.ndarray import ndarray as nd_module
    lib = mx.base._LIB
    shape64 = bool(nd_module._int64_enabled())  # what NDArray.shape uses
    get_shape = lib.MXNDArrayGetShapeEx64 if shape64 else lib.MXNDArrayGetShapeEx
    _native.bind_mxnet_api(ctypes.cast(get_shape, ctypes.c_void_p).value, shape64,
                           ctypes.cast(lib.MXNDArrayGetDType, ctypes.c_void_p).value)


_bind_mxnet_api()


def _check_ndarrays(op, log_init, log_trans, log_emit, lengths):
    """Validate NDArray inputs before invoking the operator (shapes and dtypes through the
    engine's ``hmm_describe``, lengths values on the host).

    The operator checks the same things, but MXNet 1.9.1 leaks memory on every failing
    library-operator call (~0.5 KB per shape error, the outputs' storage per forward-time
    error) and raises nothing for a failing call whose outputs are all empty; checking
    here keeps failing calls clean and their errors at the call.  Costs about a
    microsecond, plus a copy of ``lengths`` to the host when given.
    """
    T = _native.describe_ndarrays(log_init.handle.value, log_trans.handle.value,
                                  log_emit.handle.value,
                                  0 if lengths is None else lengths.handle.value)
    try:
        if T < 0:  # invalid: the slow path builds the message
            arrays = (log_init, log_trans, log_emit, lengths)
            # (a.shape is None for an array of unknown shape: describe it as 0-d)
            T = _native.describe([None if a is None else (a.shape or ()) for a in arrays],
                                 [None if a is None else a.dtype for a in arrays])
        if lengths is not None:
            _native.check_lengths(lengths.asnumpy(), T)
    except ValueError as e:
        raise InputError("gluon_hmm.%s: %s" % (op, e)) from None


def _frontend(op, log_init, log_trans, log_emit, lengths):
    """(F, positional inputs, attributes) for a call, with clear errors on mixed types
    and, for NDArrays, on invalid inputs."""
    _library.load()
    if isinstance(log_emit, mx.sym.Symbol):
        F, kind = mx.sym, mx.sym.Symbol
    elif isinstance(log_emit, mx.nd.NDArray):
        F, kind = mx.nd, mx.nd.NDArray
    else:
        raise TypeError("log_emit must be an mx.nd.NDArray or an mx.sym.Symbol, got %s "
                        "(for NumPy arrays use gluon_hmm.numpy)" % type(log_emit).__name__)
    args = [log_init, log_trans, log_emit] + ([] if lengths is None else [lengths])
    for name, a in zip(_NAMES, args):
        if not isinstance(a, kind):
            raise TypeError("%s must be an %s like log_emit, got %s"
                            % (name, kind.__module__ + "." + kind.__name__, type(a).__name__))
    if F is mx.nd:
        _check_ndarrays(op, log_init, log_trans, log_emit, lengths)
    return F, args, {"has_lengths": 0 if lengths is None else 1}


def _block(F, outputs):
    """Inference outputs carry no gradient: keep them out of autograd's way."""
    if F is mx.nd and not mx.autograd.is_recording():
        return outputs
    return [F.BlockGrad(o) for o in outputs]


def log_likelihood(log_init, log_trans, log_emit, lengths=None):
    """Log-likelihood of each sequence (B,), differentiable w.r.t. the three float inputs.

    Inputs
    ------
    log_init : (N,) or (B, N)
    log_trans : (N, N), (B, N, N) or (B, T, N, N); ``[..., i, j]`` moves from i to j;
        time-varying ``[b, t]`` moves into step t (``[b, 0]`` unused).
    log_emit : (B, T, N), log p(x_t | z_t = j) from any source.
    lengths : (B,) int32/int64 or None (all T). Steps t >= lengths[b] are ignored.

    Outputs
    -------
    loglik : (B,) in the dtype of log_emit.  Gradients: d/d log_emit = gamma,
    d/d log_trans = expected transition counts, d/d log_init = gamma[:, 0], each
    scaled by the upstream gradient (any sign).

    Examples
    --------
    >>> import mxnet as mx, gluon_hmm as gh
    >>> emit = mx.nd.log_softmax(mx.nd.random.normal(shape=(2, 5, 3)))
    >>> gh.log_likelihood(mx.nd.log(mx.nd.ones(3) / 3),
    ...                   mx.nd.log(mx.nd.ones((3, 3)) / 3), emit).shape
    (2,)
    """
    F, args, attrs = _frontend("log_likelihood", log_init, log_trans, log_emit, lengths)
    return F.hmm_log_likelihood(*args, **attrs)


def posterior_stats(log_init, log_trans, log_emit, lengths=None):
    """gamma (B,T,N), trans_counts (shape of log_trans), init_counts (shape of log_init), loglik (B,)."""
    F, args, attrs = _frontend("posterior", log_init, log_trans, log_emit, lengths)
    out = F.hmm_posterior(*args, **attrs)
    return PosteriorStats(*_block(F, [out[0], out[1], out[2], out[3]]))


def posterior(log_init, log_trans, log_emit, lengths=None):
    """Posterior marginals gamma (B, T, N) and expected transition counts (shape of log_trans).

    They equal the gradients of ``log_likelihood`` (the M-step statistics of
    Baum-Welch), computed without autograd.  Not differentiable.
    """
    s = posterior_stats(log_init, log_trans, log_emit, lengths)
    return Posterior(s.gamma, s.trans_counts)


def viterbi(log_init, log_trans, log_emit, lengths=None):
    """MAP path (B, T) int32 (-1 beyond each length) and its joint log score (B,).

    Ties break towards the lower state index.  Not differentiable.
    """
    F, args, attrs = _frontend("viterbi", log_init, log_trans, log_emit, lengths)
    out = F.hmm_viterbi(*args, **attrs)
    return Viterbi(*_block(F, [out[0], out[1]]))


def sample(log_init, log_trans, log_emit, lengths=None, num_samples=1):
    """Exact posterior samples p(z | x): paths (B, num_samples, T) int32, -1 beyond each length.

    The randomness comes from MXNet's generator (reproducible under
    ``mx.random.seed``; a hybridized block draws fresh samples on every call).
    A sequence of probability zero gets paths of -1.
    """
    num_samples = _num_samples(num_samples)
    F, args, attrs = _frontend("sample", log_init, log_trans, log_emit, lengths)
    kw = {} if F is mx.sym else {"ctx": log_emit.context}
    seed = F.random.randint(low=-2 ** 31, high=2 ** 31 - 1, shape=(2,), dtype="int32", **kw)
    out = F.hmm_sample(*(args + [seed]), num_samples=num_samples, **attrs)
    return _block(F, [out])[0]
