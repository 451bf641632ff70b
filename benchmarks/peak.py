"""Single-core float32 FMA peak of this machine, measured.

Primary method: a tiny C kernel compiled at run time, once per vector width the
CPU runs (``-mavx2 -mfma``: 8 floats; ``-mavx512f``: 16 floats), that runs 12
independent chains of FMAs (enough independent work to hide the FMA latency on
two FMA pipes).  The peak is the widest width's figure: on an AVX-512 machine
with two 512-bit FMA pipes it is twice the AVX2 one.
Each FMA counts 2 flops.  The best of many short runs (a few ms each) is the peak: on a
shared machine the best run is one that had the core to itself.

Fallback (no compiler or no AVX2/FMA): a large float32 NumPy matmul,
single-threaded (OPENBLAS_NUM_THREADS=1), 2 n^3 flops.
"""
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

_KERNEL = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* One source, two widths: WIDTH 8 (AVX2+FMA, __m256) or 16 (AVX-512F, __m512). */
#if WIDTH == 16
typedef __m512 vec;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* 12 independent accumulator chains: a_k <- a_k * b + c */
static float run(long iters, float seed) {
    vec b = SET1(0.99999f), c = SET1(1e-6f);
    vec a0 = SET1(seed), a1 = SET1(seed + 1), a2 = SET1(seed + 2), a3 = SET1(seed + 3),
        a4 = SET1(seed + 4), a5 = SET1(seed + 5), a6 = SET1(seed + 6), a7 = SET1(seed + 7),
        a8 = SET1(seed + 8), a9 = SET1(seed + 9), a10 = SET1(seed + 10), a11 = SET1(seed + 11);
    for (long i = 0; i < iters; ++i) {
        a0 = FMA(a0, b, c);  a1 = FMA(a1, b, c);  a2 = FMA(a2, b, c);  a3 = FMA(a3, b, c);
        a4 = FMA(a4, b, c);  a5 = FMA(a5, b, c);  a6 = FMA(a6, b, c);  a7 = FMA(a7, b, c);
        a8 = FMA(a8, b, c);  a9 = FMA(a9, b, c);  a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
    }
    vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
    s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)));
    float out[WIDTH];
    STORE(out, s);
    return out[0] + out[WIDTH - 1];
}

/* Two-thread mode (argv[3] = 2): both threads run `reps` runs at once; each
 * prints the median GFLOP/s of its runs.  One-thread mode with argv[3] = 1
 * prints its median too (the peak mode, without argv[3], prints the best). */
struct job { long iters; int reps; double median; };

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void *median_runs(void *arg) {
    struct job *j = (struct job *)arg;
    double *g = (double *)malloc(sizeof(double) * (size_t)j->reps);
    volatile float sink = 0.0f;
    sink += run(j->iters / 10, 1.0f);
    for (int r = 0; r < j->reps; ++r) {
        double t0 = now();
        sink += run(j->iters, (float)r);
        g[r] = (double)j->iters * 12 * WIDTH * 2 / (now() - t0) * 1e-9;
    }
    qsort(g, (size_t)j->reps, sizeof(double), cmp_double);
    j->median = g[j->reps / 2];
    free(g);
    return NULL;
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 10000000L;
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    if (argc > 3) {
        int threads = atoi(argv[3]) == 2 ? 2 : 1;
        struct job jobs[2] = {{iters, reps, 0.0}, {iters, reps, 0.0}};
        pthread_t tid;
        if (threads == 2 && pthread_create(&tid, NULL, median_runs, &jobs[1]) != 0) return 2;
        median_runs(&jobs[0]);
        if (threads == 2) pthread_join(tid, NULL);
        for (int t = 0; t < threads; ++t) printf("%.3f\n", jobs[t].median);
        return 0;
    }
    double best = 0.0;
    volatile float sink = 0.0f;
    sink += run(iters / 10, 1.0f);                      /* warm up, clocks up */
    for (int r = 0; r < reps; ++r) {
        double t0 = now();
        sink += run(iters, (float)r);
        double dt = now() - t0;
        double gflops = (double)iters * 12 * WIDTH * 2 / dt * 1e-9;
        if (gflops > best) best = gflops;
    }
    printf("%.3f\n", best);
    return sink == 12345.0f;  /* keeps the result alive */
}
"""

_MATMUL = r"""
import sys, time, numpy as np
n = int(sys.argv[1]); reps = int(sys.argv[2])
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = a.T.copy(); a @ b
best = 0.0
for _ in range(reps):
    t0 = time.perf_counter(); a @ b; dt = time.perf_counter() - t0
    best = max(best, 2.0 * n ** 3 / dt * 1e-9)
print("%.3f" % best)
"""


def _single_thread_env():
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    return env


# (name, gcc flags, vector width in floats, /proc/cpuinfo flags needed)
_ISAS = (("AVX2+FMA", ["-mavx2", "-mfma"], 8, ("avx2", "fma")),
         ("AVX-512F", ["-mavx512f"], 16, ("avx512f",)))


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None  # unknown: try every ISA and let a failing run say so


def _compiler():
    return shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")


_BUILT = {}          # (compiler, width, flags) -> (path, None) or (None, error)
_BUILD_DIR = []      # the folder they are compiled into, removed at exit


def _build_kernel(cc, width, flags):
    """The FMA kernel compiled for one width: (path, None) or (None, error).  Compiled
    once per process: run.py probes the machine before every thread-scaling round."""
    key = (cc, width, tuple(flags))
    if key not in _BUILT:
        if not _BUILD_DIR:
            _BUILD_DIR.append(tempfile.mkdtemp(prefix="gluon_hmm_peak_"))
            atexit.register(shutil.rmtree, _BUILD_DIR[0], True)
        tmp = _BUILD_DIR[0]
        src = os.path.join(tmp, "fma_peak.c")
        if not os.path.exists(src):
            with open(src, "w") as f:
                f.write(_KERNEL)
        exe = os.path.join(tmp, "fma_peak_%d" % width)
        r = subprocess.run([cc, "-O3", "-pthread", "-DWIDTH=%d" % width] + flags + [src, "-o", exe],
                           capture_output=True, text=True)
        _BUILT[key] = ((None, "compiling failed: %s" % r.stderr.strip()[-200:])
                       if r.returncode != 0 else (exe, None))
    return _BUILT[key]


def fma_kernel_peak(quick=False):
    """(GFLOP/s, description, {isa: GFLOP/s}) of the compiled FMA kernel at every
    vector width this CPU runs; the peak is the widest (fastest) one.  Raises
    RuntimeError when no width could be measured."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found")
    flags_here = _cpu_flags()
    iters, reps = (1_000_000, 40) if quick else (2_000_000, 150)
    results, errors = {}, []
    for name, flags, width, need in _ISAS:
        if flags_here is not None and not all(n in flags_here for n in need):
            continue
        exe, err = _build_kernel(cc, width, flags)
        if exe is None:
            errors.append("%s: %s" % (name, err))
            continue
        r = subprocess.run([exe, str(iters), str(reps)], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            errors.append("%s: the kernel failed (exit %d)" % (name, r.returncode))
            continue
        results[name] = float(r.stdout.strip())
    if not results:
        raise RuntimeError("; ".join(errors) or "no AVX2/FMA or AVX-512 on this CPU")
    best = max(results, key=results.get)
    flags = dict((n, f) for n, f, _, _ in _ISAS)[best]
    width = dict((n, w) for n, _, w, _ in _ISAS)[best]
    how = "%s -O3 %s, 12 independent %d-wide float32 FMA chains, best of %d runs" % (
        os.path.basename(cc), " ".join(flags), width, reps)
    if len(results) > 1:
        how += " (" + ", ".join("%s %.1f GFLOP/s" % kv for kv in results.items()) + ")"
    return results[best], how, results


def two_thread_scaling(rounds=4, quick=False):
    """What this machine gives two threads of pure FMA work, measured now.

    The AVX2 kernel above (registers only: no memory traffic, no synchronisation)
    runs on one thread, then on two threads at once, in alternating rounds
    (1, 2, 2, 1, 1, 2, ...); each run reports the median GFLOP/s of its ~2 ms
    pieces.  Returns dict(ratio=median over rounds of (sum of the two threads'
    medians) / (the one thread's median), rounds=[...], how=...), or None when
    the kernel cannot be built or run.  On dedicated cores the ratio is ~2.0; a
    VM whose two vCPUs share a physical core (or a busy neighbour) gives less,
    and no two-thread program can beat it there.
    """
    cc = _compiler()
    flags_here = _cpu_flags()
    name, flags, width, need = _ISAS[0]   # AVX2+FMA
    if cc is None or (flags_here is not None and not all(n in flags_here for n in need)):
        return None
    iters, reps = (100_000, 20) if quick else (150_000, 100)   # ~1-2 ms a piece
    exe, _ = _build_kernel(cc, width, flags)
    if exe is None:
        return None

    def one(threads):
        r = subprocess.run([exe, str(iters), str(reps), str(threads)], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("the FMA kernel failed (exit %d)" % r.returncode)
        return [float(x) for x in r.stdout.split()]

    per_round = []
    try:
        for k in range(rounds):
            order = (1, 2) if k % 2 == 0 else (2, 1)
            got = {t: one(t) for t in order}
            per_round.append(dict(one=got[1][0], two=got[2], ratio=sum(got[2]) / got[1][0]))
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return dict(ratio=statistics.median(x["ratio"] for x in per_round), rounds=per_round,
                how="AVX2 FMA kernel, 1 thread vs 2 threads at once, %d alternating rounds of "
                    "%d pieces of %d iterations, median GFLOP/s per thread" % (rounds, reps, iters))


def matmul_peak(quick=False):
    n, reps = (1024, 3) if quick else (2048, 5)
    r = subprocess.run([sys.executable, "-c", _MATMUL, str(n), str(reps)], capture_output=True,
                       text=True, env=_single_thread_env(), timeout=300)
    if r.returncode != 0:
        raise RuntimeError("matmul probe failed: " + r.stderr[-300:])
    return float(r.stdout.strip()), "float32 NumPy matmul %dx%d, OPENBLAS_NUM_THREADS=1, best of %d" % (
        n, n, reps)


def measure(quick=False):
    """(GFLOP/s, description)."""
    try:
        gf, how, _ = fma_kernel_peak(quick)
        return gf, how
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
        gf, how = matmul_peak(quick)
        return gf, how + " (FMA kernel unavailable: %s)" % e


if __name__ == "__main__":
    print(measure("--quick" in sys.argv))
    if "--threads" in sys.argv:
        print(two_thread_scaling(quick="--quick" in sys.argv))
