"""Every example runs end to end with --quick, in a fresh process.

An example whose optional dependency (its data set's package) is not
installed is skipped, naming the missing package; install them with
``pip install -r examples/requirements.txt``.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name, *args, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
                          env=env)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (name, proc.stdout[-3000:],
                                                         proc.stderr[-3000:])
    return proc.stdout


def needs(*modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason="optional example dependency not "
                              "installed: %s (pip install -r examples/requirements.txt)"
                              % ", ".join(missing))


def test_gist_hmm():
    out = run_example("gist_hmm.py")
    assert "max |naive - gluon_hmm|" in out and "speedup" in out


@needs("statsmodels", "matplotlib")
def test_gaussian_gdp(tmp_path):
    png = tmp_path / "gdp.png"
    out = run_example("gaussian_gdp.py", "--output", str(png))
    assert "EM:" in out and "non-decreasing" in out and "recession regime" in out
    assert png.stat().st_size > 10000


@needs("sktime")
def test_neural_hmm_vowels():
    out = run_example("neural_hmm_vowels.py")
    assert "test accuracy" in out and "non-decreasing" in out


@needs("turkish_treebanks")
def test_crf_tagger():
    out = run_example("crf_tagger.py")
    assert "BiLSTM encoder: CRF vs softmax" in out
