"""Loads the MXNet operator library (libgluon_hmm_mxnet.so) exactly once."""
import ctypes
import os
import threading

_LOCK = threading.Lock()
_LOADED = None
LIBRARY_NAME = "libgluon_hmm_mxnet.so"
OP_NAMES = ("hmm_log_likelihood", "hmm_posterior", "hmm_viterbi", "hmm_sample")


def library_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def _check_mxnet(mx):
    version = getattr(mx, "__version__", "unknown")
    if not version.startswith("1.9."):
        raise ImportError(
            "gluon_hmm needs mxnet 1.9.x (its operator library is built against MXNet 1.9's "
            "lib_api), found mxnet %s" % version)


def load():
    """Load the op library into MXNet (idempotent and thread-safe); returns a ctypes handle.

    MXNet 1.9.1 fails when the same library is loaded a third time, so it is
    loaded once per process under a lock.
    """
    global _LOADED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        import mxnet as mx
        _check_mxnet(mx)
        path = library_path()
        if not os.path.exists(path):
            raise ImportError(
                "gluon_hmm's MXNet operator library is missing at %s: build the package first "
                "(make build, or pip install .)" % path)
        mx.library.load(path, verbose=False)
        missing = [n for n in OP_NAMES if not hasattr(mx.nd, n) or not hasattr(mx.sym, n)]
        if missing:
            raise ImportError("loading %s did not register the operators %s" % (path, missing))
        _LOADED = ctypes.CDLL(path)
        return _LOADED
