"""bfloat16 and int8 weights (weight-only and int8_dynamic) on real models outside the churn job (issue 16, "Accuracy"):
a model is trained in float32 through ``lstm_fast.torch.LSTM``, then run with its LSTMs
replaced by ``lstm_fast.torch.quantize(model, weight_dtype)``, and scored on held-out data.

- **JapaneseVowels** (UCI/UEA; the copy that ships inside sktime, no download): 12 LPC
  cepstrum channels, sequences of 7-29 frames, 9 speakers, 270 training and 370 test
  utterances. An LSTM(12 -> 64) over the padded sequences (PackedSequence, so each
  utterance ends at its own last frame) and a linear classifier on h_n. The issue's bound:
  the test accuracy unchanged within one sample.
- **A word-level language model** on the English text of Python's own documentation
  (``pydoc_data.topics``, in every CPython: ~65,000 words), the word_language_model
  recipe of pytorch/examples at a small size: embedding 128, a 2-layer LSTM(128 -> 256),
  a tied-size decoder over the 2,000 most frequent words (+ <unk>), trained on the first
  90 % for a few epochs, perplexity on the last 10 %. The issue's bounds: the perplexity
  grows by <= 1 % with int8 weights and <= 0.3 % with bfloat16.

Measured (Intel Xeon family 6 model 167, this file's seeds, float32 model trained through
the C kernels): JapaneseVowels 353 of 370 test utterances right in float32, and the same 353,
with not one prediction changed, with bfloat16, with int8 weights and with int8_dynamic (int8 weights, x and h quantized
per step too); the language model's test perplexity 17.1652 in float32, -3.0e-6 relative
with bfloat16, +4.2e-5 with int8, -1.7e-6 with int8_dynamic. The bounds asserted are the
issue's (int8_dynamic: int8's), not the measurement's.

Run at the CPU's own SIMD level only: with LSTM_FAST_SIMD forced (the wheel check's other
levels) these tests skip, since the bf16 and int8 kernels give the same bits at every level
(tests/test_low_precision.py) and the training here costs ~30 s.
"""

import os

import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lstm_fast.backends._c")  # the quantized layers run on the C kernels
import lstm_fast.torch as lft  # noqa: E402

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("LSTM_FAST_SIMD")),
    reason="real-model accuracy runs at the CPU's own level; the levels give the same bits")

WEIGHT_DTYPES = ["bfloat16", "int8", "int8_dynamic"]


# --- JapaneseVowels --------------------------------------------------------------------

def _vowels(split):
    sk = pytest.importorskip("sktime.datasets")
    X, y = sk.load_japanese_vowels(split=split)  # nested pandas frame: one Series per cell
    seqs = [np.stack([X.iloc[i, j].to_numpy() for j in range(X.shape[1])], axis=1)
            for i in range(len(X))]
    lengths = np.array([len(s) for s in seqs])
    x = np.zeros((lengths.max(), len(seqs), seqs[0].shape[1]), np.float32)  # (T, B, 12)
    for b, s in enumerate(seqs):
        x[:len(s), b] = s
    labels = np.array([int(v) - 1 for v in y])
    return torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(labels)


class _Classifier(torch.nn.Module):
    def __init__(self, lstm_cls=lft.LSTM):
        super().__init__()
        self.lstm = lstm_cls(12, 64)
        self.head = torch.nn.Linear(64, 9)

    def forward(self, x, lengths):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.head(h[-1])


@pytest.fixture(scope="module")
def vowels_model():
    xtr, ltr, ytr = _vowels("train")
    xte, lte, yte = _vowels("test")
    mean = xtr.sum((0, 1)) / ltr.sum()  # padding is zero, so the sum is over the frames
    std = ((xtr - mean) ** 2 * (torch.arange(xtr.shape[0])[:, None] < ltr)[..., None]
           ).sum((0, 1)).div(ltr.sum()).sqrt()
    norm = lambda x, ln: (x - mean) / std * (torch.arange(x.shape[0])[:, None] < ln)[..., None]  # noqa: E731
    xtr, xte = norm(xtr, ltr), norm(xte, lte)
    torch.manual_seed(0)
    model = _Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):  # full batch: 270 utterances
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xtr, ltr), ytr).backward()
        opt.step()
    model.eval()
    return model, (xte, lte, yte)


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
def test_japanese_vowels_accuracy_within_one_sample(vowels_model, weight_dtype):
    model, (x, lengths, y) = vowels_model
    with torch.no_grad():
        pred32 = model(x, lengths).argmax(1)
        q = lft.quantize(model, weight_dtype)
        assert type(q.lstm).__name__ == "QuantizedLSTM"
        predq = q(x, lengths).argmax(1)
    right32 = int((pred32 == y).sum())
    rightq = int((predq == y).sum())
    assert right32 >= 0.9 * len(y), right32  # a trained model (measured 95-98 %)
    # the bound: the accuracy unchanged within one sample (of 370)
    assert abs(rightq - right32) <= 1, (right32, rightq)


# --- word-level language model -----------------------------------------------------------

def _corpus(vocab_size=2000):
    from pydoc_data.topics import topics
    words = re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]", " ".join(topics[k] for k in sorted(topics)).lower())
    values, counts = np.unique(words, return_counts=True)
    keep = values[np.argsort(-counts, kind="stable")[:vocab_size - 1]]
    index = {w: i + 1 for i, w in enumerate(keep)}  # 0: <unk>
    ids = np.array([index.get(w, 0) for w in words], np.int64)
    n = int(0.9 * len(ids))
    return torch.from_numpy(ids[:n]), torch.from_numpy(ids[n:]), vocab_size


def _batchify(ids, B):
    n = len(ids) // B
    return ids[:n * B].view(B, n).t().contiguous()  # (n, B): B parallel streams, time-major


class _WordLM(torch.nn.Module):
    def __init__(self, ntoken, lstm_cls=lft.LSTM):
        super().__init__()
        self.encoder = torch.nn.Embedding(ntoken, 128)
        self.lstm = lstm_cls(128, 256, num_layers=2, dropout=0.2)
        self.drop = torch.nn.Dropout(0.2)
        self.decoder = torch.nn.Linear(256, ntoken)

    def forward(self, x, hx=None):
        y, hx = self.lstm(self.drop(self.encoder(x)), hx)
        return self.decoder(self.drop(y)), hx


def _perplexity(model, data, bptt=35):
    total, n, hx = 0.0, 0, None
    with torch.no_grad():
        for i in range(0, data.shape[0] - 1, bptt):
            x, t = data[i:i + bptt], data[i + 1:i + 1 + bptt]
            x = x[:len(t)]
            logits, hx = model(x, hx)
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), t.reshape(-1), reduction="sum"))
            n += t.numel()
    return math.exp(total / n)


@pytest.fixture(scope="module")
def word_lm():
    train, test, ntoken = _corpus()
    train, test = _batchify(train, 20), _batchify(test, 10)
    torch.manual_seed(0)
    model = _WordLM(ntoken)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    bptt = 35
    for _ in range(2):  # epochs
        hx = None
        for i in range(0, train.shape[0] - 1 - bptt, bptt):
            x, t = train[i:i + bptt], train[i + 1:i + 1 + bptt]
            if hx is not None:
                hx = tuple(h.detach() for h in hx)
            opt.zero_grad()
            logits, hx = model(x, hx)
            torch.nn.functional.cross_entropy(logits.reshape(-1, ntoken), t.reshape(-1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25 * 10)
            opt.step()
    model.eval()
    return model, test, ntoken


# the bounds on the relative growth of the test perplexity
PPL_GROWTH = {"int8": 0.01, "int8_dynamic": 0.01, "bfloat16": 0.003}


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
def test_word_language_model_perplexity(word_lm, weight_dtype):
    model, test, ntoken = word_lm
    ppl32 = _perplexity(model, test)
    assert ppl32 < 0.05 * ntoken, ppl32  # trained (a uniform guess: 2000; measured 17.2)
    q = lft.quantize(model, weight_dtype)
    pplq = _perplexity(q, test)
    assert pplq != ppl32  # the quantized path did run
    assert (pplq - ppl32) / ppl32 <= PPL_GROWTH[weight_dtype], (ppl32, pplq)
