"""One measurement in a fresh process: ``python _worker.py SPEC.json``.

The spec names an implementation (see impls.IMPLS), the input file, the modes
("fwd", "grad"), the thread count (or, for thread scaling, a list of counts the
worker alternates between, see bench_paired) and the timing budget.  The worker writes a
JSON result (times, peak RSS, CPU/wall ratio) and the outputs of the last call
(for the error check against the float64 reference, done by run.py).

Peak memory: Linux's VmHWM (peak resident set) of this process, reset through
/proc/self/clear_refs before each mode, so each mode gets its own high-water
mark; the baseline (VmRSS after imports and input conversion) is reported too.
A fresh process per implementation keeps one library's allocations out of
another's numbers.
"""
import json
import os
import resource
import statistics
import sys
import time
import traceback

import numpy as np


def _status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kib():
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bench(fn, repeats, budget_s, min_repeats, jit):
    """Median-of-samples timing with an inner loop for sub-millisecond calls.

    The first call is a warm-up (for JIT peers: the compilation) and is
    reported apart.  A call slower than half the budget is timed once, and
    for non-JIT implementations that first call is the sample.
    """
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    if first > budget_s / 2 and not jit:
        return out, dict(first_s=first, samples=[first], inner=1,
                         cpu_over_wall=(time.process_time() - c0) / first if first > 0 else None)
    t0 = time.perf_counter()
    out = fn()
    second = time.perf_counter() - t0
    inner = max(1, int(0.005 / max(second, 1e-7)))   # a sample lasts >= ~5 ms
    samples = []
    wall = cpu = 0.0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    calls = 0
    start = time.perf_counter()
    while len(samples) < repeats:
        out, dw, dc = _sample(fn, inner)
        samples.append(dw / inner)
        calls += inner
        wall += dw
        cpu += dc
        if len(samples) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return out, dict(first_s=first, samples=samples, inner=inner,
                     cpu_over_wall=cpu / wall if wall > 0 else None,
                     **_per_call_rusage(ru0, calls))


def _sample(fn, inner):
    """inner calls of fn: (the last output, wall seconds, process CPU seconds)."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(inner):
        out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _per_call_rusage(ru0, calls):
    """Minor page faults and context switches per call since getrusage() gave ru0."""
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return dict(minor_faults_per_call=(ru1.ru_minflt - ru0.ru_minflt) / calls,
                vol_ctx_switches_per_call=(ru1.ru_nvcsw - ru0.ru_nvcsw) / calls,
                invol_ctx_switches_per_call=(ru1.ru_nivcsw - ru0.ru_nivcsw) / calls)


def bench_paired(impl, mode, counts, repeats, budget_s, min_repeats):
    """Thread counts alternated sample by sample in one process (A B, B A, A B, ...).

    The host's speed drifts from second to second on a shared VM; two counts timed
    in turns see the same drift, where counts timed in separate processes (or
    minutes) do not.  ``impl.set_threads(n)`` switches the count, one untimed call
    follows each switch, and one inner-loop length serves every count: ~5 ms at
    the fastest warm call of any count (estimated from single calls, so samples
    run a few ms; longer at the slower count).  Returns {n: timing} in bench()'s format; the page-fault and
    context-switch figures are per call over all counts together.
    """
    fn = impl.fwd if mode == "fwd" else impl.grad
    first, fastest = {}, []
    for n in counts:
        impl.set_threads(n)
        t0 = time.perf_counter()
        out = fn()
        first[n] = time.perf_counter() - t0
        fn()
    for n in counts:   # all warm now; a call right after a switch is slow: best of 3
        impl.set_threads(n)
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            fastest.append(time.perf_counter() - t0)
    inner = max(1, int(0.005 / max(min(fastest), 1e-7)))
    timing = {n: dict(first_s=first[n], samples=[], inner=inner, wall=0.0, cpu=0.0)
              for n in counts}
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    pairs = 0
    while pairs < repeats:
        for n in (counts if pairs % 2 == 0 else counts[::-1]):
            impl.set_threads(n)
            # one untimed call after each switch: the first call on the other count
            # pays for cache lines the other threads left and for waking workers
            # (measured: without it, the 1-thread samples of a paired run came out
            # ~5 % slower than a 1-thread process's at 64,16,500)
            fn()
            out, dw, dc = _sample(fn, inner)
            d = timing[n]
            d["samples"].append(dw / inner)
            d["wall"] += dw
            d["cpu"] += dc
        pairs += 1
        if pairs >= min_repeats and time.perf_counter() - start > budget_s:
            break
    rusage = _per_call_rusage(ru0, pairs * (inner + 1) * len(counts))
    for d in timing.values():
        wall, cpu = d.pop("wall"), d.pop("cpu")
        d.update(cpu_over_wall=cpu / wall if wall > 0 else None,
                 median_s=statistics.median(d["samples"]), min_s=min(d["samples"]), **rusage)
    return out, timing


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    result = dict(impl=spec["impl"], modes={})
    if spec.get("cpus"):
        # before any library starts its threads: they inherit this mask
        os.sched_setaffinity(0, spec["cpus"])
        result["cpus"] = sorted(os.sched_getaffinity(0))
    try:
        from impls import IMPLS
        cls, _, _, _ = IMPLS[spec["impl"]]
        data = np.load(spec["inputs"])
        li, lt, le = data["log_init"], data["log_trans"], data["log_emit"]
        steps = spec.get("steps")
        if steps is not None and steps < le.shape[1]:
            le = le[:, :steps]
        result["T_run"] = int(le.shape[1])
        t0 = time.perf_counter()
        try:
            threads = spec["threads"]
            impl = cls(li, lt, le, max(threads) if isinstance(threads, list) else threads)
        except ImportError as e:
            result["skipped"] = "%s not importable in %s (%s)" % (spec["impl"], sys.executable, e)
            return result
        result["setup_s"] = time.perf_counter() - t0
        del data
        outputs = {}
        if isinstance(spec["threads"], list):
            # thread scaling: every count in one process, in turns (bench_paired)
            by_threads = {str(n): {} for n in spec["threads"]}
            for mode in spec["modes"]:
                _, timing = bench_paired(impl, mode, spec["threads"], spec["repeats"],
                                         spec["budget_s"], spec["min_repeats"])
                for n, t in timing.items():
                    by_threads[str(n)][mode] = t
            result["modes_by_threads"] = by_threads
            return result
        for mode in spec["modes"]:
            fn = impl.fwd if mode == "fwd" else impl.grad
            reset_ok = _reset_peak()
            base = _status_kib("VmRSS")
            out, timing = bench(fn, spec["repeats"], spec["budget_s"], spec["min_repeats"],
                                jit=spec["impl"] == "jax")
            timing.update(peak_rss_kib=_peak_kib(), base_rss_kib=base, peak_reset=reset_ok,
                          median_s=statistics.median(timing["samples"]),
                          min_s=min(timing["samples"]))
            result["modes"][mode] = timing
            if spec.get("outputs"):
                conv = impl.to_numpy(out, mode)
                if conv is not None:
                    outputs.update({mode + "_" + k: v for k, v in conv.items()})
            del out
        if spec.get("outputs") and outputs:
            np.savez(spec["outputs"], **outputs)
            result["outputs"] = spec["outputs"]
    except Exception:  # reported in the table, never fatal for the whole run
        result["error"] = traceback.format_exc(limit=6)
    return result


def _versions():
    out = {}
    for name in ("numpy", "mxnet", "hmmlearn", "torch", "jax", "jaxlib"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__version__", None):
            out[name] = mod.__version__
    return out


if __name__ == "__main__":
    spec_path = sys.argv[1]
    res = main(spec_path)
    res["versions"] = _versions()
    with open(spec_path[:-5] + ".result.json", "w") as f:
        json.dump(res, f)
