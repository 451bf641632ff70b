"""Fuzzed inputs (hypothesis): every public function gives the reference's answer or a clear error.

Each example draws one call: sizes (B = 0, T = 0, N = 1 and T = 1 included), a
shape variant, a float dtype, value flavours (-inf zeros, -1e4 emissions, NaN
padding, unnormalised potentials, ties), optional lengths (int32/int64, ragged),
then at most one poison (NaN, +inf, or -inf over a whole step, at a valid
position) and at most one fault (a wrong rank or size of one argument, a wrong
or mixed dtype, bad lengths values such as -1, T + 1 or 2**63 - 1, a NumPy
array among NDArrays ...), and for the NumPy API a container per argument
(strided, Fortran, reversed, read-only, unaligned, Python lists).

An independent oracle (``violations``, written from DESIGN.md) says whether
the call is valid.  A valid call must match ``gluon_hmm.reference`` (float64)
on every sequence the poison does not reach; the poisoned ones follow the
documented NaN/inf semantics (tests/FUZZ_RESULTS.md).  An invalid call must
raise ValueError/TypeError (NumPy API) or MXNetError/TypeError (MXNet API)
whose message names an offending argument.  Inputs must come back unchanged.
A watchdog ends the process with a traceback if one example runs over
``HANG_SECONDS`` (no hangs), and a crash fails the pytest run.

Profiles: ``GLUON_HMM_FUZZ=small`` (default, CI: 50 examples per function),
``GLUON_HMM_FUZZ=large`` (10**4 per function; figures in tests/FUZZ_RESULTS.md)
or an integer.  Examples are derandomised from the session seed (conftest,
``GLUON_HMM_TEST_SEED``).
"""
import faulthandler
import os
import warnings
import zlib

import mxnet as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import gluon_hmm as gh
import gluon_hmm.numpy as ghn
from cases import load_reference, make_problem, tol
from conftest import SEED

ref = load_reference()

_PROFILE = os.environ.get("GLUON_HMM_FUZZ", "small").strip().lower() or "small"
if _PROFILE == "small":
    MAX_EXAMPLES = 50
elif _PROFILE == "large":
    MAX_EXAMPLES = 10_000
else:
    try:
        MAX_EXAMPLES = int(_PROFILE)
    except ValueError:
        raise pytest.UsageError("GLUON_HMM_FUZZ must be 'small', 'large' or an integer, got %r"
                                % _PROFILE) from None

#: A single example running longer than this is a hang: the process ends with a traceback.
HANG_SECONDS = 60

FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])

NAMES = ("log_init", "log_trans", "log_emit", "lengths")
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
INTS = (np.dtype(np.int32), np.dtype(np.int64))
BAD_FLOAT_DTYPES = ("float16", "int32", "int64", "bool", "uint8")
BAD_LENGTH_DTYPES = ("float32", "float64", "float16", "bool", "uint8", "int8")

# ----------------------------------------------------------------------------------------
# drawing one call
# ----------------------------------------------------------------------------------------

@st.composite
def calls(draw, api, fn):
    """A dict describing one call of ``fn`` through ``api`` ('numpy', 'mxnet' or 'block')."""
    c = dict(api=api, fn=fn)
    c["B"] = draw(st.integers(0, 4))
    c["T"] = draw(st.integers(0, 6))
    c["N"] = draw(st.integers(1, 4))
    c["init"] = draw(st.sampled_from(["shared", "batch"]))
    c["trans"] = draw(st.sampled_from(["shared", "batch", "time"]))
    c["dtype"] = draw(st.sampled_from(["float32", "float64"]))
    c["lengths"] = draw(st.sampled_from([None, "full", "ragged", "ragged"]))
    c["lengths_dtype"] = draw(st.sampled_from(["int32", "int64"]))
    c["flags"] = draw(st.fixed_dictionaries({
        k: st.booleans() for k in ("neg_inf", "very_negative", "nan_padding", "unnormalised",
                                   "ties")}))
    c["seed"] = draw(st.integers(0, 2 ** 32 - 1))
    c["poison"] = draw(st.sampled_from([None, None, "nan", "posinf", "neginf_step"]))
    c["poison_target"] = draw(st.sampled_from(["log_emit", "log_emit", "log_init", "log_trans"]))
    faults = ["emit_rank", "emit_no_states", "init_size", "init_rank", "trans_size",
                           "trans_rank", "float_dtype", "one_dtype", "mixed_precision",
                           "lengths_dtype", "lengths_shape", "mixed_container"]
    if c["B"] > 0:
        faults.append("lengths_value")
    if api == "numpy":
        faults.append("rank_gt4")
    if api == "block":
        faults.remove("mixed_container")        # a Gluon block takes NDArrays only
    c["fault"] = draw(st.sampled_from(faults)) if draw(st.integers(0, 2)) == 0 else None
    c["fault_arg"] = draw(st.integers(0, 2 ** 16))
    if api == "numpy":
        kinds = ["c"] * 4 + ["strided", "fortran", "reversed", "readonly", "unaligned", "list"]
        c["containers"] = [draw(st.sampled_from(kinds)) for _ in range(4)]
        c["num_threads"] = draw(st.sampled_from([0, 1, 2]))
    if fn in ("log_likelihood", "value_and_grad"):
        c["weights"] = draw(st.sampled_from(["none", "ones", "random", "random", "list",
                                             "other_dtype", "bad_shape"]
                                            if fn == "value_and_grad" else ["ones", "random"]))
    if fn == "sample":
        c["num_samples"] = draw(st.sampled_from(
            [1, 3, 0, 2] * 4 + ([np.int64(2), np.int32(0), -1, 2.5, "2", None, True,
                                 np.int64(-1)] if api != "block" else [])))
        c["sample_seed"] = draw(st.integers(0, 2 ** 31 - 1))
    return c


def _bad_float(x, dtype):
    if np.dtype(dtype).kind == "f":
        with np.errstate(over="ignore"):
            return x.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).astype(dtype)


def build(c):
    """Effective NumPy inputs, poison bookkeeping and the fault's blamed names for call ``c``.

    Returns (arrays, affected, poison_kind, masks, blamed): ``arrays`` the four
    inputs as NumPy arrays (lengths may be None) before any container change;
    ``affected`` a bool (B,) of sequences the poison reaches; ``masks`` bool
    arrays shaped like log_init, log_trans, log_emit marking the NaN/+inf
    entries (see ``cleaned``); ``blamed`` the names a fault touched.
    """
    B, T, N = c["B"], c["T"], c["N"]
    rng = np.random.default_rng(c["seed"])
    p = make_problem(rng, B, T, N, init=c["init"], trans=c["trans"], dtype=np.float64,
                     lengths="full" if c["lengths"] in (None, "full") else "ragged",
                     lengths_dtype=np.dtype(c["lengths_dtype"]).type, **c["flags"])
    li, lt, le = (a.copy() for a in p.args[:3])
    L = p.lengths.copy()
    masks = [np.zeros(a.shape, bool) for a in (li, lt, le)]
    affected = np.zeros(B, bool)
    # a lengths_shape fault may still give valid lengths (a 0-d array made 1-d by the
    # container) with other values: keep its calls free of poison
    kind = None if c["fault"] == "lengths_shape" else c["poison"]
    if kind is not None:
        target = c["poison_target"]
        need = 2 if target == "log_trans" else 1
        cand = np.flatnonzero(L >= need)
        if cand.size == 0:
            kind = None
        else:
            b = int(rng.choice(cand))
            value = {"nan": np.nan, "posinf": np.inf, "neginf_step": -np.inf}[kind]
            i, j = (int(v) for v in rng.integers(0, N, size=2))
            step = kind == "neginf_step"
            if target == "log_emit":
                t = int(rng.integers(0, L[b]))
                if step:
                    le[b, t, :] = value
                else:
                    le[b, t, j] = value
                    masks[2][b, t, j] = True
                hit = np.arange(B) == b
            elif target == "log_init":
                row = li if li.ndim == 1 else li[b]
                mrow = masks[0] if li.ndim == 1 else masks[0][b]
                if step:
                    row[:] = value
                else:
                    row[j] = value
                    mrow[j] = True
                hit = (L >= 1) if li.ndim == 1 else (np.arange(B) == b)
            else:
                if lt.ndim == 2:
                    mat, mmat, hit = lt, masks[1], L >= 2
                elif lt.ndim == 3:
                    mat, mmat, hit = lt[b], masks[1][b], np.arange(B) == b
                else:
                    t = int(rng.integers(1, L[b]))
                    mat, mmat, hit = lt[b, t], masks[1][b, t], np.arange(B) == b
                if step:
                    mat[:, :] = value
                else:
                    mat[i, j] = value
                    mmat[i, j] = True
            if not step:                # the reference handles -inf itself
                affected = hit
    dt = np.dtype(c["dtype"])
    li, lt, le = li.astype(dt), lt.astype(dt), le.astype(dt)
    lengths = None if c["lengths"] is None else L
    arrays = [li, lt, le, lengths]
    blamed = set()
    fault, k = c["fault"], c["fault_arg"]
    if fault == "emit_rank":
        arrays[2] = le[..., 0] if k % 2 else le[None]
        blamed = {"log_emit"}
    elif fault == "emit_no_states":
        arrays[2] = np.zeros((B, T, 0), dt)
        blamed = {"log_emit"}
    elif fault == "init_size":
        arrays[0] = [np.zeros(N + 1 + k % 2, dt), np.zeros((B + 1 + k % 2, N), dt),
                     np.zeros((B, N + 1), dt)][k % 3]
        blamed = {"log_init"}
    elif fault == "init_rank":
        arrays[0] = np.zeros((B, T, N), dt) if k % 2 else li.reshape((1, 1) + li.shape)
        blamed = {"log_init"}
    elif fault == "trans_size":
        arrays[1] = [np.zeros((N + 1, N + 1), dt), np.zeros((B + 1, N, N), dt),
                     np.zeros((B, T + 1, N, N), dt), np.zeros((N, N + 1), dt)][k % 4]
        blamed = {"log_trans"}
    elif fault == "trans_rank":
        arrays[1] = np.zeros((N,), dt) if k % 2 else np.zeros((1, B, T, N, N), dt)
        blamed = {"log_trans"}
    elif fault == "float_dtype":
        bad = BAD_FLOAT_DTYPES[k % len(BAD_FLOAT_DTYPES)]
        arrays[:3] = [_bad_float(a, bad) for a in arrays[:3]]
        blamed = {"log_emit"}
    elif fault == "one_dtype":
        which = k % 3
        bad = (BAD_FLOAT_DTYPES + ("float64" if dt == FLOATS[0] else "float32",))[
            (k // 3) % (len(BAD_FLOAT_DTYPES) + 1)]
        arrays[which] = _bad_float(arrays[which], bad)
        blamed = {NAMES[which]} | ({"log_init", "log_trans"} if which == 2 else set())
    elif fault == "mixed_precision":
        other = FLOATS[1] if dt == FLOATS[0] else FLOATS[0]
        which = k % 3
        arrays[which] = arrays[which].astype(other)
        blamed = {"log_init", "log_trans", "log_emit"}
    elif fault == "lengths_dtype":
        arrays[3] = L.astype(BAD_LENGTH_DTYPES[k % len(BAD_LENGTH_DTYPES)])
        blamed = {"lengths"}
    elif fault == "lengths_shape":
        shapes = [(B + 1,), (B, 1)] + ([()] if c["api"] == "numpy" else [])
        arrays[3] = np.full(shapes[k % len(shapes)], min(T, 1), L.dtype)
        blamed = {"lengths"}
    elif fault == "lengths_value":
        bad_values = {np.dtype(np.int32): [-1, T + 1, 2 ** 31 - 1, -2 ** 31],
                      np.dtype(np.int64): [-1, T + 1, 2 ** 40, 2 ** 63 - 1, -2 ** 63]}[L.dtype]
        L2 = L.copy()
        L2[k % B] = bad_values[(k // 7) % len(bad_values)]
        arrays[3] = L2
        blamed = {"lengths"}
    elif fault == "rank_gt4":
        which = k % 3
        arrays[which] = np.zeros((1,) * 5, dt)
        blamed = {NAMES[which]}
    elif fault == "mixed_container":
        blamed = {NAMES[k % (3 if lengths is None else 4)]}
    return arrays, affected, kind, masks, blamed


def cleaned(effs, masks):
    """The float64 inputs the reference sees: the effective ones with NaN/+inf entries set to 0.

    Only the sequences the poison does not reach are compared with it, and they never
    read those entries.
    """
    out = []
    for a, m in zip(effs[:3], masks):
        a = np.array(a, dtype=np.float64)
        if a.shape == m.shape:
            a[m] = 0.0
        out.append(a)
    return out


def violations(li, lt, le, lengths):
    """The arguments that break the contract of DESIGN.md (an independent oracle); empty: valid."""
    if le.ndim != 3 or le.shape[2] < 1 or le.dtype not in FLOATS:
        return {"log_emit"}
    B, T, N = le.shape
    bad = set()
    if li.shape not in ((N,), (B, N)) or li.dtype != le.dtype:
        bad.add("log_init")
    if lt.shape not in ((N, N), (B, N, N), (B, T, N, N)) or lt.dtype != le.dtype:
        bad.add("log_trans")
    if lengths is not None:
        if lengths.shape != (B,) or lengths.dtype not in INTS:
            bad.add("lengths")
        elif lengths.size and (lengths.min() < 0 or lengths.max() > T):
            bad.add("lengths")
    return bad


# ----------------------------------------------------------------------------------------
# containers
# ----------------------------------------------------------------------------------------

def contain(x, kind):
    """``x`` (a NumPy array) in the container ``kind``; returns (argument, effective array)."""
    if x is None:
        return None, None
    if kind == "list":
        arg = x.tolist()
        eff = np.asarray(arg)
        return arg, eff
    if kind == "strided" and x.ndim:
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        big[..., ::2] = x
        return big[..., ::2], x
    if kind == "fortran":
        y = np.asfortranarray(x)           # note: makes a 0-d array 1-d
        return y, y
    if kind == "reversed":
        return np.flip(np.flip(x).copy()), x
    if kind == "readonly":
        y = x.copy()
        y.setflags(write=False)
        return y, x
    if kind == "unaligned" and x.dtype.itemsize > 1 and x.size:
        buf = np.zeros(x.nbytes + 1, np.uint8)
        y = buf[1:].view(x.dtype).reshape(x.shape)
        y[...] = x
        return y, x
    return x.copy(), x


def effective_lengths(eff, was_list):
    """What the NumPy binding makes of lengths given as a Python list (ints become int64)."""
    if eff is not None and was_list and eff.dtype.kind in "ui" and eff.dtype not in INTS:
        return eff.astype(np.int64)
    return eff


def snapshot(args):
    out = []
    for a in args:
        if isinstance(a, mx.nd.NDArray):
            out.append(("nd", a.asnumpy().tobytes(), a.shape, a.dtype))
        elif isinstance(a, np.ndarray):
            out.append(("np", a.tobytes(), a.shape, a.dtype, a.strides))
        else:
            out.append(("py", repr(a)))
    return out


# ----------------------------------------------------------------------------------------
# checking results
# ----------------------------------------------------------------------------------------

def _per_sequence(li, lt, B):
    li_b = np.broadcast_to(li, (B,) + li.shape[-1:]) if li.ndim == 1 else li
    lt_b = np.broadcast_to(lt, (B,) + lt.shape) if lt.ndim == 2 else lt
    return np.ascontiguousarray(li_b), np.ascontiguousarray(lt_b)


def expected_stats(clean, lengths, w):
    """Reference loglik and the gradients of sum(w * loglik) in the shapes of the inputs."""
    li, lt, le = clean
    B = le.shape[0]
    li_b, lt_b = _per_sequence(li, lt, B)
    post = ref.posterior(li_b, lt_b, le, lengths)
    gi = w[:, None] * post.init_counts
    gt = w.reshape((B,) + (1,) * (lt_b.ndim - 1)) * post.trans_counts
    if li.ndim == 1:
        gi = gi.sum(axis=0) if B else np.zeros(li.shape)
    if lt.ndim == 2:
        gt = gt.sum(axis=0) if B else np.zeros(lt.shape)
    return post.loglik, gi, gt, w[:, None, None] * post.gamma, post


def _close(actual, expected, dtype, what):
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol(dtype))


def check_loglik(ll, exp, affected, kind, dtype):
    assert ll.dtype == dtype and ll.shape == exp.shape, (ll.dtype, ll.shape)
    ok = ~affected
    _close(ll[ok], exp[ok], dtype, "loglik of the sequences without NaN/+inf")
    if affected.any():
        bad = ll[affected]
        if kind == "nan":
            assert np.all(np.isnan(bad)), ("NaN at a valid position must give loglik NaN", bad)
        else:
            assert np.all(np.isnan(bad) | (bad == np.inf)), ("+inf gives loglik +inf or NaN", bad)


def check_grads(grads, exp, affected, li, lt, dtype):
    gi, gt, ge = grads
    _, egi, egt, ege, _ = exp
    assert gi.shape == li.shape and gt.shape == lt.shape and ge.shape == ege.shape
    for g in (gi, gt, ge):
        assert g.dtype == dtype
    ok = ~affected
    _close(ge[ok], ege[ok], dtype, "d/d log_emit")
    if li.ndim == 2:
        _close(gi[ok], egi[ok], dtype, "d/d log_init (per sequence)")
    if lt.ndim >= 3:
        _close(gt[ok], egt[ok], dtype, "d/d log_trans (per sequence)")
    if not affected.any():
        _close(gi, egi, dtype, "d/d log_init")
        _close(gt, egt, dtype, "d/d log_trans")
        for g in (gi, gt, ge):
            assert np.all(np.isfinite(g)), "gradients must be finite without NaN/+inf inputs"


def check_posterior(out, exp, affected, li, lt, dtype, full):
    gamma, counts = out[0], out[1]
    _, egi, egt, ege, post = exp
    ok = ~affected
    assert gamma.shape == ege.shape and counts.shape == lt.shape
    assert gamma.dtype == dtype and counts.dtype == dtype
    _close(gamma[ok], post.gamma[ok], dtype, "gamma")
    if lt.ndim >= 3:
        _close(counts[ok], egt[ok], dtype, "trans_counts (per sequence)")
    elif not affected.any():
        _close(counts, egt, dtype, "trans_counts")
    if full:
        init_counts, ll = out[2], out[3]
        assert init_counts.shape == li.shape and init_counts.dtype == dtype
        if li.ndim == 2:
            _close(init_counts[ok], egi[ok], dtype, "init_counts (per sequence)")
        elif not affected.any():
            _close(init_counts, egi, dtype, "init_counts")
        _close(ll[ok], post.loglik[ok], dtype, "posterior loglik")


def _valid_num_samples(ns):
    """DESIGN: a non-negative integer (Python or NumPy); bool is not a count."""
    return isinstance(ns, (int, np.integer)) and not isinstance(ns, bool) and ns >= 0


def _valid_mask(lengths, B, T):
    L = np.full(B, T) if lengths is None else np.asarray(lengths, np.int64)
    return np.arange(T)[None, :] < L[:, None]


def check_viterbi(out, clean, lengths, affected, kind, dtype, N):
    path, score = out
    B, T = clean[2].shape[:2]
    assert path.dtype == np.int32 and path.shape == (B, T) and score.shape == (B,)
    assert score.dtype == dtype
    mask = _valid_mask(lengths, B, T)
    assert np.all(path[~mask] == -1), "path must be -1 beyond each length"
    assert np.all((path[mask] >= 0) & (path[mask] < N)), "path states must lie in [0, N)"
    expected = ref.viterbi(*clean, lengths)
    ok = ~affected
    _close(score[ok], expected.score[ok], dtype, "Viterbi score")
    finite = ok & np.isfinite(expected.score)
    if finite.any():
        safe = np.where(mask, path, 0)
        own = ref.path_log_score(*clean, safe, lengths)
        _close(own[finite], expected.score[finite], dtype, "score of the returned path")
    if affected.any() and kind == "nan":
        assert np.all(np.isnan(score[affected])), \
            ("NaN at a valid position gives a NaN Viterbi score", score[affected])
    if affected.any() and kind == "posinf":
        # +inf gives +inf, or NaN where it meets -inf (finding 9: max-plus once dropped
        # a -inf + inf candidate and could return a finite score)
        bad = score[affected]
        assert np.all(np.isnan(bad) | (bad == np.inf)), ("+inf gives score +inf or NaN", bad)


def check_sample(paths, clean, lengths, affected, S, N):
    B, T = clean[2].shape[:2]
    assert paths.dtype == np.int32 and paths.shape == (B, S, T), (paths.dtype, paths.shape)
    mask = np.broadcast_to(_valid_mask(lengths, B, T)[:, None, :], paths.shape)
    assert np.all(paths[~mask] == -1), "samples must be -1 beyond each length"
    assert np.all((paths >= -1) & (paths < N)), "sampled states must lie in [-1, N)"
    if B == 0 or S == 0 or T == 0:
        return
    ll = ref.log_likelihood(*clean, lengths)
    for b in np.flatnonzero(~affected):
        if ll[b] == -np.inf:
            assert np.all(paths[b] == -1), "a sequence of probability zero samples paths of -1"
            continue
        assert np.all(paths[b][mask[b]] >= 0)
        if mask[b].any():
            for s in range(S):
                li = clean[0] if clean[0].ndim == 1 else clean[0][b:b + 1]
                lt = clean[1] if clean[1].ndim == 2 else clean[1][b:b + 1]
                lb = None if lengths is None else np.asarray(lengths)[b:b + 1]
                sc = ref.path_log_score(li, lt, clean[2][b:b + 1],
                                        np.where(mask[b, s], paths[b, s], 0)[None], lb)
                assert sc[0] > -np.inf, "a sampled path must have positive probability"


def check_error(err, names, api):
    text = str(err)
    if api == "numpy":
        assert isinstance(err, (ValueError, TypeError)), repr(err)
    else:
        assert isinstance(err, (mx.base.MXNetError, TypeError, ValueError)), repr(err)
    assert any(n in text for n in names), ("the message must name one of %s" % sorted(names), text)
    if isinstance(err, mx.base.MXNetError):
        assert text.count("gluon_hmm.") <= 1, ("stale error messages repeated", text)


# ----------------------------------------------------------------------------------------
# running one call through each API
# ----------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(HANG_SECONDS * max(1, MAX_EXAMPLES // 50), exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _arm():
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)


def _weights(c, B, dtype, rng):
    kind = c.get("weights", "ones")
    w = np.ones(B) if kind in ("none", "ones") else rng.normal(0.0, 2.0, size=B)
    if kind == "none":
        return w, None
    if kind == "list":
        return w, w.tolist()
    if kind == "other_dtype":
        w32 = w.astype(np.float32)
        return w32.astype(np.float64), w32 if dtype == FLOATS[1] else w32.astype(np.float64)
    if kind == "bad_shape":
        return w, np.ones(B + 1)
    if dtype == FLOATS[0]:
        w = w.astype(np.float32).astype(np.float64)
    return w, w.astype(dtype)


def _events(out, affected, kind):
    """Outcome statistics (pytest --hypothesis-show-statistics)."""
    event("error" if out is None else "result")
    if out is not None and affected.any():
        event("result with %s at a valid position" % kind)


def run_numpy(c):
    arrays, affected, kind, masks, blamed = build(c)
    fn = c["fn"]
    args, effs = [], []
    for k, (x, box) in enumerate(zip(arrays, c["containers"])):
        arg, eff = contain(x, box)
        if k == 3:
            eff = effective_lengths(eff, box == "list")
        args.append(arg)
        effs.append(eff)
    if c["fault"] == "mixed_container":
        k = NAMES.index(next(iter(blamed)))
        args[k] = mx.nd.array(arrays[k], dtype=arrays[k].dtype)
    bad = violations(*effs) | (blamed if c["fault"] == "mixed_container" else set())
    rng = np.random.default_rng(c["seed"] + 1)
    kw = dict(num_threads=c["num_threads"])
    if fn == "value_and_grad":
        w, warg = _weights(c, effs[2].shape[0] if effs[2].ndim else 0, effs[2].dtype, rng)
        kw["grad_loglik"] = warg
        if c["weights"] == "bad_shape" and not bad:
            bad = {"grad_loglik"}
    if fn == "sample":
        kw.update(num_samples=c["num_samples"], seed=c["sample_seed"])
        if not _valid_num_samples(c["num_samples"]):
            bad = bad | {"num_samples"}
    note("call: %r" % {k: v for k, v in c.items()})
    note("violations: %s" % sorted(bad))
    before = snapshot(args)
    _arm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = getattr(ghn, fn)(*args, **kw)
        except Exception as e:                                             # noqa: BLE001
            if not bad:
                raise
            check_error(e, bad | blamed, "numpy")
            out = None
    assert out is None or not bad, "accepted an invalid call: %s" % sorted(bad)
    assert snapshot(args) == before, "an input was modified"
    _events(out, affected, kind)
    if out is None:
        return
    li, lt, le, lengths = effs
    dtype = le.dtype
    clean = cleaned(effs, masks)
    if fn == "log_likelihood":
        exp = expected_stats(clean, lengths, np.ones(le.shape[0]))
        check_loglik(out, exp[0], affected, kind, dtype)
    elif fn == "value_and_grad":
        exp = expected_stats(clean, lengths, w)
        check_loglik(out[0], exp[0], affected, kind, dtype)
        check_grads(out[1], exp, affected, li, lt, dtype)
    elif fn in ("posterior", "posterior_stats"):
        exp = expected_stats(clean, lengths, np.ones(le.shape[0]))
        check_posterior(out, exp, affected, li, lt, dtype, fn == "posterior_stats")
        if fn == "posterior_stats":
            check_loglik(out.loglik, exp[0], affected, kind, dtype)
    elif fn == "viterbi":
        check_viterbi(out, clean, lengths, affected, kind, dtype, le.shape[2])
    elif fn == "sample":
        check_sample(out, clean, lengths, affected, c["num_samples"], le.shape[2])
        again = getattr(ghn, fn)(*args, **kw)
        np.testing.assert_array_equal(again, out, err_msg="same seed, same samples")


# -- MXNet ---------------------------------------------------------------------------------

class _OpBlock(mx.gluon.HybridBlock):
    """A hybridized block around one functional op (lengths positional when present)."""

    def __init__(self, fn, has_lengths, num_samples=1):
        super().__init__()
        self._fn, self._has_lengths, self._num_samples = fn, has_lengths, num_samples

    def hybrid_forward(self, F, log_init, log_trans, log_emit, *rest):
        lengths = rest[0] if self._has_lengths else None
        f = getattr(gh, self._fn)
        if self._fn == "sample":
            return f(log_init, log_trans, log_emit, lengths, num_samples=self._num_samples)
        out = f(log_init, log_trans, log_emit, lengths)
        return out if self._fn == "log_likelihood" else tuple(out)


_BLOCKS = {}

#: MXNet 1.9.1's CachedOp keeps the shapes/dtypes of a call whose inference failed; when the
#: next call repeats them it skips inference and fails with one of these generic messages
#: instead of the operator's own.  An MXNet limitation (tests/FUZZ_RESULTS.md), accepted only
#: right after a failed call of the same block.
CACHEDOP_STALE = ("is required by pass", "Cannot find attribute")


def _block(fn, has_lengths, num_samples, np_shape):
    """[block, previous call failed] for one op signature (reused across examples)."""
    key = (fn, has_lengths, num_samples, np_shape)
    if key not in _BLOCKS:
        blk = _OpBlock(fn, has_lengths, num_samples)
        blk.hybridize()
        _BLOCKS[key] = [blk, False]
    return _BLOCKS[key]


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def run_mxnet(c):
    arrays, affected, kind, masks, blamed = build(c)
    fn, api = c["fn"], c["api"]
    effs = list(arrays)
    bad = violations(*effs)
    zero_dims = any(a is not None and (0 in a.shape or a.ndim == 0) for a in effs)
    # MXNet's legacy shapes cannot hold a 0 dimension: such calls use NumPy shape semantics.
    np_shape = zero_dims
    le0 = effs[2]
    empty_outputs = False
    if fn == "sample":
        ns = c["num_samples"]
        if not _valid_num_samples(ns):
            bad = bad | {"num_samples"}
        empty_outputs = ns == 0 or c["T"] == 0
    elif fn == "posterior":
        empty_outputs = c["T"] == 0 and c["trans"] == "time"
    if api == "block" and empty_outputs and bad == {"lengths"} and c["fault"] == "lengths_value":
        # A hybridized block's inputs reach the operator unchecked (CachedOp): the error of
        # a call whose outputs are all empty surfaces at a later wait (MXNet 1.9.1 does not
        # wait on empty arrays; README).  Imperative calls check their inputs first.
        assume(False)
    with mx.util.np_shape(np_shape):
        nds = [None if a is None else mx.nd.array(a, dtype=a.dtype) for a in effs]
        args = list(nds)
        if c["fault"] == "mixed_container":
            k = NAMES.index(next(iter(blamed)))
            args[k] = effs[k] if c["fault_arg"] % 2 else effs[k].tolist()
            bad = bad | blamed
        note("call: %r" % {k: v for k, v in c.items()})
        note("violations: %s" % sorted(bad))
        before = snapshot(args)
        rng = np.random.default_rng(c["seed"] + 1)
        w = None
        grad = fn == "log_likelihood" and not bad
        _arm()
        try:
            if grad:
                for a in nds[:3]:
                    a.attach_grad()
                w, _ = _weights(c, effs[2].shape[0], effs[2].dtype, rng)
            if api == "block":
                entry = _block(fn, args[3] is not None, c.get("num_samples", 1), np_shape)
                blk = entry[0]
                call = lambda: _as_list(blk(*[a for a in args if a is not None]))  # noqa: E731
            else:
                kw = {"num_samples": c["num_samples"]} if fn == "sample" else {}
                call = lambda: _as_list(getattr(gh, fn)(*args, **kw))         # noqa: E731
            if fn == "sample":
                mx.random.seed(c["sample_seed"])
            if grad:
                with mx.autograd.record():
                    outs = call()
                outs[0].backward(mx.nd.array(w, dtype=effs[2].dtype))
                grads = [a.grad.asnumpy() for a in nds[:3]]
            else:
                outs = call()
            out = [o.asnumpy() for o in outs]
        except Exception as e:                                             # noqa: BLE001
            if not bad:
                raise
            stale = api == "block" and entry[1] and isinstance(e, mx.base.MXNetError) and \
                any(m in str(e) for m in CACHEDOP_STALE)
            if not stale:
                check_error(e, bad | blamed, api)
            out = None
        if api == "block":
            entry[1] = out is None
        _events(out, affected, kind)
        assert out is None or not bad, "accepted an invalid call: %s" % sorted(bad)
        assert snapshot(args) == before, "an input was modified"
        if out is None:
            return
        li, lt, le, lengths = effs
        dtype = le.dtype
        clean = cleaned(effs, masks)
        ones = np.ones(le.shape[0])
        if fn == "log_likelihood":
            exp = expected_stats(clean, lengths, w)
            check_loglik(out[0], exp[0], affected, kind, dtype)
            check_grads(grads, exp, affected, li, lt, dtype)
        elif fn in ("posterior", "posterior_stats"):
            exp = expected_stats(clean, lengths, ones)
            check_posterior(out, exp, affected, li, lt, dtype, fn == "posterior_stats")
        elif fn == "viterbi":
            check_viterbi(out, clean, lengths, affected, kind, dtype, le.shape[2])
        elif fn == "sample":
            check_sample(out[0], clean, lengths, affected, c["num_samples"], le.shape[2])
            if api == "mxnet":
                mx.random.seed(c["sample_seed"])
                again = call()[0].asnumpy()
                np.testing.assert_array_equal(again, out[0], err_msg="mx.random.seed reproduces")


# ----------------------------------------------------------------------------------------
# the fuzz tests: one per public function and API
# ----------------------------------------------------------------------------------------

NUMPY_FNS = ("log_likelihood", "value_and_grad", "posterior", "posterior_stats", "viterbi",
             "sample")
MXNET_FNS = ("log_likelihood", "posterior", "posterior_stats", "viterbi", "sample")


def _fuzz_test(api, fn):
    runner = run_numpy if api == "numpy" else run_mxnet

    @hypothesis_seed(SEED + zlib.crc32(("%s.%s" % (api, fn)).encode()))
    @FUZZ
    @given(c=calls(api, fn))
    def test(c):
        runner(c)

    test.__name__ = "test_fuzz_%s_%s" % (api, fn)
    return test


for _fn in NUMPY_FNS:
    globals()["test_fuzz_numpy_%s" % _fn] = _fuzz_test("numpy", _fn)
for _fn in MXNET_FNS:
    globals()["test_fuzz_mxnet_%s" % _fn] = _fuzz_test("mxnet", _fn)
    globals()["test_fuzz_block_%s" % _fn] = _fuzz_test("block", _fn)
del _fn


# ----------------------------------------------------------------------------------------
# NaN / inf semantics, spelled out (tests/FUZZ_RESULTS.md has the text for the README)
# ----------------------------------------------------------------------------------------

SEM_B, SEM_T, SEM_N = 4, 5, 3
SEM_LENGTHS = np.array([4, 1, 0, 5], np.int32)     # sequence 0 is the one poisoned below


def _semantics_problem(dtype):
    rng = np.random.default_rng(SEED)
    p = make_problem(rng, SEM_B, SEM_T, SEM_N, lengths=SEM_LENGTHS, unnormalised=True)
    return [a.astype(dtype) for a in p.args[:3]] + [p.lengths]


def _all_outputs(api, li, lt, le, L):
    """loglik, grads (init, trans, emit), gamma, Viterbi (path, score), samples: NumPy."""
    if api == "numpy":
        ll, g = ghn.value_and_grad(li, lt, le, L)
        gamma = ghn.posterior(li, lt, le, L).gamma
        vit = ghn.viterbi(li, lt, le, L)
        samples = ghn.sample(li, lt, le, L, num_samples=4, seed=SEED)
        return ll, list(g), gamma, list(vit), samples
    nds = [mx.nd.array(a, dtype=a.dtype) for a in (li, lt, le, L)]
    for a in nds[:3]:
        a.attach_grad()
    with mx.autograd.record():
        ll = gh.log_likelihood(*nds)
    ll.backward()
    return (ll.asnumpy(), [a.grad.asnumpy() for a in nds[:3]],
            gh.posterior(*nds).gamma.asnumpy(), [o.asnumpy() for o in gh.viterbi(*nds)],
            gh.sample(*nds, num_samples=4).asnumpy())


def _expect_untouched(out, li, lt, le, L, rows, dtype):
    """The sequences in ``rows`` equal the reference computed without the poisoned one."""
    ll, grads, gamma, (path, score), samples = out
    keep = np.asarray(rows)
    sub = [li, lt[keep] if lt.ndim > 2 else lt, le[keep], L[keep]]
    sub = [a.astype(np.float64) for a in sub[:3]] + [sub[3]]
    post = ref.posterior(*sub)
    _close(ll[keep], post.loglik, dtype, "loglik of the other sequences")
    _close(grads[2][keep], post.gamma, dtype, "d/d log_emit of the other sequences")
    _close(gamma[keep], post.gamma, dtype, "gamma of the other sequences")
    _close(score[keep], ref.viterbi(*sub).score, dtype, "Viterbi score of the other sequences")
    mask = _valid_mask(L, len(L), le.shape[1])
    assert np.all((path[mask] >= 0) & (path[mask] < le.shape[2])) and np.all(path[~mask] == -1)
    for b in keep:
        valid = mask[b]
        assert np.all(samples[b][:, valid] >= 0) and np.all(samples[b][:, ~valid] == -1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("api", ["numpy", "mxnet"])
def test_nan_at_a_valid_position_poisons_only_its_sequence(api, dtype):
    li, lt, le, L = _semantics_problem(dtype)
    le = le.copy()
    le[0, 1, 2] = np.nan
    out = _all_outputs(api, li, lt, le, L)
    ll, grads, gamma, (path, score), samples = out
    assert np.isnan(ll[0]) and np.isnan(score[0])
    assert np.all(np.isnan(grads[2][0, :4])) and np.all(grads[2][0, 4:] == 0)
    assert np.all(np.isnan(gamma[0, :4])) and np.all(gamma[0, 4:] == 0)
    assert np.all(np.isnan(grads[0])) and np.all(np.isnan(grads[1])), \
        "shared parameters sum over the batch: their gradients are NaN"
    assert np.all(samples[0] == -1), "a NaN sequence samples paths of -1"
    _expect_untouched(out, li, lt, le, L, [1, 2, 3], np.dtype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("api", ["numpy", "mxnet"])
def test_posinf_at_a_valid_position_poisons_only_its_sequence(api, dtype):
    li, lt, le, L = _semantics_problem(dtype)
    le = le.copy()
    le[0, 1, 2] = np.inf
    out = _all_outputs(api, li, lt, le, L)
    ll, grads, gamma, (path, score), samples = out
    assert ll[0] == np.inf and score[0] == np.inf
    assert not np.all(np.isfinite(grads[2][0])) and np.all(grads[2][0, 4:] == 0)
    assert np.all(samples[0] == -1)
    _expect_untouched(out, li, lt, le, L, [1, 2, 3], np.dtype(dtype))


@pytest.mark.parametrize("where", ["log_emit", "log_init", "log_trans"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("api", ["numpy", "mxnet"])
def test_minus_inf_everywhere_at_a_step_gives_minus_inf_and_zero_gradients(api, dtype, where):
    li, lt, le, L = _semantics_problem(dtype)
    li, lt, le = li.copy(), lt.copy(), le.copy()
    if where == "log_emit":
        le[0, 2, :] = -np.inf                    # sequence 0 only
        zero, other = [0], [1, 2, 3]
    elif where == "log_init":
        li[:] = -np.inf                          # every sequence with L >= 1
        zero, other = [0, 1, 3], [2]
    else:
        lt[:, :] = -np.inf                       # every sequence with L >= 2
        zero, other = [0, 3], [1, 2]
    out = _all_outputs(api, li, lt, le, L)
    ll, grads, gamma, (path, score), samples = out
    assert np.all(ll[zero] == -np.inf) and np.all(score[zero] == -np.inf)
    for g in grads:
        assert np.all(np.isfinite(g)), "gradients stay finite"
    assert np.all(grads[2][zero] == 0) and np.all(gamma[zero] == 0)
    assert np.all(samples[zero] == -1), "an impossible sequence samples paths of -1"
    _expect_untouched(out, li, lt, le, L, other, np.dtype(dtype))


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["log_init", "log_trans"])
def test_nonfinite_shared_parameter_reaches_only_sequences_that_use_it(where, value):
    """log_init is used by sequences with L >= 1, a shared log_trans by those with L >= 2."""
    li, lt, le, L = _semantics_problem("float64")
    li, lt = li.copy(), lt.copy()
    if where == "log_init":
        li[1] = value
        hit, other = [0, 1, 3], [2]
    else:
        lt[1, 2] = value
        hit, other = [0, 3], [1, 2]
    out = _all_outputs("numpy", li, lt, le, L)
    assert np.all(np.isnan(out[0][hit]) | (out[0][hit] == value))
    _expect_untouched(out, li, lt, le, L, other, np.dtype("float64"))


def test_nan_and_inf_in_padding_change_nothing():
    li, lt, le, L = _semantics_problem("float64")
    clean = _all_outputs("numpy", li, lt, le, L)
    le = le.copy()
    le[0, 4:] = np.nan
    le[1, 1:] = np.inf
    le[2] = -np.inf
    dirty = _all_outputs("numpy", li, lt, le, L)
    for a, b in zip(clean[:3], dirty[:3]):
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------------
# Engine bugs found by fuzzing (tests/FUZZ_RESULTS.md): strict xfails until fixed
# ----------------------------------------------------------------------------------------

def _run_python(code, timeout=120):
    import subprocess
    import sys
    import textwrap
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


# fixed (was ENGINE BUG 2, found by this test)
@pytest.mark.parametrize("num_samples", [2 ** 32, 2 ** 32 + 1])
def test_sample_num_samples_beyond_32_bits_is_a_clear_error(num_samples):
    r = _run_python("""
        import mxnet as mx, gluon_hmm as gh
        a = [mx.nd.zeros(2), mx.nd.zeros((2, 2)), mx.nd.zeros((1, 3, 2))]
        try:
            out = gh.sample(*a, num_samples=%d)
            out.wait_to_read()
            print("SHAPE", out.shape)
        except (ValueError, mx.base.MXNetError) as e:
            print("ERROR", "num_samples" in str(e))
    """ % num_samples)
    assert r.returncode == 0, "crashed: rc=%d %s" % (r.returncode, r.stderr[-500:])
    assert "ERROR True" in r.stdout, r.stdout + r.stderr[-500:]


# fixed (was ENGINE BUG 3, found by this test)
@pytest.mark.parametrize("op", ["log_likelihood_time_varying", "posterior", "viterbi", "sample"])
def test_zero_steps_under_numpy_shape_semantics(op):
    with mx.util.np_shape(True):
        li, le = mx.nd.zeros((3,)), mx.nd.zeros((2, 0, 3))
        lt = mx.nd.zeros((2, 0, 3, 3)) if op == "log_likelihood_time_varying" else \
            mx.nd.zeros((3, 3))
        if op == "log_likelihood_time_varying":
            np.testing.assert_array_equal(gh.log_likelihood(li, lt, le).asnumpy(), 0)
        elif op == "posterior":
            s = gh.posterior_stats(li, lt, le)
            np.testing.assert_array_equal(s.loglik.asnumpy(), 0)
            assert s.gamma.asnumpy().shape == (2, 0, 3)
        elif op == "viterbi":
            path, score = gh.viterbi(li, lt, le)
            assert path.asnumpy().shape == (2, 0)
            np.testing.assert_array_equal(score.asnumpy(), 0)
        else:
            out = gh.sample(li, lt, le, num_samples=2)
            out.wait_to_read()
            assert out.shape == (2, 2, 0)


# fixed (was ENGINE BUG 3b: the backward refused the NULL pointer of an empty grad_emit)
@pytest.mark.parametrize("trans", ["shared", "time"])
def test_zero_steps_backward_under_numpy_shape_semantics(trans):
    with mx.util.np_shape(True):
        li, le = mx.nd.zeros((3,)), mx.nd.zeros((2, 0, 3))
        lt = mx.nd.zeros((2, 0, 3, 3)) if trans == "time" else mx.nd.zeros((3, 3))
        for a in (li, lt, le):
            a.attach_grad()
        with mx.autograd.record():
            out = gh.log_likelihood(li, lt, le)
        out.backward()
        np.testing.assert_array_equal(out.asnumpy(), 0)
        np.testing.assert_array_equal(li.grad.asnumpy(), 0)
        assert le.grad.asnumpy().shape == (2, 0, 3)
        np.testing.assert_array_equal(lt.grad.asnumpy(), 0)


# fixed (was ENGINE BUG 4: the error surfaced in a later, unrelated call, because MXNet's
# asnumpy of an empty array does not wait; NDArray inputs are now validated at the call)
@pytest.mark.parametrize("op", ["sample", "posterior"])
def test_error_of_a_call_with_empty_outputs_is_raised_at_the_call(op):
    li, lt, le = mx.nd.zeros((3,)), mx.nd.zeros((3, 3)), mx.nd.zeros((2, 4, 3))
    bad = mx.nd.array([1, 9], dtype="int32")
    raised = False
    try:
        if op == "sample":
            gh.sample(li, lt, le, bad, num_samples=0).asnumpy()
        else:
            with mx.util.np_shape(True):
                out = gh.posterior(li, mx.nd.zeros((2, 0, 3, 3)), mx.nd.zeros((2, 0, 3)), bad)
                [o.asnumpy() for o in out]
    except mx.base.MXNetError as e:
        raised = "lengths" in str(e)
    finally:
        try:                                   # do not leak the pending error into other tests
            mx.nd.waitall()
            gh.log_likelihood(li, lt, le).asnumpy()
        except mx.base.MXNetError:
            pass
    assert raised


# fixed (was ENGINE BUG 5, found by this test)
@pytest.mark.parametrize("which", ["floats", "lengths"])
def test_numpy_api_non_native_byte_order(which):
    li, lt, le, L = _semantics_problem("float64")
    expected = ghn.log_likelihood(li, lt, le, L)
    swapped = [a.astype(a.dtype.newbyteorder(">")) for a in (li, lt, le, L)]
    if which == "floats":
        swapped[3] = L
    else:
        swapped[:3] = [li, lt, le]
    try:
        got = ghn.log_likelihood(*swapped)
    except (ValueError, TypeError) as e:
        assert "byte order" in str(e) or "endian" in str(e), str(e)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-12)


# fixed (was ENGINE BUG 6, found by this test)
def test_ndarray_passed_to_numpy_api_is_a_quick_clear_error():
    import time
    li, lt, le = np.zeros(4), np.zeros((4, 4)), mx.nd.zeros((8, 50, 4), dtype="float64")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = ghn.log_likelihood(li, lt, le)
        except (TypeError, ValueError) as e:
            assert "NDArray" in str(e) or "asnumpy" in str(e), str(e)[:200]
        else:
            np.testing.assert_allclose(out, ghn.log_likelihood(li, lt, le.asnumpy()))
    assert time.perf_counter() - t0 < 0.5


# fixed (was finding 9: the max-plus recursion dropped a NaN candidate -inf + inf)
@pytest.mark.parametrize("api", ["numpy", "mxnet"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("where", ["trans", "init", "emit"])
def test_viterbi_score_is_nan_where_an_infinite_weight_meets_a_structural_zero(api, dtype,
                                                                               where):
    """0 * inf: the forward pass gives NaN, so must the Viterbi score; others untouched."""
    inf = np.inf
    li = np.array([0.0, -inf] if where == "trans" else [0.0, 0.0], dtype)
    lt = np.array([[0.0, 0.0], [inf, 0.0]] if where == "trans" else [[0.0, 0.0], [0.0, 0.0]],
                  dtype)
    le = np.zeros((2, 3, 2), dtype)
    if where == "init":
        li[1] = inf
        le[0, 0, 1] = -inf            # +inf initial weight of a state that cannot emit x_0
    elif where == "emit":
        lt = np.array([[0.0, -inf], [0.0, -inf]], dtype)   # state 1 unreachable after t = 0
        le[0, 2, 1] = inf
    L = np.array([3, 1], np.int32)   # sequence 1 has no transition, and no poison
    if api == "numpy":
        ll = ghn.log_likelihood(li, lt, le, L)
        score = ghn.viterbi(li, lt, le, L).score
    else:
        nds = [mx.nd.array(a, dtype=a.dtype) for a in (li, lt, le, L)]
        ll = gh.log_likelihood(*nds).asnumpy()
        score = gh.viterbi(*nds).score.asnumpy()
    assert np.isnan(ll[0]) and np.isnan(score[0]), (ll, score)
    if where == "init":               # the shared +inf initial weight reaches sequence 1 too
        assert ll[1] == inf and score[1] == inf, (ll, score)
    else:                             # sequence 1 never meets the poison
        with np.errstate(invalid="ignore"):
            expected = ref.viterbi(li, lt, le[1:], L[1:]).score[0]
        assert np.isfinite(expected)
        np.testing.assert_allclose(score[1], expected, rtol=1e-6)


# fixed (was finding 10: gh.sample refused NumPy integers and let bool through to MXNet)
@pytest.mark.parametrize("api", ["numpy", "mxnet"])
def test_num_samples_accepts_numpy_integers_and_refuses_bool(api):
    li, lt, le = np.zeros(2), np.zeros((2, 2)), np.zeros((1, 3, 2))
    if api == "numpy":
        call = lambda ns: ghn.sample(li, lt, le, num_samples=ns, seed=1)       # noqa: E731
    else:
        nds = [mx.nd.array(a, dtype=a.dtype) for a in (li, lt, le)]
        call = lambda ns: gh.sample(*nds, num_samples=ns).asnumpy()           # noqa: E731
    assert call(np.int64(2)).shape == (1, 2, 3)
    assert call(np.int32(0)).shape == (1, 0, 3)
    for bad in (True, np.int64(-1), 2.0):
        with pytest.raises(ValueError, match="num_samples must be a non-negative integer"):
            call(bad)


# fixed (was finding 14: seeds wrapped at 2**64)
def test_numpy_sample_refuses_seeds_beyond_64_bits():
    li, lt, le = np.zeros(2), np.zeros((2, 2)), np.zeros((1, 3, 2))
    ghn.sample(li, lt, le, seed=2 ** 64 - 1)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        ghn.sample(li, lt, le, seed=2 ** 64)


@pytest.mark.parametrize("fn", ["log_likelihood", "posterior", "viterbi", "sample"])
def test_ndarray_input_errors_are_input_errors_at_the_call(fn):
    """Raised before the operator runs: an MXNetError and a ValueError, with the op's name."""
    li, lt, le = mx.nd.zeros((3,)), mx.nd.zeros((3, 3)), mx.nd.zeros((2, 4, 3))
    cases = [((li, mx.nd.zeros((4, 4)), le), "log_trans must have shape"),
             ((li, lt, le.astype("float16")), "log_emit must have dtype"),
             ((li, lt, le, mx.nd.array([4, 5], dtype="int64")), r"lengths\[1\]=5"),
             ((li, lt, le, mx.nd.array([4, 4])), "lengths must have dtype int32 or int64")]
    for args, what in cases:
        with pytest.raises(gh.InputError, match="gluon_hmm.%s: .*%s" % (fn, what)) as info:
            getattr(gh, fn)(*args)                  # no wait: raised by the call itself
        assert isinstance(info.value, ValueError) and isinstance(info.value, mx.base.MXNetError)
