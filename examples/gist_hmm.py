"""The classic imperative MXNet HMM gist, reproduced with gluon_hmm's operator.

A 4-state HMM over 3 symbols, parameterised by raw matrices A_ (4 x 4,
A = softmax(A_, axis=1): rows are "from" states) and B_ (3 symbols x 4
states, B = softmax(B_, axis=0): each state's column is a distribution over
symbols), with a fixed initial vector pi.  The gist's scaled forward
recursion::

    f = pi
    for o in obs:
        f = B[o] * (A^T f)        # one transition, then emit o
        c = sum(f); f = f / c
    loglik = sum(log c)

Note the transition *before* the first emission: in gluon_hmm's convention
(initial distribution, then emissions and transitions) this is
``log_init = log(pi @ A)``, computed with MXNet ops so that its gradient flows
into A_ together with the transition gradient.

We maximise loglik by 1000 steps of plain gradient ascent on A_ and B_
(lr = 1e-2), once with the gist's NDArray loop under autograd and once with
``gluon_hmm.log_likelihood``, and compare the trajectories and the time taken.

Run:  python examples/gist_hmm.py [--quick] [--steps N] [--dtype float64]
Needs only mxnet and gluon_hmm.
"""
import argparse
import time

import mxnet as mx
from mxnet import autograd, nd

import gluon_hmm as gh

RAW_A = [[0.8, 0.2, 0.0, 0.0],
         [0.1, 0.5, 0.4, 0.0],
         [0.0, 0.4, 0.2, 0.4],
         [0.0, 0.0, 0.4, 0.6]]
RAW_B = [[0.7, 0.1, 0.2, 0.1],        # symbol 0
         [0.15, 0.4, 0.7, 0.3],       # symbol 1
         [0.15, 0.5, 0.1, 0.6]]       # symbol 2
PI = [0.6, 0.1, 0.2, 0.1]
OBS = [0, 0, 1, 0, 0, 0, 2, 2, 0, 2, 2, 1, 2, 1, 2, 2, 0, 1, 2, 2, 1, 1, 1, 0, 2, 0, 1, 2, 0, 0]


def naive_loglik(A_, B_, pi, obs):
    """The gist's recursion, step by step with NDArray ops (recorded by autograd)."""
    A = nd.softmax(A_, axis=1)
    B = nd.softmax(B_, axis=0)
    f = pi
    loglik = 0
    for o in obs:
        f = B[o] * nd.dot(A, f, transpose_a=True)      # B[o] * (A^T f)
        c = nd.sum(f)
        f = f / c
        loglik = loglik + nd.log(c)
    return loglik


def op_loglik(A_, B_, pi, obs_nd):
    """The same log-likelihood with one gluon_hmm operator call."""
    log_trans = nd.log_softmax(A_, axis=1)                          # (4, 4), from -> to
    log_init = nd.log(nd.dot(pi, nd.softmax(A_, axis=1)))           # p(z_0) = pi @ A
    log_b = nd.log_softmax(B_, axis=0)                              # (3 symbols, 4 states)
    log_emit = nd.expand_dims(nd.take(log_b, obs_nd, axis=0), 0)    # (1, T, 4)
    return gh.log_likelihood(log_init, log_trans, log_emit)[0]


def train(loglik_fn, steps, lr, dtype, data):
    """Plain gradient ascent on A_ and B_; returns the loglik before each step and the time."""
    A_ = nd.array(RAW_A, dtype=dtype)
    B_ = nd.array(RAW_B, dtype=dtype)
    A_.attach_grad()
    B_.attach_grad()
    history = []
    nd.waitall()
    tic = time.perf_counter()
    for _ in range(steps):
        with autograd.record():
            loglik = loglik_fn(A_, B_, *data)
        loglik.backward()
        history.append(loglik)                 # kept on the device; read after timing
        A_[:] = A_ + lr * A_.grad
        B_[:] = B_ + lr * B_.grad
    nd.waitall()
    seconds = time.perf_counter() - tic
    return [float(h.asscalar()) for h in history], seconds, A_, B_


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="100 steps (for CI)")
    args = parser.parse_args(argv)
    steps = 100 if args.quick else args.steps
    every = max(1, steps // 10)

    pi = nd.array(PI, dtype=args.dtype)
    obs_nd = nd.array(OBS, dtype="int32")

    # warm-up (first-call allocations, operator library) outside the timed runs
    train(naive_loglik, 2, args.lr, args.dtype, (pi, OBS))
    train(op_loglik, 2, args.lr, args.dtype, (pi, obs_nd))

    naive, t_naive, _, _ = train(naive_loglik, steps, args.lr, args.dtype, (pi, OBS))
    fast, t_fast, A_, B_ = train(op_loglik, steps, args.lr, args.dtype, (pi, obs_nd))

    print("HMM gist: 4 states, 3 symbols, T=%d, %d steps of gradient ascent, lr=%g, %s"
          % (len(OBS), steps, args.lr, args.dtype))
    print("%6s %16s %16s %12s" % ("step", "naive loop", "gluon_hmm", "abs diff"))
    for i in list(range(0, steps, every)) + [steps - 1]:
        print("%6d %16.6f %16.6f %12.2e" % (i, naive[i], fast[i], abs(naive[i] - fast[i])))
    max_diff = max(abs(a - b) for a, b in zip(naive, fast))
    print("max |naive - gluon_hmm| over all %d steps: %.3e" % (steps, max_diff))
    print("log-likelihood: %.6f -> %.6f" % (fast[0], fast[-1]))
    print("time: naive loop %.3f s (%.2f ms/step), gluon_hmm %.3f s (%.2f ms/step): "
          "speedup %.1fx" % (t_naive, 1e3 * t_naive / steps, t_fast, 1e3 * t_fast / steps,
                             t_naive / t_fast))
    print("learned A = softmax(A_, axis=1):")
    print(nd.softmax(A_, axis=1).asnumpy().round(3))
    print("learned B = softmax(B_, axis=0) (rows: symbols):")
    print(nd.softmax(B_, axis=0).asnumpy().round(3))
    tol = 1e-3 if args.dtype == "float32" else 1e-8
    if not max_diff < tol:
        raise SystemExit("FAILED: the two trajectories differ by %.3e (> %g)" % (max_diff, tol))
    if not fast[-1] > fast[0]:
        raise SystemExit("FAILED: gradient ascent did not increase the log-likelihood")


if __name__ == "__main__":
    main()
