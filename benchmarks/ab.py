#!/usr/bin/env python
"""A/B timing of two builds (or two settings) of gluon_hmm, rounds interleaved.

    # two checkouts, each built in place (git worktree add /tmp/base <rev>; build there)
    python benchmarks/ab.py /tmp/base . --shapes 8,50,1000 64,16,500 --rounds 4
    # one checkout, two settings: one thread against two
    python benchmarks/ab.py .:GLUON_HMM_NUM_THREADS=1 .:GLUON_HMM_NUM_THREADS=2 --impl gh_mxnet

A side is ``ROOT[:VAR=VALUE[,VAR=VALUE...]]``: gluon_hmm is imported from ROOT
with those environment variables set.  Each round runs side A then side B (the
order alternates between rounds), each in a fresh process that times every
shape for ``--budget`` seconds per mode.  On a shared VM whose speed drifts
from minute to minute this puts both sides into the same minutes; the report
gives, per shape and mode, the minimum per call over all rounds, the median of
the rounds' medians, and B's time as a fraction of A's for both.

Used for the A/B lines in benchmarks/NOTES.md.  The full comparison against
peer libraries is benchmarks/run.py.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, os, statistics, sys, time
sys.path.insert(0, %(here)r)
import numpy as np
import impls, run
out = {}
for B, N, T in %(shapes)r:
    li, lt, le = run.make_inputs(B, N, T, 0)
    impl = impls.IMPLS[%(impl)r][0](li, lt, le, int(os.environ.get("GLUON_HMM_NUM_THREADS", "0")))
    for mode in ("fwd", "grad"):
        fn = getattr(impl, mode)
        fn(); fn()
        t0 = time.perf_counter(); fn(); one = time.perf_counter() - t0
        inner = max(1, int(0.002 / max(one, 1e-7)))
        samples, start = [], time.perf_counter()
        while len(samples) < 5 or time.perf_counter() - start < %(budget)r:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
        out["%%d,%%d,%%d %%s" %% (B, N, T, mode)] = (min(samples), statistics.median(samples))
print("AB-RESULT " + json.dumps(out))
"""


def parse_side(text):
    root, _, env = text.partition(":")
    extra = {}
    for item in filter(None, env.split(",")):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit("side %r: expected ROOT[:VAR=VALUE,...], got the item %r" % (text, item))
        extra[k] = v
    root = os.path.abspath(root)
    if not os.path.isdir(os.path.join(root, "gluon_hmm")):
        raise SystemExit("side %r: no gluon_hmm package under %s" % (text, root))
    return root, extra


def run_side(side, shapes, impl, budget):
    root, extra = side
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "GLUON_HMM_NUM_THREADS": "1"})
    env.update(extra)
    env["PYTHONPATH"] = root
    code = CHILD % dict(here=HERE, shapes=shapes, impl=impl, budget=budget)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=root)
    for line in r.stdout.splitlines():
        if line.startswith("AB-RESULT "):
            return json.loads(line[len("AB-RESULT "):])
    raise SystemExit("side %s failed (exit %d):\n%s" % (root, r.returncode, r.stderr[-2000:]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="side A: ROOT[:VAR=VALUE,...]")
    p.add_argument("b", help="side B: ROOT[:VAR=VALUE,...]")
    p.add_argument("--shapes", nargs="+", default=["8,50,100", "8,50,1000", "64,16,500", "16,256,200",
                                                   "1,8,100000"], help="B,N,T workloads")
    p.add_argument("--impl", default="gh_numpy", choices=["gh_numpy", "gh_mxnet"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--budget", type=float, default=0.6, help="seconds per shape and mode per round")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be >= 1, got %d" % args.rounds)
    try:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    except ValueError:
        p.error("--shapes: expected B,N,T integers, got %s" % " ".join(args.shapes))
    if any(len(s) != 3 or min(s) < 1 for s in shapes):
        p.error("--shapes: expected positive B,N,T, got %s" % " ".join(args.shapes))
    sides = [parse_side(args.a), parse_side(args.b)]
    results = [[], []]
    for r in range(args.rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for s in order:
            results[s].append(run_side(sides[s], shapes, args.impl, args.budget))
        print("round %d done %s" % (r + 1, time.strftime("%H:%M:%S")), file=sys.stderr)
    print("A = %s %s\nB = %s %s\nimpl %s, %d rounds, load %.2f at the end\n"
          % (sides[0][0], sides[0][1], sides[1][0], sides[1][1], args.impl, args.rounds,
             os.getloadavg()[0]))
    print("%-22s %11s %11s %7s   %11s %11s %7s" % ("shape mode", "A min", "B min", "B/A",
                                                   "A med", "B med", "B/A"))
    for key in results[0][0]:
        mins = [min(x[key][0] for x in results[s]) for s in (0, 1)]
        meds = [statistics.median(x[key][1] for x in results[s]) for s in (0, 1)]
        print("%-22s %9.4fms %9.4fms %7.3f   %9.4fms %9.4fms %7.3f"
              % (key, mins[0] * 1e3, mins[1] * 1e3, mins[1] / mins[0],
                 meds[0] * 1e3, meds[1] * 1e3, meds[1] / meds[0]))


if __name__ == "__main__":
    main()
