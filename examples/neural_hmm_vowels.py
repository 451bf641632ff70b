"""Speaker recognition from ragged speech sequences with HMMs: EM-fitted Gaussian HMMs vs a neural HMM.

Data: the Japanese Vowels data set (UCI; Kudo, Toyama and Shimbo 1999) as
shipped inside sktime: 9 male speakers uttering /ae/, each utterance a
sequence of 7 to 29 frames of 12 LPC cepstrum coefficients; the standard
split has 270 training and 370 test utterances.  The task: who is speaking?

Two HMM classifiers, both evaluated on the held-out test split:

1. Generative: one ``gh.GaussianHMM`` per speaker, fitted by Baum-Welch
   (``fit_em``) on that speaker's training utterances; an utterance goes to
   the speaker whose HMM gives it the highest log-likelihood.
2. Neural HMM, trained end to end: a small Gluon network maps each frame (with
   its neighbours, through a 1-D convolution) to per-(speaker, state) scores;
   ``log_softmax`` over all of them gives frame-level log emission weights,
   and one ``gh.HMM`` per speaker turns them into a sequence score
   log p_k(x) with its own learned transition matrix.  The whole model is
   hybridized and trained by cross-entropy over speakers of these scores
   (maximum mutual information), back-propagating through the exact forward
   algorithm into the network.

Run:  python examples/neural_hmm_vowels.py [--quick]
Needs: sktime (for the data set).
"""
import argparse
import time

import numpy as np
import mxnet as mx
from mxnet import gluon

import gluon_hmm  # noqa: F401  (loads the operators)
from gluon_hmm.blocks import GaussianHMM, HMM


def load(split):
    try:
        from sktime.datasets import load_japanese_vowels
    except ImportError:
        raise SystemExit("this example needs sktime for its data: "
                         "pip install -r examples/requirements.txt")
    X, y = load_japanese_vowels(split=split, return_type="nested_univ")
    seqs = [np.stack([X.iloc[i, d].to_numpy() for d in range(X.shape[1])], axis=1)
            for i in range(len(X))]
    return seqs, np.array([int(v) - 1 for v in y])


def pad(seqs, dtype="float32"):
    lengths = np.array([len(s) for s in seqs])
    out = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1]))
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return mx.nd.array(out, dtype=dtype), mx.nd.array(lengths, dtype="int32")


# ----------------------------------------------------------------------------------
# 1. generative: a Gaussian HMM per speaker, Baum-Welch
# ----------------------------------------------------------------------------------

def fit_gaussian_hmms(train, labels, num_classes, num_states, max_iter, progress):
    models, histories = [], []
    for k in range(num_classes):
        seqs = [s for s, c in zip(train, labels) if c == k]
        hmm = GaussianHMM(num_states, seqs[0].shape[1])
        hmm.initialize()
        hmm.cast("float64")
        # start: states = consecutive time segments of the utterances (left to right)
        segs = [np.concatenate([np.array_split(s, num_states)[j] for s in seqs])
                for j in range(num_states)]
        hmm.means.set_data(mx.nd.array([seg.mean(0) for seg in segs], dtype="float64"))
        hmm.log_scales.set_data(mx.nd.array([np.log(seg.std(0) + 1e-3) for seg in segs],
                                            dtype="float64"))
        trans = np.full((num_states, num_states), 0.2 / max(1, num_states - 1))
        np.fill_diagonal(trans, 0.8)
        hmm.trans_logits.set_data(mx.nd.array(np.log(trans), dtype="float64"))
        histories.append(hmm.fit_em(seqs, max_iter=max_iter, tol=1e-4, progress=progress,
                                    min_variance=1e-4))
        models.append(hmm)
    return models, histories


def classify_generative(models, seqs):
    x, lengths = pad(seqs, "float64")
    scores = np.stack([m(x, lengths).asnumpy() for m in models], axis=1)     # (B, K)
    return scores.argmax(axis=1)


# ----------------------------------------------------------------------------------
# 2. neural HMM, end to end
# ----------------------------------------------------------------------------------

class NeuralHMMClassifier(gluon.HybridBlock):
    """Frame network -> log emission weights -> one gh.HMM per class -> class scores (B, K).

    Inputs: x (B, T, D) float32, lengths (B,) int32.  Output: (B, K) log p_k(x).
    """

    def __init__(self, num_classes, num_states, hidden=64, **kwargs):
        super(NeuralHMMClassifier, self).__init__(**kwargs)
        self._k, self._n = num_classes, num_states
        with self.name_scope():
            self.conv = gluon.nn.Conv1D(hidden, kernel_size=3, padding=1, layout="NCW",
                                        activation="tanh")
            self.out = gluon.nn.Dense(num_classes * num_states, flatten=False)
            self.hmms = gluon.nn.HybridSequential()
            for _ in range(num_classes):
                self.hmms.add(HMM(num_states))

    def hybrid_forward(self, F, x, lengths):
        x = F.SequenceMask(x, sequence_length=lengths, use_sequence_length=True, axis=1)
        h = F.transpose(self.conv(F.transpose(x, axes=(0, 2, 1))), axes=(0, 2, 1))
        log_emit = F.log_softmax(self.out(h), axis=-1)                  # (B, T, K*N)
        log_emit = F.reshape(log_emit, shape=(0, 0, self._k, self._n))
        scores = [hmm(F.squeeze(F.slice_axis(log_emit, axis=2, begin=k, end=k + 1), axis=2),
                      lengths)
                  for k, hmm in enumerate(self.hmms)]
        return F.stack(*scores, axis=1)


def train_neural(train, labels, num_classes, num_states, epochs, seed):
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    model = NeuralHMMClassifier(num_classes, num_states)
    model.initialize(mx.init.Xavier())
    model.hybridize(static_alloc=True)
    trainer = gluon.Trainer(model.collect_params(), "adam",
                            {"learning_rate": 3e-3, "wd": 1e-4})
    ce = gluon.loss.SoftmaxCrossEntropyLoss()
    batch = 30
    for epoch in range(epochs):
        order = rng.permutation(len(train))
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x, lengths = pad([train[j] for j in idx])
            y = mx.nd.array(labels[idx])
            with mx.autograd.record():
                loss = ce(model(x, lengths), y)
            loss.backward()
            trainer.step(len(idx))
            total += float(loss.sum().asscalar())
        if epoch % max(1, epochs // 5) == 0 or epoch == epochs - 1:
            print("  epoch %3d: mean cross-entropy %.4f" % (epoch, total / len(train)))
    return model


def classify_neural(model, seqs):
    x, lengths = pad(seqs)
    return model(x, lengths).asnumpy().argmax(axis=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations (for CI)")
    parser.add_argument("--states", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    em_iter, epochs = (3, 2) if args.quick else (200, args.epochs)

    train, y_train = load("train")
    test, y_test = load("test")
    mean = np.concatenate(train).mean(0)
    std = np.concatenate(train).std(0)
    train = [(s - mean) / std for s in train]
    test = [(s - mean) / std for s in test]
    K = int(y_train.max()) + 1
    lens = [len(s) for s in train + test]
    print("Japanese vowels: %d speakers, %d train / %d test utterances, %d features, "
          "%d to %d frames" % (K, len(train), len(test), train[0].shape[1], min(lens),
                               max(lens)))
    chance = np.bincount(y_test).max() / len(y_test)

    tic = time.perf_counter()
    models, histories = fit_gaussian_hmms(train, y_train, K, args.states, em_iter,
                                          args.progress)
    t_em = time.perf_counter() - tic
    iters = [len(h) for h in histories]
    monotone = all(np.all(np.diff(h) >= -1e-6 * np.abs(h[:-1])) for h in histories)
    acc_gen_train = np.mean(classify_generative(models, train) == y_train)
    acc_gen = np.mean(classify_generative(models, test) == y_test)
    print("1. Gaussian HMM per speaker (%d states, EM): %d-%d iterations per speaker, %.1f s, "
          "log-likelihood histories %s" % (args.states, min(iters), max(iters), t_em,
                                           "non-decreasing" if monotone else "NOT MONOTONE"))
    print("   train accuracy %.1f%%, test accuracy %.1f%% (%d/%d)"
          % (100 * acc_gen_train, 100 * acc_gen, int(round(acc_gen * len(y_test))),
             len(y_test)))

    print("2. neural HMM (conv frame network + %d-state gh.HMM per speaker, hybridized), "
          "%d epochs:" % (args.states, epochs))
    tic = time.perf_counter()
    model = train_neural(train, y_train, K, args.states, epochs, args.seed)
    t_nn = time.perf_counter() - tic
    acc_nn_train = np.mean(classify_neural(model, train) == y_train)
    acc_nn = np.mean(classify_neural(model, test) == y_test)
    print("   %.1f s; train accuracy %.1f%%, test accuracy %.1f%% (%d/%d)"
          % (t_nn, 100 * acc_nn_train, 100 * acc_nn, int(round(acc_nn * len(y_test))),
             len(y_test)))
    print("majority-class test accuracy: %.1f%%" % (100 * chance))


if __name__ == "__main__":
    main()
