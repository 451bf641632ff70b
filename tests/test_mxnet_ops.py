"""The MXNet operators: NDArray + autograd, Symbol, hybridize, export/import, errors.

Numerics are compared with the float64 reference (itself proven against
brute-force enumeration in test_reference.py).
"""
import os
import subprocess
import sys
import textwrap
import time

import mxnet as mx
import numpy as np
import pytest

import gluon_hmm as gh
from cases import SMALL_SIZES, _log_softmax, iter_cases, load_reference, make_problem, tol

ref = load_reference()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nd(p, with_lengths=True):
    arrays = [mx.nd.array(a, dtype=a.dtype) for a in p.args[:3]]
    lengths = mx.nd.array(p.lengths, dtype=p.lengths.dtype) if with_lengths else None
    return arrays, lengths


def run_with_grad(p, w=None, with_lengths=True):
    (li, lt, le), lengths = nd(p, with_lengths)
    for a in (li, lt, le):
        a.attach_grad()
    with mx.autograd.record():
        out = gh.log_likelihood(li, lt, le, lengths)
        loss = out if w is None else out * mx.nd.array(w, dtype=p.dtype)
    loss.backward()
    return out.asnumpy(), li.grad.asnumpy(), lt.grad.asnumpy(), le.grad.asnumpy()


CASES = list(iter_cases(sizes=SMALL_SIZES[3:] + ((3, 1, 4), (5, 7, 5)),
                        flags=("ragged", "neginf", "unnorm", "veryneg", "nanpad", "all"),
                        dtypes=(np.float64, np.float32)))


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.id)
def test_op_matches_reference(rng, spec):
    p = make_problem(rng, **spec.kwargs)
    before = p.copy()
    expected = ref.posterior(*p.astype(np.float64).args)
    ll, gi, gt, ge = run_with_grad(p)
    t = tol(p.dtype)
    np.testing.assert_allclose(ll, expected.loglik, **t)
    np.testing.assert_allclose(ge, expected.gamma, **t)
    np.testing.assert_allclose(gt, expected.trans_counts, **t)
    np.testing.assert_allclose(gi, expected.init_counts, **t)
    for a, b in zip(p.args, before.args):
        np.testing.assert_array_equal(a, b)


def test_default_lengths_and_dtypes(rng):
    p = make_problem(rng, 3, 6, 4)
    for dt in (np.float32, np.float64):
        q = p.astype(dt)
        ll = run_with_grad(q, with_lengths=False)[0]
        assert ll.dtype == dt
        np.testing.assert_allclose(ll, ref.log_likelihood(*p.args), **tol(dt))
    for ldt in (np.int32, np.int64):
        q = make_problem(rng, 3, 6, 4, lengths="ragged", lengths_dtype=ldt)
        np.testing.assert_allclose(run_with_grad(q)[0], ref.log_likelihood(*q.args), rtol=1e-12)


@pytest.mark.parametrize("w", [[1.0, 1.0, 1.0], [-2.0, -0.5, -1.0], [3.0, -1.5, 0.0]])
def test_upstream_gradients_of_either_sign(rng, w):
    """Unlike a backward that is only right for -logZ, any upstream weights work."""
    p = make_problem(rng, 3, 8, 4, trans="batch", lengths="ragged", unnormalised=True)
    w = np.array(w)
    _, gi, gt, ge = run_with_grad(p, w=w)
    post = ref.posterior(*p.args)
    np.testing.assert_allclose(ge, w[:, None, None] * post.gamma, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gt, w[:, None, None] * post.trans_counts, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gi, np.sum(w[:, None] * post.gamma[:, 0], axis=0) * 0 + gi)
    gamma0 = np.where(p.lengths[:, None] > 0, post.gamma[:, 0], 0)
    np.testing.assert_allclose(gi, np.sum(w[:, None] * gamma0, axis=0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("trans", ["shared", "batch", "time"])
def test_check_numeric_gradient_float64(rng, trans):
    p = make_problem(rng, 2, 4, 3, trans=trans, init="batch")
    sym = gh.log_likelihood(mx.sym.var("li"), mx.sym.var("lt"), mx.sym.var("le"))
    mx.test_utils.check_numeric_gradient(
        sym, {"li": p.log_init, "lt": p.log_trans, "le": p.log_emit},
        numeric_eps=1e-6, rtol=1e-5, atol=1e-7, dtype=np.float64)


def test_symbol_executor_matches_ndarray(rng):
    p = make_problem(rng, 4, 6, 3, lengths="ragged")
    s = gh.log_likelihood(mx.sym.var("li"), mx.sym.var("lt"), mx.sym.var("le"),
                          mx.sym.var("len", dtype="int32"))
    ex = s.bind(mx.cpu(), {"li": mx.nd.array(p.log_init, dtype="float64"),
                           "lt": mx.nd.array(p.log_trans, dtype="float64"),
                           "le": mx.nd.array(p.log_emit, dtype="float64"),
                           "len": mx.nd.array(p.lengths, dtype="int32")})
    np.testing.assert_allclose(ex.forward()[0].asnumpy(), ref.log_likelihood(*p.args), rtol=1e-12)
    assert s.infer_shape(li=(3,), lt=(3, 3), le=(4, 6, 3), len=(4,))[1] == [(4,)]


def test_symbol_executor_backward(rng):
    """The executor keeps one op state per node: its backward reads its own forward's variables."""
    p = make_problem(rng, 4, 6, 3, trans="batch", lengths="ragged")
    w = np.array([1.0, -2.0, 0.5, 3.0])
    s = gh.log_likelihood(mx.sym.var("li"), mx.sym.var("lt"), mx.sym.var("le"),
                          mx.sym.var("len", dtype="int32"))
    args = {"li": mx.nd.array(p.log_init, dtype="float64"),
            "lt": mx.nd.array(p.log_trans, dtype="float64"),
            "le": mx.nd.array(p.log_emit, dtype="float64"),
            "len": mx.nd.array(p.lengths, dtype="int32")}
    grads = {k: mx.nd.zeros_like(v) for k, v in args.items() if k != "len"}
    ex = s.bind(mx.cpu(), args, args_grad=grads, grad_req={"li": "write", "lt": "write",
                                                             "le": "write", "len": "null"})
    post = ref.posterior(*p.args)
    for _ in range(2):  # a second pass through the same executor (the same op state)
        np.testing.assert_allclose(ex.forward(is_train=True)[0].asnumpy(), post.loglik,
                                   rtol=1e-12)
        ex.backward(mx.nd.array(w, dtype="float64"))
        np.testing.assert_allclose(grads["le"].asnumpy(), w[:, None, None] * post.gamma,
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads["lt"].asnumpy(), w[:, None, None] * post.trans_counts,
                                   rtol=1e-9, atol=1e-12)


def test_log_likelihood_has_one_output_and_no_zero_filled_head_gradient(rng, tmp_path):
    """The forward variables live in the op state, not in a second output: autograd has no
    unused output whose head gradient it would zero-fill before every backward."""
    sym = gh.log_likelihood(mx.sym.var("li"), mx.sym.var("lt"), mx.sym.var("le"))
    assert len(sym.list_outputs()) == 1
    p = make_problem(rng, 2, 50, 4).astype(np.float32)
    (li, lt, le), _ = nd(p)
    for a in (li, lt, le):
        a.attach_grad()
    mx.profiler.set_config(profile_imperative=True, aggregate_stats=True,
                           filename=str(tmp_path / "profile.json"))
    mx.profiler.set_state("run")
    try:
        with mx.autograd.record():
            out = gh.log_likelihood(li, lt, le)
        out.backward()
        mx.nd.waitall()
    finally:
        mx.profiler.set_state("stop")
    stats = mx.profiler.dumps(reset=True)
    assert "_backward_hmm_log_likelihood" in stats
    assert "_zeros" not in stats, stats
    np.testing.assert_allclose(le.grad.asnumpy(), ref.posterior(*p.astype(np.float64).args).gamma,
                               **tol(np.float32))


def test_op_state_across_calls_shapes_and_repeated_backward(rng):
    """Each recorded call keeps its own forward variables: two calls before one backward,
    a backward run twice (retain_graph), and a static-alloc block whose input shapes change."""
    p1 = make_problem(rng, 3, 7, 4, lengths="ragged")
    p2 = make_problem(rng, 2, 11, 4)
    (a1, b1, e1), l1 = nd(p1)
    (a2, b2, e2), _ = nd(p2)
    for a in (e1, e2):
        a.attach_grad()
    with mx.autograd.record():
        loss = gh.log_likelihood(a1, b1, e1, l1).sum() + 2 * gh.log_likelihood(a2, b2, e2).sum()
    loss.backward(retain_graph=True)
    first = e1.grad.asnumpy(), e2.grad.asnumpy()
    loss.backward()
    np.testing.assert_allclose(first[0], ref.posterior(*p1.args).gamma, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(first[1], 2 * ref.posterior(*p2.args).gamma, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(e1.grad.asnumpy(), first[0])
    np.testing.assert_array_equal(e2.grad.asnumpy(), first[1])

    net = Scorer()
    net.hybridize(static_alloc=True)
    for B, T in ((3, 7), (5, 40), (2, 4), (5, 40)):
        p = make_problem(rng, B, T, 4)
        li, lt, le = [mx.nd.array(a, dtype=a.dtype) for a in p.args[:3]]
        le.attach_grad()
        with mx.autograd.record():
            out = net(li, lt, le)
        out.backward()
        expected = ref.posterior(_log_softmax(p.log_init), _log_softmax(p.log_trans), p.log_emit)
        np.testing.assert_allclose(out.asnumpy(), expected.loglik, rtol=1e-10)
        np.testing.assert_allclose(le.grad.asnumpy(), expected.gamma, rtol=1e-9, atol=1e-12)


class Scorer(mx.gluon.HybridBlock):
    """log_init/log_trans/log_emit in; lengths optional."""

    def hybrid_forward(self, F, li, lt, le, lengths=None):
        return gh.log_likelihood(F.log_softmax(li), F.log_softmax(lt), le, lengths)


@pytest.mark.parametrize("static", [False, True])
def test_hybridized_equals_imperative(rng, static):
    p = make_problem(rng, 5, 7, 4, lengths="ragged").astype(np.float32)
    (li, lt, le), lengths = nd(p)
    net = Scorer()
    expected = net(li, lt, le, lengths).asnumpy()
    grads = []
    for hybrid in (False, True):
        if hybrid:
            net.hybridize(static_alloc=static, static_shape=static)
        for a in (li, lt, le):
            a.attach_grad()
        with mx.autograd.record():
            out = net(li, lt, le, lengths)
        out.backward()
        np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-6)
        grads.append([a.grad.asnumpy() for a in (li, lt, le)])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_export_and_import_in_fresh_process(rng, tmp_path):
    p = make_problem(rng, 3, 5, 4, lengths="ragged").astype(np.float32)
    (li, lt, le), lengths = nd(p)
    net = Scorer()
    net.hybridize()
    expected = net(li, lt, le, lengths).asnumpy()
    prefix = str(tmp_path / "scorer")
    net.export(prefix)
    np.savez(str(tmp_path / "inputs.npz"), *p.args, expected=expected)
    script = textwrap.dedent("""
        import sys, numpy as np, mxnet as mx
        import gluon_hmm
        d = np.load(sys.argv[2])
        names = ["data0", "data1", "data2", "data3"]
        blk = mx.gluon.SymbolBlock.imports(sys.argv[1] + "-symbol.json", names)
        args = [mx.nd.array(d["arr_%d" % k], dtype=d["arr_%d" % k].dtype) for k in range(4)]
        out = blk(*args).asnumpy()
        np.testing.assert_allclose(out, d["expected"], rtol=1e-6)
        print("OK", out)
    """)
    res = subprocess.run([sys.executable, "-c", script, prefix, str(tmp_path / "inputs.npz")],
                         capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout


@pytest.mark.parametrize("kw, match", [
    (dict(le=(2, 5)), r"log_emit must have shape \(B, T, N\)"),
    (dict(lt=(3, 3)), r"log_trans must have shape \(N, N\), \(B, N, N\) or \(B, T, N, N\) "
                      r"with B=2, T=5, N=4, got \(3, 3\)"),
    (dict(li=(3,)), r"log_init must have shape \(N,\) or \(B, N\) with B=2, T=5, N=4, got \(3,\)"),
    (dict(lengths=np.array([1, 9], np.int32)), r"lengths must lie in \[0, T\] with T=5, got "
                                               r"lengths\[1\]=9"),
    (dict(lengths=np.array([1, 2, 3], np.int32)), r"lengths must have shape \(B,\) with B=2"),
    (dict(lengths=np.array([1.0, 2.0], np.float32)), r"lengths must have dtype int32 or int64, "
                                                     r"got float32"),
    (dict(dtype_init="float64"), r"log_init must have the dtype of log_emit \(float32\), "
                                 r"got float64"),
    (dict(dtype_all="float16"), r"log_emit must have dtype float32 or float64, got float16"),
])
def test_clear_errors_at_call_time(kw, match):
    shapes = dict(li=(4,), lt=(4, 4), le=(2, 5, 4))
    shapes.update({k: v for k, v in kw.items() if k in shapes})
    dt = kw.get("dtype_all", "float32")
    li = mx.nd.zeros(shapes["li"], dtype=kw.get("dtype_init", dt))
    lt = mx.nd.zeros(shapes["lt"], dtype=dt)
    le = mx.nd.zeros(shapes["le"], dtype=dt)
    lengths = kw.get("lengths")
    lengths = None if lengths is None else mx.nd.array(lengths, dtype=lengths.dtype)
    with pytest.raises(mx.base.MXNetError, match=match) as info:
        gh.log_likelihood(li, lt, le, lengths).wait_to_read()
    assert str(info.value).count("gluon_hmm.") == 1  # only its own message


def test_type_errors_name_the_argument():
    with pytest.raises(TypeError, match="log_emit must be an mx.nd.NDArray or an mx.sym.Symbol"):
        gh.log_likelihood(np.zeros(2), np.zeros((2, 2)), np.zeros((1, 3, 2)))
    with pytest.raises(TypeError, match="log_trans must be an mxnet.ndarray.ndarray.NDArray"):
        gh.log_likelihood(mx.nd.zeros(2), np.zeros((2, 2)), mx.nd.zeros((1, 3, 2)))


def test_error_messages_do_not_accumulate():
    """MXNet 1.9.1's lib_api never empties its error list; the library clears it.

    After 2000 failing calls a valid call is as fast as before, and an error's
    text holds only its own message.  The failing calls go to the operator itself:
    ``gh.log_likelihood`` would stop them in Python before MXNet is reached.
    """
    good = [mx.nd.zeros((4,)), mx.nd.zeros((4, 4)), mx.nd.zeros((8, 50, 4))]
    bad = [mx.nd.zeros((4,)), mx.nd.zeros((3, 3)), mx.nd.zeros((8, 50, 4))]

    def valid_call_seconds(n=200):
        gh.log_likelihood(*good).wait_to_read()
        t0 = time.perf_counter()
        for _ in range(n):
            gh.log_likelihood(*good).wait_to_read()
        return (time.perf_counter() - t0) / n

    def failing_op_call():
        mx.nd.hmm_log_likelihood(*bad, has_lengths=0).wait_to_read()

    before = valid_call_seconds()
    for _ in range(2000):
        with pytest.raises(mx.base.MXNetError):
            failing_op_call()
    after = valid_call_seconds()
    with pytest.raises(mx.base.MXNetError) as info:
        failing_op_call()
    assert str(info.value).count("log_trans must have shape") == 1
    assert after < 3 * before + 1e-4, (before, after)


def test_library_loads_once_and_reports_version():
    from gluon_hmm import _library
    h1, h2 = _library.load(), _library.load()
    assert h1 is h2
    assert h1.hmm_abi_version() == 1


def test_gpu_request_without_cuda_says_so():
    """A CPU-only build answers a CUDA problem with a status that says how to get CUDA."""
    import ctypes
    lib = gh._library.load()
    if lib.hmm_has_cuda():
        pytest.skip("this build has CUDA: the GPU path is tested by tests/gpu on a GPU machine")

    class Problem(ctypes.Structure):
        _fields_ = [("batch", ctypes.c_int64), ("time", ctypes.c_int64), ("states", ctypes.c_int64),
                    ("dtype", ctypes.c_int), ("init_mode", ctypes.c_int),
                    ("trans_mode", ctypes.c_int), ("lengths_type", ctypes.c_int),
                    ("device", ctypes.c_int), ("num_threads", ctypes.c_int),
                    ("stream", ctypes.c_void_p)]

    class Inputs(ctypes.Structure):
        _fields_ = [("log_init", ctypes.c_void_p), ("log_trans", ctypes.c_void_p),
                    ("log_emit", ctypes.c_void_p), ("lengths", ctypes.c_void_p)]

    li, lt, le = np.zeros(2, np.float32), np.zeros((2, 2), np.float32), np.zeros((1, 3, 2), np.float32)
    out, saved = np.zeros(1, np.float32), np.zeros(64, np.float32)
    p = Problem(1, 3, 2, 0, 0, 0, 0, 1, 0, None)
    inp = Inputs(li.ctypes.data, lt.ctypes.data, le.ctypes.data, None)
    status = lib.hmm_forward(ctypes.byref(p), ctypes.byref(inp), out.ctypes.data_as(ctypes.c_void_p),
                             saved.ctypes.data_as(ctypes.c_void_p))
    assert status == 4
    lib.hmm_status_string.restype = ctypes.c_char_p
    assert b"built without CUDA" in lib.hmm_status_string(status)
    assert b"GLUON_HMM_CUDA=1" in lib.hmm_status_string(status)


def test_buffer_alloc_keeps_memory_between_calls():
    """hmm_buffer_alloc / hmm_buffer_free: what the log-likelihood op state holds its saved
    state in.  Host memory 64-byte aligned, clear statuses for the edge cases."""
    import ctypes
    lib = gh._library.load()
    alloc, free = lib.hmm_buffer_alloc, lib.hmm_buffer_free
    alloc.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                      ctypes.POINTER(ctypes.c_void_p)]
    free.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    ptr = ctypes.c_void_p()
    for nbytes in (1, 1000, 3 << 20):
        assert alloc(0, None, nbytes, ctypes.byref(ptr)) == 0
        assert ptr.value and ptr.value % 64 == 0
        ctypes.memset(ptr, 7, nbytes)
        assert free(0, None, ptr) == 0
    assert alloc(0, None, 0, ctypes.byref(ptr)) == 0 and not ptr.value
    assert free(0, None, None) == 0
    assert alloc(7, None, 8, ctypes.byref(ptr)) == 1      # no such device
    assert alloc(0, None, 1 << 62, ctypes.byref(ptr)) == 3 and not ptr.value  # no such memory
    assert alloc(0, None, 8, None) == 2
    if not lib.hmm_has_cuda():
        assert alloc(1, None, 8, ctypes.byref(ptr)) == 4  # built without CUDA


def _buffer_api():
    import ctypes
    lib = gh._library.load()
    alloc, free = lib.hmm_buffer_alloc, lib.hmm_buffer_free
    alloc.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                      ctypes.POINTER(ctypes.c_void_p)]
    free.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return alloc, free


def test_buffer_free_keeps_host_blocks_for_reuse():
    """A freed host buffer is kept, resident, for the next request it fits (at least half
    its size): the MXNet op state allocates one per call, and fresh pages fault on first
    touch.  Freeing twice, or freeing memory hmm_buffer_alloc did not give, is refused."""
    import ctypes
    alloc, free = _buffer_api()
    nbytes = (5 << 20) + 4093          # a size no other test allocates
    a, b, c = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    assert alloc(0, None, nbytes, ctypes.byref(a)) == 0
    ctypes.memset(a, 1, nbytes)
    assert free(0, None, a) == 0
    assert free(0, None, a) == 1       # second free of a cached block: refused
    assert alloc(0, None, nbytes - 1000, ctypes.byref(b)) == 0
    assert b.value == a.value          # the same block again
    ctypes.memset(b, 2, nbytes - 1000)
    assert free(0, None, b) == 0
    assert alloc(0, None, 1 << 20, ctypes.byref(c)) == 0
    assert c.value != a.value          # a small request does not take the 5 MiB block
    assert free(0, None, c) == 0
    host = np.zeros(1024, np.uint8)    # not from hmm_buffer_alloc: no tag in front of it
    assert free(0, None, ctypes.c_void_p(host.ctypes.data + 512)) == 1
    assert not host.any()


@pytest.mark.parametrize("cache_mib, kept", [(None, True), ("0", False), ("64", False)])
def test_buffer_cache_limit(cache_mib, kept):
    """GLUON_HMM_HOST_CACHE_MIB bounds what freed buffers keep resident (default 256 MiB;
    0 keeps none): a freed 100 MiB buffer stays in the resident set only when it fits."""
    from test_reliability import run_python
    env = {} if cache_mib is None else {"GLUON_HMM_HOST_CACHE_MIB": cache_mib}
    r = run_python("""
        import ctypes, gluon_hmm as gh
        lib = gh._library.load()
        lib.hmm_buffer_alloc.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.POINTER(ctypes.c_void_p)]
        lib.hmm_buffer_free.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        def rss():
            return [int(l.split()[1]) for l in open('/proc/self/status')
                    if l.startswith('VmRSS')][0] >> 10
        n = 100 << 20
        p = ctypes.c_void_p()
        before = rss()
        assert lib.hmm_buffer_alloc(0, None, n, ctypes.byref(p)) == 0
        ctypes.memset(p, 3, n)
        touched = rss()
        assert lib.hmm_buffer_free(0, None, p) == 0
        print("RSS", before, touched, rss())
    """, env=env)
    assert r.returncode == 0, r.stderr
    before, touched, after = map(int, r.stdout.split("RSS")[1].split())
    assert touched - before >= 95
    if kept:
        assert after - before >= 95
    else:
        assert after - before < 20
