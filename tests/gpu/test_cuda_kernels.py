"""The CUDA driver of the gluon_hmm engine, against the CPU driver and the float64 reference.

Every op runs on the CUDA device through the C ABI of build/libgluon_hmm_engine.so
(built by tests/gpu/build_engine.sh, no MXNet needed), and is compared with the
same op on device=CPU through the same library and with gluon_hmm/reference.py
(loaded by file path).  Outputs and workspaces are poisoned (NaN / 0xFF bytes)
before every call, so an element a kernel forgets to write fails the comparison.

On a machine with an NVIDIA GPU, from the repository root::

    tests/gpu/build_engine.sh
    python3 -m pytest -q tests/gpu/test_cuda_kernels.py

Skips, saying why, when the library is missing or built without CUDA, or when
no CUDA device (or neither CuPy nor PyTorch) is available, so it is harmless in
CPU-only CI.

Environment:
    GLUON_HMM_ENGINE_LIB           library to load (default build/libgluon_hmm_engine.so)
    GLUON_HMM_TEST_DEVICE_MEMORY   cupy | torch | host  (default: cupy, else torch).
                                   "host" passes host pointers as device pointers; it is
                                   only meant for CPU emulations of the CUDA driver.
    GLUON_HMM_TEST_SEED            the session seed (tests/conftest.py)
"""
import ctypes
import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from cases import (EDGE_SIZES, FLAG_SETS, SHAPE_VARIANTS, SMALL_SIZES,  # noqa: E402
                   make_problem, tol)


def _load_reference():
    name = "_gluon_hmm_reference_for_gpu_tests"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "gluon_hmm" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

# --------------------------------------------------------------------------
# The C ABI (src/hmm/hmm.h) through ctypes
# --------------------------------------------------------------------------
CPU, CUDA = 0, 1
STATUS_TOO_LARGE = 3


class Problem(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("time", ctypes.c_int64), ("states", ctypes.c_int64),
                ("dtype", ctypes.c_int), ("init_mode", ctypes.c_int), ("trans_mode", ctypes.c_int),
                ("lengths_type", ctypes.c_int), ("device", ctypes.c_int),
                ("num_threads", ctypes.c_int), ("stream", ctypes.c_void_p)]


class Inputs(ctypes.Structure):
    _fields_ = [("log_init", ctypes.c_void_p), ("log_trans", ctypes.c_void_p),
                ("log_emit", ctypes.c_void_p), ("lengths", ctypes.c_void_p)]


_P = ctypes.POINTER(Problem)
_I = ctypes.POINTER(Inputs)
_V = ctypes.c_void_p
_SIGNATURES = {
    "hmm_has_cuda": ([], ctypes.c_int),
    "hmm_status_string": ([ctypes.c_int], ctypes.c_char_p),
    "hmm_saved_size": ([_P, ctypes.POINTER(ctypes.c_int64)], ctypes.c_int),
    "hmm_backward_workspace_size": ([_P, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_int),
    "hmm_posterior_workspace_size": ([_P, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_int),
    "hmm_viterbi_workspace_size": ([_P, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_int),
    "hmm_sample_workspace_size": ([_P, ctypes.c_int64, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_int),
    "hmm_forward": ([_P, _I, _V, _V], ctypes.c_int),
    "hmm_backward": ([_P, _I, _V, _V, _V, _V, _V, _V], ctypes.c_int),
    "hmm_posterior": ([_P, _I, _V, _V, _V, _V, _V], ctypes.c_int),
    "hmm_viterbi": ([_P, _I, _V, _V, _V], ctypes.c_int),
    "hmm_sample": ([_P, _I, ctypes.c_int64, _V, _V, _V], ctypes.c_int),
    "hmm_buffer_alloc": ([ctypes.c_int, _V, ctypes.c_size_t, ctypes.POINTER(_V)], ctypes.c_int),
    "hmm_buffer_free": ([ctypes.c_int, _V, _V], ctypes.c_int),
}


def _load_library():
    path = pathlib.Path(os.environ.get("GLUON_HMM_ENGINE_LIB",
                                       ROOT / "build" / "libgluon_hmm_engine.so"))
    if not path.exists():
        return None, f"{path} not built (run tests/gpu/build_engine.sh on a CUDA machine)"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"cannot load {path}: {exc}"
    for name, (args, res) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    if not lib.hmm_has_cuda():
        return None, f"{path} was built without CUDA"
    return lib, None


class _CupyMemory:
    name = "cupy"

    def __init__(self):
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        self.cp = cupy

    def put(self, a):
        return self.cp.asarray(np.ascontiguousarray(a))

    def full(self, shape, dtype, value):
        d = self.cp.empty(shape, dtype=dtype)
        d.fill(value)
        return d

    def ptr(self, d):
        return d.data.ptr if d.size else None

    def get(self, d):
        return self.cp.asnumpy(d)

    def sync(self):
        self.cp.cuda.runtime.deviceSynchronize()

    def device_name(self):
        return self.cp.cuda.runtime.getDeviceProperties(0)["name"].decode()


class _TorchMemory:
    name = "torch"

    def __init__(self):
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("PyTorch sees no CUDA device")
        self.torch = torch

    def put(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a).copy()).to("cuda")

    def full(self, shape, dtype, value):
        t = self.torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        return self.torch.full(tuple(shape), value, dtype=t, device="cuda")

    def ptr(self, d):
        return d.data_ptr() if d.numel() else None

    def get(self, d):
        return d.cpu().numpy()

    def sync(self):
        self.torch.cuda.synchronize()

    def device_name(self):
        return self.torch.cuda.get_device_name(0)


class _HostMemory:
    """Host arrays standing in for device memory (CPU emulations of the driver only)."""
    name = "host"

    def put(self, a):
        return np.array(a, copy=True, order="C")

    def full(self, shape, dtype, value):
        return np.full(shape, value, dtype=dtype)

    def ptr(self, d):
        return d.ctypes.data if d.size else None

    def get(self, d):
        return np.array(d, copy=True)

    def sync(self):
        pass

    def device_name(self):
        return "host memory (emulation)"


def _device_memory():
    want = os.environ.get("GLUON_HMM_TEST_DEVICE_MEMORY", "").strip().lower()
    kinds = {"cupy": _CupyMemory, "torch": _TorchMemory, "host": _HostMemory}
    if want:
        if want not in kinds:
            return None, f"GLUON_HMM_TEST_DEVICE_MEMORY must be cupy, torch or host, got {want!r}"
        order = [want]
    else:
        order = ["cupy", "torch"]
    reasons = []
    for k in order:
        try:
            return kinds[k](), None
        except Exception as exc:                                     # noqa: BLE001
            reasons.append(f"{k}: {exc}")
    return None, "no CUDA device memory available (" + "; ".join(reasons) + ")"


LIB, _reason = _load_library()
MEM = None
if LIB is not None:
    MEM, _reason = _device_memory()
if _reason:
    pytest.skip(_reason, allow_module_level=True)


# --------------------------------------------------------------------------
# Calling the engine on either device
# --------------------------------------------------------------------------
def _check(status, what):
    assert status == 0, f"{what} failed: {LIB.hmm_status_string(status).decode()} ({status})"


class Engine:
    """One device's view of the engine: uploads inputs, poisons outputs, downloads results."""

    def __init__(self, device, stream=None):
        self.device = device
        self.stream = stream
        self._keep = []

    # memory ---------------------------------------------------------------
    # Empty arrays still get a valid (one-element) pointer, as NumPy gives them:
    # the ABI may insist on non-NULL inputs whose element count is zero.
    def _device_ptr(self, h, dtype):
        if MEM.ptr(h) is not None:
            return MEM.ptr(h)
        dummy = MEM.full((1,), dtype, 0)
        self._keep.append(dummy)
        return MEM.ptr(dummy)

    def _put(self, a):
        a = np.ascontiguousarray(a)
        if self.device == CPU:
            h = np.array(a, copy=True, order="C")
            self._keep.append(h)
            return h, h.ctypes.data
        h = MEM.put(a)
        self._keep.append(h)
        return h, self._device_ptr(h, a.dtype)

    def _full(self, shape, dtype, value):
        if self.device == CPU:
            h = np.full(shape, value, dtype=dtype)
            self._keep.append(h)
            return h, h.ctypes.data
        h = MEM.full(shape, dtype, value)
        self._keep.append(h)
        return h, self._device_ptr(h, dtype)

    def _poison(self, shape, dtype):
        dtype = np.dtype(dtype)
        return self._full(shape, dtype, np.nan if dtype.kind == "f" else -7)

    def _get(self, h):
        if self.device == CPU:
            return np.array(h, copy=True)
        MEM.sync()
        return MEM.get(h)

    def _workspace(self, nbytes):
        return self._full((max(int(nbytes), 1),), np.uint8, 0xFF)[1]

    def _ready(self):
        """Inputs, poison and workspace were written on the array library's stream."""
        if self.device == CUDA and self.stream is not None:
            MEM.sync()

    def _finish(self):
        if self.device == CUDA:
            MEM.sync()
        self._keep = []

    # problem ----------------------------------------------------------------
    def problem(self, p, lengths=True):
        B, T, N = p.log_emit.shape
        pr = Problem()
        pr.batch, pr.time, pr.states = B, T, N
        pr.dtype = 0 if p.log_emit.dtype == np.float32 else 1
        pr.init_mode = 0 if p.log_init.ndim == 1 else 1
        pr.trans_mode = {2: 0, 3: 1, 4: 2}[p.log_trans.ndim]
        if not lengths:
            pr.lengths_type = 0
        else:
            pr.lengths_type = 1 if p.lengths.dtype == np.int32 else 2
        pr.device = self.device
        pr.num_threads = 0
        pr.stream = self.stream
        inp = Inputs()
        inp.log_init = self._put(p.log_init)[1]
        inp.log_trans = self._put(p.log_trans)[1]
        inp.log_emit = self._put(p.log_emit)[1]
        inp.lengths = self._put(p.lengths)[1] if lengths else None
        return pr, inp

    # ops ----------------------------------------------------------------------
    def forward(self, p, lengths=True):
        pr, inp = self.problem(p, lengths)
        n = ctypes.c_int64()
        _check(LIB.hmm_saved_size(ctypes.byref(pr), ctypes.byref(n)), "hmm_saved_size")
        ll, llp = self._poison((p.shape[0],), p.dtype)
        sv, svp = self._poison((n.value,), p.dtype)
        self._ready()
        _check(LIB.hmm_forward(ctypes.byref(pr), ctypes.byref(inp), llp, svp), "hmm_forward")
        out = self._get(ll), self._get(sv)
        self._finish()
        return out

    def backward(self, p, saved, w, want_init=True, want_trans=True, lengths=True):
        pr, inp = self.problem(p, lengths)
        ws = ctypes.c_size_t()
        _check(LIB.hmm_backward_workspace_size(ctypes.byref(pr), ctypes.byref(ws)), "workspace size")
        svp = self._put(saved)[1]
        wp = self._put(np.asarray(w, dtype=p.dtype))[1]
        gi, gip = self._poison(p.log_init.shape, p.dtype) if want_init else (None, None)
        gt, gtp = self._poison(p.log_trans.shape, p.dtype) if want_trans else (None, None)
        ge, gep = self._poison(p.log_emit.shape, p.dtype)
        self._ready()
        _check(LIB.hmm_backward(ctypes.byref(pr), ctypes.byref(inp), svp, wp, gip, gtp, gep,
                                self._workspace(ws.value)), "hmm_backward")
        out = (self._get(gi) if want_init else None, self._get(gt) if want_trans else None,
               self._get(ge))
        self._finish()
        return out

    def posterior(self, p, want_loglik=True, want_init=True, want_trans=True, lengths=True):
        pr, inp = self.problem(p, lengths)
        ws = ctypes.c_size_t()
        _check(LIB.hmm_posterior_workspace_size(ctypes.byref(pr), ctypes.byref(ws)), "workspace size")
        ga, gap = self._poison(p.log_emit.shape, p.dtype)
        tc, tcp = self._poison(p.log_trans.shape, p.dtype) if want_trans else (None, None)
        ll, llp = self._poison((p.shape[0],), p.dtype) if want_loglik else (None, None)
        ic, icp = self._poison(p.log_init.shape, p.dtype) if want_init else (None, None)
        self._ready()
        _check(LIB.hmm_posterior(ctypes.byref(pr), ctypes.byref(inp), gap, tcp, llp, icp,
                                 self._workspace(ws.value)), "hmm_posterior")
        get = lambda h, want: self._get(h) if want else None          # noqa: E731
        out = (self._get(ga), get(tc, want_trans), get(ic, want_init), get(ll, want_loglik))
        self._finish()
        return out

    def viterbi(self, p, lengths=True):
        pr, inp = self.problem(p, lengths)
        ws = ctypes.c_size_t()
        _check(LIB.hmm_viterbi_workspace_size(ctypes.byref(pr), ctypes.byref(ws)), "workspace size")
        path, pp = self._poison(p.log_emit.shape[:2], np.int32)
        score, sp = self._poison((p.shape[0],), p.dtype)
        self._ready()
        _check(LIB.hmm_viterbi(ctypes.byref(pr), ctypes.byref(inp), pp, sp,
                               self._workspace(ws.value)), "hmm_viterbi")
        out = self._get(path), self._get(score)
        self._finish()
        return out

    def sample(self, p, num_samples, seed, lengths=True):
        pr, inp = self.problem(p, lengths)
        ws = ctypes.c_size_t()
        _check(LIB.hmm_sample_workspace_size(ctypes.byref(pr), num_samples, ctypes.byref(ws)),
               "workspace size")
        sd = self._put(np.asarray(seed, dtype=np.int32))[1]
        B, T, _ = p.shape
        paths, pp = self._poison((B, num_samples, T), np.int32)
        self._ready()
        _check(LIB.hmm_sample(ctypes.byref(pr), ctypes.byref(inp), num_samples, sd, pp,
                              self._workspace(ws.value)), "hmm_sample")
        out = self._get(paths)
        self._finish()
        return out

    def status_of_forward(self, p):
        pr, inp = self.problem(p)
        n = ctypes.c_int64()
        _check(LIB.hmm_saved_size(ctypes.byref(pr), ctypes.byref(n)), "hmm_saved_size")
        _, llp = self._poison((p.shape[0],), p.dtype)
        _, svp = self._poison((n.value,), p.dtype)
        self._ready()
        st = LIB.hmm_forward(ctypes.byref(pr), ctypes.byref(inp), llp, svp)
        self._finish()
        return st


GPU_ENGINE = Engine(CUDA)
CPU_ENGINE = Engine(CPU)


# --------------------------------------------------------------------------
# Reference helpers
# --------------------------------------------------------------------------
def _slice_problem(p, b):
    sl = slice(b, b + 1)
    li = p.log_init if p.log_init.ndim == 1 else p.log_init[sl]
    lt = p.log_trans if p.log_trans.ndim == 2 else p.log_trans[sl]
    return li, lt, p.log_emit[sl], p.lengths[sl]


def reference_gradients(p, w):
    """Gradients of sum_b w_b loglik_b from the float64 reference, one sequence at a time."""
    p64 = p.astype(np.float64)
    B = p.shape[0]
    g_init = np.zeros(p.log_init.shape)
    g_trans = np.zeros(p.log_trans.shape)
    g_emit = np.zeros(p.log_emit.shape)
    loglik = np.zeros(B)
    for b in range(B):
        post = ref.posterior(*_slice_problem(p64, b))
        loglik[b] = post.loglik[0]
        g_emit[b] = w[b] * post.gamma[0]
        if p.log_init.ndim == 1:
            g_init += w[b] * post.init_counts
        else:
            g_init[b] = w[b] * post.init_counts[0]
        if p.log_trans.ndim == 2:
            g_trans += w[b] * post.trans_counts
        else:
            g_trans[b] = w[b] * post.trans_counts[0]
    return loglik, g_init, g_trans, g_emit


def saved_views(saved, p):
    """(alpha (B,T,Np), scale (B,T), flag (B,)) of a saved-state buffer (common.h layout)."""
    B, T, N = p.shape
    w = 4 if p.dtype == np.float64 else 8
    Np = (N + w - 1) // w * w
    alpha = saved[:B * T * Np].reshape(B, T, Np)
    scale = saved[B * T * Np:B * T * Np + B * T].reshape(B, T)
    flag = saved[B * T * Np + B * T:]
    return alpha, scale, flag


def _chunk_env(monkeypatch, variant, N):
    if variant == "serial":
        monkeypatch.setenv("GLUON_HMM_CUDA_CHUNK", "0")
    else:  # the shortest chunks the driver allows, so that every test size has several
        monkeypatch.setenv("GLUON_HMM_CUDA_CHUNK", str(N + 3))


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------
EXTRA_SIZES = ((3, 40, 4), (2, 33, 7), (4, 25, 40), (2, 12, 70))
CHUNK_SIZES = ((3, 200, 3), (3, 40, 4), (2, 33, 7), (2, 70, 20))
DTYPES = (np.float64, np.float32)


def _specs(sizes, flags=tuple(FLAG_SETS), variants=SHAPE_VARIANTS, dtypes=DTYPES):
    out = []
    for (B, T, N) in sizes:
        for v in variants:
            for flag in flags:
                for dt in dtypes:
                    kw = dict(B=B, T=T, N=N, init=v.init, trans=v.trans, dtype=dt, **FLAG_SETS[flag])
                    out.append(pytest.param(kw, id=f"B{B}T{T}N{N}-{v.id}-{flag}-{np.dtype(dt).name}"))
    return out


FB_CASES = _specs(SMALL_SIZES + EDGE_SIZES + EXTRA_SIZES)
CHUNK_CASES = _specs(CHUNK_SIZES)


def _compare_forward_backward(rng, kw):
    p = make_problem(rng, **kw)
    t = tol(p.dtype)
    B = p.shape[0]
    w = (rng.normal(size=B) * 2).astype(p.dtype)      # upstream weights of either sign
    loglik, saved = GPU_ENGINE.forward(p)
    cpu_loglik, cpu_saved = CPU_ENGINE.forward(p)
    ref_ll, ref_gi, ref_gt, ref_ge = reference_gradients(p, w.astype(np.float64))
    np.testing.assert_allclose(loglik, ref_ll, **t)
    np.testing.assert_allclose(loglik, cpu_loglik, **t)

    # saved state: the layout of common.h, the same numbers as the CPU driver
    a_g, s_g, f_g = saved_views(saved, p)
    a_c, s_c, f_c = saved_views(cpu_saved, p)
    assert set(np.unique(f_g)) <= {0.0, 1.0}
    # the same sequences fall back to log space (else the exact fallback could
    # hide a broken scaled path)
    np.testing.assert_array_equal(f_g, f_c)
    L = p.lengths
    for b in range(B):
        if f_g[b] == 0 and f_c[b] == 0 and L[b] > 0:
            np.testing.assert_allclose(a_g[b, :L[b], :p.shape[2]], a_c[b, :L[b], :p.shape[2]], **t)
            np.testing.assert_allclose(s_g[b, :L[b]], s_c[b, :L[b]], rtol=t["rtol"] * 10, atol=0)

    gi, gt, ge = GPU_ENGINE.backward(p, saved, w)
    cgi, cgt, cge = CPU_ENGINE.backward(p, cpu_saved, w)
    for got, cpu, want in ((gi, cgi, ref_gi), (gt, cgt, ref_gt), (ge, cge, ref_ge)):
        np.testing.assert_allclose(got, want, **t)
        np.testing.assert_allclose(got, cpu, **t)
    return p, saved, cpu_saved, w


@pytest.mark.parametrize("kw", FB_CASES)
def test_forward_backward_match_cpu_and_reference(rng, monkeypatch, kw):
    _chunk_env(monkeypatch, "serial", kw["N"])
    _compare_forward_backward(rng, kw)


@pytest.mark.parametrize("kw", CHUNK_CASES)
def test_parallel_in_time_variant_matches(rng, monkeypatch, kw):
    """Short forced chunks: the chunked forward/backward against the CPU and the reference."""
    _chunk_env(monkeypatch, "chunked", kw["N"])
    _compare_forward_backward(rng, kw)


@pytest.mark.parametrize("variant", ["serial", "chunked"])
@pytest.mark.parametrize("trans", ["shared", "batch", "time"])
def test_backward_reads_the_other_drivers_saved_state(rng, monkeypatch, variant, trans):
    """The saved state is device independent: GPU backward of a CPU forward and vice versa."""
    _chunk_env(monkeypatch, variant, 5)
    p = make_problem(rng, 4, 60, 5, trans=trans, lengths="ragged", neg_inf=True,
                     very_negative=True)
    w = rng.normal(size=4)
    _, saved_gpu = GPU_ENGINE.forward(p)
    _, saved_cpu = CPU_ENGINE.forward(p)
    a = GPU_ENGINE.backward(p, saved_cpu, w)
    b = CPU_ENGINE.backward(p, saved_gpu, w)
    c = CPU_ENGINE.backward(p, saved_cpu, w)
    for x, y, z in zip(a, b, c):
        np.testing.assert_allclose(x, z, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(y, z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("lengths_dtype", [np.int32, np.int64, None])
def test_lengths_types(rng, lengths_dtype):
    """lengths int32, int64, or absent (NULL: every sequence has length T)."""
    with_lengths = lengths_dtype is not None
    p = make_problem(rng, 5, 9, 4, init="batch", trans="batch",
                     lengths="ragged" if with_lengths else "full",
                     lengths_dtype=lengths_dtype or np.int32)
    ll, saved = GPU_ENGINE.forward(p, lengths=with_lengths)
    np.testing.assert_allclose(ll, ref.log_likelihood(*p.args), rtol=1e-9, atol=1e-9)
    w = np.ones(5)
    got = GPU_ENGINE.backward(p, saved, w, lengths=with_lengths)
    want = reference_gradients(p, w)[1:]
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kw", _specs(SMALL_SIZES + EDGE_SIZES + ((3, 40, 4), (2, 12, 70)),
                                      flags=("plain", "neginf", "nanpad", "all")))
def test_posterior_matches_reference(rng, kw):
    p = make_problem(rng, **kw)
    t = tol(p.dtype)
    want = ref.posterior(*p.astype(np.float64).args)
    gamma, counts, init_counts, loglik = GPU_ENGINE.posterior(p)
    np.testing.assert_allclose(gamma, want.gamma, **t)
    np.testing.assert_allclose(counts, want.trans_counts, **t)
    np.testing.assert_allclose(init_counts, want.init_counts, **t)
    np.testing.assert_allclose(loglik, want.loglik, **t)
    # optional outputs left out
    gamma2, counts2, _, _ = GPU_ENGINE.posterior(p, want_loglik=False, want_init=False)
    np.testing.assert_allclose(gamma2, gamma, rtol=0, atol=0)
    np.testing.assert_allclose(counts2, counts, rtol=0, atol=0)
    gamma3, _, _, _ = GPU_ENGINE.posterior(p, want_trans=False)
    np.testing.assert_allclose(gamma3, gamma, rtol=0, atol=0)


VITERBI_FLAGS = ("plain", "ragged", "neginf", "unnorm", "veryneg", "nanpad", "all")


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("kw", _specs(SMALL_SIZES + EDGE_SIZES + ((3, 40, 4), (4, 25, 40)),
                                      flags=VITERBI_FLAGS))
def test_viterbi_matches_reference_and_cpu(rng, kw, ties):
    p = make_problem(rng, ties=ties, **kw)
    path, score = GPU_ENGINE.viterbi(p)
    cpath, cscore = CPU_ENGINE.viterbi(p)
    rpath, rscore = ref.viterbi(*p.astype(np.float64).args)
    # float64 max-plus in the same order everywhere: the same path, the same score
    # (rounded once to the dtype)
    np.testing.assert_array_equal(path, rpath)
    np.testing.assert_array_equal(path, cpath)
    np.testing.assert_array_equal(score, rscore.astype(p.dtype))
    np.testing.assert_array_equal(score, cscore)
    np.testing.assert_allclose(ref.path_log_score(*p.astype(np.float64).args[:3], path, p.lengths),
                               rscore, rtol=1e-12, atol=0)


def _sample_mismatch_budget(p, num_samples):
    """Samples (rows of T draws) allowed to differ between CPU and GPU.

    Both drivers draw with the same uniforms and the same rule from weights
    computed in float64 from their own filtered alpha; those agree to a few
    ulps of the input dtype, so a draw can differ only when u * total lands
    within that distance of a cumulative-sum boundary: probability about
    N * 4 * eps per draw.  Zero for float64, a handful of draws for float32.
    """
    B, T, N = p.shape
    if p.dtype == np.float64:
        return 0
    draws = B * num_samples * T
    expected = draws * N * 4 * np.finfo(np.float32).eps
    return int(np.ceil(10 * expected)) + 1


@pytest.mark.parametrize("kw", _specs(((1, 1, 1), (3, 4, 1), (4, 4, 3), (5, 7, 5), (3, 40, 4),
                                       (4, 25, 40), (0, 3, 2), (2, 0, 3)),
                                      flags=("plain", "ragged", "neginf", "veryneg", "nanpad", "all")))
def test_sample_paths_identical_to_cpu(rng, kw):
    p = make_problem(rng, **kw)
    S = 7
    seed = rng.integers(-2 ** 31, 2 ** 31, size=2, dtype=np.int64).astype(np.int32)
    gpu = GPU_ENGINE.sample(p, S, seed)
    cpu = CPU_ENGINE.sample(p, S, seed)
    B, T, N = p.shape
    L = p.lengths
    pad = np.arange(T)[None, None, :] >= L[:, None, None]
    assert np.all(gpu[np.broadcast_to(pad, gpu.shape)] == -1)
    assert np.all((gpu[~np.broadcast_to(pad, gpu.shape)] >= 0)
                  & (gpu[~np.broadcast_to(pad, gpu.shape)] < N))
    differ = int(np.sum(np.any(gpu != cpu, axis=2)))
    assert differ <= _sample_mismatch_budget(p, S), f"{differ} of {B * S} samples differ"
    # every sampled path has positive weight
    for s in range(S):
        sc = ref.path_log_score(*p.astype(np.float64).args[:3], gpu[:, s], L)
        assert np.all(np.isfinite(sc[L > 0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", ["shared", "batch", "time"])
def test_sample_marginals_match_posterior(rng, dtype, trans):
    p = make_problem(rng, 2, 6, 3, trans=trans, dtype=dtype, lengths=np.array([6, 4]),
                     neg_inf=True)
    S = 4000
    seed = np.array([12345, -77], dtype=np.int32)
    paths = GPU_ENGINE.sample(p, S, seed)
    gamma = ref.posterior(*p.astype(np.float64).args).gamma
    N = p.shape[2]
    freq = np.stack([(paths == j).mean(axis=1) for j in range(N)], axis=-1)   # (B, T, N)
    sigma = np.sqrt(gamma * (1 - gamma) / S)
    assert np.all(np.abs(freq - gamma) <= 5 * sigma + 2e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["serial", "chunked"])
def test_underflow_falls_back_to_log_space(rng, monkeypatch, dtype, variant):
    """A step whose normaliser is ~1e-26 (float32) / 1e-300 (float64) is flagged and redone exactly."""
    _chunk_env(monkeypatch, variant, 3)
    B, T, N = 3, 40, 3
    drop = -60.0 if dtype == np.float32 else -700.0
    log_trans = np.log(np.full((N, N), 1.0 / N))
    log_trans[0, 1] = drop                      # the only way into state 1
    log_trans[2, 1] = -np.inf
    log_trans[1, 1] = 0.0
    log_init = np.array([0.0, -np.inf, -np.inf])
    log_emit = rng.normal(-1.0, 0.5, size=(B, T, N))
    log_emit[0, 20:, [0, 2]] = -np.inf          # sequence 0 must be in state 1 from t = 20 on
    lengths = np.array([T, T, 25], dtype=np.int32)
    from cases import Problem as CaseProblem
    p = CaseProblem(log_init.astype(dtype), log_trans.astype(dtype), log_emit.astype(dtype), lengths)
    ll, saved = GPU_ENGINE.forward(p)
    _, _, flag = saved_views(saved, p)
    assert flag[0] == 1 and flag[1] == 0
    w = np.array([1.5, -0.5, 2.0])
    want = reference_gradients(p, w)
    np.testing.assert_allclose(ll, want[0], **tol(dtype))
    for got, exp in zip(GPU_ENGINE.backward(p, saved, w), want[1:]):
        np.testing.assert_allclose(got, exp, **tol(dtype))
    seed = np.array([3, 4], dtype=np.int32)
    gpu_paths = GPU_ENGINE.sample(p, 5, seed)
    cpu_paths = CPU_ENGINE.sample(p, 5, seed)
    np.testing.assert_array_equal(gpu_paths[0], cpu_paths[0])   # log-space draws, float64
    assert np.all(gpu_paths[0, :, 20:] == 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_impossible_sequences_stay_contained(rng, dtype):
    p = make_problem(rng, 4, 12, 3, init="batch", trans="batch", dtype=dtype, lengths="ragged")
    p.lengths[:] = [12, 12, 12, 7]
    p.log_emit[1, 5, 2] = np.nan                 # NaN at a valid position: NaN for sequence 1 only
    p.log_emit[2, 6, :] = -np.inf                # no path of positive weight: loglik -inf, zero grads
    w = np.ones(4, dtype=dtype)
    ll, saved = GPU_ENGINE.forward(p)
    assert np.isnan(ll[1]) and ll[2] == -np.inf
    keep = [0, 3]
    want = reference_gradients(p, np.ones(4))
    np.testing.assert_allclose(ll[keep], want[0][keep], **tol(dtype))
    gi, gt, ge = GPU_ENGINE.backward(p, saved, w)
    assert np.all(np.isnan(ge[1, :12])) or np.any(np.isnan(ge[1]))
    assert np.all(ge[2] == 0) and np.all(gt[2] == 0) and np.all(gi[2] == 0)
    np.testing.assert_allclose(ge[keep], want[3][keep], **tol(dtype))
    np.testing.assert_allclose(gt[keep], want[2][keep], **tol(dtype))
    np.testing.assert_allclose(gi[keep], want[1][keep], **tol(dtype))
    paths = GPU_ENGINE.sample(p, 3, np.array([1, 2], dtype=np.int32))
    assert np.all(paths[2] == -1) and np.all(paths[1] == -1)   # as the CPU driver: no valid path
    cpu = CPU_ENGINE.sample(p, 3, np.array([1, 2], dtype=np.int32))
    np.testing.assert_array_equal(paths[1:3], cpu[1:3])


@pytest.mark.parametrize("trans", ["shared", "batch"])
def test_many_states_matrix_partly_in_global_memory(rng, trans):
    """N = 300 float64: the shifted matrix no longer fits in shared memory (rows streamed)."""
    p = make_problem(rng, 2, 6, 300, trans=trans, lengths=np.array([6, 3]))
    w = np.array([1.0, -2.0])
    ll, saved = GPU_ENGINE.forward(p)
    want = reference_gradients(p, w)
    np.testing.assert_allclose(ll, want[0], rtol=1e-9, atol=1e-9)
    for got, exp in zip(GPU_ENGINE.backward(p, saved, w), want[1:]):
        np.testing.assert_allclose(got, exp, rtol=1e-9, atol=1e-9)
    path, score = GPU_ENGINE.viterbi(p)
    rpath, rscore = ref.viterbi(*p.args)
    np.testing.assert_array_equal(path, rpath)
    np.testing.assert_allclose(score, rscore, rtol=1e-12, atol=0)


def test_more_than_1024_states_is_reported_too_large(rng):
    p = make_problem(rng, 1, 2, 1025, dtype=np.float32)
    assert GPU_ENGINE.status_of_forward(p) == STATUS_TOO_LARGE


def test_runs_on_the_given_stream(rng):
    if MEM.name != "cupy":
        pytest.skip("stream test uses CuPy streams")
    p = make_problem(rng, 6, 50, 8, lengths="ragged")
    want, _ = GPU_ENGINE.forward(p)
    stream = MEM.cp.cuda.Stream(non_blocking=True)
    eng = Engine(CUDA, stream=stream.ptr)
    got, _ = eng.forward(p)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saved_state_in_a_stream_ordered_buffer(rng, dtype):
    """hmm_buffer_alloc, as the MXNet op state uses it: the forward writes its saved state into
    a buffer allocated on a stream, the backward reads it, the buffer is freed on the stream."""
    if MEM.name != "cupy":
        pytest.skip("stream test uses CuPy streams")
    stream = MEM.cp.cuda.Stream(non_blocking=True)
    eng = Engine(CUDA, stream=stream.ptr)
    p = make_problem(rng, 3, 40, 5, lengths="ragged", dtype=dtype)
    w = np.array([1.0, -0.5, 2.0])
    pr, inp = eng.problem(p)
    n = ctypes.c_int64()
    _check(LIB.hmm_saved_size(ctypes.byref(pr), ctypes.byref(n)), "hmm_saved_size")
    buf = ctypes.c_void_p()
    _check(LIB.hmm_buffer_alloc(CUDA, stream.ptr, n.value * np.dtype(dtype).itemsize,
                                ctypes.byref(buf)), "hmm_buffer_alloc")
    assert buf.value
    ll, llp = eng._poison((p.shape[0],), dtype)
    ws = ctypes.c_size_t()
    _check(LIB.hmm_backward_workspace_size(ctypes.byref(pr), ctypes.byref(ws)), "workspace size")
    wp = eng._put(w.astype(dtype))[1]
    grads = [eng._poison(a.shape, dtype) for a in (p.log_init, p.log_trans, p.log_emit)]
    wsp = eng._workspace(ws.value)
    eng._ready()
    _check(LIB.hmm_forward(ctypes.byref(pr), ctypes.byref(inp), llp, buf), "hmm_forward")
    _check(LIB.hmm_backward(ctypes.byref(pr), ctypes.byref(inp), buf, wp,
                            *[g[1] for g in grads], wsp), "hmm_backward")
    _check(LIB.hmm_buffer_free(CUDA, stream.ptr, buf), "hmm_buffer_free")
    stream.synchronize()
    want = reference_gradients(p, w)
    t = tol(dtype)
    np.testing.assert_allclose(MEM.get(ll), want[0], **t)
    for (g, _), exp in zip(grads, want[1:]):
        np.testing.assert_allclose(MEM.get(g), exp, **t)
    eng._finish()
