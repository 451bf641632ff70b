"""Smoke test of the benchmark harness: a --quick run on the tiniest workload.

Runs ``benchmarks/run.py --quick --workloads 1,4,30 --rounds 2`` in a subprocess
(about 30 s) and checks that the Markdown report has the workload table, every
gluon_hmm row with a time and a small error, and the targets table.

    PYTHONPATH=. python -m pytest -q benchmarks/test_smoke.py
"""
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def test_quick_run_writes_the_table(tmp_path):
    out = tmp_path / "results.md"
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--quick", "--quiet",
                        "--workloads", "1,4,30", "--rounds", "2", "--out", str(out),
                        "--json", str(tmp_path / "results.json")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "split between 2 rounds" in text
    rows = json.loads((tmp_path / "results.json").read_text())["results"]["1,4,30"]
    for impl in ("gh_numpy", "gh_mxnet", "mx_log_softmax", "numpy_ref"):
        # two fresh processes each, samples pooled; the errors come from the first
        assert rows[impl]["rounds"] == 2, rows[impl]
        for mode in ("fwd", "grad"):
            m = rows[impl]["modes"][mode]
            assert len(m["round_medians_s"]) == 2 and len(m["samples"]) >= 4, m
            assert m["peak_rss_kib"] > 0 and m["first_s"] > 0, m
    assert rows["gh_numpy"]["errors"]["grads"] < 1e-4
    # the per-workload table has 12 columns (other tables name the same implementations)
    wide = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 13]
    assert "## B=1, N=4, T=30" in text
    assert "## Targets" in text
    assert "FMA peak" in text and "load average" in text and "python benchmarks/run.py" in text
    for label in ("gluon_hmm (gh.numpy.value_and_grad)", "gluon_hmm (MXNet op + autograd)",
                  "NumPy float64 reference", "built-in mx.nd.log_softmax"):
        rows = [line for line in wide if line.startswith("| " + label)]
        assert len(rows) == 1, (label, text)
        assert "error" not in rows[0] and "skipped" not in rows[0], rows[0]
        assert re.search(r"\| \d+\.\d+ \[\d+\.\d+\] \|", rows[0]), rows[0]   # a median [min] time
    for label in ("gluon_hmm (gh.numpy.value_and_grad)", "gluon_hmm (MXNet op + autograd)"):
        row = next(line for line in wide if line.startswith("| " + label))
        cells = [c.strip() for c in row.strip("|").split("|")]
        loglik_err, grad_err = float(cells[8]), float(cells[9])
        assert loglik_err < 1e-4 and grad_err < 1e-4, row


def test_quick_scaling_run_reports_rounds_and_the_machine(tmp_path):
    out = tmp_path / "results.md"
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--quick", "--quiet",
                        "--scaling", "--scaling-rounds", "2", "--workloads", "8,50,20",
                        "--impls", "gh_numpy", "gh_mxnet", "--out", str(out),
                        "--json", str(tmp_path / "results.json")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "## Thread scaling" in text and "pools 2 rounds" in text
    assert "times 1 and 2 threads in turns" in text
    scaling = json.loads((tmp_path / "results.json").read_text())["scaling"]
    assert sorted(scaling) == ["8,50,20 gh_mxnet", "8,50,20 gh_numpy"]
    for entry in scaling.values():
        for mode in ("fwd", "grad"):
            # 1 and 2 threads timed in turns: as many samples of each, in every round
            one, two = (entry[t]["modes"][mode] for t in ("1", "2"))
            assert len(one["samples"]) == len(two["samples"]) >= 2
            assert len(one["round_medians_s"]) == len(two["round_medians_s"]) == 2
    m = re.search(r"measured just before and just after these rounds: (\S+) / (\S+)", text)
    assert m, text
    for v in m.groups():   # the FMA probe: between ~1x (one shared core) and ~2x
        assert v == "n/a" or 0.5 < float(v.rstrip("x")) < 2.3, m.group(0)
    rows = [line for line in text.splitlines() if line.startswith("| 8,50,20 |")]
    assert len(rows) == 2, text
    for row in rows:   # per round: "speedup (probe)", one per round
        per_round = re.findall(r"(\d+\.\d+) \((\d+\.\d+|n/a)\)", row.split("|")[-2])
        assert len(per_round) == 2, row
        for speedup, probe in per_round:
            # (well-formed, not a verdict: short probes on a shared VM stray far from 1x-2x)
            assert 0.01 < float(speedup) < 20 and (probe == "n/a" or 0.1 < float(probe) < 10), row


def test_merge_rounds_pools_samples():
    sys.path.insert(0, HERE)
    import run
    a = dict(impl="x", modes={"grad": dict(samples=[3.0, 1.0, 2.0], median_s=2.0, cpu_over_wall=1.0)})
    b = dict(impl="x", modes={"grad": dict(samples=[5.0, 4.0], median_s=4.5, cpu_over_wall=2.0)})
    m = run.merge_rounds([a, b])
    g = m["modes"]["grad"]
    assert m["rounds"] == 2 and g["samples"] == [3.0, 1.0, 2.0, 5.0, 4.0]
    assert g["median_s"] == 3.0 and g["min_s"] == 1.0 and g["round_medians_s"] == [2.0, 4.5]
    assert g["cpu_over_wall"] == 1.5
    err = dict(impl="x", error="boom", modes={})
    assert run.merge_rounds([a, err]) is err
