"""Part-of-speech tagging with a BiLSTM-CRF (gh.LinearChainCRF) vs the same BiLSTM with per-token softmax.

Data: the Turkish Web Treebank (Google Research, Apache-2.0), shipped as
CoNLL-U files inside the PyPI package ``turkish-treebanks`` (web and
Wikipedia sections, about 4,850 sentences).  Tokens are the treebank's
inflectional-group segments; the labels are their universal POS tags (UPOS).
The split is the one the package documents: per file, sentence i goes to
dev when i % 10 == 8, to test when i % 10 == 9, to train otherwise.  (The
files are read directly; the package's own protobuf-based reader is not
needed.)

Each pair of taggers shares one encoder: word, suffix and shape embeddings,
then either a bidirectional LSTM or (to show what the CRF adds when the
encoder sees no context) a per-token MLP, and a linear layer giving per-token
tag scores (B, T, N).  The baseline trains them with per-token softmax
cross-entropy and decodes with an argmax per token; the CRF adds learned start
and transition scores, trains on the exact sequence negative log-likelihood
(``gh.LinearChainCRF``, forward algorithm) and decodes with Viterbi.  All are
hybridized and trained with the same seed, optimiser and number of epochs.

Run:  python examples/crf_tagger.py [--quick] [--epochs N]
Needs: turkish-treebanks (for the data).
"""
import argparse
import collections
import importlib.util
import os
import time

import numpy as np
import mxnet as mx
from mxnet import gluon

import gluon_hmm  # noqa: F401  (loads the operators)
from gluon_hmm.blocks import LinearChainCRF


# ----------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------

def treebank_files():
    spec = importlib.util.find_spec("turkish_treebanks")
    if spec is None or spec.origin is None:
        raise SystemExit("this example needs the turkish-treebanks package for its data: "
                         "pip install -r examples/requirements.txt")
    # the wheel installs its CoNLL-U files under <site-packages>/data
    root = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), "data")
    files = [os.path.join(root, name) for name in ("web.conllu", "wiki.conllu")]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise SystemExit("turkish-treebanks is installed but its data files are missing: %s"
                         % missing)
    return files


def read_conllu(path):
    """Sentences as lists of (form, upos), skipping multi-word ranges and empty nodes."""
    sentences, current = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if current:
                    sentences.append(current)
                current = []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if "-" in cols[0] or "." in cols[0]:
                continue
            current.append((cols[1], cols[3]))
    if current:
        sentences.append(current)
    return sentences


def load_splits():
    splits = {"train": [], "dev": [], "test": []}
    for path in treebank_files():
        for i, sent in enumerate(read_conllu(path)):
            splits["dev" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].append(sent)
    return splits


def shape_of(word):
    if word.isdigit():
        return "digit"
    if not any(c.isalnum() for c in word):
        return "punct"
    if word[:1].isupper():
        return "upper" if word.isupper() and len(word) > 1 else "title"
    return "lower"


class Vocab:
    """Integer ids for words, suffixes, shapes and tags; 0 is padding, 1 unknown."""

    def __init__(self, sentences, min_count=2):
        words = collections.Counter(w.lower() for s in sentences for w, _ in s)
        self.word = self._index(w for w, c in words.items() if c >= min_count)
        suf = collections.Counter(w.lower()[-3:] for s in sentences for w, _ in s)
        self.suffix = self._index(x for x, c in suf.items() if c >= min_count)
        self.shape = self._index(["digit", "punct", "upper", "title", "lower"])
        self.tags = sorted({t for s in sentences for _, t in s})
        self.tag = {t: i for i, t in enumerate(self.tags)}

    @staticmethod
    def _index(items):
        return {x: i + 2 for i, x in enumerate(sorted(items))}

    def encode(self, sentences):
        """Padded id arrays (B, T) for words, suffixes, shapes, tags (-1 padded) and lengths."""
        B, T = len(sentences), max(len(s) for s in sentences)
        feats = np.zeros((3, B, T), dtype=np.float32)
        tags = np.full((B, T), -1, dtype=np.int32)
        for b, s in enumerate(sentences):
            for t, (w, tag) in enumerate(s):
                lw = w.lower()
                feats[0, b, t] = self.word.get(lw, 1)
                feats[1, b, t] = self.suffix.get(lw[-3:], 1)
                feats[2, b, t] = self.shape[shape_of(w)]
                tags[b, t] = self.tag.get(tag, 0)
        lengths = np.array([len(s) for s in sentences], dtype=np.int32)
        return feats, tags, lengths


def batches(data, batch_size, rng=None):
    """Length-bucketed batches (sorted, then chunks shuffled) to limit padding."""
    order = np.argsort([len(s) for s in data], kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(chunks)
    return chunks


# ----------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------

class Encoder(gluon.HybridBlock):
    """Embeddings -> BiLSTM (or, with context=False, a per-token MLP) -> tag scores (B, T, N)."""

    def __init__(self, vocab, context=True, hidden=64, **kwargs):
        super(Encoder, self).__init__(**kwargs)
        self._context = context
        with self.name_scope():
            self.word = gluon.nn.Embedding(len(vocab.word) + 2, 64)
            self.suffix = gluon.nn.Embedding(len(vocab.suffix) + 2, 32)
            self.shape = gluon.nn.Embedding(len(vocab.shape) + 2, 8)
            self.dropout = gluon.nn.Dropout(0.3)
            if context:
                self.lstm = gluon.rnn.LSTM(hidden, bidirectional=True, layout="NTC",
                                           use_sequence_length=True)
            else:
                self.mlp = gluon.nn.Dense(2 * hidden, activation="tanh", flatten=False)
            self.out = gluon.nn.Dense(len(vocab.tags), flatten=False)

    def hybrid_forward(self, F, words, suffixes, shapes, lengths):
        x = F.concat(self.word(words), self.suffix(suffixes), self.shape(shapes), dim=-1)
        if self._context:
            h = self.lstm(self.dropout(x), sequence_length=lengths)
        else:
            h = F.SequenceMask(self.mlp(self.dropout(x)), sequence_length=lengths,
                               use_sequence_length=True, axis=1)
        return self.out(self.dropout(h))


class SoftmaxTagger(gluon.HybridBlock):
    """Baseline: per-token softmax; loss = summed token cross-entropy per sentence."""

    def __init__(self, vocab, context=True, **kwargs):
        super(SoftmaxTagger, self).__init__(**kwargs)
        with self.name_scope():
            self.encoder = Encoder(vocab, context)

    def hybrid_forward(self, F, words, suffixes, shapes, lengths, tags):
        scores = self.encoder(words, suffixes, shapes, lengths)
        logp = F.log_softmax(scores, axis=-1)
        nll = -F.pick(logp, tags, axis=-1)                              # (B, T)
        return F.sum(F.SequenceMask(nll, sequence_length=lengths, use_sequence_length=True,
                                    axis=1), axis=1)

    def decode(self, words, suffixes, shapes, lengths):
        return self.encoder(words, suffixes, shapes, lengths).argmax(axis=-1)


class CRFTagger(gluon.HybridBlock):
    """BiLSTM-CRF: loss = exact sequence NLL from gh.LinearChainCRF; Viterbi decoding."""

    def __init__(self, vocab, context=True, **kwargs):
        super(CRFTagger, self).__init__(**kwargs)
        with self.name_scope():
            self.encoder = Encoder(vocab, context)
            self.crf = LinearChainCRF(len(vocab.tags))

    def hybrid_forward(self, F, words, suffixes, shapes, lengths, tags):
        return self.crf(self.encoder(words, suffixes, shapes, lengths), tags, lengths)

    def decode(self, words, suffixes, shapes, lengths):
        return self.crf.decode(self.encoder(words, suffixes, shapes, lengths), lengths).path


def to_nd(feats, tags, lengths):
    return ([mx.nd.array(f) for f in feats], mx.nd.array(tags, dtype="int32"),
            mx.nd.array(lengths, dtype="int32"))


def train(model, data, vocab, epochs, seed, batch_size=32, log=True):
    rng = np.random.default_rng(seed)
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 2e-3})
    for epoch in range(epochs):
        total, tokens = 0.0, 0
        for idx in batches(data, batch_size, rng):
            feats, tags, lengths = to_nd(*vocab.encode([data[i] for i in idx]))
            with mx.autograd.record():
                loss = model(*feats, lengths, tags)
            loss.backward()
            trainer.step(len(idx))
            total += float(loss.sum().asscalar())
            tokens += int(lengths.sum().asscalar())
        if log:
            print("    epoch %2d: loss %.4f per token" % (epoch, total / tokens))


def evaluate(model, data, vocab, batch_size=128):
    correct = total = exact = 0
    for idx in batches(data, batch_size):
        feats, tags, lengths = to_nd(*vocab.encode([data[i] for i in idx]))
        pred = model.decode(*feats, lengths).asnumpy().astype(np.int64)
        gold = tags.asnumpy()
        valid = gold >= 0
        correct += int(((pred == gold) & valid).sum())
        total += int(valid.sum())
        exact += int(np.all((pred == gold) | ~valid, axis=1).sum())
    return correct / total, exact / len(data)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch (for CI)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print the loss per epoch")
    args = parser.parse_args(argv)

    splits = load_splits()
    train_set, test_set, dev_set = splits["train"], splits["test"], splits["dev"]
    epochs = args.epochs
    if args.quick:
        train_set, test_set, dev_set, epochs = train_set[:300], test_set[:100], dev_set[:100], 1
    vocab = Vocab(train_set)
    n_tok = sum(len(s) for s in train_set)
    print("Turkish Web Treebank (UPOS): %d train / %d dev / %d test sentences, %d train tokens, "
          "%d tags, %d word types (+unknown)" % (len(train_set), len(dev_set), len(test_set),
                                                 n_tok, len(vocab.tags), len(vocab.word)))
    counts = collections.Counter(t for s in train_set for _, t in s)
    majority = {}
    for s in train_set:
        for w, t in s:
            majority.setdefault(w.lower(), collections.Counter())[t] += 1
    top = counts.most_common(1)[0][0]

    def baseline_acc(data):
        hits = sum((majority[w.lower()].most_common(1)[0][0] if w.lower() in majority else top)
                   == t for s in data for w, t in s)
        return hits / sum(len(s) for s in data)
    print("most-frequent-tag-per-word baseline: test accuracy %.2f%%" % (100 * baseline_acc(
        test_set)))

    results = {}
    for context in (False, True):
        enc = "BiLSTM" if context else "per-token MLP"
        for head, cls in (("softmax", SoftmaxTagger), ("CRF", CRFTagger)):
            name = "%s + %s" % (enc, head)
            mx.random.seed(args.seed)
            model = cls(vocab, context)
            model.initialize(mx.init.Xavier())
            model.hybridize(static_alloc=True)
            print("  %s: training %d epochs" % (name, epochs))
            tic = time.perf_counter()
            train(model, train_set, vocab, epochs, args.seed, log=args.verbose)
            seconds = time.perf_counter() - tic
            dev_acc, _ = evaluate(model, dev_set, vocab)
            test_acc, test_exact = evaluate(model, test_set, vocab)
            results[context, head] = test_acc
            print("  %s: %.1f s; dev token accuracy %.2f%%; test token accuracy %.2f%%, "
                  "test sentences fully correct %.1f%%"
                  % (name, seconds, 100 * dev_acc, 100 * test_acc, 100 * test_exact))
    for context in (False, True):
        soft, crf = results[context, "softmax"], results[context, "CRF"]
        print("%s encoder: CRF vs softmax on test %+.2f points token accuracy "
              "(%.1f%% fewer token errors)" % ("BiLSTM" if context else "per-token MLP",
                                              100 * (crf - soft),
                                              100 * (1 - (1 - crf) / max(1e-12, 1 - soft))))


if __name__ == "__main__":
    main()
