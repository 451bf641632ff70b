"""Shared problem generators and tolerances for the gluon_hmm tests.

Every test file builds its inputs here, so that all fast paths are checked on
the same shape variants and edge cases, and compares with one per-dtype
tolerance table (always passed by keyword: ``np.testing.assert_allclose(a, b,
**tol(dtype))``).

Everything is deterministic given the generator (or seed) passed in.

Typical use::

    from cases import make_problem, iter_cases, tol

    @pytest.mark.parametrize("spec", list(iter_cases()), ids=lambda s: s.id)
    def test_something(rng, spec):
        p = make_problem(rng, **spec.kwargs)
        loglik = reference.log_likelihood(*p.args)
"""

import dataclasses
import importlib.util
import itertools
import pathlib
import sys
from collections import namedtuple

import numpy as np

__all__ = [
    "TOL",
    "tol",
    "Problem",
    "make_problem",
    "make_lengths",
    "ShapeVariant",
    "SHAPE_VARIANTS",
    "iter_shape_variants",
    "SMALL_SIZES",
    "EDGE_SIZES",
    "FLAG_SETS",
    "CaseSpec",
    "iter_cases",
    "load_reference",
    "assert_grads_match",
]

#: Tolerances per dtype, for comparing a fast path with the float64 reference.
#: Always pass by keyword: ``assert_allclose(actual, expected, **TOL[np.float32])``.
TOL = {
    np.float32: dict(rtol=2e-4, atol=2e-4),
    # float64: the reference works in log space, where log-values reach ~1e6 in
    # magnitude (emissions of -1e4 over 200 steps): its own error is ~3e-9 there.
    np.float64: dict(rtol=1e-8, atol=1e-8),
}


def tol(dtype):
    """The ``TOL`` entry for ``dtype`` (a type, an ``np.dtype`` or a string)."""
    return TOL[np.dtype(dtype).type]


def assert_grads_match(loglik, grad_init, grad_trans, grad_emit, expected, dtype):
    """loglik and the three gradients of sum(loglik) against a reference posterior
    (``reference.posterior``), within ``tol(dtype)``."""
    t = tol(dtype)
    np.testing.assert_allclose(loglik, expected.loglik, **t)
    np.testing.assert_allclose(grad_emit, expected.gamma, **t)
    np.testing.assert_allclose(grad_trans, expected.trans_counts, **t)
    np.testing.assert_allclose(grad_init, expected.init_counts, **t)


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One set of operator inputs.

    log_init  (N,) or (B, N);  log_trans (N, N), (B, N, N) or (B, T, N, N);
    log_emit  (B, T, N);       lengths (B,) int32 or int64.
    """

    log_init: np.ndarray
    log_trans: np.ndarray
    log_emit: np.ndarray
    lengths: np.ndarray

    @property
    def args(self):
        """(log_init, log_trans, log_emit, lengths), the positional arguments of every op."""
        return (self.log_init, self.log_trans, self.log_emit, self.lengths)

    @property
    def shape(self):
        """(B, T, N)."""
        return self.log_emit.shape

    @property
    def dtype(self):
        return self.log_emit.dtype

    def astype(self, dtype):
        """A copy with the float inputs cast to ``dtype`` (lengths unchanged)."""
        return Problem(self.log_init.astype(dtype), self.log_trans.astype(dtype),
                       self.log_emit.astype(dtype), self.lengths.copy())

    def copy(self):
        return Problem(self.log_init.copy(), self.log_trans.copy(),
                       self.log_emit.copy(), self.lengths.copy())


def _as_rng(rng):
    return np.random.default_rng(rng)


def make_lengths(rng, B, T, kind="ragged", dtype=np.int32):
    """Valid lengths (B,) of the given integer dtype.

    kind "full": all T.  "ragged": values in [0, T] that include 0, 1 and T
    (each once, in random positions) when B is large enough, the rest uniform.
    An array: checked and converted.
    """
    rng = _as_rng(rng)
    if isinstance(kind, str):
        if kind == "full":
            return np.full(B, T, dtype=dtype)
        if kind != "ragged":
            raise ValueError(f"lengths must be 'full', 'ragged' or an array, got {kind!r}")
        special = sorted({0, min(1, T), T})
        lengths = rng.integers(0, T + 1, size=B)
        if B >= len(special):
            lengths[: len(special)] = special
            lengths = rng.permutation(lengths)
        return lengths.astype(dtype)
    lengths = np.asarray(kind)
    if lengths.shape != (B,) or np.any(lengths < 0) or np.any(lengths > T):
        raise ValueError(f"lengths must have shape ({B},) with values in [0, {T}], got {lengths!r}")
    return lengths.astype(dtype)


def _log_softmax(x, axis=-1):
    """log_softmax over ``axis``; -inf entries stay -inf (rows need one finite entry)."""
    m = np.max(x, axis=axis, keepdims=True)
    return x - (np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m)


def make_problem(rng, B, T, N, init="shared", trans="shared", dtype=np.float64,
                 lengths="full", lengths_dtype=np.int32, neg_inf=False, very_negative=False,
                 nan_padding=False, unnormalised=False, ties=False):
    """A random problem, deterministic in ``rng``.

    Parameters
    ----------
    rng : numpy.random.Generator or int seed
    B, T, N : int
        Batch, steps, states (N >= 1; B and T may be 0).
    init : {"shared", "batch"}
        log_init of shape (N,) or (B, N).
    trans : {"shared", "batch", "time"}
        log_trans of shape (N, N), (B, N, N) or (B, T, N, N).
    dtype : float dtype of log_init, log_trans, log_emit.
    lengths : "full", "ragged" or an array of B ints (see :func:`make_lengths`).
    lengths_dtype : np.int32 or np.int64.
    neg_inf : bool
        Structural zeros: a left-to-right band (i -> i and i -> i+1 only),
        initial weight only on states 0 and 1, and about a quarter of the
        emissions -inf.  One random band path per sequence keeps finite
        weights everywhere, so every sequence has a finite loglik.
    very_negative : bool
        At about a third of the steps (at least one when T > 0), every state's
        emission is about -1e4 (structural -inf zeros are kept).
    nan_padding : bool
        Fill every padded entry with NaN: log_emit[b, t >= L], a time-varying
        log_trans[b, t >= L] and its unused step log_trans[b, 0], and a
        per-sequence log_init[b] row of a sequence with L = 0.
    unnormalised : bool
        CRF-style potentials: log_init and log_trans are arbitrary reals (some
        positive) instead of normalised log-probabilities.
    ties : bool
        Every value is a small multiple of 1/2 (exact in float32 and float64,
        and so are all path sums), so exact ties between paths are common;
        potentials are unnormalised.  For checking Viterbi's tie rule.

    Returns
    -------
    Problem
    """
    if init not in ("shared", "batch"):
        raise ValueError(f"init must be 'shared' or 'batch', got {init!r}")
    if trans not in ("shared", "batch", "time"):
        raise ValueError(f"trans must be 'shared', 'batch' or 'time', got {trans!r}")
    rng = _as_rng(rng)
    lens = make_lengths(rng, B, T, lengths, dtype=lengths_dtype)
    init_shape = (N,) if init == "shared" else (B, N)
    trans_shape = {"shared": (N, N), "batch": (B, N, N), "time": (B, T, N, N)}[trans]

    if ties:
        log_init = -0.5 * rng.integers(0, 3, size=init_shape)
        log_trans = -0.5 * rng.integers(0, 3, size=trans_shape)
        log_emit = -0.5 * rng.integers(0, 4, size=(B, T, N))
    elif unnormalised:
        log_init = rng.normal(0.5, 2.0, size=init_shape)
        log_trans = rng.normal(0.5, 2.0, size=trans_shape)
        log_emit = rng.normal(-1.0, 1.5, size=(B, T, N))
    else:
        log_init = _log_softmax(rng.normal(0.0, 1.0, size=init_shape))
        log_trans = _log_softmax(rng.normal(0.0, 1.0, size=trans_shape))
        log_emit = rng.normal(-1.5, 1.0, size=(B, T, N))
    log_init = log_init.astype(np.float64)
    log_trans = log_trans.astype(np.float64)
    log_emit = log_emit.astype(np.float64)

    if neg_inf:
        i, j = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
        band = (j == i) | (j == i + 1)
        log_trans = np.where(band, log_trans, -np.inf)
        log_init = np.where(np.arange(N) <= 1, log_init, -np.inf)
        if not (ties or unnormalised):
            log_trans = _log_softmax(log_trans)
            log_init = _log_softmax(log_init)
        # A band path per sequence: starts in state 0, moves up by 0 or 1 per step.
        steps = rng.integers(0, 2, size=(B, T))
        if T:
            steps[:, 0] = 0
        keep = np.minimum(np.cumsum(steps, axis=1), N - 1)           # (B, T)
        on_path = np.arange(N)[None, None, :] == keep[:, :, None]
        zero = (rng.random((B, T, N)) < 0.25) & ~on_path
        log_emit = np.where(zero, -np.inf, log_emit)

    if very_negative and T > 0:
        steps = rng.random(T) < 1.0 / 3.0
        steps[rng.integers(0, T)] = True
        if ties:
            low = -1e4 - 0.5 * rng.integers(0, 3, size=(B, T, N))
        else:
            low = -1e4 + rng.normal(0.0, 1.0, size=(B, T, N))
        replace = steps[None, :, None] & np.isfinite(log_emit)
        log_emit = np.where(replace, low, log_emit)

    if nan_padding:
        pad = np.arange(T)[None, :] >= lens[:, None]                  # (B, T)
        log_emit = np.where(pad[:, :, None], np.nan, log_emit)
        if trans == "time":
            pad_trans = pad.copy()
            if T:
                pad_trans[:, 0] = True
            log_trans = np.where(pad_trans[:, :, None, None], np.nan, log_trans)
        if init == "batch":
            log_init = np.where((lens == 0)[:, None], np.nan, log_init)

    return Problem(log_init.astype(dtype), log_trans.astype(dtype),
                   log_emit.astype(dtype), lens)


ShapeVariant = namedtuple("ShapeVariant", ["init", "trans"])
ShapeVariant.id = property(lambda self: f"init_{self.init}-trans_{self.trans}")

#: Every accepted combination of log_init and log_trans shapes.
SHAPE_VARIANTS = tuple(ShapeVariant(i, t) for i in ("shared", "batch")
                       for t in ("shared", "batch", "time"))


def iter_shape_variants():
    """Yield each :class:`ShapeVariant` (init kind, trans kind): 2 x 3 of them."""
    yield from SHAPE_VARIANTS


#: Small (B, T, N) sizes, N**T <= 81, cheap enough to enumerate every path.
SMALL_SIZES = ((1, 1, 1), (2, 1, 3), (3, 4, 1), (1, 3, 2), (4, 4, 3), (6, 5, 2), (5, 3, 4))

#: Edge sizes for fast-path tests (not all enumerable): empty batch, T = 0,
#: T = 1, N = 1, odd N, long T.
EDGE_SIZES = ((0, 3, 2), (2, 0, 3), (3, 1, 4), (4, 6, 1), (5, 7, 5), (3, 200, 3))

#: Named flag combinations for :func:`make_problem`.
FLAG_SETS = {
    "plain": dict(),
    "ragged": dict(lengths="ragged"),
    "neginf": dict(lengths="ragged", neg_inf=True),
    "unnorm": dict(lengths="ragged", unnormalised=True),
    "veryneg": dict(very_negative=True, unnormalised=True),
    "nanpad": dict(lengths="ragged", nan_padding=True),
    "all": dict(lengths="ragged", neg_inf=True, very_negative=True, nan_padding=True,
                unnormalised=True),
}

CaseSpec = namedtuple("CaseSpec", ["id", "kwargs"])
CaseSpec.__doc__ = """A named set of make_problem keyword arguments (all but rng)."""


def iter_cases(sizes=SMALL_SIZES, variants=SHAPE_VARIANTS, flags=tuple(FLAG_SETS),
               dtypes=(np.float64,)):
    """Yield :class:`CaseSpec` for every size x shape variant x flag set x dtype.

    Use as ``@pytest.mark.parametrize("spec", list(iter_cases()), ids=lambda s: s.id)``
    and build with ``make_problem(rng, **spec.kwargs)``.
    """
    for (B, T, N), variant, flag, dtype in itertools.product(sizes, variants, flags, dtypes):
        kwargs = dict(B=B, T=T, N=N, init=variant.init, trans=variant.trans, dtype=dtype,
                      **FLAG_SETS[flag])
        name = f"B{B}T{T}N{N}-{variant.id}-{flag}-{np.dtype(dtype).name}"
        yield CaseSpec(name, kwargs)


_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_reference():
    """The ``gluon_hmm.reference`` module.

    Imported through the package when that works; otherwise (package
    ``__init__`` missing, or failing because the native library is not built)
    loaded straight from ``gluon_hmm/reference.py``, which imports nothing
    else from the package.
    """
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    try:
        from gluon_hmm import reference
        return reference
    except Exception:                                               # noqa: BLE001
        name = "_gluon_hmm_reference_standalone"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, _ROOT / "gluon_hmm" / "reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
