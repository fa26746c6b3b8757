"""The mouth classifier: a track frame's mouth class from the recogniser's phones and the spectrum around it.

The en-us recogniser hears voices unlike the ones its model was trained on badly (espeak-ng's formant
speech: 0.45 of the frames right), and its phone errors are systematic: a small network that sees the
recognised phones of ±PHONE_CONTEXT frames together with the log-mel spectrum of ±MEL_CONTEXT frames,
normalised by the segment's own running mean (speaker and channel), corrects many of them. It has one
hidden layer, is trained at build time from the tuning voices speaking sentences that no benchmark set
uses (`python -m facecast.bench.train_mouth`, which writes MODEL_PATH), and nothing is downloaded.
Inference is two small matrix products per video frame, deterministic for a given input.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from facecast.engine.config import ANALYSIS_RATE
from facecast.engine.words import ARPABET

MODEL_PATH = Path(__file__).with_name("mouth_model.npz")
N_MEL = 26
MEL_LOW_HZ = 133.0
MEL_HIGH_HZ = 6855.0
MEL_CONTEXT = 5  # log-mel frames either side of the classified frame (50 ms)
PHONE_CONTEXT = 4  # recognised-phone frames either side (40 ms)
# The running mean starts as the training set's mean weighted as this many frames, so the first frames
# of a segment are normalised sensibly and later ones mostly by the speaker's own mean.
CMN_PRIOR_FRAMES = 50.0
# A confident classifier error must not make the known words' alignment impossible there.
LOG_PROB_FLOOR = -6.0
N_PHONES = len(ARPABET)
N_INPUTS = (2 * MEL_CONTEXT + 1) * N_MEL + (2 * PHONE_CONTEXT + 1) * N_PHONES


def mel_filterbank(window: int) -> np.ndarray:
    """(N_MEL, window // 2 + 1) triangular filters on the mel scale over the rfft bins of `window`."""

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges = 700.0 * (10 ** (np.linspace(mel(MEL_LOW_HZ), mel(MEL_HIGH_HZ), N_MEL + 2) / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(window, 1.0 / ANALYSIS_RATE)
    bank = np.zeros((N_MEL, len(freqs)), np.float32)
    for i in range(N_MEL):
        lo, mid, hi = edges[i : i + 3]
        bank[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)
    return bank


class RunningMean:
    """Causal mean normalisation of log-mel rows: row f has the mean of rows 0..f (and the prior) removed."""

    def __init__(self, prior: np.ndarray) -> None:
        self._prior = prior.astype(np.float64) * CMN_PRIOR_FRAMES
        self._sum = np.zeros(N_MEL, np.float64)
        self._count = 0

    def normalise(self, rows: np.ndarray) -> np.ndarray:
        sums = self._sum + np.cumsum(rows, axis=0, dtype=np.float64)
        counts = self._count + np.arange(1, len(rows) + 1, dtype=np.float64)[:, None]
        if len(rows):
            self._sum = sums[-1]
            self._count += len(rows)
        return (rows - (sums + self._prior) / (counts + CMN_PRIOR_FRAMES)).astype(np.float32)


def context_rows(values: np.ndarray, known: int, lo: int, hi: int) -> np.ndarray:
    """values[lo:hi] with indices clamped into the first `known` entries: the edges of what is known are
    repeated before the segment and past its head (training pads whole utterances the same way)."""
    return values[np.clip(np.arange(lo, hi), 0, max(0, known - 1))]


def fill_undecoded(labels: np.ndarray, undecoded: int) -> np.ndarray:
    """Phone ids, frames the recogniser has not labelled taking the label before them (silence at first)."""
    valid = labels != undecoded
    if valid.all():
        return labels
    last = np.maximum.accumulate(np.where(valid, np.arange(len(labels)), -1))
    return np.where(last >= 0, labels[np.maximum(last, 0)], 0)


def model_inputs(mel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Input rows of the frames in the middle of the given context: `mel` holds MEL_CONTEXT more normalised
    log-mel rows on each side, `labels` (recogniser phone ids) PHONE_CONTEXT more."""
    n = len(mel) - 2 * MEL_CONTEXT
    one_hot = np.eye(N_PHONES, dtype=np.float32)[labels]
    parts = [mel[k : k + n] for k in range(2 * MEL_CONTEXT + 1)]
    parts += [one_hot[k : k + n] for k in range(2 * PHONE_CONTEXT + 1)]
    return np.concatenate(parts, axis=1)


class MouthModel:
    """The trained parameters; one instance per process, shared (read-only) by every engine."""

    _instance: MouthModel | None = None
    _lock = threading.Lock()

    def __init__(self, path: Path = MODEL_PATH) -> None:
        with np.load(path) as f:
            self.cmn_prior = f["cmn_prior"].astype(np.float32)
            self._in_mean = f["in_mean"].astype(np.float32)
            self._in_scale = (1.0 / f["in_std"]).astype(np.float32)
            self._w1 = f["w1"].astype(np.float32)
            self._b1 = f["b1"].astype(np.float32)
            self._w2 = f["w2"].astype(np.float32)
            self._b2 = f["b2"].astype(np.float32)
        if self._w1.shape[0] != N_INPUTS:
            raise ValueError(f"{path} takes {self._w1.shape[0]} inputs, this engine makes {N_INPUTS}")

    @classmethod
    def get(cls) -> MouthModel:
        with cls._lock:
            if cls._instance is None:
                cls._instance = MouthModel()
            return cls._instance

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        hidden = np.maximum(0.0, ((inputs - self._in_mean) * self._in_scale) @ self._w1 + self._b1)
        return hidden @ self._w2 + self._b2

    def log_probs(self, inputs: np.ndarray) -> np.ndarray:
        """Log-probability of each mouth class per input row, floored at LOG_PROB_FLOOR."""
        logits = self.logits(inputs)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return np.maximum(log_p, LOG_PROB_FLOOR).astype(np.float32)

    def classes(self, inputs: np.ndarray) -> np.ndarray:
        """Mouth class (index into VISEMES) of each input row."""
        return self.logits(inputs).argmax(axis=1).astype(np.int8)
