"""Gluon blocks: HMMs and a linear-chain CRF on top of the functional ops.

Every block is an ``mx.gluon.HybridBlock`` whose free parameters are logits;
``log_softmax`` over the last axis turns them into distributions, so every row
of the transition matrix and every state's emission distribution sums to 1::

    log_init  = log_softmax(init_logits)            (N,)
    log_trans = log_softmax(trans_logits, axis=-1)  (N, N), [i, j]: from i to j

The blocks work imperatively, hybridized (also with ``static_alloc=True``),
exported (``block.export``) and re-imported with ``SymbolBlock.imports`` after
``import gluon_hmm``, in float32 and float64 (``block.cast('float64')``).

Two MXNet 1.9 details shape the code:

* Library (lib_api) operators overwrite the gradients of their inputs: they do
  not honour ``grad_req='add'``.  Every parameter (and every block input that
  may carry a gradient) therefore passes through an MXNet operator
  (``log_softmax``, or ``identity`` for the CRF potentials) before reaching a
  library operator, so MXNet itself accumulates into the parameter gradients.
* A hybridized block caches one graph for one set of inputs, so an optional
  ``lengths`` cannot be left out on one call and given on the next.  When a
  hybridized block is called on NDArrays with ``lengths=None``, it passes
  ``lengths = T`` for every sequence instead.  As a consequence an exported
  block always takes ``lengths`` as its last input (``data1`` for the HMMs,
  ``data2`` for the CRF).
"""
import math
from collections import namedtuple

import numpy as np
import mxnet as mx
from mxnet.gluon import HybridBlock

from . import em as _em
from . import ops as _ops

__all__ = ["HMM", "CategoricalHMM", "GaussianHMM", "LinearChainCRF"]

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# Validation of NDArray inputs (symbolic inputs are checked by the operators' shape
# and type inference).  Every message names the argument, the expectation and the value.
# --------------------------------------------------------------------------------------

def _fmt_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _dtype_name(dtype):
    return np.dtype(dtype).name


def _check_array(name, x, ndim, last=None, last_name="N", dtype=None):
    """Check an NDArray input's type, rank, last dimension and float dtype."""
    if not isinstance(x, mx.nd.NDArray):
        raise TypeError("%s must be an mx.nd.NDArray, got %s" % (name, type(x).__name__))
    if x.ndim != ndim or (last is not None and x.shape[-1] != last):
        if ndim == 2:
            want = "(B, T)"
        else:
            want = "(B, T, %s)" % (last_name if last is None else "%s=%d" % (last_name, last))
        raise ValueError("%s must have shape %s, got %s" % (name, want, _fmt_shape(x.shape)))
    if dtype is not None and np.dtype(x.dtype) != np.dtype(dtype):
        raise TypeError("%s must have dtype %s like the block's parameters (use block.cast to "
                        "change it), got %s" % (name, _dtype_name(dtype), _dtype_name(x.dtype)))


def _as_lengths(lengths, x):
    """lengths as an int NDArray of shape (B,) on x's context, or None."""
    if lengths is None:
        return None
    if not isinstance(lengths, mx.nd.NDArray):
        arr = np.asarray(lengths)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError("lengths must hold integers (int32 or int64), got dtype %s"
                            % arr.dtype)
        arr = arr.astype(np.int64 if arr.dtype == np.int64 else np.int32)
        lengths = mx.nd.array(arr, ctx=x.context, dtype=arr.dtype)
    B = x.shape[0]
    if lengths.shape != (B,):
        raise ValueError("lengths must have shape (B,) = (%d,), got %s"
                         % (B, _fmt_shape(lengths.shape)))
    if np.dtype(lengths.dtype) not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError("lengths must have dtype int32 or int64, got %s"
                        % _dtype_name(lengths.dtype))
    return lengths


def _valid_mask_np(lengths, B, T):
    """(B, T) bool of valid steps, on the host."""
    if lengths is None:
        return np.ones((B, T), dtype=bool)
    lens = lengths.asnumpy()
    return np.arange(T)[None, :] < lens[:, None]


def _check_indices(name, idx, lengths, upper, upper_name):
    """Integer values in [0, upper) at every valid step (t < lengths[b])."""
    _check_array(name, idx, 2)
    values = idx.asnumpy()[_valid_mask_np(lengths, *idx.shape)]
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.integer) and not np.all(values == np.floor(values)):
        raise ValueError("%s must hold integers, got non-integer values such as %r"
                         % (name, float(values[values != np.floor(values)][0])))
    lo, hi = values.min(), values.max()
    if lo < 0 or hi >= upper:
        raise ValueError("%s must lie in [0, %s) = [0, %d) at valid steps (t < lengths[b]), "
                         "got values from %d to %d" % (name, upper_name, upper, lo, hi))


def _full_lengths(x):
    return mx.nd.full((x.shape[0],), x.shape[1], ctx=x.context, dtype="int32")


def _check_initialized(block):
    for name, p in block._reg_params.items():
        if p._data is None:
            raise RuntimeError("%s: parameter %s is not initialized; call block.initialize() "
                               "first" % (type(block).__name__, name))


# --------------------------------------------------------------------------------------
# HMM blocks
# --------------------------------------------------------------------------------------

class _HMMBase(HybridBlock):
    """Shared machinery: initial and transition logits, forward, posterior, viterbi, sample."""

    def __init__(self, num_states, prefix=None, params=None):
        super(_HMMBase, self).__init__(prefix=prefix, params=params)
        if not isinstance(num_states, (int, np.integer)) or num_states < 1:
            raise ValueError("num_states must be a positive int, got %r" % (num_states,))
        self._num_states = int(num_states)
        with self.name_scope():
            self.init_logits = self.params.get("init_logits", shape=(self._num_states,),
                                               init=mx.init.Zero())
            self.trans_logits = self.params.get("trans_logits",
                                                shape=(self._num_states, self._num_states),
                                                init=mx.init.Zero())

    @property
    def num_states(self):
        """N, the number of hidden states."""
        return self._num_states

    # -- to be provided by subclasses ------------------------------------------------
    def _check_input(self, x, lengths):
        """Validate the NDArray input (and lengths, already converted)."""
        raise NotImplementedError

    def _log_emit(self, F, x, lengths, **params):
        """(B, T, N) log emission weights from the input, F-agnostic."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------
    def _potentials(self, F, x, lengths, init_logits, trans_logits, **params):
        log_init = F.log_softmax(init_logits, axis=-1)
        log_trans = F.log_softmax(trans_logits, axis=-1)
        return log_init, log_trans, self._log_emit(F, x, lengths, **params)

    def _nd_potentials(self, x, lengths):
        lengths = _as_lengths(lengths, x) if isinstance(x, mx.nd.NDArray) else lengths
        if isinstance(x, mx.nd.NDArray):
            self._check_input(x, lengths)
            params = {k: v.data(x.context) for k, v in self._reg_params.items()}
            F = mx.nd
        else:
            params = {k: v.var() for k, v in self._reg_params.items()}
            F = mx.sym
        return self._potentials(F, x, lengths, **params) + (lengths,)

    def forward(self, x, lengths=None):
        if isinstance(x, mx.nd.NDArray):
            lengths = _as_lengths(lengths, x)
            self._check_input(x, lengths)
            if lengths is None and self._active:
                lengths = _full_lengths(x)
        return super(_HMMBase, self).forward(x, lengths)

    def hybrid_forward(self, F, x, lengths=None, **params):
        log_init, log_trans, log_emit = self._potentials(F, x, lengths, **params)
        return _ops.log_likelihood(log_init, log_trans, log_emit, lengths)

    def log_probs(self, x=None, lengths=None):
        """The model's distributions as NDArrays, with the block's current parameters.

        Returns ``(log_init (N,), log_trans (N, N))`` and, when ``x`` is given,
        also its ``log_emit (B, T, N)``.
        """
        if x is None:
            ctx = self.init_logits.list_ctx()[0]
            return (mx.nd.log_softmax(self.init_logits.data(ctx), axis=-1),
                    mx.nd.log_softmax(self.trans_logits.data(ctx), axis=-1))
        return self._nd_potentials(x, lengths)[:3]

    def posterior(self, x, lengths=None):
        """Posterior marginals and expected transition counts under the current parameters.

        Inputs: the forward inputs.  Outputs: ``Posterior(gamma (B, T, N),
        trans_counts (N, N))``, gamma is 0 at t >= lengths[b].  Not differentiable.
        """
        log_init, log_trans, log_emit, lengths = self._nd_potentials(x, lengths)
        return _ops.posterior(log_init, log_trans, log_emit, lengths)

    def viterbi(self, x, lengths=None):
        """Most probable state paths: ``Viterbi(path (B, T) int32, -1 at t >= lengths[b],
        score (B,))``, the joint log-probability of each path and its observations."""
        log_init, log_trans, log_emit, lengths = self._nd_potentials(x, lengths)
        return _ops.viterbi(log_init, log_trans, log_emit, lengths)

    def sample(self, x, lengths=None, num_samples=1):
        """Exact posterior samples of state paths p(z | x): (B, num_samples, T) int32,
        -1 at t >= lengths[b].  Reproducible under ``mx.random.seed``."""
        log_init, log_trans, log_emit, lengths = self._nd_potentials(x, lengths)
        return _ops.sample(log_init, log_trans, log_emit, lengths, num_samples=num_samples)

    # -- EM helpers ------------------------------------------------------------------
    def _np_param(self, name):
        p = self._reg_params[name]
        return p.data(p.list_ctx()[0]).asnumpy().astype(np.float64)

    def _set_param(self, name, value):
        p = self._reg_params[name]
        p.set_data(mx.nd.array(value, dtype=p.dtype, ctx=p.list_ctx()[0]))

    def _em_update_chain(self, stats, log_init, log_trans):
        self._set_param("init_logits", _em.normalise_counts(stats.init_counts, log_init))
        self._set_param("trans_logits", _em.normalise_counts(stats.trans_counts, log_trans))


class HMM(_HMMBase):
    r"""A hidden Markov model whose emissions come from anywhere (e.g. a neural network).

    The block holds the initial and transition distributions; ``forward`` takes
    the log emission weights ``log_emit[b, t, j] = log p(x_t | z_t = j)``
    (from a lookup, a density or any network: a neural HMM) and returns the
    exact log-likelihood of each sequence, differentiable with respect to the
    parameters and to ``log_emit``::

        loglik[b] = log sum_z exp( log_init[z_0] + log_emit[b, 0, z_0]
                                   + sum_{t=1}^{L-1} log_trans[z_{t-1}, z_t] + log_emit[b, t, z_t] )

    with ``log_init = log_softmax(init_logits)``,
    ``log_trans = log_softmax(trans_logits, axis=-1)`` and L = lengths[b].

    Parameters
    ----------
    num_states : int
        N, the number of hidden states.
    prefix, params
        As for every Gluon block.

    Learnable parameters (``collect_params()`` keys end in these names):
    ``init_logits`` (N,) and ``trans_logits`` (N, N), both initialised to 0 (uniform).

    Inputs:
        - **log_emit**: (B, T, N) log emission weights, in the parameters' dtype.
          Entries may be ``-inf``; entries at t >= lengths[b] are ignored.
        - **lengths**: optional (B,) int32/int64 valid lengths (default: all T).

    Outputs:
        - **loglik**: (B,) log-likelihood of each sequence.

    Methods ``posterior``, ``viterbi`` and ``sample`` take the same inputs.

    Examples
    --------
    >>> import mxnet as mx, gluon_hmm as gh
    >>> hmm = gh.HMM(3)
    >>> hmm.initialize()
    >>> log_emit = mx.nd.log_softmax(mx.nd.random.normal(shape=(2, 5, 3)))
    >>> hmm(log_emit, mx.nd.array([5, 3], dtype='int32')).shape
    (2,)
    """

    def _check_input(self, x, lengths):
        _check_array("log_emit", x, 3, last=self._num_states, dtype=self.init_logits.dtype)

    def _log_emit(self, F, x, lengths):
        # identity: the library op must not write into a leaf gradient with grad_req='add'
        return F.identity(x)


class CategoricalHMM(_HMMBase):
    r"""An HMM over discrete symbols: p(x_t = v | z_t = j) = softmax(emit_logits)[j, v].

    Parameters
    ----------
    num_states : int
        N, the number of hidden states.
    num_symbols : int
        V, the size of the alphabet: symbols are integers in [0, V).
    prefix, params
        As for every Gluon block.

    Learnable parameters: ``init_logits`` (N,), ``trans_logits`` (N, N) (both 0,
    uniform) and ``emit_logits`` (N, V), initialised from N(0, 1) so that the
    states differ.  Each row of ``log_softmax(emit_logits)`` is a distribution over symbols.

    Inputs:
        - **symbols**: (B, T) integers in [0, V) (any integer or integral float
          dtype); entries at t >= lengths[b] are ignored and may hold anything.
          NDArray inputs are range-checked on every call (one host copy).
        - **lengths**: optional (B,) int32/int64 valid lengths (default: all T).

    Outputs:
        - **loglik**: (B,) log p(symbols[b, :L]) in the parameters' dtype.

    Methods ``posterior``, ``viterbi``, ``sample`` take the same inputs;
    ``fit_em`` runs Baum-Welch.

    Examples
    --------
    >>> import mxnet as mx, gluon_hmm as gh
    >>> hmm = gh.CategoricalHMM(num_states=2, num_symbols=3)
    >>> hmm.initialize()
    >>> x = mx.nd.array([[0, 2, 1, 1], [2, 2, 0, -1]], dtype='int32')   # -1: padding
    >>> hmm(x, mx.nd.array([4, 3], dtype='int32')).shape
    (2,)
    >>> history = hmm.fit_em([[0, 2, 1, 1], [2, 2, 0]], max_iter=20)
    """

    def __init__(self, num_states, num_symbols, prefix=None, params=None):
        super(CategoricalHMM, self).__init__(num_states, prefix=prefix, params=params)
        if not isinstance(num_symbols, (int, np.integer)) or num_symbols < 1:
            raise ValueError("num_symbols must be a positive int, got %r" % (num_symbols,))
        self._num_symbols = int(num_symbols)
        with self.name_scope():
            self.emit_logits = self.params.get("emit_logits",
                                               shape=(self._num_states, self._num_symbols),
                                               init=mx.init.Normal(1.0))

    @property
    def num_symbols(self):
        """V, the alphabet size."""
        return self._num_symbols

    def _check_input(self, x, lengths):
        _check_indices("symbols", x, lengths, self._num_symbols, "num_symbols")

    def _log_emit(self, F, x, lengths, emit_logits):
        log_b = F.log_softmax(emit_logits, axis=-1)                     # (N, V)
        # take clips out-of-range indices, so padding (e.g. -1) is harmless
        return F.take(F.transpose(log_b), x, axis=0)                   # (B, T, N)

    def fit_em(self, data, lengths=None, max_iter=100, tol=1e-6, progress=False):
        """Fit the parameters by Baum-Welch (EM), in place, starting from the current ones.

        Parameters
        ----------
        data : list of 1-D integer sequences of any lengths, one sequence, or a
            padded (B, T) array (NumPy or NDArray) with ``lengths``.
        lengths : (B,) ints, only with a padded array (None: all T).
        max_iter : int
            At most this many iterations.
        tol : float
            Stop when the total log-likelihood improves by less than this.
        progress : bool
            Show a tqdm progress bar (needs the ``tqdm`` package).

        Returns
        -------
        history : list of float
            The total log-likelihood of all sequences at the start of each
            iteration; non-decreasing.

        Notes
        -----
        The E-step runs in float64 on the C++ engine (``gluon_hmm.numpy``); the
        M-step is closed form.  New logits are logs of the new probabilities,
        floored at ``gluon_hmm.em.PROB_FLOOR`` (1e-30) so they stay finite; a
        distribution with no expected counts (a state never visited) keeps its
        previous parameters.
        """
        _check_initialized(self)
        symbols, lens = _em.as_padded(data, lengths, (), "data")
        if symbols.size and not np.issubdtype(symbols.dtype, np.integer):
            if not np.all(symbols == np.floor(symbols)):
                raise ValueError("data must hold integer symbols, got dtype %s with "
                                 "non-integer values" % symbols.dtype)
        symbols = symbols.astype(np.int64)
        valid = symbols[_em.valid_mask(lens, symbols.shape[1])]
        if valid.size and (valid.min() < 0 or valid.max() >= self._num_symbols):
            raise ValueError("data must lie in [0, num_symbols) = [0, %d), got values from %d "
                             "to %d" % (self._num_symbols, valid.min(), valid.max()))
        safe = np.where(_em.valid_mask(lens, symbols.shape[1]), symbols, 0)
        state = {}

        def e_step():
            state["init"] = _em.log_softmax(self._np_param("init_logits"))
            state["trans"] = _em.log_softmax(self._np_param("trans_logits"))
            state["emit"] = _em.log_softmax(self._np_param("emit_logits"))
            log_emit = state["emit"].T[safe]                            # (B, T, N)
            return _em.e_step(state["init"], state["trans"], log_emit, lens)

        def m_step(stats):
            self._em_update_chain(stats, state["init"], state["trans"])
            counts = _em.categorical_emission_counts(stats.gamma, safe, lens, self._num_symbols)
            self._set_param("emit_logits", _em.normalise_counts(counts, state["emit"]))

        return _em.run(e_step, m_step, max_iter, tol, progress, "CategoricalHMM EM")


class GaussianHMM(_HMMBase):
    r"""An HMM with diagonal Gaussian emissions: x_t | z_t = j ~ N(means[j], exp(log_scales[j])^2).

    ``log p(x_t | z_t = j) = -0.5 * sum_d ((x_td - means_jd) / s_jd)^2 - sum_d log s_jd
    - D/2 log(2 pi)`` with ``s = exp(log_scales)`` (standard deviations).

    Parameters
    ----------
    num_states : int
        N, the number of hidden states.
    num_features : int
        D, the dimension of each observation.
    prefix, params
        As for every Gluon block.

    Learnable parameters: ``init_logits`` (N,), ``trans_logits`` (N, N) (both 0,
    uniform), ``means`` (N, D) (initialised from N(0, 1)) and ``log_scales``
    (N, D) (log standard deviations, initialised to 0).

    Inputs:
        - **x**: (B, T, D) observations in the parameters' dtype; entries at
          t >= lengths[b] are ignored (they may even be NaN).
        - **lengths**: optional (B,) int32/int64 valid lengths (default: all T).

    Outputs:
        - **loglik**: (B,) log-density of each sequence.

    Methods ``posterior``, ``viterbi``, ``sample`` take the same inputs;
    ``fit_em`` runs Baum-Welch.

    Examples
    --------
    >>> import mxnet as mx, gluon_hmm as gh
    >>> hmm = gh.GaussianHMM(num_states=2, num_features=1)
    >>> hmm.initialize()
    >>> x = mx.nd.random.normal(shape=(3, 50, 1))
    >>> hmm(x).shape
    (3,)
    >>> history = hmm.fit_em(x.asnumpy(), max_iter=50)
    >>> path, score = hmm.viterbi(x)
    """

    def __init__(self, num_states, num_features, prefix=None, params=None):
        super(GaussianHMM, self).__init__(num_states, prefix=prefix, params=params)
        if not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError("num_features must be a positive int, got %r" % (num_features,))
        self._num_features = int(num_features)
        shape = (self._num_states, self._num_features)
        with self.name_scope():
            self.means = self.params.get("means", shape=shape, init=mx.init.Normal(1.0))
            self.log_scales = self.params.get("log_scales", shape=shape, init=mx.init.Zero())

    @property
    def num_features(self):
        """D, the observation dimension."""
        return self._num_features

    def _check_input(self, x, lengths):
        _check_array("x", x, 3, last=self._num_features, last_name="D",
                     dtype=self.means.dtype)

    def _log_emit(self, F, x, lengths, means, log_scales):
        if lengths is not None:
            # padded steps may hold anything (NaN too): zero them so that neither the
            # log-density nor its gradient sees them
            x = F.SequenceMask(x, sequence_length=lengths, use_sequence_length=True,
                               axis=1, value=0)
        z = F.broadcast_mul(F.broadcast_sub(F.expand_dims(x, axis=2),           # (B, T, 1, D)
                                            F.expand_dims(F.expand_dims(means, 0), 0)),
                            F.expand_dims(F.expand_dims(F.exp(-log_scales), 0), 0))
        quad = F.sum(F.square(z), axis=-1)                                       # (B, T, N)
        norm = F.sum(log_scales, axis=-1) + 0.5 * self._num_features * _LOG_2PI  # (N,)
        return F.broadcast_sub(-0.5 * quad, F.reshape(norm, shape=(1, 1, -1)))

    def fit_em(self, data, lengths=None, max_iter=100, tol=1e-6, progress=False,
               min_variance=1e-6):
        """Fit the parameters by Baum-Welch (EM), in place, starting from the current ones.

        Parameters
        ----------
        data : list of (T_i, D) sequences of any lengths, one (T, D) sequence,
            or a padded (B, T, D) array (NumPy or NDArray) with ``lengths``.
        lengths : (B,) ints, only with a padded array (None: all T).
        max_iter : int
            At most this many iterations.
        tol : float
            Stop when the total log-likelihood improves by less than this.
        progress : bool
            Show a tqdm progress bar (needs the ``tqdm`` package).
        min_variance : float
            Floor of every variance (``exp(2 * log_scales)``), so that a state
            cannot collapse onto a single point.

        Returns
        -------
        history : list of float
            The total log-likelihood of all sequences at the start of each
            iteration; non-decreasing.

        Notes
        -----
        The E-step runs in float64 on the C++ engine (``gluon_hmm.numpy``); the
        M-step is closed form (posterior-weighted means and variances).
        Transition and initial logits are logs of the new probabilities,
        floored at ``gluon_hmm.em.PROB_FLOOR`` (1e-30); a state never visited
        keeps its previous parameters.
        """
        _check_initialized(self)
        if not min_variance > 0:
            raise ValueError("min_variance must be > 0, got %r" % (min_variance,))
        x, lens = _em.as_padded(data, lengths, (self._num_features,), "data")
        mask = _em.valid_mask(lens, x.shape[1])
        x = np.where(mask[:, :, None], x.astype(np.float64), 0.0)
        if not np.all(np.isfinite(x)):
            raise ValueError("data must be finite at valid steps (t < lengths[b])")
        state = {}

        def e_step():
            state["init"] = _em.log_softmax(self._np_param("init_logits"))
            state["trans"] = _em.log_softmax(self._np_param("trans_logits"))
            means = self._np_param("means")
            log_s = self._np_param("log_scales")
            state["means"], state["var"] = means, np.exp(2.0 * log_s)
            z = (x[:, :, None, :] - means[None, None]) * np.exp(-log_s)[None, None]
            log_emit = -0.5 * np.sum(z * z, axis=-1) - (np.sum(log_s, axis=-1)
                                                         + 0.5 * means.shape[1] * _LOG_2PI)
            return _em.e_step(state["init"], state["trans"], log_emit, lens)

        def m_step(stats):
            self._em_update_chain(stats, state["init"], state["trans"])
            means, var = _em.gaussian_moments(stats.gamma, x, lens, state["means"],
                                              state["var"], min_variance)
            self._set_param("means", means)
            self._set_param("log_scales", 0.5 * np.log(var))

        return _em.run(e_step, m_step, max_iter, tol, progress, "GaussianHMM EM")


# --------------------------------------------------------------------------------------
# Linear-chain CRF
# --------------------------------------------------------------------------------------

class LinearChainCRF(HybridBlock):
    r"""A linear-chain conditional random field over tag sequences.

    With unnormalised potentials ``start`` (N,), ``trans`` (N, N) (``[i, j]``
    scores tag i followed by tag j) and per-step ``scores`` (B, T, N), e.g.
    from a BiLSTM, the score of a tag sequence y of length L is::

        s(y) = start[y_0] + scores[b, 0, y_0] + sum_{t=1}^{L-1} trans[y_{t-1}, y_t] + scores[b, t, y_t]

    and ``forward`` returns its negative log-likelihood ``logZ - s(y)``, where
    ``logZ = log sum_y exp s(y)`` is computed exactly by the forward algorithm
    (``gluon_hmm.log_likelihood`` with unnormalised potentials).  ``s(y)`` is
    the same forward algorithm with every score off the path set to ``-inf``,
    so gradients are exact: d NLL / d scores = gamma - onehot(y).

    Parameters
    ----------
    num_tags : int
        N, the number of tags.
    prefix, params
        As for every Gluon block.

    Learnable parameters: ``start`` (N,) and ``trans`` (N, N), initialised to 0.

    Inputs:
        - **scores**: (B, T, N) unnormalised per-step tag scores; entries at
          t >= lengths[b] are ignored.
        - **tags**: (B, T) gold tags in [0, N) (any integer or integral float
          dtype); entries at t >= lengths[b] are ignored (e.g. -1 padding).
        - **lengths**: optional (B,) int32/int64 valid lengths (default: all T).

    Outputs:
        - **nll**: (B,) negative log-likelihood of the tags, in the dtype of scores.

    ``decode(scores, lengths=None)`` returns the Viterbi tags.

    Examples
    --------
    >>> import mxnet as mx, gluon_hmm as gh
    >>> crf = gh.LinearChainCRF(num_tags=4)
    >>> crf.initialize()
    >>> scores = mx.nd.random.normal(shape=(2, 6, 4))
    >>> tags = mx.nd.array([[0, 1, 1, 2, 3, 3], [2, 2, 1, 0, -1, -1]], dtype='int32')
    >>> lengths = mx.nd.array([6, 4], dtype='int32')
    >>> crf(scores, tags, lengths).shape
    (2,)
    >>> path, score = crf.decode(scores, lengths)    # path: (2, 6) int32, -1 padded
    """

    def __init__(self, num_tags, prefix=None, params=None):
        super(LinearChainCRF, self).__init__(prefix=prefix, params=params)
        if not isinstance(num_tags, (int, np.integer)) or num_tags < 1:
            raise ValueError("num_tags must be a positive int, got %r" % (num_tags,))
        self._num_tags = int(num_tags)
        with self.name_scope():
            self.start = self.params.get("start", shape=(self._num_tags,), init=mx.init.Zero())
            self.trans = self.params.get("trans", shape=(self._num_tags, self._num_tags),
                                         init=mx.init.Zero())

    @property
    def num_tags(self):
        """N, the number of tags."""
        return self._num_tags

    def _check_scores(self, scores):
        _check_array("scores", scores, 3, last=self._num_tags, dtype=self.start.dtype)

    def forward(self, scores, tags, lengths=None):
        if isinstance(scores, mx.nd.NDArray):
            lengths = _as_lengths(lengths, scores)
            self._check_scores(scores)
            if not isinstance(tags, mx.nd.NDArray):
                raise TypeError("tags must be an mx.nd.NDArray, got %s" % type(tags).__name__)
            if tags.shape != scores.shape[:2]:
                raise ValueError("tags must have shape (B, T) = %s like scores, got %s"
                                 % (_fmt_shape(scores.shape[:2]), _fmt_shape(tags.shape)))
            _check_indices("tags", tags, lengths, self._num_tags, "num_tags")
            if lengths is None and self._active:
                lengths = _full_lengths(scores)
        return super(LinearChainCRF, self).forward(scores, tags, lengths)

    def hybrid_forward(self, F, scores, tags, lengths=None, start=None, trans=None):
        # identity: library ops overwrite gradients, so parameters (and scores, which
        # feed two library calls) reach them through an MXNet op that accumulates
        start, trans, scores = F.identity(start), F.identity(trans), F.identity(scores)
        log_z = _ops.log_likelihood(start, trans, scores, lengths)
        on_path = F.one_hot(tags, self._num_tags)                          # (B, T, N)
        path_scores = F.where(on_path, scores, F.log(F.zeros_like(scores)))
        gold = _ops.log_likelihood(start, trans, path_scores, lengths)
        return log_z - gold

    def decode(self, scores, lengths=None):
        """Viterbi decoding: ``Viterbi(path (B, T) int32 with -1 at t >= lengths[b],
        score (B,))``, the best tag sequences and their unnormalised scores s(y)."""
        lengths = _as_lengths(lengths, scores)
        self._check_scores(scores)
        ctx = scores.context
        return _ops.viterbi(self.start.data(ctx), self.trans.data(ctx), scores, lengths)

    def log_partition(self, scores, lengths=None):
        """logZ (B,) for the given scores (no gradient bookkeeping beyond autograd's)."""
        lengths = _as_lengths(lengths, scores)
        self._check_scores(scores)
        ctx = scores.context
        return _ops.log_likelihood(mx.nd.identity(self.start.data(ctx)),
                                   mx.nd.identity(self.trans.data(ctx)),
                                   mx.nd.identity(scores), lengths)
