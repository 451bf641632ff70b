"""The implementations being compared, one adapter class each.

Every adapter is built from the same float32 inputs -- ``log_init`` (N,),
``log_trans`` (N, N), ``log_emit`` (B, T, N) -- converts them to its native
arrays in ``__init__`` (outside the timed region), and offers

* ``fwd()``  -> log-likelihood of every sequence, (B,) (finished computing: any
  asynchronous engine is waited on);
* ``grad()`` -> log-likelihood plus the gradients of ``sum(loglik)`` w.r.t.
  log_init, log_trans and log_emit (finished computing);
* ``to_numpy(out, mode)`` -> ``dict(loglik=..., g_init=..., g_trans=...,
  g_emit=...)`` as float64 NumPy arrays (called after timing, for the error check).

Framework imports happen inside the adapters, so a worker process only loads
what its own implementation needs (and torch/JAX may live in another venv).
"""
import importlib.util
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def load_reference():
    """gluon_hmm/reference.py loaded by path: NumPy only, no MXNet, no build needed."""
    path = os.path.join(REPO, "gluon_hmm", "reference.py")
    spec = importlib.util.spec_from_file_location("_gluon_hmm_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _f64(x):
    return np.asarray(x, dtype=np.float64)


class GluonNumpy:
    """gluon_hmm.numpy: the C++ engine through its Cython binding (float32)."""

    def __init__(self, li, lt, le, threads):
        import gluon_hmm
        import gluon_hmm.numpy as ghn
        gluon_hmm.set_num_threads(threads)
        self.ghn, self.threads = ghn, threads
        self.args = (np.ascontiguousarray(li), np.ascontiguousarray(lt), np.ascontiguousarray(le))

    def set_threads(self, n):
        self.threads = n

    def fwd(self):
        return self.ghn.log_likelihood(*self.args, num_threads=self.threads)

    def grad(self):
        return self.ghn.value_and_grad(*self.args, num_threads=self.threads)

    def to_numpy(self, out, mode):
        if mode == "fwd":
            return dict(loglik=_f64(out))
        ll, g = out
        return dict(loglik=_f64(ll), g_init=_f64(g.log_init), g_trans=_f64(g.log_trans),
                    g_emit=_f64(g.log_emit))


class GluonMXNet:
    """gh.log_likelihood on mx.nd arrays; fwd+grad is an autograd record + backward round trip."""

    def __init__(self, li, lt, le, threads):
        import mxnet as mx
        import gluon_hmm as gh
        gh.set_num_threads(threads)
        self.mx, self.gh = mx, gh
        self.args = [mx.nd.array(x, dtype=np.float32) for x in (li, lt, le)]
        for a in self.args:
            a.attach_grad()
        mx.nd.waitall()

    def set_threads(self, n):
        self.mx.nd.waitall()
        self.gh.set_num_threads(n)

    def fwd(self):
        y = self.gh.log_likelihood(*self.args)
        y.wait_to_read()
        return y

    def grad(self):
        mx = self.mx
        with mx.autograd.record():
            y = self.gh.log_likelihood(*self.args)
        y.backward()
        for a in self.args:
            a.grad.wait_to_read()
        return y

    def to_numpy(self, out, mode):
        d = dict(loglik=_f64(out.asnumpy()))
        if mode == "grad":
            d.update(g_init=_f64(self.args[0].grad.asnumpy()),
                     g_trans=_f64(self.args[1].grad.asnumpy()),
                     g_emit=_f64(self.args[2].grad.asnumpy()))
        return d


class MXNetBuiltinLogSoftmax:
    """Not an HMM: mx.nd.log_softmax on the (B, T, N) emissions, the round-trip cost of a built-in op."""

    def __init__(self, li, lt, le, threads):
        import mxnet as mx
        self.mx = mx
        self.x = mx.nd.array(le, dtype=np.float32)
        self.x.attach_grad()
        mx.nd.waitall()

    def fwd(self):
        y = self.mx.nd.log_softmax(self.x, axis=-1)
        y.wait_to_read()
        return y

    def grad(self):
        mx = self.mx
        with mx.autograd.record():
            y = mx.nd.log_softmax(self.x, axis=-1)
        y.backward()
        self.x.grad.wait_to_read()
        return y

    def to_numpy(self, out, mode):
        return None  # a different function: no error against the HMM reference


class _HmmlearnBase:
    """hmmlearn's compiled kernels (hmmlearn._hmmc), one sequence per call, Python loop over B.

    hmmlearn has one shared start/transition matrix and works sequence by
    sequence, in float64, in probability space for its parameters.  The float64
    copies of the inputs are made once, outside timing; what hmmlearn computes
    on every call of ``score_samples``/``fit`` (frame probabilities for
    'scaling', posteriors and xi sums) is inside.
    """

    def __init__(self, li, lt, le, threads):
        from hmmlearn import _hmmc
        from hmmlearn import utils
        self.hmmc, self.utils = _hmmc, utils
        self.startprob = np.exp(_f64(li))
        self.transmat = np.exp(_f64(lt))
        self.le = np.ascontiguousarray(_f64(le))

    def to_numpy(self, out, mode):
        if mode == "fwd":
            return dict(loglik=_f64(out))
        ll, g_init, g_trans, g_emit = out
        return dict(loglik=ll, g_init=g_init, g_trans=g_trans, g_emit=g_emit)


class HmmlearnScaling(_HmmlearnBase):
    """implementation='scaling': forward_scaling, backward_scaling, compute_scaling_xi_sum."""

    def fwd(self):
        h = self.hmmc
        out = np.empty(self.le.shape[0])
        for b in range(self.le.shape[0]):
            out[b] = h.forward_scaling(self.startprob, self.transmat, np.exp(self.le[b]))[0]
        return out

    def grad(self):
        h, tm = self.hmmc, self.transmat
        B, T, N = self.le.shape
        ll = np.empty(B)
        g_emit = np.empty((B, T, N))
        g_trans = np.zeros((N, N))
        for b in range(B):
            frameprob = np.exp(self.le[b])
            ll[b], fwd, scaling = h.forward_scaling(self.startprob, tm, frameprob)
            bwd = h.backward_scaling(self.startprob, tm, frameprob, scaling)
            post = fwd * bwd
            self.utils.normalize(post, axis=1)
            g_emit[b] = post
            if T > 1:
                g_trans += h.compute_scaling_xi_sum(fwd, tm, bwd, frameprob)
        return ll, g_emit[:, 0].sum(axis=0), g_trans, g_emit


class HmmlearnLog(_HmmlearnBase):
    """implementation='log': forward_log, backward_log, compute_log_xi_sum."""

    def fwd(self):
        h = self.hmmc
        out = np.empty(self.le.shape[0])
        for b in range(self.le.shape[0]):
            out[b] = h.forward_log(self.startprob, self.transmat, self.le[b])[0]
        return out

    def grad(self):
        h, tm = self.hmmc, self.transmat
        B, T, N = self.le.shape
        ll = np.empty(B)
        g_emit = np.empty((B, T, N))
        g_trans = np.zeros((N, N))
        for b in range(B):
            ll[b], fwd = h.forward_log(self.startprob, tm, self.le[b])
            bwd = h.backward_log(self.startprob, tm, self.le[b])
            log_post = fwd + bwd
            self.utils.log_normalize(log_post, axis=1)
            with np.errstate(under="ignore"):
                g_emit[b] = np.exp(log_post)
                if T > 1:
                    g_trans += np.exp(h.compute_log_xi_sum(fwd, tm, bwd, self.le[b]))
        return ll, g_emit[:, 0].sum(axis=0), g_trans, g_emit


class NumpyReference:
    """gluon_hmm.reference (float64, Python loop over time); its outputs are the ground truth."""

    def __init__(self, li, lt, le, threads):
        self.ref = load_reference()
        self.args = (_f64(li), _f64(lt), _f64(le))

    def fwd(self):
        return self.ref.log_likelihood(*self.args)

    def grad(self):
        return self.ref.posterior(*self.args)

    def to_numpy(self, out, mode):
        if mode == "fwd":
            return dict(loglik=_f64(out))
        return dict(loglik=out.loglik, g_init=out.init_counts, g_trans=out.trans_counts,
                    g_emit=out.gamma)


class MXNetLoop:
    """Plain MXNet NDArray code: a log-space forward recursion, one Python iteration per step,
    gradients by mx.autograd (what one writes without gluon_hmm)."""

    def __init__(self, li, lt, le, threads):
        import mxnet as mx
        self.mx = mx
        self.args = [mx.nd.array(x, dtype=np.float32) for x in (li, lt, le)]
        for a in self.args:
            a.attach_grad()
        mx.nd.waitall()

    def _logsumexp(self, x, axis):
        nd = self.mx.nd
        m = nd.BlockGrad(nd.max(x, axis=axis, keepdims=True))
        return nd.log(nd.sum(nd.exp(nd.broadcast_sub(x, m)), axis=axis)) + m.squeeze(axis=axis)

    def _loglik(self):
        nd = self.mx.nd
        li, lt, le = self.args
        T = le.shape[1]
        steps = nd.split(le, num_outputs=T, axis=1, squeeze_axis=True) if T > 1 else [le[:, 0]]
        trans = lt.expand_dims(0)                                # (1, N, N)
        alpha = nd.broadcast_add(li.expand_dims(0), steps[0])    # (B, N)
        for t in range(1, T):
            # alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + log_trans[i, j]) + log_emit[t, j]
            alpha = self._logsumexp(nd.broadcast_add(alpha.expand_dims(2), trans), axis=1) + steps[t]
        return self._logsumexp(alpha, axis=1)

    def fwd(self):
        y = self._loglik()
        y.wait_to_read()
        return y

    def grad(self):
        with self.mx.autograd.record():
            y = self._loglik()
        y.backward()
        for a in self.args:
            a.grad.wait_to_read()
        return y

    to_numpy = GluonMXNet.to_numpy


class TorchLoop:
    """PyTorch (CPU): log-space forward recursion, one Python iteration per step, autograd."""

    def __init__(self, li, lt, le, threads):
        import torch
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
        self.torch = torch
        self.args = [torch.tensor(np.asarray(x, np.float32), requires_grad=True) for x in (li, lt, le)]

    def _loglik(self):
        torch = self.torch
        li, lt, le = self.args
        alpha = li + le[:, 0]
        for t in range(1, le.shape[1]):
            alpha = torch.logsumexp(alpha.unsqueeze(2) + lt, dim=1) + le[:, t]
        return torch.logsumexp(alpha, dim=1)

    def fwd(self):
        with self.torch.no_grad():
            return self._loglik()

    def grad(self):
        ll = self._loglik()
        grads = self.torch.autograd.grad(ll.sum(), self.args)
        return ll, grads

    def to_numpy(self, out, mode):
        if mode == "fwd":
            return dict(loglik=_f64(out.numpy()))
        ll, (gi, gt, ge) = out
        return dict(loglik=_f64(ll.detach().numpy()), g_init=_f64(gi.numpy()),
                    g_trans=_f64(gt.numpy()), g_emit=_f64(ge.numpy()))


class JaxScan:
    """JAX (CPU, float32): lax.scan log-space forward, jax.value_and_grad, both jit-compiled.
    The first (compiling) call is the warm-up and is reported apart."""

    def __init__(self, li, lt, le, threads):
        import jax
        import jax.numpy as jnp
        from jax.scipy.special import logsumexp
        self.jax = jax

        def loglik(li, lt, le):
            def step(alpha, e_t):
                return logsumexp(alpha[:, :, None] + lt[None], axis=1) + e_t, None
            alpha, _ = jax.lax.scan(step, li[None] + le[:, 0], jnp.swapaxes(le[:, 1:], 0, 1))
            return logsumexp(alpha, axis=1)

        def total(li, lt, le):
            ll = loglik(li, lt, le)
            return ll.sum(), ll

        self._fwd = jax.jit(loglik)
        self._grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True))
        self.args = [jax.device_put(jnp.asarray(np.asarray(x, np.float32))) for x in (li, lt, le)]

    def fwd(self):
        return self._fwd(*self.args).block_until_ready()

    def grad(self):
        return self.jax.block_until_ready(self._grad(*self.args))

    def to_numpy(self, out, mode):
        if mode == "fwd":
            return dict(loglik=_f64(out))
        (_, ll), (gi, gt, ge) = out
        return dict(loglik=_f64(ll), g_init=_f64(gi), g_trans=_f64(gt), g_emit=_f64(ge))


# name -> (adapter, needs the peer interpreter, label, default step cap (full, quick))
# A step cap truncates T for Python-loop peers whose per-step overhead would
# dominate the run: they are timed on the first T_cap steps and the time is
# scaled by T / T_cap (marked "extrapolated" in the report).
IMPLS = {
    "gh_numpy": (GluonNumpy, False, "gluon_hmm (gh.numpy.value_and_grad)", (None, None)),
    "gh_mxnet": (GluonMXNet, False, "gluon_hmm (MXNet op + autograd)", (None, None)),
    "hmmlearn_scaling": (HmmlearnScaling, False, "hmmlearn 'scaling' (B loop)", (None, None)),
    "hmmlearn_log": (HmmlearnLog, False, "hmmlearn 'log' (B loop)", (None, None)),
    "jax": (JaxScan, True, "JAX lax.scan + grad (jit)", (None, None)),
    "torch": (TorchLoop, True, "PyTorch loop + autograd", (20000, 200)),
    "mxnet_loop": (MXNetLoop, False, "MXNet NDArray loop + autograd", (200, 30)),
    "numpy_ref": (NumpyReference, False, "NumPy float64 reference", (None, None)),
    "mx_log_softmax": (MXNetBuiltinLogSoftmax, False, "built-in mx.nd.log_softmax (not an HMM)",
                       (None, None)),
}

GLUON = ("gh_numpy", "gh_mxnet")
PEERS = ("hmmlearn_scaling", "hmmlearn_log", "jax", "torch", "mxnet_loop", "numpy_ref")
