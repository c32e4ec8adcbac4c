"""Audio decoding and the deterministic 10-second windows that CLAP encoders see.

Decoding goes through PyAV (FFmpeg): wav, flac, ogg/oga (Vorbis, Opus), mp3, m4a/aac
and the audio track of video files (mp4, mkv, webm, ...) all take the same path.
Every file becomes 48 kHz mono float32:

- resampling by FFmpeg's libswresample (`av.AudioResampler`), each channel kept;
- mono = the plain mean of the channels (documented, rather than FFmpeg's downmix
  matrix, whose centre/surround gains depend on the layout).

Windows (`clip_windows`): CLAP models take 10 s at 48 kHz (480,000 samples).
- a clip shorter than 10 s is repeat-padded (tiled) to 10 s, as LAION-CLAP's
  "repeatpad" does;
- a longer clip is cut into consecutive 10 s windows from the start; a tail shorter
  than 10 s becomes one more window, repeat-padded from itself, if it lasts at least
  `min_tail_s` (1 s by default); a shorter tail is dropped (too little sound to
  carry weight in the clip's mean, and mostly fade-outs);
- the clip embedding is the mean of its window embeddings, L2-normalized (each
  window counts once, so a long recording is not dominated by its padding).
No randomness anywhere: the same file always gives the same windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffgap_search.errors import DiffgapError

SAMPLE_RATE = 48_000
WINDOW_S = 10.0
MIN_TAIL_S = 1.0
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aif", ".aiff"}
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"}


class DecodeError(DiffgapError):
    """A media file that cannot be turned into audio samples (the reason is the message)."""


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [n] mono samples at `sample_rate`, or DecodeError naming the file and why."""
    import av

    path = Path(path)
    if not path.exists():
        raise DecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DecodeError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            resampler = None
            for frame in container.decode(stream):
                if resampler is None:
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=sample_rate)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())  # [channels, samples], planar float32
            if resampler is not None:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray())
    except DecodeError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        reason = (getattr(exc, "strerror", None) or str(exc)).strip() or "unknown error"
        raise DecodeError(f"{path}: cannot decode ({reason})") from None
    if not chunks:
        raise DecodeError(f"{path}: no audio samples (zero-length or truncated before the first frame)")
    samples = np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float64).astype(np.float32)
    if samples.size == 0:
        raise DecodeError(f"{path}: no audio samples")
    if not np.isfinite(samples).all():
        raise DecodeError(f"{path}: decoded samples contain NaN or inf")
    return samples


@dataclass(frozen=True)
class Windows:
    audio: np.ndarray  # float32 [n_windows, window_samples]
    start_s: np.ndarray  # float64 [n_windows], where each window starts in the clip
    duration_s: float  # length of the clip


def clip_windows(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, window_s: float = WINDOW_S,
                 min_tail_s: float = MIN_TAIL_S) -> Windows:
    """Cut a clip into the deterministic windows described in the module docstring."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise DiffgapError(f"clip_windows needs a non-empty 1-D array of samples, got shape {samples.shape}")
    width = int(round(window_s * sample_rate))
    n = samples.size
    starts = list(range(0, max(n - width, 0) + 1, width)) if n >= width else [0]
    tail = n - (starts[-1] + width) if n >= width else 0
    if n >= width and tail >= min_tail_s * sample_rate:
        starts.append(starts[-1] + width)
    out = np.empty((len(starts), width), dtype=np.float32)
    for i, s in enumerate(starts):
        piece = samples[s : s + width]
        out[i] = piece if piece.size == width else repeat_pad(piece, width)
    return Windows(out, np.asarray(starts, dtype=np.float64) / sample_rate, n / sample_rate)


def repeat_pad(x: np.ndarray, width: int) -> np.ndarray:
    """Tile x until it fills `width` samples (LAION-CLAP's "repeatpad")."""
    reps = -(-width // x.size)
    return np.tile(x, reps)[:width]


def pool_windows(window_embeddings: np.ndarray, counts) -> np.ndarray:
    """Mean of each clip's consecutive window embeddings, L2-normalized: [sum(counts), d] -> [len(counts), d]."""
    counts = np.asarray(counts, dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    out = np.stack([window_embeddings[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
