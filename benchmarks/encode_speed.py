"""Audio encoding speed: decode, resample and model (LAION-CLAP HTSAT-tiny), alone and end to end.

Real audio from ../shared/data (50 ESC-50 WAV clips, 8 FLAC and 5 OGG Vorbis files from
audio/misc, the AAC audio of the 3 MP4 videos; 0.14 to 10.1 s each, every one of them a
single 10 s window). The model is the real HTSAT-tiny audio branch of laion_clap
(`create_model("HTSAT-tiny", "roberta")`, full size, random weights: speed does not depend
on the weights), loaded through `LaionClapEncoder` from a checkpoint in LAION's layout
written by `tests/tiny_models.tiny_laion_checkpoint`; only its text branch (a 1-layer
random `roberta-base` in a temporary Hugging Face cache) is small, and audio encoding never
runs it. Rows, each the median of `--repeats` timed runs after an untimed warm-up:

1. Baseline: fp32 `torch.mm` of two `--matmul-n` square matrices (FLOP = 2 n^3), the
   machine's matmul FLOP/s with torch on this device and thread count, measured in this run.
   Every "of matmul" figure divides an achieved FLOP/s by it.
2. Decode: `audio_io.decode_audio` of every file (PyAV decode, libswresample to float
   planar, mono mean, finiteness check): once at each file's own sample rate (no
   resampling: the converter only changes the sample format) and once at 48 kHz (what
   ingestion does). Their difference is the cost of resampling.
3. Model: `LaionClapEncoder.encode_audio` on ready 10 s windows (480,000 samples at 48 kHz,
   cut by `clip_windows` from the decoded files) with `batch_size` 1 / 8 / 32: the int16
   round trip, the STFT and log-mel inside HTSAT, the Swin transformer, the projection,
   the L2 normalization, the copy back to numpy.
4. End to end: `ingest.embed_media` (collect, decode, windows, encode, pool, parquet parts,
   final merge) into a new shard per run, with the encoder's `batch_size` 1 / 8 / 32,
   (a) on the real files, (b) on long files: FLAC 44.1 kHz mono made by concatenating the
   ESC-50 clips, `--long-windows` 10 s windows each. The time spent inside `decode_audio`
   and `encode_audio` during these runs is measured (wrappers around both) and given as
   shares of the run; "other" is the rest (file listing, windowing, pooling, parquet).

FLOP per window are counted once with `torch.utils.flop_counter.FlopCounterMode` around one
`encode_audio` call (matmuls, convolutions, attention's bmm; not elementwise ops, so
GFLOP/s is a lower bound of the work done).

    python benchmarks/encode_speed.py            # ~7 minutes on 2 idle CPU cores
    python benchmarks/encode_speed.py --quick --out /tmp/encode_speed.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))  # tiny_models: the offline LAION checkpoint and HF cache the tests use
from common import NO_GPU, RESULTS, machine_block, markdown_table, matmul_flops, p50, write_results  # noqa: E402

import diffgap_search.ingest as ingest  # noqa: E402
from diffgap_search.audio_io import SAMPLE_RATE, clip_windows, decode_audio  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
WINDOW = 480_000


def real_files() -> list[Path]:
    audio = SHARED / "audio"
    if not audio.exists():
        sys.exit(f"needs the real audio in {audio} (../shared/data beside the repository)")
    return (sorted((audio / "esc50").glob("*.wav")) + sorted((audio / "misc").glob("*.flac"))
            + sorted((audio / "misc").glob("*.oga")) + sorted((SHARED / "video").glob("*.mp4")))


def native_rate(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return int(c.streams.audio[0].rate)


def write_flac(path: Path, samples: np.ndarray, rate: int) -> None:
    """float32 mono samples -> 16-bit FLAC (PyAV)."""
    import av

    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    with av.open(str(path), "w") as c:
        stream = c.add_stream("flac", rate=rate, layout="mono")
        for lo in range(0, pcm.size, rate):
            frame = av.AudioFrame.from_ndarray(pcm[None, lo : lo + rate], format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)


def long_files(esc: list[Path], folder: Path, count: int, windows: int) -> list[Path]:
    """`count` FLAC files (44.1 kHz mono), each ESC-50 clips end to end for `windows` x 10 s."""
    folder.mkdir(parents=True)
    clips = [decode_audio(p, 44_100) for p in esc]
    need = windows * 441_000
    out, k = [], 0
    for i in range(count):
        parts, have = [], 0
        while have < need:
            parts.append(clips[k % len(clips)])
            have += parts[-1].size
            k += 1
        path = folder / f"long-{i:02d}.flac"
        write_flac(path, np.concatenate(parts)[:need], 44_100)
        out.append(path)
    return out


def build_encoder(root: Path, device: str):
    """LaionClapEncoder('HTSAT-tiny') from a full-size random checkpoint in LAION's layout."""
    from tiny_models import hf_cache, tiny_laion_checkpoint, tiny_roberta_cache

    from diffgap_search.encoders.laion import LaionClapEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        home = root / "hf-home"
        if not (root / "htsat-tiny-random.pt").exists():
            tiny_roberta_cache(home)
            tiny_laion_checkpoint(root / "htsat-tiny-random.pt", home)
        with hf_cache(home):
            return LaionClapEncoder("HTSAT-tiny", checkpoint=root / "htsat-tiny-random.pt", device=device)


class Spent:
    """Seconds spent inside decode_audio and encoder.encode_audio while embed_media runs."""

    def __init__(self, encoder):
        self.encoder, self.decode, self.model = encoder, 0.0, 0.0

    def __enter__(self):
        real_decode, real_encode = ingest.decode_audio, self.encoder.encode_audio

        def decode(*a, **k):
            t = time.perf_counter()
            try:
                return real_decode(*a, **k)
            finally:
                self.decode += time.perf_counter() - t

        def encode(*a, **k):
            t = time.perf_counter()
            try:
                return real_encode(*a, **k)
            finally:
                self.model += time.perf_counter() - t

        self._saved = real_decode
        ingest.decode_audio = decode
        self.encoder.encode_audio = encode
        return self

    def __exit__(self, *exc):
        ingest.decode_audio = self._saved
        del self.encoder.encode_audio  # back to the class's method


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "diffgap_search"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return head + (" + uncommitted changes under diffgap_search/ (the working tree was measured)" if dirty else "")


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device-list", default=None, help="comma-separated torch devices for the model (default: cpu, plus cuda when available)")
    ap.add_argument("--batches", default="1,8,32", help="encoder batch sizes")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each model / end-to-end row")
    ap.add_argument("--decode-repeats", type=int, default=7, help="timed passes over the files for the decode rows")
    ap.add_argument("--model-windows", type=int, default=32, help="windows encoded per timed model run")
    ap.add_argument("--long-files", type=int, default=2, help="long FLAC files for the end-to-end (b) rows")
    ap.add_argument("--long-windows", type=int, default=32, help="10 s windows per long file")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own, one per core)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="few files and runs (for checking the script, not for results)")
    ap.add_argument("--out", type=Path, default=RESULTS / "encode_speed.md")
    args = ap.parse_args()
    files = real_files()
    if args.quick:
        files = files[:6] + files[50:52] + files[58:59] + files[-1:]  # wav, flac, oga, mp4
        args.repeats, args.decode_repeats, args.matmul_runs = 1, 2, 2
        args.model_windows, args.long_files, args.long_windows = min(args.model_windows, 8), 1, min(args.long_windows, 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b]
    cuda = torch.cuda.is_available()
    devices = args.device_list.split(",") if args.device_list else ["cpu"] + (["cuda"] if cuda else [])
    load_start = os.getloadavg()
    t_start = time.perf_counter()

    work = Path(tempfile.mkdtemp(prefix="encode_speed-", dir=args.workdir))
    rows: list[dict] = []
    columns = ["device", "what", "N", "batch", "files/s", "audio-s/s", "windows/s", "ms/window",
               "decode", "model", "other", "GFLOP/s", "of matmul"]

    def emit(row: dict) -> None:
        rows.append(row)
        print(" | ".join(str(row.get(c, "")) for c in columns), flush=True)

    try:
        # ---- decode (CPU) -------------------------------------------------------------------
        rates = {p: native_rate(p) for p in files}
        seconds = {p: decode_audio(p).size / SAMPLE_RATE for p in files}
        groups = [("wav", [p for p in files if p.suffix == ".wav"]), ("flac", [p for p in files if p.suffix == ".flac"]),
                  ("ogg vorbis", [p for p in files if p.suffix == ".oga"]), ("mp4 (aac)", [p for p in files if p.suffix == ".mp4"]),
                  ("all", files)]
        decode_s48 = {}
        for name, group in groups:
            if not group:
                continue
            audio_s = sum(seconds[p] for p in group)
            native, at_48 = [], []
            for rep in range(args.decode_repeats + 1):  # the two alternate pass by pass; pass 0 is the warm-up
                for rate_of, lat in ((rates.get, native), (lambda p: SAMPLE_RATE, at_48)):
                    t = time.perf_counter()
                    for p in group:
                        decode_audio(p, rate_of(p))
                    if rep:
                        lat.append(time.perf_counter() - t)
            t_native, t_48 = p50(native), p50(at_48)
            decode_s48[name] = t_48
            emit({"device": "cpu", "what": f"decode {name}, own rate", "N": len(group), "batch": "-",
                  "files/s": f"{len(group) / t_native:,.0f}", "audio-s/s": f"{audio_s / t_native:,.0f}",
                  "decode": "100%"})
            emit({"device": "cpu", "what": f"decode {name} + resample to 48 kHz", "N": len(group), "batch": "-",
                  "files/s": f"{len(group) / t_48:,.0f}", "audio-s/s": f"{audio_s / t_48:,.0f}",
                  "decode": f"{pct(min(t_native, t_48) / t_48)} (resample {pct(max(t_48 - t_native, 0) / t_48)})"})
        real_audio_s = sum(seconds.values())
        real_windows = [len(clip_windows(decode_audio(p)).audio) for p in files]

        long_dir = work / "long"
        longs = long_files([p for p in files if p.suffix == ".wav"], long_dir, args.long_files, args.long_windows)
        long_audio_s = sum(decode_audio(p).size / SAMPLE_RATE for p in longs)
        pool = np.concatenate([clip_windows(decode_audio(p)).audio for p in files])  # real windows for the model rows
        windows = pool[np.arange(args.model_windows) % len(pool)]

        # ---- model and end to end, per device ------------------------------------------------
        flop_window, baselines, params = None, {}, None
        for dev in devices:
            mm, mm_s = matmul_flops(dev, args.matmul_n, args.matmul_runs)
            baselines[dev] = mm
            emit({"device": dev, "what": f"torch.mm fp32 {args.matmul_n}^2 (baseline)", "N": args.matmul_runs, "batch": "-",
                  "GFLOP/s": f"{mm / 1e9:.1f}", "of matmul": "1.000"})
            encoder = build_encoder(work, dev)
            params = sum(p.numel() for p in encoder.model.audio_branch.parameters()) + sum(
                p.numel() for p in encoder.model.audio_projection.parameters())
            if flop_window is None:
                from torch.utils.flop_counter import FlopCounterMode

                encoder.batch_size = 1
                encoder.encode_audio(windows[:1])
                with FlopCounterMode(display=False) as counter:
                    encoder.encode_audio(windows[:1])
                flop_window = counter.get_total_flops()

            def gflops(windows_per_s: float) -> tuple[str, str]:
                achieved = flop_window * windows_per_s
                return f"{achieved / 1e9:.1f}", f"{achieved / mm:.3f}"

            # model only: batch sizes interleaved run by run, so background load hits them alike
            model_t = {b: [] for b in batches}
            for b in batches:  # warm-up
                encoder.batch_size = b
                encoder.encode_audio(windows[: max(b, 1)])
            for _ in range(args.repeats):
                for b in batches:
                    encoder.batch_size = b
                    t = time.perf_counter()
                    encoder.encode_audio(windows)
                    model_t[b].append(time.perf_counter() - t)
            model_rate = {}
            for b in batches:
                wps = len(windows) / p50(model_t[b])
                model_rate[b] = wps
                g, eff = gflops(wps)
                emit({"device": dev, "what": "model: encode_audio on 10 s windows", "N": len(windows), "batch": b,
                      "windows/s": f"{wps:.2f}", "audio-s/s": f"{10 * wps:.1f}", "ms/window": f"{1e3 / wps:.0f}",
                      "model": "100%", "GFLOP/s": g, "of matmul": eff})

            # end to end: embed_media into a fresh shard per run
            sets = [("real files", files, real_audio_s), (f"long FLAC ({args.long_windows} windows each)", longs, long_audio_s)]
            for set_name, set_files, audio_s in sets:
                n_windows = sum(len(clip_windows(decode_audio(p)).audio) for p in set_files)
                encoder.batch_size = batches[0]
                ingest.embed_media(encoder, set_files[:2], work / f"warm-{dev}-{len(rows)}.parquet", progress=False)
                runs = {b: [] for b in batches}
                spent = {b: [0.0, 0.0, 0.0] for b in batches}  # decode, model, total over all runs
                for rep in range(args.repeats):
                    for b in batches:
                        encoder.batch_size = b
                        out = work / f"e2e-{dev}-{len(rows)}-{b}-{rep}.parquet"
                        with Spent(encoder) as s:
                            t = time.perf_counter()
                            report = ingest.embed_media(encoder, set_files, out, progress=False)
                            total = time.perf_counter() - t
                        assert report.embedded == len(set_files) and not report.failed, report
                        runs[b].append(total)
                        spent[b][0] += s.decode
                        spent[b][1] += s.model
                        spent[b][2] += total
                        shutil.rmtree(out.parent / f".{out.name}.parts", ignore_errors=True)
                        out.unlink(missing_ok=True)
                for b in batches:
                    t = p50(runs[b])
                    dec, mod, tot = spent[b]
                    g, eff = gflops(n_windows / t)
                    emit({"device": dev, "what": f"end to end: embed_media, {set_name}", "N": len(set_files), "batch": b,
                          "files/s": f"{len(set_files) / t:.2f}", "audio-s/s": f"{audio_s / t:.1f}",
                          "windows/s": f"{n_windows / t:.2f}", "ms/window": f"{1e3 * t / n_windows:.0f}",
                          "decode": pct(dec / tot), "model": pct(mod / tot), "other": pct(max(tot - dec - mod, 0) / tot),
                          "GFLOP/s": g, "of matmul": eff})
            del encoder
    finally:
        shutil.rmtree(work, ignore_errors=True)

    elapsed = time.perf_counter() - t_start
    load_end = os.getloadavg()
    if "cuda" in {d.split(":")[0] for d in devices}:
        gpu_line = f"GPU: measured on {torch.cuda.get_device_name(0)} (decode stays on the CPU)."
    elif cuda:
        gpu_line = "GPU: not measured (not in --device-list)."
    else:
        gpu_line = NO_GPU
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    table = markdown_table(rows, columns)
    formats = ", ".join(f"{len(g)} {n}" for n, g in groups[:-1] if g)
    extra = {
        "command": f"`{command}`",
        "code measured": git_state(),
        "N (real files)": f"{len(files)} ({formats}), {real_audio_s:.1f} s of audio, {sum(real_windows)} windows of 10 s",
        "N (long files)": f"{len(longs)} x {args.long_windows} windows, {long_audio_s:.0f} s of audio",
        "repeats": f"{args.repeats} (model, end to end), {args.decode_repeats} (decode)",
        "torch threads": torch.get_num_threads(),
        "model": f"laion_clap HTSAT-tiny audio branch + projection, {params:,} parameters, fp32, random weights",
        "FLOP per window": f"{flop_window / 1e9:.2f} G (FlopCounterMode, one encode_audio call at batch 1)",
        **{f"matmul baseline {d}": f"{v / 1e9:.1f} GFLOP/s" for d, v in baselines.items()},
        "load average (1 min) at start / end": f"{load_start[0]:.2f} / {load_end[0]:.2f}",
        "wall time": f"{elapsed:.0f} s",
    }
    try:
        import av

        extra["pyav"] = f"{av.__version__} (FFmpeg {'.'.join(map(str, av.library_versions['libavcodec']))} libavcodec)"
    except Exception:  # noqa: BLE001 - a version string is not worth failing for
        pass
    if cuda:
        extra["gpu"] = torch.cuda.get_device_name(0)
    text = f"""# Audio encoding speed (LAION-CLAP HTSAT-tiny)

`{command}`{" (--quick: too few files and runs for results)" if args.quick else ""}

What each row times (median of the timed runs, after an untimed warm-up):

- **torch.mm**: fp32 {args.matmul_n} x {args.matmul_n} @ {args.matmul_n} x {args.matmul_n}, median of {args.matmul_runs}
  runs, FLOP = 2 n^3: the baseline of every "of matmul" (achieved FLOP/s / this), measured in this run
  on the same device and thread count.
- **decode, own rate**: `audio_io.decode_audio(path, sample_rate=<the file's rate>)` of every file of the
  group in turn (PyAV demux + decode, libswresample only converting to float planar, mono mean, finiteness
  check); median of {args.decode_repeats} passes. **+ resample to 48 kHz**: the same at 48 kHz, as ingestion
  decodes; "decode" there splits the time into decoding and resampling (the difference of the two rows).
  files/s = files / pass time; audio-s/s = seconds of audio decoded per second.
- **model**: `LaionClapEncoder.encode_audio` on {len(windows)} ready 10 s windows (cut by `clip_windows` from the
  real files) with `batch_size` = the row's batch: int16 round trip, HTSAT's STFT + log-mel, Swin transformer,
  projection, L2 norm, back to numpy. Batch sizes alternate run by run; median of {args.repeats} runs.
- **end to end**: `ingest.embed_media(encoder, files, new.parquet)` with the encoder's `batch_size` = the row's
  batch, whole call (collect, decode + resample, windows, encode, pool, parquet parts, merge); median of
  {args.repeats} runs. decode / model / other = the shares of the runs' total time spent inside `decode_audio`,
  inside `encode_audio`, and elsewhere. `embed_media` encodes one file at a time, so the batch only groups the
  windows *of one file*: the real files are {"one window each" if max(real_windows) == 1 else f"{min(real_windows)} to {max(real_windows)} windows each"},
  so they run at batch {max(real_windows)} at most whatever the setting; the
  long files ({args.long_windows} windows each: ESC-50 clips end to end, FLAC 44.1 kHz mono) show what the batch
  size does when a file has many windows.
- **FLOP**: {flop_window / 1e9:.2f} GFLOP per window, counted by `FlopCounterMode` (matmuls, convolutions incl. the
  STFT, attention bmm; not elementwise ops), so GFLOP/s is a lower bound of the work done.

{gpu_line}

{machine_block(extra)}

{table}
"""
    write_results(args.out, text, table)


if __name__ == "__main__":
    main()
