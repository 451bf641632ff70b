"""A regime-switching Gaussian HMM of US real GDP growth (1959Q2-2009Q3), fitted by EM and by gradients.

Data: the quarterly US macro data shipped inside statsmodels
(``statsmodels.datasets.macrodata``); the series is annualised quarterly
growth, 400 * diff(log(realgdp)), in percent.  In the spirit of Hamilton's
(1989) Markov-switching model of the business cycle, an HMM with one Gaussian
per state (3 states by default) separates recession, steady-growth and
high-growth quarters.  The recession regime is compared with the NBER's
business-cycle dates (not used in fitting).

The script
  1. fits ``gh.GaussianHMM`` by Baum-Welch (``fit_em``),
  2. fits a second copy from the same start by gradient ascent (Adam, hybridized),
  3. fits hmmlearn's GaussianHMM from the same start when hmmlearn is installed
     and compares the log-likelihoods,
  4. decodes the regimes (Viterbi and posteriors) and draws them to
     examples/output/gaussian_gdp.png.

Run:  python examples/gaussian_gdp.py [--quick] [--progress]
Needs: statsmodels (data), matplotlib (plot); hmmlearn and tqdm are optional.
"""
import argparse
import os
import time

import numpy as np
import mxnet as mx

import gluon_hmm as gh
from gluon_hmm.blocks import GaussianHMM

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output")


def load_growth():
    try:
        from statsmodels.datasets import macrodata
    except ImportError:
        raise SystemExit("this example needs statsmodels for its data: "
                         "pip install -r examples/requirements.txt")
    df = macrodata.load_pandas().data
    growth = 400.0 * np.diff(np.log(df["realgdp"].to_numpy()))
    dates = df["year"].to_numpy()[1:] + (df["quarter"].to_numpy()[1:] - 1) / 4.0
    labels = ["%dQ%d" % (y, q) for y, q in zip(df["year"].to_numpy()[1:].astype(int),
                                                df["quarter"].to_numpy()[1:].astype(int))]
    return growth, dates, labels


# NBER US business-cycle reference dates in this period, peak to trough (quarters).
NBER_RECESSIONS = (("1960Q2", "1961Q1"), ("1969Q4", "1970Q4"), ("1973Q4", "1975Q1"),
                   ("1980Q1", "1980Q3"), ("1981Q3", "1982Q4"), ("1990Q3", "1991Q1"),
                   ("2001Q1", "2001Q4"), ("2007Q4", "2009Q2"))


def nber_mask(labels):
    """True for the quarters after an NBER peak up to and including the trough."""
    index = {lab: i for i, lab in enumerate(labels)}
    mask = np.zeros(len(labels), dtype=bool)
    for peak, trough in NBER_RECESSIONS:
        mask[index[peak] + 1:index[trough] + 1] = True
    return mask


def start_parameters(y, k):
    """A common, data-driven starting point: spread quantiles as means, persistent regimes."""
    trans = np.full((k, k), 0.1 / max(1, k - 1))
    np.fill_diagonal(trans, 0.9 if k > 1 else 1.0)
    return {"init_logits": np.zeros(k),
            "trans_logits": np.log(trans),
            "means": np.percentile(y, np.linspace(10, 90, k)).reshape(k, 1),
            "log_scales": np.full((k, 1), np.log(np.std(y)))}


def make_block(start):
    block = GaussianHMM(num_states=len(start["init_logits"]), num_features=1)
    block.initialize()
    block.cast("float64")
    for name, value in start.items():
        getattr(block, name).set_data(mx.nd.array(value, dtype="float64"))
    return block


def describe(name, log_init, log_trans, means, sds, loglik):
    A = np.exp(log_trans)
    print("  %-22s loglik %.6f" % (name, loglik))
    for j in range(len(means)):
        print("    state %d: mean %6.3f %%/yr, sd %5.3f, stay prob %.4f (expected %5.1f quarters)"
              % (j, means[j], sds[j], A[j, j], 1.0 / max(1e-12, 1.0 - A[j, j])))


def block_summary(block, x):
    log_init, log_trans = [a.asnumpy() for a in block.log_probs()]
    loglik = float(block(x).asnumpy().sum())
    return (log_init, log_trans, block.means.data().asnumpy()[:, 0],
            np.exp(block.log_scales.data().asnumpy()[:, 0]), loglik)


def fit_gradient(block, x, steps, lr):
    block.hybridize(static_alloc=True)
    trainer = mx.gluon.Trainer(block.collect_params(), "adam", {"learning_rate": lr})
    history = []
    for _ in range(steps):
        with mx.autograd.record():
            loss = -block(x).sum()
        loss.backward()
        trainer.step(1)
        history.append(-float(loss.asscalar()))
    return history


def fit_hmmlearn(y, start, n_iter, tol):
    try:
        from hmmlearn import hmm
    except ImportError:
        return None
    model = hmm.GaussianHMM(n_components=len(start["means"]), covariance_type="diag", n_iter=n_iter, tol=tol,
                            init_params="", params="stmc", covars_prior=0.0,
                            min_covar=1e-6)
    model.startprob_ = np.exp(start["init_logits"]) / np.exp(start["init_logits"]).sum()
    model.transmat_ = np.exp(start["trans_logits"])
    model.means_ = start["means"]
    model.covars_ = np.exp(2 * start["log_scales"])
    model.fit(y[:, None])
    return model


def plot(path, dates, y, states, p_rec, order, nber):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    for ax in (ax1, ax2):         # NBER recessions as grey bands
        for t in np.nonzero(nber)[0]:
            ax.axvspan(dates[t] - 0.125, dates[t] + 0.125, color="0.88", linewidth=0, zorder=0)
    ax1.plot(dates, y, color="0.55", linewidth=0.8, zorder=1)
    for rank, s in enumerate(order):
        m = states == s
        ax1.scatter(dates[m], y[m], s=14, color=palette[rank % len(palette)], zorder=2,
                    label="%s (Viterbi)" % regime_name(rank, len(order)))
    ax1.axhline(0, color="k", linewidth=0.5)
    ax1.set_ylabel("real GDP growth, % per year")
    ax1.set_title("US real GDP growth (statsmodels macrodata), %d-state Gaussian HMM; "
                  "grey: NBER recessions" % len(order))
    ax1.legend(loc="lower left", fontsize=9)
    ax2.fill_between(dates, 0, p_rec, color=palette[0], alpha=0.5, step="mid")
    ax2.plot(dates, p_rec, color=palette[0], linewidth=0.8, drawstyle="steps-mid")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("p(%s | data)" % regime_name(0, len(order)))
    ax2.set_xlabel("year")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def regime_name(rank, k):
    """States ranked by mean growth: the lowest is the recession regime."""
    if k == 1:
        return "single regime"
    if rank == 0:
        return "recession regime"
    if rank == k - 1:
        return "high-growth regime"
    return "steady-growth regime" if k == 3 else "regime %d" % rank


def episodes(states, low, labels):
    """Runs of the low-growth state as 'start-end' quarter labels."""
    out, t = [], 0
    while t < len(states):
        if states[t] == low:
            u = t
            while u + 1 < len(states) and states[u + 1] == low:
                u += 1
            out.append(labels[t] if u == t else "%s-%s" % (labels[t], labels[u]))
            t = u + 1
        else:
            t += 1
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (for CI)")
    parser.add_argument("--progress", action="store_true", help="tqdm progress bar for EM")
    parser.add_argument("--states", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(OUTPUT, "gaussian_gdp.png"))
    args = parser.parse_args(argv)
    em_iter, grad_steps = (30, 150) if args.quick else (1000, 3000)
    tol = 1e-9

    y, dates, labels = load_growth()
    x = mx.nd.array(y[None, :, None], dtype="float64")                  # (1, T, 1)
    start = start_parameters(y, args.states)
    print("US real GDP growth: %d quarters (%s to %s), mean %.2f %%/yr, sd %.2f"
          % (len(y), labels[0], labels[-1], y.mean(), y.std()))

    em_block = make_block(start)
    tic = time.perf_counter()
    history = em_block.fit_em(y[:, None], max_iter=em_iter, tol=tol, progress=args.progress)
    t_em = time.perf_counter() - tic
    diffs = np.diff(history)
    print("EM: %d iterations in %.2f s, loglik %.6f -> %.6f (smallest step %.2e: %s)"
          % (len(history), t_em, history[0], history[-1], diffs.min() if len(diffs) else 0.0,
             "non-decreasing" if np.all(diffs >= -1e-9) else "DECREASED"))

    grad_block = make_block(start)
    tic = time.perf_counter()
    grad_history = fit_gradient(grad_block, x, grad_steps, lr=0.02)
    t_grad = time.perf_counter() - tic
    print("gradient ascent (Adam, hybridized): %d steps in %.2f s, loglik %.6f -> %.6f "
          "(EM: %.6f; %s)" % (grad_steps, t_grad, grad_history[0], grad_history[-1], history[-1],
                              "same optimum" if abs(grad_history[-1] - history[-1]) < 1e-3
                              else "a different local optimum or not yet converged"))

    print("fitted models:")
    em_sum = block_summary(em_block, x)
    describe("gluon_hmm EM", *em_sum)
    describe("gluon_hmm gradient", *block_summary(grad_block, x))
    theirs = fit_hmmlearn(y, start, em_iter, tol)
    if theirs is None:
        print("  hmmlearn is not installed: no comparison")
    else:
        ll_theirs = theirs.score(y[:, None])
        describe("hmmlearn EM (%d it.)" % theirs.monitor_.iter, np.log(theirs.startprob_),
                 np.log(theirs.transmat_), theirs.means_[:, 0],
                 np.sqrt(theirs.covars_[:, 0, 0]), ll_theirs)
        # hmmlearn's score of *our* EM parameters, as a cross-check of the likelihood itself
        mirror = theirs.__class__(n_components=len(em_sum[2]), covariance_type="diag",
                                  init_params="")
        mirror.startprob_, mirror.transmat_ = np.exp(em_sum[0]), np.exp(em_sum[1])
        mirror.means_, mirror.covars_ = em_sum[2][:, None], (em_sum[3] ** 2)[:, None]
        print("  |loglik(gluon_hmm EM) - loglik(hmmlearn EM)| = %.3e; hmmlearn's score of the "
              "gluon_hmm EM parameters differs from ours by %.3e"
              % (abs(em_sum[4] - ll_theirs), abs(mirror.score(y[:, None]) - em_sum[4])))

    path, _ = em_block.viterbi(x)
    states = path.asnumpy()[0]
    gamma = em_block.posterior(x).gamma.asnumpy()[0]
    order = np.argsort(em_sum[2])                       # states by mean growth
    rec = int(order[0])
    nber = nber_mask(labels)
    print("regimes (EM fit, ordered by mean growth):")
    for rank, s in enumerate(order):
        print("  %-22s state %d, mean %6.2f %%/yr: %3d quarters"
              % (regime_name(rank, len(order)), s, em_sum[2][s], int((states == s).sum())))
    print("recession-regime episodes (Viterbi):")
    print("  " + ", ".join(episodes(states, rec, labels)))
    hit = states == rec
    print("agreement with NBER recession quarters (not used in fitting): %d of %d NBER quarters "
          "in the recession regime; %d of %d recession-regime quarters are NBER quarters; "
          "quarter-by-quarter accuracy %.1f%%"
          % ((hit & nber).sum(), nber.sum(), (hit & nber).sum(), hit.sum(),
             100.0 * np.mean(hit == nber)))
    out = plot(args.output, dates, y, states, gamma[:, rec], order, nber)
    if out:
        print("plot written to %s" % out)


if __name__ == "__main__":
    main()
