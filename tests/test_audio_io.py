"""Audio decoding to 48 kHz mono and the deterministic 10 s windows."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from conftest import shared_data
from diffgap_search.audio_io import SAMPLE_RATE, DecodeError, clip_windows, decode_audio, pool_windows, repeat_pad


def write_wav(path, samples: np.ndarray, rate: int) -> None:
    """int16 PCM WAV with the standard library (an independent writer)."""
    samples = np.atleast_2d(samples)  # [channels, n]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples.T, -1, 1) * 32767).astype("<i2").tobytes())


def native_length(path) -> tuple[int, int]:
    """(samples per channel, sample rate) by decoding without any resampling."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return sum(f.samples for f in c.decode(s)), s.rate


def test_every_shared_audio_file_decodes_to_48k_mono_of_the_right_length():
    root = shared_data() / "audio"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".oga", ".ogg", ".mp3"))
    assert len(files) >= 50
    for path in files:
        x = decode_audio(path)
        n, rate = native_length(path)
        assert x.dtype == np.float32 and x.ndim == 1
        assert abs(len(x) - n * SAMPLE_RATE / rate) <= 2 + SAMPLE_RATE / rate, (path.name, len(x), n, rate)
        assert np.isfinite(x).all() and np.abs(x).max() > 0


def test_video_audio_tracks_decode():
    for name in ("car.mp4", "drum.mp4", "gun.mp4"):
        path = shared_data() / "video" / name
        x = decode_audio(path)
        n, rate = native_length(path)
        assert abs(len(x) - n * SAMPLE_RATE / rate) <= 2 + SAMPLE_RATE / rate
        assert np.abs(x).max() > 0.01  # real sound, not silence


def test_resampling_keeps_pitch_and_mono_is_the_channel_mean(tmp_path):
    rate, seconds, freq = 44_100, 2.0, 1000.0
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * freq * t)
    write_wav(tmp_path / "stereo.wav", np.stack([left, np.zeros_like(left)]), rate)
    x = decode_audio(tmp_path / "stereo.wav")
    assert abs(len(x) - seconds * SAMPLE_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(x[4800:-4800]))
    peak = np.fft.rfftfreq(len(x) - 9600, 1 / SAMPLE_RATE)[spectrum.argmax()]
    assert abs(peak - freq) < 2
    assert np.abs(x).max() == pytest.approx(0.25, abs=0.01)  # (L + R) / 2 with R silent


def test_bad_files_raise_decode_errors_with_a_reason(tmp_path):
    good = shared_data() / "audio" / "misc" / "ambi_piano.flac"
    cases = {
        "empty.wav": b"",
        "noise.mp3": np.random.default_rng(0).bytes(5000),
        "text.wav": b"this is not audio at all\n" * 20,
        "truncated.flac": good.read_bytes()[:200],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    write_wav(tmp_path / "zero.wav", np.zeros((1, 0)), 48_000)
    reasons = {}
    for name in [*cases, "zero.wav", "missing.wav"]:
        with pytest.raises(DecodeError) as err:
            decode_audio(tmp_path / name)
        reasons[name] = str(err.value)
        assert str(tmp_path / name) in reasons[name] and "\n" not in reasons[name]
    assert "empty file" in reasons["empty.wav"]
    assert "no such file" in reasons["missing.wav"]
    assert "no audio samples" in reasons["zero.wav"]


def test_windows_pad_cut_and_drop_short_tails():
    sr = 100  # small rate keeps the arithmetic readable: a window is 1,000 samples
    short = np.arange(1, 301, dtype=np.float32)
    w = clip_windows(short, sr)
    assert w.audio.shape == (1, 1000) and list(w.start_s) == [0.0]
    np.testing.assert_array_equal(w.audio[0], np.tile(short, 4)[:1000])  # repeat-padded
    exact = np.arange(2000, dtype=np.float32)
    assert clip_windows(exact, sr).audio.shape == (2, 1000)
    long_tail = np.arange(2150, dtype=np.float32)  # tail of 150 samples = 1.5 s >= 1 s: kept, padded
    w = clip_windows(long_tail, sr)
    assert list(w.start_s) == [0.0, 10.0, 20.0]
    np.testing.assert_array_equal(w.audio[2], repeat_pad(long_tail[2000:], 1000))
    short_tail = np.arange(2050, dtype=np.float32)  # 0.5 s tail: dropped
    assert list(clip_windows(short_tail, sr).start_s) == [0.0, 10.0]
    assert clip_windows(short_tail, sr).duration_s == 20.5


def test_pooling_is_the_normalized_mean_per_clip():
    e = np.array([[1, 0], [0, 1], [3, 4]], dtype=np.float32)
    pooled = pool_windows(e, [2, 1])
    np.testing.assert_allclose(pooled, [[2**-0.5, 2**-0.5], [0.6, 0.8]], atol=1e-6)
