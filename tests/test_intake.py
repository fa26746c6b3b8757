from __future__ import annotations

import numpy as np
import pytest

from facecast.engine.intake import AudioFormatError, PcmDecoder, StreamResampler, validate_rate


def _resample_all(x: np.ndarray, a: int, b: int, chunks: list[int] | None = None) -> np.ndarray:
    r = StreamResampler(a, b)
    parts, i = [], 0
    for n in chunks or [len(x)]:
        parts.append(r.process(x[i : i + n]))
        i += n
    parts.append(r.process(x[i:]))
    parts.append(r.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize(
    ("a", "b"), [(24000, 16000), (44100, 16000), (8000, 24000), (22050, 48000), (48000, 16000)]
)
def test_resampler_preserves_a_sine_and_the_timeline(a: int, b: int) -> None:
    t = np.arange(a) / a
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = _resample_all(x, a, b)
    assert len(y) == -(-a * b // a)  # ceil(n_in * out / in)
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(y)) / b)
    # No time shift and no gain change away from the edges.
    assert np.abs(y - ref)[200:-200].max() < 2e-3


def test_resampler_output_does_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(1)
    x = (0.1 * rng.standard_normal(30000)).astype(np.float32)
    whole = _resample_all(x, 44100, 24000)
    sizes = [int(s) for s in rng.integers(0, 900, size=80)]
    assert np.array_equal(whole, _resample_all(x, 44100, 24000, sizes))


def test_resampler_removes_content_above_the_new_nyquist() -> None:
    t = np.arange(48000) / 48000
    x = (0.5 * np.sin(2 * np.pi * 11000 * t)).astype(np.float32)  # above 8 kHz: must not alias
    y = _resample_all(x, 48000, 16000)
    assert np.abs(y[200:-200]).max() < 0.01


def test_odd_byte_chunks_are_joined_across_pushes() -> None:
    samples = np.arange(-500, 500, dtype=np.int16) * 30
    data = samples.tobytes()
    dec = PcmDecoder()
    out = np.concatenate([dec.decode(data[i : i + 7], 1) for i in range(0, len(data), 7)])
    assert np.array_equal(np.round(out * 32768).astype(np.int16), samples)
    assert dec.pending_bytes == 0


def test_stereo_is_downmixed() -> None:
    left = np.full(100, 1000, np.int16)
    right = np.full(100, -1000, np.int16)
    inter = np.stack([left, right], axis=1)
    assert np.allclose(PcmDecoder().decode(inter, 2), 0.0)
    assert np.allclose(PcmDecoder().decode(inter.reshape(-1).tobytes(), 2), 0.0)


def test_non_finite_floats_become_silence() -> None:
    x = np.array([0.5, np.nan, np.inf, -np.inf, 2.0], np.float32)
    out = PcmDecoder().decode(x, 1)
    assert np.isfinite(out).all()
    assert out.tolist() == [0.5, 0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("rate", [0, 100, 7999, 48001, 192000, -16000, 16000.5, "16000", True])
def test_absurd_rates_are_rejected_with_a_clear_message(rate: object) -> None:
    with pytest.raises(AudioFormatError, match="sample_rate"):
        validate_rate(rate)


def test_unsupported_array_types_are_rejected() -> None:
    with pytest.raises(AudioFormatError, match="int16 PCM or float32"):
        PcmDecoder().decode(np.zeros(10, np.int32), 1)
    with pytest.raises(AudioFormatError, match="bytes"):
        PcmDecoder().decode([1, 2, 3], 1)  # type: ignore[arg-type]
    with pytest.raises(AudioFormatError, match="1-D"):
        PcmDecoder().decode(np.zeros((2, 2, 2), np.int16), 1)
