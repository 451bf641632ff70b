#!/usr/bin/env python
"""gluon_hmm benchmarks: gluon_hmm and its peers, same run, same inputs, one command.

    PYTHONPATH=. python benchmarks/run.py                      # full suite (~12 min)
    PYTHONPATH=. python benchmarks/run.py --quick              # smoke run (< 60 s)
    python benchmarks/run.py --workloads 8,50,1000 1,4,30 --threads 1 --out benchmarks/RESULTS.md
    python benchmarks/run.py --peer-python /path/to/venv/bin/python   # where torch and jax live
    python benchmarks/run.py --scaling                          # + 2 threads vs 1 for B >= 8

Every implementation runs in its own fresh process (benchmarks/_worker.py) on
the same float32 inputs, forward only ("fwd") and forward + all gradients
("fwd+grad": log-likelihood and d sum(loglik) / d log_init, log_trans,
log_emit).  Reported: median time (and min), time relative to gluon_hmm's NumPy
binding, achieved GFLOP/s against the measured single-core FMA peak (nominal
flops: fwd 2*B*T*N^2, fwd+grad 6*B*T*N^2), peak RSS, and the relative error of
each implementation against the float64 reference.  See benchmarks/NOTES.md.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import impls  # noqa: E402
import peak  # noqa: E402

WORKLOADS = [(8, 50, 100), (8, 50, 1000), (8, 50, 3000), (64, 16, 500), (1, 4, 30),
             (16, 256, 200), (1, 8, 100000)]
QUICK_WORKLOADS = [(1, 4, 30), (8, 50, 100)]
ORDER = ["gh_numpy", "gh_mxnet", "hmmlearn_scaling", "hmmlearn_log", "jax", "torch",
         "mxnet_loop", "numpy_ref", "mx_log_softmax"]
QUICK_SKIP = ("jax", "torch", "mxnet_loop")   # import/compile/per-step cost: too slow for a smoke run
ROUND_TRIP_WORKLOAD = (1, 4, 30)      # where the built-in op round trip is measured
MEMORY_WORKLOAD = (1, 8, 10 ** 6)
ACCURACY_WORKLOAD = (1, 8, 100000)

# (workloads, kind, threshold): kind "speedup" = best peer time / gluon_hmm time
TARGETS_SPEEDUP = [((8, 50, 1000), 5.0), ((8, 50, 3000), 5.0), ((64, 16, 500), 5.0),
                   ((16, 256, 200), 1.5)]


# --------------------------------------------------------------------------
# inputs, environment, workers
# --------------------------------------------------------------------------

def make_inputs(B, N, T, seed):
    """A random normalised HMM and Gaussian-like emission log-densities, float32."""
    rng = np.random.default_rng([seed, B, N, T])
    log_init = np.log(rng.dirichlet(np.ones(N))).astype(np.float32)
    log_trans = np.log(rng.dirichlet(np.ones(N), size=N)).astype(np.float32)
    z = rng.standard_normal((B, T, N), dtype=np.float32) * np.float32(1.5)
    log_emit = (np.float32(-0.5) * z * z - np.float32(0.919)).astype(np.float32)
    return log_init, log_trans, log_emit


def child_env(threads):
    env = dict(os.environ)
    n = str(threads)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "GLUON_HMM_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[k] = n
    env["JAX_PLATFORMS"] = "cpu"
    if threads == 1:
        flags = env.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            env["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# Implementations that start more threads than the environment asks for: XLA's CPU
# runtime keeps a thread pool the size of the machine whatever XLA_FLAGS says
# (CPU/wall ~1.9 measured with --xla_cpu_multi_thread_eigen=false).
UNRULY = ("jax",)


def _cpu_idle_ticks():
    ticks = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                ticks[int(parts[0][3:])] = int(parts[4]) + int(parts[5])   # idle + iowait
    return ticks


def pinned_cpus(threads):
    """The ``threads`` least busy CPUs over the next 0.2 s (None when that is all of them).

    On a shared machine a fixed choice could land on the busiest core, so the
    idle time of each allowed CPU is sampled just before the worker starts.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if threads >= len(allowed):
        return None
    try:
        a = _cpu_idle_ticks()
        time.sleep(0.2)
        b = _cpu_idle_ticks()
        idle = {c: b.get(c, 0) - a.get(c, 0) for c in allowed}
    except (OSError, ValueError, IndexError):
        idle = {c: 0 for c in allowed}
    return sorted(sorted(allowed, key=lambda c: -idle[c])[:threads])


class Runner:
    def __init__(self, args, tmp):
        self.args, self.tmp, self.count = args, tmp, 0
        self.loads = []

    def run(self, impl, inputs, modes, threads, steps=None, outputs=True, repeats=None,
            budget=None, min_repeats=None, timeout=900, retried=False):
        a = self.args
        self.count += 1
        base = os.path.join(self.tmp, "w%03d_%s" % (self.count, impl))
        most = max(threads) if isinstance(threads, list) else threads
        spec = dict(impl=impl, inputs=inputs, modes=modes, threads=threads, steps=steps,
                    repeats=a.repeats if repeats is None else repeats,
                    budget_s=a.budget if budget is None else budget,
                    min_repeats=a.min_repeats if min_repeats is None else min_repeats,
                    outputs=base + ".out.npz" if outputs else None,
                    cpus=pinned_cpus(most) if a.pin == "all" or (a.pin == "unruly" and
                                                                     impl in UNRULY) else None)
        with open(base + ".json", "w") as f:
            json.dump(spec, f)
        python = a.peer_python if impls.IMPLS[impl][1] else sys.executable
        self.loads.append(os.getloadavg()[0])
        t0 = time.perf_counter()
        try:
            r = subprocess.run([python, os.path.join(HERE, "_worker.py"), base + ".json"],
                               env=child_env(most), capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return dict(impl=impl, error="timed out after %d s" % timeout, modes={})
        except OSError as e:
            return dict(impl=impl, skipped="cannot start %s: %s" % (python, e), modes={})
        res_path = base + ".result.json"
        if r.returncode < 0 and not os.path.exists(res_path) and not retried:
            # killed by a signal: run it once more and say so in the report
            res = self.run(impl, inputs, modes, threads, steps, outputs, repeats, budget,
                           min_repeats, timeout, retried=True)
            res["retried"] = "first attempt killed by signal %d" % -r.returncode
            return res
        if not os.path.exists(res_path):
            tail = (r.stderr or r.stdout or "").strip().splitlines()[-3:]
            return dict(impl=impl, error="worker exited %d: %s" % (r.returncode, " | ".join(tail)),
                        modes={})
        with open(res_path) as f:
            res = json.load(f)
        res["wall_s"] = time.perf_counter() - t0
        if a.verbose:
            print("    %-17s %5.1fs %s" % (impl, res["wall_s"], _brief(res)), file=sys.stderr)
        return res


def _brief(res):
    if res.get("skipped"):
        return "skipped: " + res["skipped"]
    if res.get("error"):
        return "ERROR: " + res["error"].strip().splitlines()[-1]
    return " ".join("%s=%s" % (m, _fmt_ms(v["median_s"])) for m, v in res["modes"].items())


# --------------------------------------------------------------------------
# errors against the float64 reference
# --------------------------------------------------------------------------

def rel_err(x, ref):
    """max |x - ref| / max |ref| (inf when x has a NaN or the shapes differ)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape:
        return float("inf")
    d = np.abs(x - ref)
    if not np.all(np.isfinite(d)):
        return float("inf")
    return float(d.max() / max(np.abs(ref).max(), 1e-300)) if d.size else 0.0


def errors(out, ref):
    """dict(loglik=..., grads=..., per-gradient...) of one implementation's outputs."""
    e = {}
    if "fwd_loglik" in out:
        e["fwd_loglik"] = rel_err(out["fwd_loglik"], ref["loglik"])
    if "grad_loglik" in out:
        e["loglik"] = rel_err(out["grad_loglik"], ref["loglik"])
        for k in ("g_init", "g_trans", "g_emit"):
            e[k] = rel_err(out["grad_" + k], ref[k])
        e["grads"] = max(e["g_init"], e["g_trans"], e["g_emit"])
    elif "fwd_loglik" in out:
        e["loglik"] = e["fwd_loglik"]
    return e


def reference_outputs(inputs_path, steps):
    """float64 reference outputs for the first ``steps`` steps (in this process)."""
    ref = impls.load_reference()
    d = np.load(inputs_path)
    le = d["log_emit"][:, :steps].astype(np.float64)
    p = ref.posterior(d["log_init"].astype(np.float64), d["log_trans"].astype(np.float64), le)
    return dict(loglik=p.loglik, g_init=p.init_counts, g_trans=p.trans_counts, g_emit=p.gamma)


# --------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------

def run_workload(runner, wl, selected, args):
    B, N, T = wl
    path = os.path.join(runner.tmp, "in_%d_%d_%d.npz" % wl)
    np.savez(path, **dict(zip(("log_init", "log_trans", "log_emit"), make_inputs(B, N, T, args.seed))))
    quick = 1 if args.quick else 0
    rows = {}
    # the reference first: its outputs are the ground truth for every error below
    order = ["numpy_ref"] + [i for i in ORDER if i != "numpy_ref"]
    order = [i for i in order if (i in selected or i == "numpy_ref")
             and not (i == "mx_log_softmax" and wl != ROUND_TRIP_WORKLOAD)]
    # Every implementation in args.rounds rounds, the order reversed in every other
    # round, each round a fresh process with 1/rounds of the budget and of the samples:
    # on a host whose speed drifts from minute to minute, no implementation gets all
    # of its samples from one slow (or fast) stretch, and two implementations compared
    # by a target are timed at interleaved moments.  Errors come from the first round.
    per_round = dict(budget=args.budget / args.rounds,
                     repeats=max(args.min_repeats, -(-args.repeats // args.rounds)))
    runs = {impl: [] for impl in order}
    for r in range(args.rounds):
        for impl in (order if r % 2 == 0 else order[::-1]):
            if runs[impl] and (runs[impl][0].get("skipped") or runs[impl][0].get("error")):
                continue
            cap = impls.IMPLS[impl][3][quick]
            steps = cap if cap is not None and cap < T else None
            runs[impl].append(runner.run(impl, path, ["fwd", "grad"], args.threads, steps=steps,
                                         outputs=r == 0, **per_round))
    for impl in order:
        rows[impl] = merge_rounds(runs[impl]) if len(runs[impl]) > 1 else runs[impl][0]
    ref = rows["numpy_ref"]
    ref_out = None
    if ref.get("outputs"):
        o = np.load(ref["outputs"])
        ref_out = {k[5:]: o[k] for k in o.files if k.startswith("grad_")}
    truncated_refs = {}
    for impl, res in rows.items():
        if not res.get("outputs"):
            continue
        out = np.load(res["outputs"])
        T_run = res.get("T_run", T)
        if T_run == T:
            r = ref_out
        else:
            if T_run not in truncated_refs:
                truncated_refs[T_run] = reference_outputs(path, T_run)
            r = truncated_refs[T_run]
        if r is not None:
            res["errors"] = errors({k: out[k] for k in out.files}, r)
        os.remove(res["outputs"])
    os.remove(path)
    return rows


def run_memory(runner, args):
    B, N, T = MEMORY_WORKLOAD
    path = os.path.join(runner.tmp, "in_memory.npz")
    np.savez(path, **dict(zip(("log_init", "log_trans", "log_emit"), make_inputs(B, N, T, args.seed))))
    rows = {}
    for impl in ("gh_numpy", "gh_mxnet"):
        rows[impl] = runner.run(impl, path, ["grad"], args.threads, outputs=False, repeats=1,
                                budget=0.0, min_repeats=1)
    os.remove(path)
    return rows


def run_scaling(runner, workloads, args):
    rows = {}
    for wl in workloads:
        if wl[0] < 8:
            continue
        path = os.path.join(runner.tmp, "in_scaling.npz")
        np.savez(path, **dict(zip(("log_init", "log_trans", "log_emit"),
                                  make_inputs(*wl, args.seed))))
        for impl in ("gh_numpy", "gh_mxnet"):
            # Each round is a fresh process that times 1 and 2 threads in turns, sample by
            # sample (_worker.bench_paired): on a VM whose speed drifts from one second to
            # the next, both counts see the same drift.  Before each round, a short run of
            # the machine's own two-thread FMA probe: the host may run the two vCPUs on
            # one physical core for a while, and a round that lands there says nothing
            # about the engine.
            runs, probes = {1: [], 2: []}, []
            for r in range(args.scaling_rounds):
                probe = peak.two_thread_scaling(rounds=2, quick=True)
                probes.append(probe["ratio"] if probe else None)
                counts = [1, 2] if r % 2 == 0 else [2, 1]
                res = runner.run(impl, path, ["fwd", "grad"], counts, outputs=False,
                                 budget=2 * args.budget / args.scaling_rounds)
                for threads in (1, 2):
                    modes = (res.get("modes_by_threads") or {}).get(str(threads), {})
                    runs[threads].append(dict(res, modes=modes))
            rows[(wl, impl)] = {t: merge_rounds(v) for t, v in runs.items()}
            rows[(wl, impl)]["probes"] = probes
        os.remove(path)
    return rows


def merge_rounds(results):
    """One result from several rounds of the same run: samples pooled per mode
    (median and min over all of them), each round's median kept beside them."""
    bad = [r for r in results if r.get("error") or r.get("skipped")]
    if bad:
        return bad[0]
    out = dict(results[0], rounds=len(results), modes={})
    for mode in results[0].get("modes", {}):
        ms = [r["modes"][mode] for r in results if mode in r.get("modes", {})]
        samples = [x for m in ms for x in m["samples"]]
        cw = [m["cpu_over_wall"] for m in ms if m.get("cpu_over_wall")]
        # the first round's other fields (first call / JIT compile, peak RSS) stay
        out["modes"][mode] = dict(ms[0], samples=samples, median_s=float(np.median(samples)),
                                  min_s=min(samples),
                                  round_medians_s=[m["median_s"] for m in ms],
                                  cpu_over_wall=float(np.mean(cw)) if cw else None)
    return out


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def _fmt_ms(s):
    if s is None:
        return "—"
    ms = s * 1e3
    if ms >= 1000:
        return "%.0f" % ms
    if ms >= 10:
        return "%.1f" % ms
    if ms >= 0.1:
        return "%.3f" % ms
    return "%.4f" % ms


def _fmt_err(e):
    if e is None:
        return "—"
    if e == float("inf"):
        return "**inf/NaN**"
    return "%.1e" % e


def _fmt_x(x):
    return "—" if x is None else ("%.2f" % x if x < 10 else "%.1f" % x)


def scaled(res, mode, T):
    """Median time for the full T (capped-T Python loops scaled by T / T_run), extrapolated?"""
    m = res.get("modes", {}).get(mode)
    if not m:
        return None, None, False
    f = T / res["T_run"] if res.get("T_run", T) != T else 1.0
    return m["median_s"] * f, m["min_s"] * f, f != 1.0


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_rev():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions(results):
    v = {}
    for rows in results:
        for res in rows.values():
            v.update(res.get("versions", {}))
    return ", ".join("%s %s" % kv for kv in sorted(v.items()))


def gflops(B, N, T, mode, seconds):
    if not seconds:
        return None
    return (6.0 if mode == "grad" else 2.0) * B * T * N * N / seconds * 1e-9


def best_peer(rows, T, mode="grad"):
    best = None
    for impl in impls.PEERS:
        res = rows.get(impl)
        if not res:
            continue
        t = scaled(res, mode, T)[0]
        if t is not None and (best is None or t < best[1]):
            best = (impl, t)
    return best


def render(meta, workloads, results, memory, scaling, peak_gf, peak_how):
    L = []
    w = L.append
    w("# gluon_hmm benchmark results\n")
    w("- date: %s" % meta["date"])
    w("- command: `%s`" % meta["command"])
    w("- to reproduce: `make build`, a peer venv from `benchmarks/requirements.txt` (torch, JAX), "
      "then `PYTHONPATH=. .venv/bin/python benchmarks/run.py --scaling --peer-python "
      "PEERVENV/bin/python`; method and the history of these figures: `benchmarks/NOTES.md`")
    w("- machine: %s, %d logical cores (%s), %s" % (meta["cpu"], meta["cores"], platform.machine(),
                                                   meta["mem"]))
    w("- load average (1/5/15 min) at start: %s; at end: %s; 1-min load sampled at each worker "
      "start: mean %.2f, max %.2f" % (meta["load_start"], meta["load_end"], meta["load_mean"],
                                       meta["load_max"]))
    w("- threads per implementation: %d (GLUON_HMM_NUM_THREADS / gh.set_num_threads, OMP_, OPENBLAS_, "
      "MKL_NUM_THREADS, torch.set_num_threads, XLA_FLAGS=--xla_cpu_multi_thread_eigen=false)"
      % meta["threads"])
    w("- CPU affinity: %s" % meta["pin"])
    w("- gluon_hmm: %s (engine library built %s)" % (meta["git"], meta["lib_mtime"]))
    if meta.get("lib_mtime_end") != meta["lib_mtime"]:
        w("- **warning: the engine library was rebuilt during this run (now built %s): rows may "
          "mix two builds**" % meta.get("lib_mtime_end"))
    w("- software: Python %s; %s" % (platform.python_version(), meta["versions"]))
    w("- single-core float32 FMA peak: **%.1f GFLOP/s** measured (%s)" % (peak_gf, peak_how))
    w("- nominal flops: fwd = 2·B·T·N², fwd+grad = 6·B·T·N² (the N×N step of forward, backward and "
      "expected counts; exp/log and O(N) terms not counted)")
    rounds = meta.get("rounds", 1)
    w("- timing: median of repeated calls in a fresh process per implementation after one warm-up "
      "call (JAX: the warm-up is the jit compile); `[min]` in brackets; each sample is >= 5 ms "
      "(inner loop for tiny calls); budget %.1f s per mode, %d samples max%s." % (
          meta["budget"], meta["repeats"],
          "" if rounds == 1 else
          ", split between %d rounds: every implementation runs once per round in a fresh "
          "process, the order reversed every other round, and its samples are pooled (the "
          "JSON keeps each round's median), so that implementations compared by a target are "
          "timed at interleaved moments of a host whose speed drifts" % rounds))
    w("- `× gh` = this time / gluon_hmm NumPy-binding time (same mode): > 1 means slower than "
      "gluon_hmm.  Errors: max|x − ref| / max|ref| against the float64 reference, loglik and the "
      "worst of the three gradients.")
    w("- `~` = a Python-loop peer timed on the first T_run steps and scaled by T/T_run; its RSS and "
      "errors are those of the T_run run.  hmmlearn handles one sequence per call: a Python loop "
      "over B, shared init/trans, float64.")
    w("- CPU/wall: process CPU time / wall time during the fwd+grad samples (≈ threads used; well "
      "below 1 with one thread means the process was preempted: that number is noisy).")
    w("")
    for wl in workloads:
        B, N, T = wl
        rows = results[wl]
        base = next((rows[i] for i in ("gh_numpy", "gh_mxnet") if rows.get(i, {}).get("modes")), {})
        base_t = {m: scaled(base, m, T)[0] for m in ("fwd", "grad")}
        w("## B=%d, N=%d, T=%d\n" % wl)
        w("| implementation | fwd ms median [min] | fwd+grad ms median [min] | fwd × gh | fwd+grad × gh "
          "| fwd+grad GFLOP/s | % FMA peak | peak RSS MiB (+Δ) | loglik err | grad err | CPU/wall | note |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        notes = []
        for impl in ORDER:
            res = rows.get(impl)
            if res is None:
                continue
            label = impls.IMPLS[impl][2]
            if res.get("skipped") or res.get("error"):
                why = res.get("skipped") or res["error"].strip().splitlines()[-1]
                notes.append("%s: %s" % (label, why.replace("|", "/")))
                if not res.get("modes"):
                    w("| %s | — | — | — | — | — | — | — | — | — | — | %s |" % (
                        label, "skipped" if res.get("skipped") else "**error**"))
                    continue
            cells = [label]
            ratio = {}
            for mode in ("fwd", "grad"):
                med, mn, ext = scaled(res, mode, T)
                pre = "~" if ext else ""
                cells.append("%s%s [%s]" % (pre, _fmt_ms(med), _fmt_ms(mn)) if med else "—")
                ratio[mode] = med / base_t[mode] if med and base_t[mode] else None
            cells += [_fmt_x(ratio["fwd"]), _fmt_x(ratio["grad"])]
            g = gflops(B, N, T, "grad", scaled(res, "grad", T)[0])
            cells.append("%.3g" % g if g is not None and impl != "mx_log_softmax" else "—")
            cells.append("%.2g%%" % (100 * g / peak_gf) if g is not None and impl != "mx_log_softmax"
                         else "—")
            m = res["modes"].get("grad", {})
            if m.get("peak_rss_kib"):
                cells.append("%.0f (+%.0f)" % (m["peak_rss_kib"] / 1024.0,
                                               (m["peak_rss_kib"] - (m["base_rss_kib"] or 0)) / 1024.0))
            else:
                cells.append("—")
            e = res.get("errors", {})
            if impl == "numpy_ref":
                cells += ["(reference)", "(reference)"]
            else:
                cells += [_fmt_err(e.get("loglik")), _fmt_err(e.get("grads"))]
            cw = m.get("cpu_over_wall")
            cells.append("%.2f" % cw if cw else "—")
            note = []
            if res.get("T_run", T) != T:
                note.append("T_run=%d" % res["T_run"])
            if impl == "jax":
                note.append("compile+1st call %.2f s" % res["modes"]["grad"]["first_s"])
            if res.get("cpus"):
                note.append("pinned to CPU %s" % ",".join(map(str, res["cpus"])))
            if res.get("error"):
                note.append("**error** (see below)")
            if res.get("retried"):
                note.append("**rerun: %s**" % res["retried"])
            cells.append(", ".join(note))
            w("| " + " | ".join(cells) + " |")
        bp = best_peer(rows, T)
        if bp:
            w("\nBest peer (fwd+grad): %s." % impls.IMPLS[bp[0]][2])
        for n in notes:
            w("\n- %s" % n)
        w("")

    # ------------------------------------------------------------------ targets
    w("## Targets\n")
    w("Pass/fail on medians, fwd+grad unless stated; speedup = peer time / gluon_hmm time.  The same "
      "ratio on the minimum times is shown beside it: where the two disagree, the verdict is noise-bound "
      "(machine load).\n")
    w("| target | gluon_hmm API | measured (medians) | same on min times | threshold | result |")
    w("|---|---|---|---|---|---|")

    def row(target, api, vals, threshold, ok, fmt="%.2fx"):
        """vals = (on medians, on minima); ok(value) -> bool."""
        v, vmin = vals
        if v is None:
            w("| %s | %s | — | — | %s | not measured |" % (target, api, threshold))
        else:
            w("| %s | %s | %s | %s | %s | %s |" % (target, api, fmt % v,
                                                 fmt % vmin if vmin is not None else "—", threshold,
                                                 "PASS" if ok(v) else "**FAIL**"))

    def t2(rows, impl, T):
        med, mn, _ = scaled(rows.get(impl, {}), "grad", T)
        return med, mn

    def ratio(num, den):
        return tuple(n / d if n and d else None for n, d in zip(num, den))

    apis = (("gh_numpy", "gh.numpy"), ("gh_mxnet", "MXNet op"))
    for wl, thr in TARGETS_SPEEDUP:
        if wl not in results:
            continue
        rows = results[wl]
        bp = best_peer(rows, wl[2])
        bpt = t2(rows, bp[0], wl[2]) if bp else (None, None)
        for impl, api in apis:
            row("B,N,T=%s: >= %.1fx best peer (%s)" % (",".join(map(str, wl)), thr,
                                                        bp[0] if bp else "none"),
                api, ratio(bpt, t2(rows, impl, wl[2])), ">= %.1fx" % thr, lambda v, thr=thr: v >= thr)
    wl = (1, 8, 100000)
    if wl in results:
        rows = results[wl]
        hs = t2(rows, "hmmlearn_scaling", wl[2])
        for impl, api in apis:
            row("1,8,100000: >= 4x hmmlearn 'scaling'", api, ratio(hs, t2(rows, impl, wl[2])), ">= 4x",
                lambda v: v >= 4)
    wl = ROUND_TRIP_WORKLOAD
    if wl in results:
        rows = results[wl]
        hl = [t2(rows, i, wl[2]) for i in ("hmmlearn_scaling", "hmmlearn_log")]
        hl = [x for x in hl if x[0]]
        fastest = min(hl) if hl else (None, None)
        row("1,4,30: gh.numpy time <= 0.5x the faster hmmlearn's", "gh.numpy",
            ratio(t2(rows, "gh_numpy", wl[2]), fastest), "<= 0.5x", lambda v: v <= 0.5)
        row("1,4,30: MXNet round trip <= 1.5x built-in log_softmax round trip", "MXNet op",
            ratio(t2(rows, "gh_mxnet", wl[2]), t2(rows, "mx_log_softmax", wl[2])), "<= 1.5x",
            lambda v: v <= 1.5)
    wl = (8, 50, 1000)
    if wl in results:
        for impl, api in apis:
            vals = tuple(100 * gflops(*wl, "grad", t) / peak_gf if t else None
                         for t in t2(results[wl], impl, wl[2]))
            row("8,50,1000: >= 35% of single-core FMA peak", api, vals, ">= 35%",
                lambda v: v >= 35, fmt="%.1f%%")
    if scaling:
        for (wl, impl), pair in scaling.items():
            m1 = pair[1].get("modes", {}).get("grad", {})
            m2 = pair[2].get("modes", {}).get("grad", {})
            row("B,N,T=%s: 2 threads >= 1.8x 1 thread" % ",".join(map(str, wl)), dict(apis)[impl],
                ratio((m1.get("median_s"), m1.get("min_s")), (m2.get("median_s"), m2.get("min_s"))),
                ">= 1.8x", lambda v: v >= 1.8)
    wl = ACCURACY_WORKLOAD
    if wl in results:
        for impl, api in apis:
            e = results[wl].get(impl, {}).get("errors", {}).get("grads")
            row("1,8,100000: float32 grads within 1e-3 relative of float64", api, (e, None), "<= 1e-3",
                lambda v: v <= 1e-3, fmt="%.1e")
    w("")

    # ------------------------------------------------------------ detail sections
    wl = ROUND_TRIP_WORKLOAD
    if wl in results and "mx_log_softmax" in results[wl]:
        rows = results[wl]
        w("## MXNet round trip at B=1, N=4, T=30\n")
        w("Round trip = `autograd.record()` forward, `backward()`, wait for the gradients.\n")
        w("| op | fwd µs median | fwd+grad µs median |")
        w("|---|---|---|")
        for impl in ("gh_mxnet", "mx_log_softmax", "gh_numpy"):
            res = rows.get(impl, {})
            f, g = (scaled(res, m, wl[2])[0] for m in ("fwd", "grad"))
            w("| %s | %s | %s |" % (impls.IMPLS[impl][2], "%.1f" % (f * 1e6) if f else "—",
                                    "%.1f" % (g * 1e6) if g else "—"))
        w("")
    wl = ACCURACY_WORKLOAD
    if wl in results:
        w("## float32 accuracy at B=1, N=8, T=100000 (vs float64 reference)\n")
        w("| implementation | loglik | d log_init | d log_trans | d log_emit |")
        w("|---|---|---|---|---|")
        for impl in ORDER:
            e = results[wl].get(impl, {}).get("errors")
            if not e or impl == "numpy_ref" or results[wl][impl].get("T_run", wl[2]) != wl[2]:
                continue
            w("| %s | %s | %s | %s | %s |" % (impls.IMPLS[impl][2], _fmt_err(e.get("loglik")),
                                              _fmt_err(e.get("g_init")), _fmt_err(e.get("g_trans")),
                                              _fmt_err(e.get("g_emit"))))
        w("")
    if memory:
        w("## Memory: B=1, N=8, T=1,000,000, forward + gradients (one call)\n")
        B, N, T = MEMORY_WORKLOAD
        w("Input log_emit alone is %.1f MiB (float32); its gradient as much again.\n"
          % (B * N * T * 4 / 2 ** 20))
        w("| implementation | time s | peak RSS MiB | Δ over RSS before the call MiB |")
        w("|---|---|---|---|")
        for impl, res in memory.items():
            m = res.get("modes", {}).get("grad")
            if not m:
                w("| %s | — | — | %s |" % (impls.IMPLS[impl][2], res.get("error") or res.get("skipped")))
                continue
            w("| %s | %.2f | %.0f | %.0f |" % (impls.IMPLS[impl][2], m["median_s"],
                                              m["peak_rss_kib"] / 1024.0,
                                              (m["peak_rss_kib"] - m["base_rss_kib"]) / 1024.0))
        w("")
    if scaling:
        w("## Thread scaling (gluon_hmm, 2 threads vs 1, B >= 8)\n")
        w("On a 2-core machine shared with other work, 2-thread numbers are only as good as the "
          "second core is idle: see the load average above.  Each figure pools %d rounds, each a "
          "fresh process that times 1 and 2 threads in turns, sample by sample (1, 2, 2, 1, ...; "
          "samples of a few ms, one inner-loop length for both counts, after one untimed call on "
          "the new count), so that both counts see the same moments of a host whose speed "
          "drifts from second to second; a round has 2/%d of the budget per mode for both "
          "counts together; the round medians are in the JSON.\n" % (meta["scaling_rounds"],
                                                                      meta["scaling_rounds"]))
        ms = meta.get("machine_scaling") or []
        if ms:
            w("The machine itself, measured just before and just after these rounds: %s "
              "(%s; an upper bound for two-thread compute on these two vCPUs: ~2x on dedicated cores, ~1x when the host runs them on one physical core).\n"
              % (" / ".join("%.2fx" % m["ratio"] if m else "n/a" for m in ms),
                 next((m["how"] for m in ms if m), "probe unavailable")))
        w("Last column: each round's fwd+grad speedup (its 1-thread median / its 2-thread median) "
          "and, in brackets, the machine's FMA probe run just before that round (2 rounds of 20 "
          "short pieces): a round whose probe is near 1x ran while the two vCPUs shared a core.\n")
        w("| workload | API | fwd 1T ms | fwd 2T ms | fwd speedup | fwd+grad 1T ms | fwd+grad 2T ms "
          "| fwd+grad speedup | CPU/wall 2T | per round (probe) |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for (wl, impl), pair in scaling.items():
            cells = [",".join(map(str, wl)), dict(apis)[impl]]
            for mode in ("fwd", "grad"):
                t1 = pair[1].get("modes", {}).get(mode, {}).get("median_s")
                t2 = pair[2].get("modes", {}).get(mode, {}).get("median_s")
                cells += [_fmt_ms(t1), _fmt_ms(t2), _fmt_x(t1 / t2) if t1 and t2 else "—"]
            cw = pair[2].get("modes", {}).get("grad", {}).get("cpu_over_wall")
            cells.append("%.2f" % cw if cw else "—")
            r1 = pair[1].get("modes", {}).get("grad", {}).get("round_medians_s") or []
            r2 = pair[2].get("modes", {}).get("grad", {}).get("round_medians_s") or []
            probes = pair.get("probes") or [None] * len(r1)   # one per round
            cells.append(", ".join(
                "%.2f (%s)" % (a / b, "%.2f" % pr if pr else "n/a")
                for a, b, pr in zip(r1, r2, probes) if a and b) or "—")
            w("| " + " | ".join(cells) + " |")
        w("")
    return "\n".join(L) + "\n"


def parse_workload(s):
    try:
        B, N, T = (int(x) for x in s.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a workload is B,N,T (three integers), got %r" % s)
    if min(B, N, T) < 1:
        raise argparse.ArgumentTypeError("B, N and T must be >= 1, got %r" % s)
    return (B, N, T)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run (< 60 s): workloads %s, few repeats, no JAX/torch/MXNet loop, no memory run"
                        % " ".join("%d,%d,%d" % w for w in QUICK_WORKLOADS))
    p.add_argument("--workloads", nargs="+", type=parse_workload, metavar="B,N,T",
                   help="default: %s" % " ".join("%d,%d,%d" % w for w in WORKLOADS))
    p.add_argument("--impls", nargs="+", choices=ORDER, default=None,
                   help="implementations to run (the float64 reference always runs)")
    p.add_argument("--threads", type=int, default=1, help="threads per implementation (default 1)")
    p.add_argument("--pin", choices=("unruly", "all", "none"), default="unruly",
                   help="restrict a worker's CPU affinity to the --threads least busy CPUs: "
                        "'unruly' (default) only for libraries that ignore thread settings (JAX), "
                        "'all' for every worker, 'none' never")
    p.add_argument("--scaling", action="store_true", help="also run gluon_hmm with 2 threads vs 1, B >= 8")
    p.add_argument("--scaling-rounds", type=int, default=None,
                   help="rounds per --scaling measurement: fresh processes that each time 1 and 2 "
                        "threads in turns, with 2/rounds of the budget (default 3, quick 1)")
    p.add_argument("--memory", dest="memory", action="store_true", default=None,
                   help="run the memory-only case B,N,T=1,8,1e6 (default: on unless --quick or "
                        "--workloads is given)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--peer-python", default=os.environ.get("GLUON_HMM_BENCH_PEER_PYTHON", sys.executable),
                   help="interpreter that has torch and jax (default: $GLUON_HMM_BENCH_PEER_PYTHON "
                        "or this one)")
    p.add_argument("--repeats", type=int, default=None, help="max samples per mode (default 15, quick 5)")
    p.add_argument("--min-repeats", type=int, default=None, help="min samples per mode (default 3, quick 2)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of the main tables: fresh processes per implementation, the "
                        "order reversed every other round, budget and samples split "
                        "between them (default 2, quick 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of sampling per mode (default 1.5, quick 0.2)")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--out", help="write the Markdown report here (also printed)")
    p.add_argument("--json", help="write raw results as JSON here")
    p.add_argument("-q", "--quiet", dest="verbose", action="store_false",
                   help="no progress on stderr")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1, got %d" % args.threads)
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.min_repeats = args.min_repeats or (2 if args.quick else 3)
    args.budget = args.budget if args.budget is not None else (0.2 if args.quick else 1.5)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.rounds < 1:
        p.error("--rounds must be >= 1, got %d" % args.rounds)
    if args.scaling_rounds is None:
        args.scaling_rounds = 1 if args.quick else 3
    if args.scaling_rounds < 1:
        p.error("--scaling-rounds must be >= 1, got %d" % args.scaling_rounds)
    workloads = args.workloads or (QUICK_WORKLOADS if args.quick else WORKLOADS)
    if args.memory is None:
        args.memory = not args.quick and not args.workloads
    selected = set(args.impls or [i for i in ORDER if not (args.quick and i in QUICK_SKIP)])

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    meta = dict(date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                command="python benchmarks/run.py " + " ".join(shlex.quote(a) for a in
                                                               (argv if argv is not None else sys.argv[1:])),
                cpu=cpu_model(), cores=os.cpu_count(), threads=args.threads,
                budget=args.budget, repeats=args.repeats, git=_git_rev(),
                scaling_rounds=args.scaling_rounds, rounds=args.rounds,
                pin={"none": "no worker pinned",
                     "all": "every worker pinned to its --threads least busy CPUs at start",
                     "unruly": "only %s pinned to its --threads least busy CPU(s) at start (XLA "
                               "ignores thread settings); the others are limited by their thread "
                               "settings alone" % ", ".join(UNRULY)}[args.pin])
    try:
        with open("/proc/meminfo") as f:
            meta["mem"] = "%.0f GiB RAM" % (int(f.readline().split()[1]) / 2 ** 20)
    except OSError:
        meta["mem"] = "RAM unknown"
    lib = os.path.join(REPO, "gluon_hmm", "libgluon_hmm_mxnet.so")
    def lib_mtime():
        return (datetime.datetime.fromtimestamp(os.path.getmtime(lib)).strftime("%Y-%m-%d %H:%M:%S")
                if os.path.exists(lib) else "missing")
    meta["lib_mtime"] = lib_mtime()
    log = (lambda *a: print(*a, file=sys.stderr)) if args.verbose else (lambda *a: None)

    peak_gf, peak_how = peak.measure(quick=args.quick)
    log("FMA peak: %.1f GFLOP/s (%s)" % (peak_gf, peak_how))
    tmp = tempfile.mkdtemp(prefix="gluon_hmm_bench_")
    try:
        runner = Runner(args, tmp)
        results = {}
        for wl in workloads:
            log("workload B,N,T=%d,%d,%d" % wl)
            results[wl] = run_workload(runner, wl, selected, args)
        memory = None
        if args.memory:
            log("memory run B,N,T=%d,%d,%d" % MEMORY_WORKLOAD)
            memory = run_memory(runner, args)
        scaling = None
        if args.scaling:
            log("thread scaling")
            machine = [peak.two_thread_scaling(quick=args.quick)]
            scaling = run_scaling(runner, workloads, args)
            machine.append(peak.two_thread_scaling(quick=args.quick))
            meta["machine_scaling"] = machine
            log("machine's own 2-thread FMA scaling before/after: %s" % [
                "%.2fx" % m["ratio"] if m else "n/a" for m in machine])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()
    meta["lib_mtime_end"] = lib_mtime()
    meta.update(load_start="%.2f / %.2f / %.2f" % load_start,
                load_end="%.2f / %.2f / %.2f" % load_end,
                load_mean=float(np.mean(runner.loads)) if runner.loads else load_start[0],
                load_max=float(np.max(runner.loads)) if runner.loads else load_start[0],
                versions=_versions(list(results.values()) + ([memory] if memory else [])))
    report = render(meta, workloads, results, memory, scaling, peak_gf, peak_how)
    report += "\nTotal benchmark wall time: %.0f s.\n" % (time.perf_counter() - t_start)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        def key(k):
            return ",".join(map(str, k)) if isinstance(k, tuple) else str(k)
        raw = dict(meta=meta, peak_gflops=peak_gf, peak_method=peak_how,
                   results={key(k): v for k, v in results.items()}, memory=memory,
                   scaling={"%s %s" % (key(k[0]), k[1]): {str(t): r for t, r in v.items()}
                            for k, v in (scaling or {}).items()})
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
