"""One measurement in a fresh process: ``python _worker.py SPEC.json``.

The spec names an implementation (see impls.IMPLS), the input file, the modes
("fwd", "grad"), the thread count and the timing budget.  The worker writes a
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
    import resource
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
    start = time.perf_counter()
    while len(samples) < repeats:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(inner):
            out = fn()
        t1, c1 = time.perf_counter(), time.process_time()
        samples.append((t1 - t0) / inner)
        wall += t1 - t0
        cpu += c1 - c0
        if len(samples) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return out, dict(first_s=first, samples=samples, inner=inner,
                     cpu_over_wall=cpu / wall if wall > 0 else None)


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
            impl = cls(li, lt, le, spec["threads"])
        except ImportError as e:
            result["skipped"] = "%s not importable in %s (%s)" % (spec["impl"], sys.executable, e)
            return result
        result["setup_s"] = time.perf_counter() - t0
        del data
        outputs = {}
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
