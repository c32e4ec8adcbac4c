"""Video frames for the CLIP video encoder, through PyAV (FFmpeg).

`decode_frames(path, num_frames=8)` returns F RGB frames sampled uniformly over the
clip: frame i is the first decoded frame whose presentation time reaches the centre
of the i-th of F equal segments of the clip, (i + 0.5) / F of its duration. The
frames are decoded in order (no seeking, whose landing point depends on the key
frames), so the same file always gives the same frames. A clip with fewer than F
frames repeats its frames in order. The audio track of a video goes through
`audio_io.decode_audio` like any audio file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffgap_search.audio_io import DecodeError

NUM_FRAMES = 8


@dataclass(frozen=True)
class Frames:
    rgb: np.ndarray  # uint8 [F, H, W, 3]
    times_s: np.ndarray  # float64 [F], presentation time of each frame
    duration_s: float


def _duration_s(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base
    return None


def _count_frames(path: Path, av) -> int:
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)


def decode_frames(path: str | Path, num_frames: int = NUM_FRAMES) -> Frames:
    """F uniformly sampled RGB frames of a video file, or DecodeError naming the file and why."""
    import av

    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    path = Path(path)
    if not path.exists():
        raise DecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    picked: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            duration = _duration_s(container, stream)
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            if duration:
                targets = start + duration * (np.arange(num_frames) + 0.5) / num_frames
                by_index = None
            else:  # no duration in the container: count the frames first, then pick by index
                total = _count_frames(path, av)
                by_index = set(np.floor((np.arange(num_frames) + 0.5) * total / num_frames).astype(int).tolist()) if total else set()
                targets = None
            last = None
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else start + i / float(stream.average_rate or 25)
                last = (frame, t)
                if targets is not None:
                    while len(picked) < num_frames and t >= targets[len(picked)]:
                        picked.append(frame.to_ndarray(format="rgb24"))
                        times.append(t)
                    if len(picked) == num_frames:
                        break
                elif i in by_index:
                    picked.append(frame.to_ndarray(format="rgb24"))
                    times.append(t)
            if last is not None and targets is not None:
                while len(picked) < num_frames:  # targets past the last frame (a duration longer than the frames)
                    picked.append(last[0].to_ndarray(format="rgb24"))
                    times.append(last[1])
    except DecodeError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
        reason = (getattr(exc, "strerror", None) or str(exc)).strip() or "unknown error"
        raise DecodeError(f"{path}: cannot decode video ({reason})") from None
    if not picked:
        raise DecodeError(f"{path}: no video frames (zero-length or truncated before the first frame)")
    if len(picked) < num_frames:  # fewer frames than asked: repeat them in order
        order = np.floor(np.arange(num_frames) * len(picked) / num_frames).astype(int)
        picked, times = [picked[j] for j in order], [times[j] for j in order]
    return Frames(np.stack(picked), np.asarray(times), float(duration if duration else (times[-1] - start)))
