"""Smoke test of the benchmark harness: a --quick run on the tiniest workload.

Runs ``benchmarks/run.py --quick --workloads 1,4,30`` in a subprocess (about
20 s) and checks that the Markdown report has the workload table, every
gluon_hmm row with a time and a small error, and the targets table.

    PYTHONPATH=. python -m pytest -q benchmarks/test_smoke.py
"""
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
                        "--workloads", "1,4,30", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
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
