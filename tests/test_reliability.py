"""Reliability: error soak, threads, input immutability, huge inputs, memory growth.

* A small error soak (tests/soak.py, 3000 mixed valid and invalid calls through
  MXNet and gluon_hmm.numpy): every outcome right, latency and RSS flat.
* Threads: functional ops, a hybridized block and gluon_hmm.numpy called from
  several Python threads give the bits of serial calls; gluon_hmm.numpy
  releases the GIL while it computes.
* No public function or block modifies its inputs.
* A sequence of 10**6 steps runs forward and backward in O(B*T*N) memory;
  sizes beyond the supported indexing are rejected before any data is read.
* Repeated calls do not grow the C heap (glibc mallinfo2).

The figures of the full soak (10**5 calls) are in tests/FUZZ_RESULTS.md.
"""
import os
import subprocess
import sys
import textwrap
import threading
import time

import mxnet as mx
import numpy as np
import pytest

import gluon_hmm as gh
import gluon_hmm.numpy as ghn
from cases import make_problem, tol
from conftest import SEED

import soak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, timeout=300, limit_address_space=None, env=None):
    """Runs ``code`` in a fresh interpreter (a crash cannot take pytest down); returns it done."""
    prelude = ""
    if limit_address_space:
        # Bounds what the child may map: a regression that tries to materialise a huge
        # array fails with MemoryError instead of eating the machine's memory.
        prelude = textwrap.dedent("""
            import resource
            import gluon_hmm
            _vm = [int(l.split()[1]) for l in open('/proc/self/status')
                   if l.startswith('VmSize')][0] * 1024
            resource.setrlimit(resource.RLIMIT_AS, (_vm + %d, _vm + %d))
        """ % (limit_address_space, limit_address_space))
    env = dict(os.environ, **(env or {}),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, env=env)


# ----------------------------------------------------------------------------------------
# error soak (small version of tests/soak.py)
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def soak_windows():
    return soak.run(calls=3000, window=1000, warmup=400, seed=SEED % 1000)


def test_soak_every_outcome_right_and_latency_flat(soak_windows):
    """3000 mixed calls (CallMix checks every result and every error message)."""
    first, last = soak_windows[0], soak_windows[-1]
    assert last["p50_us"] < 3.0 * first["p50_us"] + 50, soak_windows
    assert last["p90_us"] < 4.0 * first["p90_us"] + 200, soak_windows


def test_soak_rss_bounded(soak_windows):
    """No growth beyond allocator noise (10**5 calls: 0.1 MiB; 21.7 MiB before failing
    MXNet calls were checked in Python); per-call C-heap growth: see below."""
    growth = soak_windows[-1]["rss_mb"] - soak_windows[0]["rss_before_mb"]
    assert growth < 8.0, soak_windows


# ----------------------------------------------------------------------------------------
# C heap growth per call (glibc mallinfo2: bytes in use)
# ----------------------------------------------------------------------------------------

_HEAP_PROBE = """
import ctypes, sys
import numpy as np, mxnet as mx
import gluon_hmm as gh, gluon_hmm.numpy as ghn

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]
try:
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
except (OSError, AttributeError):
    print("NO_MALLINFO2")
    sys.exit(0)
mallinfo2.restype = MallInfo2

def in_use():
    m = mallinfo2()
    return m.uordblks + m.hblkhd

def per_call(fn, n, warmup=200):
    for _ in range(warmup):
        fn()
    mx.nd.waitall()
    before = in_use()
    for _ in range(n):
        fn()
    mx.nd.waitall()
    return (in_use() - before) / n

# B=4, T=20, N=4 (the soak's size): every op's scratch overflows the arena's first block
rng = np.random.default_rng(%(seed)d)
N = 4
li, lt = np.log(np.full(N, 1.0 / N)), np.log(rng.dirichlet(np.ones(N), size=N))
le, L = rng.normal(size=(4, 20, N)), np.full(4, 20, np.int32)
nds = [mx.nd.array(a, dtype=a.dtype) for a in (li, lt, le, L)]

def ll_grad():
    xs = [a.copy() for a in nds[:3]]
    for a in xs:
        a.attach_grad()
    with mx.autograd.record():
        out = gh.log_likelihood(*xs, nds[3])
    out.backward()
    return xs[2].grad.asnumpy()

def fails(f):
    def call():
        try:
            f()
        except mx.base.MXNetError:
            return
        raise AssertionError("no error")
    return call

bad_len = mx.nd.array([99, 0, 0, 0], dtype="int32")
calls = [
    ("numpy.log_likelihood", lambda: ghn.log_likelihood(li, lt, le, L), 2000),
    ("numpy.value_and_grad", lambda: ghn.value_and_grad(li, lt, le, L), 2000),
    ("numpy.posterior_stats", lambda: ghn.posterior_stats(li, lt, le, L), 2000),
    ("numpy.viterbi", lambda: ghn.viterbi(li, lt, le, L), 2000),
    ("numpy.sample", lambda: ghn.sample(li, lt, le, L, num_samples=2, seed=1), 2000),
    ("mxnet.log_likelihood+backward", ll_grad, 1000),
    ("mxnet.posterior_stats", lambda: gh.posterior_stats(*nds).loglik.asnumpy(), 1000),
    ("mxnet.viterbi", lambda: gh.viterbi(*nds).score.asnumpy(), 1000),
    ("mxnet.sample", lambda: gh.sample(*nds, num_samples=2).asnumpy(), 1000),
    ("failing.shape_error",
     fails(lambda: gh.log_likelihood(nds[0], mx.nd.zeros((3, 3)), nds[2], nds[3]).asnumpy()), 1000),
    ("failing.dtype_error",
     fails(lambda: gh.viterbi(nds[0], nds[1], nds[2].astype("float16"),
                              nds[3])[1].asnumpy()), 1000),
    ("failing.lengths_error",
     fails(lambda: gh.log_likelihood(nds[0], nds[1], nds[2], bad_len).asnumpy()), 1000),
]
for name, fn, n in calls:
    print("HEAP", name, per_call(fn, n), flush=True)
# the parallel path (ArenaScope on every worker, the caller included) as a contrast
big = [rng.normal(size=(8,)), rng.normal(size=(8, 8)), rng.normal(size=(64, 200, 8))]
print("HEAP parallel.value_and_grad",
      per_call(lambda: ghn.value_and_grad(*big, num_threads=2), 100, warmup=20), flush=True)
"""

LEAK_BOUND = 64    # bytes per call: allocator noise stays far below


@pytest.fixture(scope="module")
def heap_growth():
    """C heap bytes in use gained per call, for each kind of call, from one fresh process."""
    r = run_python(_HEAP_PROBE % dict(seed=SEED))
    if "NO_MALLINFO2" in r.stdout:
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    growth = {}
    for line in r.stdout.splitlines():
        if line.startswith("HEAP "):
            _, name, value = line.split()
            growth[name] = float(value)
    assert r.returncode == 0 and len(growth) == 13, (r.stdout, r.stderr[-1500:])
    return growth


ARENA_LEAK = ("ENGINE BUG 1: src/hmm/cpu.cc parallel_for runs small problems (< 2e5 flops, or "
              "num_threads=1) inline without an ArenaScope on worker_arena(); body() only calls "
              "reset(), which keeps spill blocks, so every call leaks its scratch (0.6-10 KB per "
              "call here, 228 KB per call at B=64, T=200, N=8 with num_threads=1)")


# fixed (was ENGINE BUG 1: ARENA_LEAK)
@pytest.mark.parametrize("name", ["numpy.log_likelihood", "numpy.value_and_grad",
                                  "numpy.posterior_stats", "numpy.viterbi", "numpy.sample",
                                  "mxnet.log_likelihood+backward", "mxnet.posterior_stats",
                                  "mxnet.viterbi", "mxnet.sample"])
def test_repeated_calls_do_not_grow_the_heap(heap_growth, name):
    assert heap_growth[name] < LEAK_BOUND


def test_parallel_path_does_not_grow_the_heap(heap_growth):
    """Large problems on 2 threads go through ArenaScope: no growth (contrast with the above)."""
    assert heap_growth["parallel.value_and_grad"] < LEAK_BOUND


# fixed (was BUG 8: MXNet 1.9.1's lib_api path leaks ~480 B per shape/type error in
# MXImperativeInvokeImpl and the outputs' storage per forward-time error; gluon_hmm.ops now
# validates NDArray inputs before invoking the operator, so failing calls never reach it)
@pytest.mark.parametrize("name", ["failing.shape_error", "failing.dtype_error",
                                  "failing.lengths_error"])
def test_failing_mxnet_calls_do_not_grow_the_heap(heap_growth, name):
    assert heap_growth[name] < LEAK_BOUND


# ----------------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------------

class _LL(mx.gluon.HybridBlock):
    def hybrid_forward(self, F, log_init, log_trans, log_emit, lengths):
        return gh.log_likelihood(log_init, log_trans, log_emit, lengths)


def _mixed_problems(n=8):
    rng = np.random.default_rng(SEED)
    out = []
    for k in range(n):
        B, T, N = int(rng.integers(1, 7)), int(rng.integers(1, 60)), int(rng.integers(1, 7))
        trans = ("shared", "batch", "time")[k % 3]
        dtype = (np.float32, np.float64)[k % 2]
        out.append(make_problem(rng, B, T, N, trans=trans, dtype=dtype, lengths="ragged"))
    return out


def _run_threads(work, n_threads=4):
    errors = []

    def target(tid):
        try:
            work(tid)
        except BaseException as e:                                        # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=target, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread hangs"
    if errors:
        raise errors[0]


def test_mxnet_ops_and_block_from_threads_match_serial():
    """4 threads x 50 calls of ops (autograd included) and a hybridized block, mixed sizes.

    Each autograd call records on its own copies of the inputs: MXNet 1.9.1's autograd is
    not safe when threads record concurrently on a shared input NDArray (built-in ops too:
    'The any container is empty requested=...AGInfo', sometimes a segfault).
    """
    problems = _mixed_problems()
    nds = [[mx.nd.array(a, dtype=a.dtype) for a in p.args] for p in problems]
    block = _LL()
    block.hybridize()

    def ll_grad(args):
        xs = [a.copy() for a in args]
        for a in xs[:3]:
            a.attach_grad()
        with mx.autograd.record():
            out = gh.log_likelihood(*xs)
        out.backward()
        return [out.asnumpy()] + [a.grad.asnumpy() for a in xs[:3]]

    kinds = [
        ll_grad,
        lambda a: [o.asnumpy() for o in gh.posterior_stats(*a)],
        lambda a: [o.asnumpy() for o in gh.viterbi(*a)],
        lambda a: [block(*a).asnumpy()],
    ]
    serial = [[k(a) for a in nds] for k in kinds]
    mismatches = []

    def work(tid):
        for i in range(50):
            k, j = (tid + i) % len(kinds), (3 * tid + i) % len(nds)
            got = kinds[k](nds[j])
            if not all(np.array_equal(x, y, equal_nan=True) for x, y in zip(got, serial[k][j])):
                mismatches.append((tid, i, k, j))

    _run_threads(work)
    assert not mismatches


def test_numpy_from_threads_match_serial():
    """4 threads x 50 calls of every gluon_hmm.numpy function on mixed sizes, bitwise.

    The problems are small (serial engine path) but for one large one whose batch is split
    over the thread pool; its sums over the batch (gradients and counts of shared
    parameters) are summed per fixed chunk of work, so they too are bitwise equal (they
    were not before: finding 12 of tests/FUZZ_RESULTS.md).
    """
    problems = _mixed_problems()
    problems.append(make_problem(np.random.default_rng(SEED), 48, 150, 8, lengths="ragged"))
    kinds = [
        lambda p: [ghn.value_and_grad(*p.args)[0]] + list(ghn.value_and_grad(*p.args)[1]),
        lambda p: list(ghn.posterior_stats(*p.args)),
        lambda p: list(ghn.viterbi(*p.args)),
        lambda p: [ghn.sample(*p.args, num_samples=3, seed=11)],
    ]
    serial = [[k(p) for p in problems] for k in kinds]
    failures = []

    def work(tid):
        for i in range(50):
            k, j = (tid + i) % len(kinds), (5 * tid + i) % len(problems)
            got = kinds[k](problems[j])
            for x, y in zip(got, serial[k][j]):
                if not np.array_equal(x, y, equal_nan=True):
                    failures.append((tid, i, k, j, np.max(np.abs(x - y))))

    _run_threads(work)
    assert not failures


@pytest.mark.parametrize("trans", ["shared", "batch", "time"])
def test_results_do_not_depend_on_the_thread_count(trans):
    """Bitwise equal on 1, 2, 3 and 8 threads, sums over the batch of shared parameters
    included (a batch of 64 is cut into chunks by the problem, not by the threads)."""
    p = make_problem(np.random.default_rng(SEED + 1), 64, 120, 8, lengths="ragged",
                     trans=trans)
    runs = []
    for threads in (1, 2, 3, 8):
        loglik, grads = ghn.value_and_grad(*p.args, num_threads=threads)
        stats = ghn.posterior_stats(*p.args, num_threads=threads)
        runs.append([loglik] + list(grads) + list(stats))
    for other in runs[1:]:
        for x, y in zip(runs[0], other):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("spin_us", ["0", "200"])
def test_pool_with_sleeping_and_late_workers(spin_us):
    """The pool's workers sleep between calls (GLUON_HMM_SPIN_US=0: at once) or spin
    for a while; pauses between calls let them fall asleep, so the caller often closes
    a job before a worker wakes.  Every result stays bitwise equal to one thread's,
    from one Python thread and from three at once, and no call hangs (timeout)."""
    r = run_python("""
        import threading, time
        import numpy as np, gluon_hmm.numpy as ghn
        rng = np.random.default_rng(5)
        probs = []
        for B, N, T in [(8, 50, 20), (8, 50, 100), (3, 50, 40), (16, 16, 200), (5, 33, 60)]:
            li = np.log(rng.dirichlet(np.ones(N))).astype(np.float32)
            lt = np.log(rng.dirichlet(np.ones(N), size=N)).astype(np.float32)
            le = rng.normal(size=(B, T, N)).astype(np.float32)
            probs.append((li, lt, le))
        flat = lambda r: [r[0]] + list(r[1])
        ref = [flat(ghn.value_and_grad(*p, num_threads=1)) for p in probs]
        bad = []
        def work(seed, n):
            g = np.random.default_rng(seed)
            for i in range(n):
                j = int(g.integers(len(probs)))
                got = flat(ghn.value_and_grad(*probs[j], num_threads=int(g.integers(2, 4))))
                if not all(np.array_equal(a, b) for a, b in zip(got, ref[j])):
                    bad.append((seed, i, j))
                if g.random() < 0.05:
                    time.sleep(0.0003 + 0.002 * g.random())
        work(0, 1500)
        ts = [threading.Thread(target=work, args=(k, 500)) for k in (1, 2, 3)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print("BAD", len(bad), bad[:3])
    """, timeout=240, env={"GLUON_HMM_SPIN_US": spin_us})
    assert r.returncode == 0, r.stderr
    assert "BAD 0 " in r.stdout, r.stdout


def _long_problem(T):
    rng = np.random.default_rng(SEED)
    N = 16
    return (np.log(np.full(N, 1.0 / N)), np.log(rng.dirichlet(np.ones(N), size=N)),
            rng.normal(size=(1, T, N)))


def test_numpy_calls_in_two_threads_run_at_the_same_time():
    """The GIL is released while the kernels run: calls from two threads overlap in time.

    If the GIL were held, a thread could not even take its start time while the other
    thread's call runs, so no two calls' intervals could overlap (on any number of cores).
    """
    args = _long_problem(20000)
    call = lambda: ghn.value_and_grad(*args, num_threads=1)      # noqa: E731
    call()
    spans = [[], []]

    def work(tid):
        for _ in range(4):
            t0 = time.perf_counter()
            call()
            spans[tid].append((t0, time.perf_counter()))

    _run_threads(work, n_threads=2)
    overlap = max(min(a1, b1) - max(a0, b0) for a0, a1 in spans[0] for b0, b1 in spans[1])
    shortest = min(b - a for a, b in spans[0] + spans[1])
    assert overlap > 0.5 * shortest, (overlap, shortest)


def test_numpy_releases_the_gil_for_python_code():
    """While one thread computes, a pure-Python loop in another keeps a good part of its speed."""
    args = _long_problem(40000)
    call = lambda: ghn.value_and_grad(*args, num_threads=1)      # noqa: E731
    call()

    def spin(seconds):
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
        return n

    free_rate = spin(0.2) / 0.2
    done = threading.Event()
    worker = threading.Thread(target=lambda: (call(), call(), call(), done.set()))
    t0 = time.perf_counter()
    worker.start()
    n = 0
    while not done.is_set():
        n += 1
    busy = time.perf_counter() - t0
    worker.join()
    # With the GIL held for the whole computation the loop would get the GIL only between
    # calls: demand a fifth of its free speed (it shares cores with the computing thread).
    assert n / busy > 0.2 * free_rate, (n / busy, free_rate)


# ----------------------------------------------------------------------------------------
# inputs are never modified
# ----------------------------------------------------------------------------------------

def _dirty_problem(trans="time", init="batch", dtype=np.float64):
    p = make_problem(np.random.default_rng(SEED), 4, 7, 3, init=init, trans=trans, dtype=dtype,
                     lengths="ragged", neg_inf=True, nan_padding=True, unnormalised=True)
    return p.args


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("trans", ["shared", "batch", "time"])
def test_numpy_api_does_not_modify_inputs(trans):
    args = _dirty_problem(trans)
    before = [a.copy() for a in args]
    w = np.linspace(-1.0, 2.0, 4)
    ghn.log_likelihood(*args)
    ghn.value_and_grad(*args, grad_loglik=w)
    ghn.posterior(*args)
    ghn.posterior_stats(*args)
    ghn.viterbi(*args)
    ghn.sample(*args, num_samples=3, seed=1)
    for a, b in zip(args, before):
        assert _same(a, b)
    assert np.array_equal(w, np.linspace(-1.0, 2.0, 4))


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("trans", ["shared", "time"])
def test_mxnet_api_does_not_modify_inputs(trans, hybridize):
    args = _dirty_problem(trans, dtype=np.float32)
    nds = [mx.nd.array(a, dtype=a.dtype) for a in args]
    before = [a.asnumpy().copy() for a in nds]

    class All(mx.gluon.HybridBlock):
        def hybrid_forward(self, F, li, lt, le, L):
            s = gh.posterior_stats(li, lt, le, L)
            v = gh.viterbi(li, lt, le, L)
            return (gh.log_likelihood(li, lt, le, L), s.gamma, v.path,
                    gh.sample(li, lt, le, L, num_samples=2))

    blk = All()
    if hybridize:
        blk.hybridize()
    for a in nds[:3]:
        a.attach_grad()
    with mx.autograd.record():
        outs = blk(*nds)
    outs[0].backward(mx.nd.array([1.0, -2.0, 0.5, 3.0]))
    mx.nd.waitall()
    for a, b in zip(nds, before):
        assert _same(a.asnumpy(), b)


def _blocks():
    try:
        from gluon_hmm import blocks
    except ImportError as e:                      # written concurrently by another engineer
        pytest.skip("gluon_hmm.blocks is not importable: %s" % e)
    return blocks


def test_blocks_do_not_modify_inputs():
    blocks = _blocks()
    rng = np.random.default_rng(SEED)
    B, T, N, V, D = 3, 6, 3, 5, 2
    lengths = mx.nd.array([6, 2, 0], dtype="int32")
    checks = []

    def watch(*arrays):
        for a in arrays:
            checks.append((a, (a.asnumpy() if isinstance(a, mx.nd.NDArray) else
                               np.array(a, copy=True))))

    def grad_step(block, *inputs):
        with mx.autograd.record():
            out = block(*inputs)
        out.backward()

    hmm = blocks.HMM(N)
    hmm.initialize()
    log_emit = mx.nd.array(rng.normal(size=(B, T, N)))
    log_emit[2] = np.nan                           # padding of the L = 0 sequence
    watch(log_emit, lengths)
    log_emit.attach_grad()
    grad_step(hmm, log_emit, lengths)
    hmm.posterior(log_emit, lengths), hmm.viterbi(log_emit, lengths)
    hmm.sample(log_emit, lengths, num_samples=2).wait_to_read()

    cat = blocks.CategoricalHMM(N, V)
    cat.initialize()
    symbols = mx.nd.array(rng.integers(0, V, size=(B, T)), dtype="int32")
    symbols_np = rng.integers(0, V, size=(B, T))
    symbols_list = [list(rng.integers(0, V, size=k)) for k in (5, 3, 7)]
    lens_np = np.array([6, 2, 4])
    watch(symbols, symbols_np, lens_np)
    grad_step(cat, symbols, lengths)
    cat.viterbi(symbols, lengths)
    cat.fit_em(symbols_np, lens_np, max_iter=3)
    before_list = [list(s) for s in symbols_list]
    cat.fit_em(symbols_list, max_iter=3)
    assert symbols_list == before_list

    gauss = blocks.GaussianHMM(N, D)
    gauss.initialize()
    x = mx.nd.array(rng.normal(size=(B, T, D)))
    x_np = rng.normal(size=(B, T, D))
    x_np[1, 2:] = np.nan                            # padding
    watch(x, x_np)
    grad_step(gauss, x, lengths)
    gauss.posterior(x, lengths)
    gauss.fit_em(x_np, np.array([6, 2, 5]), max_iter=3)

    crf = blocks.LinearChainCRF(N)
    crf.initialize()
    scores = mx.nd.array(rng.normal(size=(B, T, N)))
    tags = mx.nd.array(rng.integers(0, N, size=(B, T)), dtype="int32")
    watch(scores, tags)
    scores.attach_grad()
    grad_step(crf, scores, tags, lengths)
    crf.decode(scores, lengths)
    crf.log_partition(scores, lengths).wait_to_read()

    for block, inputs in ((hmm, (log_emit, lengths)), (cat, (symbols, lengths)),
                          (gauss, (x, lengths)), (crf, (scores, tags, lengths))):
        block.hybridize()
        grad_step(block, *inputs)

    mx.nd.waitall()
    for a, b in checks:
        now = a.asnumpy() if isinstance(a, mx.nd.NDArray) else np.asarray(a)
        assert _same(now, b), type(a)


# ----------------------------------------------------------------------------------------
# huge inputs
# ----------------------------------------------------------------------------------------

def test_million_steps_forward_and_backward_in_linear_memory():
    """B=1, N=8, T=10**6, float32: peak RSS grows by a small multiple of the input (31 MiB).

    An implementation storing per-step N x N quantities would need 256 MiB more.  The peak
    is the child's VmHWM, reset just before the call: getrusage's ru_maxrss is no measure
    here, since Linux carries it across exec, so the child starts with its parent's
    (pytest's, hundreds of MiB late in the suite) resident size.
    """
    r = run_python("""
        import numpy as np
        import gluon_hmm.numpy as ghn
        def status(key):
            for l in open('/proc/self/status'):
                if l.startswith(key + ':'):
                    return int(l.split()[1]) * 1024
        import time
        B, T, N = 1, 10 ** 6, 8
        rng = np.random.default_rng(%d)
        li = np.log(np.full(N, 1.0 / N, np.float32))
        lt = np.log(rng.dirichlet(np.ones(N), size=N)).astype(np.float32)
        ghn.value_and_grad(li, lt, np.zeros((4, 100, N), np.float32))   # threads, arenas
        time.sleep(0.5)                   # let MXNet's lazy start-up (imported) settle
        le = rng.standard_normal((B, T, N), dtype=np.float32)
        le -= 2
        try:                              # VmHWM := VmRSS (else: the peak since exec)
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
        except OSError:
            pass
        base = status('VmRSS')
        ll, g = ghn.value_and_grad(li, lt, le)
        peak = status('VmHWM')
        ll64 = ghn.log_likelihood(li.astype(np.float64), lt.astype(np.float64),
                                  le.astype(np.float64))
        print("RESULT", le.nbytes, peak - base, float(ll[0]), float(ll64[0]),
              float(np.abs(g.log_emit.sum(-1) - 1).max()),
              float(g.log_trans.sum()), float(g.log_init.sum()))
    """ % SEED)
    assert r.returncode == 0, r.stderr[-2000:]
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")][0].split()[1:]
    nbytes, grown, ll, ll64, gamma_err, trans_total, init_total = map(float, line)
    assert grown < 4 * nbytes, "peak RSS grew by %.0f MiB for a %.0f MiB input" % (
        grown / 2 ** 20, nbytes / 2 ** 20)
    assert abs(ll - ll64) < 1e-5 * abs(ll64)
    assert gamma_err < 1e-3
    assert abs(trans_total - (10 ** 6 - 1)) < 1e-3 * 10 ** 6 and abs(init_total - 1) < 1e-3


_FAKE = """
    import numpy as np
    import gluon_hmm.numpy as ghn
    from numpy.lib.stride_tricks import as_strided
    def fake(shape, dtype=np.float32):
        # C-contiguous strides over a one-element buffer: reading it would crash
        dt = np.dtype(dtype)
        strides, s = [], dt.itemsize
        for d in reversed(shape):
            strides.append(s)
            s *= d
        a = as_strided(np.zeros(1, dt), shape=shape, strides=tuple(reversed(strides)))
        assert a.flags.c_contiguous
        return a
"""


TOO_LARGE = {
    "T > 2**31": "(fake((1,)), fake((1, 1)), fake((1, 2 ** 31 + 1, 1)))",
    "N > 2**20": "(fake((2 ** 20 + 1,)), fake((2 ** 20 + 1, 2 ** 20 + 1)), "
                 "fake((1, 1, 2 ** 20 + 1)))",
    "B*T*N*N overflows int64": "(fake((2 ** 12,)), fake((2 ** 12, 2 ** 12)), "
                               "fake((2 ** 20, 2 ** 20, 2 ** 12)))",
    "B*T*N*N > 2**46, time-varying": "(fake((2 ** 10,)), "
                                     "fake((2 ** 7, 2 ** 20, 2 ** 10, 2 ** 10)), "
                                     "fake((2 ** 7, 2 ** 20, 2 ** 10)))",
    "B*T beyond 2**46": "(fake((1,)), fake((1, 1)), fake((2 ** 23, 2 ** 23, 1)))",
}
#: the limit each case's message must name (FUZZ_RESULTS finding 11: it once named another)
TOO_LARGE_LIMIT = {
    "T > 2**31": "T must stay below 2**31",
    "N > 2**20": "N must be at most 2**20",
    "B*T*N*N overflows int64": "B*T*N*N must stay below 2**46",
    "B*T*N*N > 2**46, time-varying": "B*T*N*N must stay below 2**46",
    "B*T beyond 2**46": "B*T*(N+8) must stay below 2**46",
}


@pytest.fixture(scope="module")
def too_large_outcomes():
    """Every case and function in one child process (under an address-space limit)."""
    code = textwrap.dedent(_FAKE) + textwrap.dedent("""
        cases = {%s}
        for name, arrays in cases.items():
            for fn in ("log_likelihood", "value_and_grad", "posterior_stats", "viterbi", "sample"):
                try:
                    getattr(ghn, fn)(*arrays)
                    print("OUTCOME|%%s|%%s|accepted" %% (name, fn), flush=True)
                except ValueError as e:
                    print("OUTCOME|%%s|%%s|%%s" %% (name, fn, str(e)), flush=True)
    """ % ", ".join("%r: %s" % kv for kv in TOO_LARGE.items()))
    r = run_python(code, limit_address_space=2 ** 32)
    outcomes = {}
    for line in r.stdout.splitlines():
        if line.startswith("OUTCOME|"):
            _, name, fn, what = line.split("|", 3)
            outcomes.setdefault(name, {})[fn] = what
    return r, outcomes


@pytest.mark.parametrize("case", list(TOO_LARGE))
def test_sizes_beyond_the_indexing_are_clear_errors(too_large_outcomes, case):
    """Fake C-contiguous views over one element: any read would crash, so nothing is read."""
    r, outcomes = too_large_outcomes
    got = outcomes.get(case, {})
    assert len(got) == 5, "crashed before finishing (rc=%d): %s" % (r.returncode,
                                                                    r.stderr[-1500:])
    for fn, what in got.items():
        assert what.startswith("inputs too large: " + TOO_LARGE_LIMIT[case]), (case, fn, what)


def test_mxnet_rejects_more_than_2_31_elements():
    """The pip MXNet (no int64 tensor sizes) refuses such shapes at inference, with its message."""
    li, lt, le = mx.sym.var("li"), mx.sym.var("lt"), mx.sym.var("le")
    with pytest.raises(Exception, match="larger than 2\\^31"):
        gh.viterbi(li, lt, le)[0].infer_shape(li=(2,), lt=(2, 2), le=(1, 2 ** 31 + 1, 2))


# fixed (was ENGINE BUG 7, found by this test)
def test_huge_broadcast_view_is_rejected_before_copying():
    r = run_python("""
        import numpy as np
        import gluon_hmm.numpy as ghn
        N = 2 ** 21
        trans = np.broadcast_to(np.float32(0), (N, N))          # zero strides, 16 TiB if copied
        try:
            ghn.log_likelihood(np.zeros(N, np.float32), trans, np.zeros((1, 1, N), np.float32))
        except ValueError as e:
            print("VALUEERROR", "too large" in str(e))
        except MemoryError as e:
            print("MEMORYERROR")
    """, limit_address_space=2 ** 32)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "VALUEERROR True" in r.stdout, r.stdout
