"""Single-core float32 FMA peak of this machine, measured.

Primary method: a tiny C kernel compiled at run time (``gcc -O3 -mavx2 -mfma``)
that runs 12 independent chains of 8-wide float32 FMAs (enough independent
work to hide the FMA latency on both FMA pipes of a Zen 3 / Skylake core).
Each FMA counts 2 flops.  The best of many short runs (a few ms each) is the peak: on a
shared machine the best run is one that had the core to itself.

Fallback (no compiler or no AVX2/FMA): a large float32 NumPy matmul,
single-threaded (OPENBLAS_NUM_THREADS=1), 2 n^3 flops.
"""
import os
import shutil
import subprocess
import sys
import tempfile

_KERNEL = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* 12 independent accumulator chains: a_k <- a_k * b + c */
static float run(long iters, float seed) {
    __m256 b = _mm256_set1_ps(0.99999f), c = _mm256_set1_ps(1e-6f);
    __m256 a0 = _mm256_set1_ps(seed), a1 = _mm256_set1_ps(seed + 1), a2 = _mm256_set1_ps(seed + 2),
           a3 = _mm256_set1_ps(seed + 3), a4 = _mm256_set1_ps(seed + 4), a5 = _mm256_set1_ps(seed + 5),
           a6 = _mm256_set1_ps(seed + 6), a7 = _mm256_set1_ps(seed + 7), a8 = _mm256_set1_ps(seed + 8),
           a9 = _mm256_set1_ps(seed + 9), a10 = _mm256_set1_ps(seed + 10), a11 = _mm256_set1_ps(seed + 11);
    for (long i = 0; i < iters; ++i) {
        a0 = _mm256_fmadd_ps(a0, b, c);  a1 = _mm256_fmadd_ps(a1, b, c);
        a2 = _mm256_fmadd_ps(a2, b, c);  a3 = _mm256_fmadd_ps(a3, b, c);
        a4 = _mm256_fmadd_ps(a4, b, c);  a5 = _mm256_fmadd_ps(a5, b, c);
        a6 = _mm256_fmadd_ps(a6, b, c);  a7 = _mm256_fmadd_ps(a7, b, c);
        a8 = _mm256_fmadd_ps(a8, b, c);  a9 = _mm256_fmadd_ps(a9, b, c);
        a10 = _mm256_fmadd_ps(a10, b, c); a11 = _mm256_fmadd_ps(a11, b, c);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 10000000L;
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    double best = 0.0;
    volatile float sink = 0.0f;
    sink += run(iters / 10, 1.0f);                      /* warm up, clocks up */
    for (int r = 0; r < reps; ++r) {
        double t0 = now();
        sink += run(iters, (float)r);
        double dt = now() - t0;
        double gflops = (double)iters * 12 * 8 * 2 / dt * 1e-9;
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


def fma_kernel_peak(quick=False):
    """GFLOP/s of the compiled FMA kernel, or raises RuntimeError."""
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler found")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "fma_peak.c"), os.path.join(tmp, "fma_peak")
        with open(src, "w") as f:
            f.write(_KERNEL)
        flags = ["-O3", "-mavx2", "-mfma"]
        r = subprocess.run([cc] + flags + [src, "-o", exe], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("compiling the FMA kernel failed: " + r.stderr.strip()[-300:])
        iters, reps = (1_000_000, 40) if quick else (2_000_000, 150)
        r = subprocess.run([exe, str(iters), str(reps)], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError("the FMA kernel failed (exit %d; no AVX2/FMA?)" % r.returncode)
        return float(r.stdout.strip()), "%s %s, 12 independent 8-wide float32 FMA chains, best of %d runs" % (
            os.path.basename(cc), " ".join(flags), reps)


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
        return fma_kernel_peak(quick)
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
        gf, how = matmul_peak(quick)
        return gf, how + " (FMA kernel unavailable: %s)" % e


if __name__ == "__main__":
    print(measure("--quick" in sys.argv))
