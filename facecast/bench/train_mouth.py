"""Train the engine's mouth classifier (`facecast.engine.mouth_model`) from the tuning corpus.

    python -m facecast.bench.train_mouth            # writes facecast/engine/mouth_model.npz

Data: every tuning voice (`TUNING_VOICES`: flite slt, kal16, awb, rms; espeak-ng en-us, en and six
speaker variants of those two accents) speaking `TRAINING_SENTENCES`, sentences neither benchmark set
uses; no held-out voice, accent or variant is ever read. Each utterance goes through the engine's own
analysis (its resampler, the energy analyser's log-mel spectrum with the running mean, the phone
recogniser over the whole utterance); the target of each 10 ms frame is the synthesiser's own phone
there, mapped to its mouth class as the benchmark's truth is. The network (one hidden layer, ReLU,
softmax) is fitted with Adam from a fixed seed, so from the same cached corpus the command gives the
same file on this kind of machine (floating-point sums may differ in the last bits elsewhere); espeak-ng
adds noise to its speech, so a corpus synthesised afresh gives a close, not an identical, file. Runs in
a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecast.bench.corpus import TRAINING_SENTENCES, TUNING_VOICES, Utterance, build_corpus
from facecast.engine.config import ANALYSIS_RATE
from facecast.engine.intake import StreamResampler, to_int16
from facecast.engine.mouth_model import (
    MEL_CONTEXT,
    MODEL_PATH,
    N_MEL,
    PHONE_CONTEXT,
    RunningMean,
    context_rows,
    fill_undecoded,
    model_inputs,
)
from facecast.engine.tracker import HOP, EnergyAnalyzer, PhoneRecognizer
from facecast.engine.types import VISEMES
from facecast.engine.words import UNDECODED, id_code

HIDDEN = 128
EPOCHS = 20
BATCH = 256
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4
SEED = 0


@dataclass(frozen=True)
class Frames:
    """One utterance as the engine analyses it: raw log-mel rows, recognised phone ids, truth classes."""

    log_mel: np.ndarray  # (n, N_MEL)
    labels: np.ndarray  # (n,) phone ids (facecast.engine.words.ARPABET)
    truth: np.ndarray  # (n,) mouth class per frame


def analyse(utt: Utterance) -> Frames:
    x = utt.audio().astype(np.float32) / 32768.0
    resampler = StreamResampler(utt.sample_rate, ANALYSIS_RATE)
    pcm = to_int16(np.concatenate([resampler.process(x), resampler.flush()]))
    n = -(-len(pcm) // HOP)  # the frames a complete segment has features for
    _, _, log_mel = EnergyAnalyzer().frames(pcm.astype(np.float32) / 32768.0, 0, n)
    recognizer = PhoneRecognizer()
    recognizer.start(reset_features=True)
    recognizer.process(pcm)
    labels = np.full(n, UNDECODED, np.int16)
    for _, start, end, pid in recognizer.finish():
        labels[start : end + 1] = pid
    truth = np.full(n, VISEMES.index("X"), np.int64)
    m = min(n, len(utt.truth.codes))
    truth[:m] = utt.truth.codes[:m]
    return Frames(log_mel, fill_undecoded(labels[:n], UNDECODED), truth)


def examples(frames: Sequence[Frames], cmn_prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and targets of every frame, built the way the tracker builds them."""
    inputs, targets = [], []
    for f in frames:
        n = len(f.labels)
        mel = RunningMean(cmn_prior).normalise(f.log_mel)
        inputs.append(
            model_inputs(
                context_rows(mel, n, -MEL_CONTEXT, n + MEL_CONTEXT),
                context_rows(f.labels, n, -PHONE_CONTEXT, n + PHONE_CONTEXT),
            )
        )
        targets.append(f.truth)
    return np.concatenate(inputs), np.concatenate(targets)


def fit(
    inputs: np.ndarray, targets: np.ndarray, log: Callable[[str], None] | None = None
) -> dict[str, np.ndarray]:
    """One-hidden-layer softmax classifier by mini-batch Adam (fixed seed)."""
    rng = np.random.default_rng(SEED)
    in_mean = inputs.mean(axis=0)
    in_std = inputs.std(axis=0) + 1e-3
    x = ((inputs - in_mean) / in_std).astype(np.float32)
    n_in, n_out = x.shape[1], len(VISEMES)
    params = [
        rng.normal(0.0, 1.0 / np.sqrt(n_in), (n_in, HIDDEN)).astype(np.float32),
        np.zeros(HIDDEN, np.float32),
        rng.normal(0.0, 1.0 / np.sqrt(HIDDEN), (HIDDEN, n_out)).astype(np.float32),
        np.zeros(n_out, np.float32),
    ]
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    step = 0
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        loss = 0.0
        for i in range(0, len(order), BATCH):
            batch = order[i : i + BATCH]
            xb, yb = x[batch], targets[batch]
            w1, b1, w2, b2 = params
            hidden = np.maximum(0.0, xb @ w1 + b1)
            z = hidden @ w2 + b2
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            loss -= float(np.log(p[np.arange(len(yb)), yb] + 1e-12).sum())
            g = p
            g[np.arange(len(yb)), yb] -= 1.0
            g /= len(yb)
            g_hidden = g @ w2.T
            g_hidden[hidden <= 0] = 0.0
            grads = [xb.T @ g_hidden + WEIGHT_DECAY * w1, g_hidden.sum(0), hidden.T @ g + WEIGHT_DECAY * w2]
            grads.append(g.sum(0))
            step += 1
            for j, (param, grad) in enumerate(zip(params, grads, strict=True)):
                first[j] = 0.9 * first[j] + 0.1 * grad
                second[j] = 0.999 * second[j] + 0.001 * grad * grad
                m_hat = first[j] / (1 - 0.9**step)
                v_hat = second[j] / (1 - 0.999**step)
                param -= (LEARNING_RATE * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
        if log is not None:
            log(f"epoch {epoch + 1}/{EPOCHS}: loss {loss / len(x):.4f}")
    w1, b1, w2, b2 = params
    return {
        "in_mean": in_mean.astype(np.float32),
        "in_std": in_std.astype(np.float32),
        "w1": w1,
        "b1": b1,
        "w2": w2,
        "b2": b2,
    }


def accuracy(model: dict[str, np.ndarray], inputs: np.ndarray, targets: np.ndarray) -> float:
    x = (inputs - model["in_mean"]) / model["in_std"]
    logits = np.maximum(0.0, x @ model["w1"] + model["b1"]) @ model["w2"] + model["b2"]
    return float(np.mean(logits.argmax(axis=1) == targets))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facecast.bench.train_mouth", description=__doc__)
    parser.add_argument("--out", type=Path, default=MODEL_PATH, help="where to write the parameters")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="generated speech (default: bench cache)"
    )
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    utts = build_corpus(TUNING_VOICES, TRAINING_SENTENCES, args.cache_dir)
    frames = [analyse(u) for u in utts]
    # The running mean's prior: the mean log-mel spectrum over the training frames.
    cmn_prior = np.concatenate([f.log_mel for f in frames]).mean(axis=0).astype(np.float32)
    inputs, targets = examples(frames, cmn_prior)
    log(f"{len(utts)} utterances, {len(targets)} frames, {inputs.shape[1]} inputs ({N_MEL} mel bands)")
    model = fit(inputs, targets, log)
    recogniser = float(np.mean(id_code(np.concatenate([f.labels for f in frames])) == targets))
    classifier = accuracy(model, inputs, targets)
    log(f"training-frame accuracy: recogniser {recogniser:.3f}, classifier {classifier:.3f}")
    np.savez_compressed(args.out, cmn_prior=cmn_prior, **model)
    log(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
