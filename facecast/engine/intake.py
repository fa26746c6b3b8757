"""Audio intake: validate and normalise pushed PCM, and resample it in a chunking-independent way.

Whatever the chunk sizes a host uses, the resampled stream is sample-for-sample identical: each output
sample is computed from the same input window with the same filter taps. That is what makes the
engine's output independent of how the audio was chunked.
"""

from __future__ import annotations

from math import gcd

import numpy as np

from facecast.engine.config import MAX_IN_RATE, MIN_IN_RATE

MAX_CHANNELS = 8
TAPS_PER_ZERO_CROSSING = 16  # filter length in units of the lower rate's period (stop-band ~ -70 dB)
_KAISER_BETA = 8.0
_BLOCK_OUTPUTS = 1 << 15  # outputs computed per vectorised block, bounds memory on 10-minute pushes


class AudioFormatError(ValueError):
    """Pushed audio that cannot be interpreted; the message says what to send instead."""


def validate_rate(sample_rate: object) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
        raise AudioFormatError(f"sample_rate must be an integer number of Hz, got {sample_rate!r}")
    rate = int(sample_rate)
    if not MIN_IN_RATE <= rate <= MAX_IN_RATE:
        raise AudioFormatError(
            f"sample_rate {rate} Hz is outside the supported {MIN_IN_RATE}..{MAX_IN_RATE} Hz; "
            "resample the audio before pushing it"
        )
    return rate


def validate_channels(channels: object) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int | np.integer):
        raise AudioFormatError(f"channels must be an integer, got {channels!r}")
    if not 1 <= int(channels) <= MAX_CHANNELS:
        raise AudioFormatError(f"channels must be within 1..{MAX_CHANNELS}, got {channels}")
    return int(channels)


class PcmDecoder:
    """Turns pushed chunks (int16 bytes, int16 or float arrays) into mono float32 in -1..1.

    A trailing partial int16 frame in a byte chunk (odd length, or a split stereo frame) is kept and
    joined to the next chunk, so a byte stream may be cut anywhere."""

    def __init__(self) -> None:
        self._pending = b""

    def reset(self) -> None:
        self._pending = b""

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def decode(self, pcm: bytes | bytearray | memoryview | np.ndarray, channels: int) -> np.ndarray:
        if isinstance(pcm, bytes | bytearray | memoryview):
            return self._decode_bytes(bytes(pcm), channels)
        if isinstance(pcm, np.ndarray):
            return _decode_array(pcm, channels)
        raise AudioFormatError(
            f"pcm must be bytes (int16 little-endian) or a numpy array, got {type(pcm).__name__}"
        )

    def _decode_bytes(self, data: bytes, channels: int) -> np.ndarray:
        data = self._pending + data
        frame_bytes = 2 * channels
        usable = len(data) - len(data) % frame_bytes
        self._pending = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        return _downmix(samples.reshape(-1, channels)) if channels > 1 else samples


def _decode_array(pcm: np.ndarray, channels: int) -> np.ndarray:
    if pcm.ndim == 2:
        if pcm.shape[1] != channels and channels != 1:
            raise AudioFormatError(
                f"array has {pcm.shape[1]} channels (shape {pcm.shape}) but channels={channels} was given"
            )
        frames = pcm
    elif pcm.ndim == 1:
        if pcm.size % channels:
            raise AudioFormatError(
                f"interleaved array of {pcm.size} samples is not a whole number of {channels}-channel frames"
            )
        frames = pcm.reshape(-1, channels)
    else:
        raise AudioFormatError(
            f"pcm array must be 1-D (interleaved) or 2-D (samples, channels), got {pcm.ndim}-D"
        )
    if frames.shape[1] > MAX_CHANNELS:
        raise AudioFormatError(f"at most {MAX_CHANNELS} channels are supported, got {frames.shape[1]}")
    if frames.dtype == np.int16:
        out = frames.astype(np.float32) / 32768.0
    elif frames.dtype in (np.float32, np.float64):
        out = frames.astype(np.float32)
        # Non-finite samples would poison the resampler and the recogniser: treat them as silence.
        if not np.isfinite(out).all():
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(out, -1.0, 1.0, out=out)
    else:
        raise AudioFormatError(f"unsupported sample type {frames.dtype}; push int16 PCM or float32 in -1..1")
    return _downmix(out) if out.shape[1] > 1 else out[:, 0].copy()


def _downmix(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=1, dtype=np.float32)


def _kaiser_sinc(num_taps: int, cutoff: float, up: int) -> np.ndarray:
    """Low-pass FIR for the upsampled domain; `cutoff` is relative to the upsampled Nyquist."""
    n = np.arange(num_taps, dtype=np.float64) - (num_taps - 1) / 2.0
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(num_taps, _KAISER_BETA)
    return (h * up / h.sum() * 1.0).astype(np.float64)


class StreamResampler:
    """Rational polyphase resampler with state, chunking-independent and timeline-preserving.

    Output sample m corresponds to input time m * in_rate / out_rate (the filter's group delay is
    compensated), and `flush()` emits the tail so that exactly ceil(n_in * out_rate / in_rate)
    samples come out for n_in samples in."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        g = gcd(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._up = out_rate // g
        self._down = in_rate // g
        self._identity = self._up == self._down
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute input index of _buf[0]
        self._n_in = 0
        self._n_out = 0
        self._flushed = False
        if not self._identity:
            # An odd filter length makes the group delay a whole number of upsampled samples, so
            # it can be compensated exactly; the bank is padded with one zero tap.
            # Downsampling needs a filter as long in time as the *output* period demands.
            self._taps = -(-TAPS_PER_ZERO_CROSSING * max(self._up, self._down) // self._up)
            num_taps = self._up * self._taps - 1
            cutoff = 0.94 * min(1.0 / self._up, 1.0 / self._down)
            h = np.append(_kaiser_sinc(num_taps, cutoff, self._up), 0.0)
            # Polyphase bank: branch p holds taps p, p+up, p+2up, ... applied to x[base], x[base-1], ...
            self._bank = h.reshape(self._taps, self._up).T.astype(np.float32).copy()
            self._tap_offsets = np.arange(self._taps, dtype=np.int64)[None, :]
            self._delay = (num_taps - 1) // 2

    def process(self, x: np.ndarray) -> np.ndarray:
        if self._flushed:
            raise RuntimeError("resampler already flushed")
        x = np.asarray(x, dtype=np.float32)
        if self._identity:
            self._n_in += len(x)
            self._n_out += len(x)
            return x.copy()
        self._buf = np.concatenate([self._buf, x]) if len(self._buf) else x.copy()
        self._n_in += len(x)
        # Outputs whose whole input window has arrived: (m*down + delay)//up <= n_in - 1.
        last = (self._up * self._n_in - 1 - self._delay) // self._down
        return self._emit(last + 1)

    def flush(self) -> np.ndarray:
        """Emit the remaining outputs, treating input beyond the end as silence."""
        if self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        if self._identity:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._n_in * self._up // self._down)
        return self._emit(total)

    def _emit(self, end: int) -> np.ndarray:
        if end <= self._n_out:
            return np.zeros(0, dtype=np.float32)
        pieces = []
        for m0 in range(self._n_out, end, _BLOCK_OUTPUTS):
            m = np.arange(m0, min(end, m0 + _BLOCK_OUTPUTS), dtype=np.int64)
            k = m * self._down + self._delay
            base = k // self._up
            phase = k % self._up
            idx = (base - self._buf_start)[:, None] - self._tap_offsets
            n = len(self._buf)
            # Rows ascend and columns descend, so the corners bound every index: in a steady stream the
            # whole window is buffered and a plain gather does (the masked one is for the edges).
            if n and idx[0, -1] >= 0 and idx[-1, 0] < n:
                vals = self._buf[idx]
            elif n == 0:
                vals = np.zeros(idx.shape, dtype=np.float32)
            else:
                valid = (idx >= 0) & (idx < n)
                vals = np.where(valid, self._buf[np.clip(idx, 0, n - 1)], np.float32(0.0))
            pieces.append((vals * self._bank[phase]).sum(axis=1, dtype=np.float32))
        self._n_out = end
        # Keep only the history that future outputs can still reach.
        next_base = (end * self._down + self._delay) // self._up
        keep_from = max(self._buf_start, next_base - self._taps + 1)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
