"""Media and captions into an embedding shard, resumably.

    inputs (files, folders, CSV manifests, caption lists) -> decode -> windows -> encode
           -> parts written every `flush_every` files -> one shard, sorted by path

Audio (also the audio track of videos) is decoded to 48 kHz mono and cut into 10 s
windows; video is decoded to F uniformly sampled frames (`video_io`); a precomputed
encoder looks the file's features up by name. The same folder embedded once as audio
and once as video gives two shards with the same `path` column, which
`pair_shards` joins into video<->audio training pairs.

A re-run skips every file already embedded with the same size and modification
time (in the output or in the parts a killed run left behind), so an interrupted
build continues where it stopped, and the final shard is the same as that of an
uninterrupted run: rows are sorted by path and ids assigned in that order at the
end. A file that fails to decode goes to the error list `<out>.errors.csv` (path,
reason) and is retried on the next run; it never stops the run and never gets a row.
"""

from __future__ import annotations

import csv
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffgap_search.audio_io import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, DecodeError, clip_windows, decode_audio, pool_windows
from diffgap_search.encoders.base import require
from diffgap_search.errors import DiffgapError
from diffgap_search.storage import read_embeddings, write_file_atomic, write_shard
from diffgap_search.video_io import decode_frames

MANIFEST_PATH_COLUMNS = ("path", "file_name", "filename", "file")


@dataclass
class IngestReport:
    out: Path
    embedded: int = 0  # files embedded by this run
    skipped: int = 0  # files already in the output
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    rows: int = 0  # rows in the output
    seconds: float = 0.0

    @property
    def errors_csv(self) -> Path:
        """The list of the files that failed (path, reason): `<out stem>.errors.csv` beside the output."""
        return errors_path(self.out)


def errors_path(out: Path) -> Path:
    return out.parent / f"{out.stem}.errors.csv"


def collect_media(inputs: list[str | Path], extensions: set[str] = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS) -> list[Path]:
    """Files, folders (recursively, by extension) and CSV manifests -> sorted unique paths."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(p.resolve() for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        elif path.suffix.lower() == ".csv" and path.is_file():
            found.update(_manifest_paths(path))
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise DiffgapError(f"{path}: no such file or folder")
    if not found:
        raise DiffgapError(f"no media files in {', '.join(map(str, inputs))} (looked for {', '.join(sorted(extensions))})")
    return sorted(found)


def _manifest_paths(manifest: Path) -> list[Path]:
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        column = next((c for c in MANIFEST_PATH_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise DiffgapError(f"{manifest}: a media manifest needs a column named one of {', '.join(MANIFEST_PATH_COLUMNS)}")
        rows = [r[column] for r in reader if r.get(column)]
    return [(manifest.parent / p).resolve() for p in rows]


def read_captions(inputs: list[str | Path]) -> list[str]:
    """Captions from text files (one per line) or CSV files (a `caption` column, or caption_1..5)."""
    captions: list[str] = []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise DiffgapError(f"{path}: no such caption file")
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                columns = [c for c in (reader.fieldnames or []) if c == "caption" or c.startswith("caption_")]
                if not columns:
                    raise DiffgapError(f"{path}: a caption CSV needs a 'caption' (or caption_1..) column")
                captions.extend(r[c].strip() for r in reader for c in columns if r.get(c, "").strip())
        else:
            captions.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not captions:
        raise DiffgapError(f"no captions in {', '.join(map(str, inputs))}")
    return captions


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _parts_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.parts"


def _done(out: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file already embedded, in the output or in parts."""
    done: dict[str, tuple[int, int]] = {}
    tables = []
    if out.exists():
        tables.append(pq.read_table(out, columns=["path", "size", "mtime_ns"]))
    parts = _parts_dir(out)
    if parts.exists():
        tables.extend(pq.read_table(p, columns=["path", "size", "mtime_ns"]) for p in sorted(parts.glob("part-*.parquet")))
    for t in tables:
        for p, s, m in zip(t.column("path").to_pylist(), t.column("size").to_pylist(), t.column("mtime_ns").to_pylist()):
            done[p] = (s, m)
    return done


def _check_encoder(encoder, modality: str, per_window: bool) -> None:
    if modality not in ("audio", "video"):
        raise DiffgapError(f"--modality {modality}: media files are embedded as audio or video")
    can = sorted(encoder.modalities)
    require(encoder, modality, f"use --modality {can[0]} or another --encoder" if can else "use another --encoder")
    if per_window and (modality != "audio" or encoder.precomputed):
        raise DiffgapError("--per-window splits audio into 10 s windows; it is for --modality audio with an audio encoder")


def _embed_file(encoder, path: Path, modality: str, per_window: bool) -> tuple[np.ndarray, list[float], float]:
    """(unit rows [k, d], start_s of each row, duration_s) of one file; DecodeError if it cannot be read."""
    if encoder.precomputed:
        try:
            return encoder.lookup(path), [0.0], float("nan")
        except DiffgapError as exc:
            raise DecodeError(str(exc)) from None
    if modality == "video":
        frames = decode_frames(path, encoder.num_frames)
        return encoder.encode_video([frames.rgb]), [0.0], frames.duration_s
    samples = decode_audio(path, encoder.sample_rate)
    w = clip_windows(samples, encoder.sample_rate, window_s=encoder.window_samples / encoder.sample_rate)
    emb = encoder.encode_audio(w.audio)  # [windows, d]
    if per_window:
        return emb, w.start_s.tolist(), w.duration_s
    return pool_windows(emb, [len(emb)]), [0.0], w.duration_s


def embed_media(
    encoder,
    inputs: list[str | Path],
    out: str | Path,
    *,
    per_window: bool = False,
    flush_every: int = 64,
    progress: bool = True,
    modality: str = "audio",
) -> IngestReport:
    """Embed every media file under `inputs` into the shard `out`: its audio track
    (`modality="audio"`), its frames (`"video"`), or its precomputed features."""
    from tqdm.auto import tqdm

    out = Path(out)
    if out.suffix != ".parquet":
        raise DiffgapError(f"--out {out}: the output is a parquet shard; use a name ending in .parquet")
    _check_encoder(encoder, modality, per_window)
    files = collect_media(inputs, VIDEO_EXTENSIONS if modality == "video" else AUDIO_EXTENSIONS | VIDEO_EXTENSIONS)
    report = IngestReport(out)
    t0 = time.perf_counter()
    done = _done(out)
    if out.exists():
        previous = read_embeddings(out)
        if previous.space and previous.space != encoder.space:
            raise DiffgapError(f"{out} holds embeddings of space {previous.space!r}, this encoder makes {encoder.space!r}; "
                               "use another --out for another encoder")
    todo = []
    for f in files:
        if done.get(str(f)) == _stamp(f):
            report.skipped += 1
        else:
            todo.append(f)
    parts = _parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    next_part = len(list(parts.glob("part-*.parquet")))
    buffer: dict[str, list] = {k: [] for k in ("vectors", "path", "size", "mtime_ns", "start_s", "duration_s")}

    def flush() -> None:
        nonlocal next_part
        if not buffer["path"]:
            return
        n = len(buffer["path"])
        meta = pa.table({k: buffer[k] for k in ("path", "size", "mtime_ns", "start_s", "duration_s")})
        write_shard(parts / f"part-{next_part:05d}.parquet", np.arange(n), np.concatenate(buffer["vectors"]), meta,
                    space=encoder.space, modality=modality)
        next_part += 1
        for v in buffer.values():
            v.clear()

    bar = tqdm(todo, unit="file", desc=f"embedding {modality} ({encoder.space})", disable=not progress)
    pending = 0
    for path in bar:
        try:
            emb, starts, duration = _embed_file(encoder, path, modality, per_window)
        except DecodeError as exc:
            report.failed.append((str(path), str(exc).split(": ", 1)[-1]))
            continue
        size, mtime = _stamp(path)
        k = len(emb)
        buffer["vectors"].append(emb)
        buffer["start_s"].extend(starts)
        buffer["path"].extend([str(path)] * k)
        buffer["size"].extend([size] * k)
        buffer["mtime_ns"].extend([mtime] * k)
        buffer["duration_s"].extend([duration] * k)
        report.embedded += 1
        pending += 1
        if pending >= flush_every:
            flush()
            pending = 0
    flush()
    report.rows = _merge(out, parts, encoder.space, modality)
    _write_errors(out, report.failed)
    report.seconds = time.perf_counter() - t0
    return report


def _merge(out: Path, parts: Path, space: str, modality: str) -> int:
    """Output + parts -> one shard sorted by (path, start_s), ids 0..n-1, written atomically."""
    tables = [pq.read_table(out)] if out.exists() else []
    tables += [pq.read_table(p) for p in sorted(parts.glob("part-*.parquet"))]
    if not tables:
        shutil.rmtree(parts, ignore_errors=True)
        return 0
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")
    # a file re-embedded after it changed: keep its newest rows only (the last table wins)
    newest: dict[str, int] = {}
    paths = table.column("path").to_pylist()
    source = np.concatenate([np.full(t.num_rows, i) for i, t in enumerate(tables)])
    for p, s in zip(paths, source):
        newest[p] = s
    rows = [i for i, (p, s) in enumerate(zip(paths, source)) if newest[p] == s]
    starts = table.column("start_s").to_pylist()
    rows.sort(key=lambda i: (paths[i], starts[i]))
    table = table.take(pa.array(rows, pa.int64()))
    emb = read_embeddings_from_table(table)
    meta = table.drop(["id", "embedding"])
    write_shard(out, np.arange(table.num_rows), emb, meta, space=space, modality=modality, local_ids=True)
    shutil.rmtree(parts, ignore_errors=True)
    return table.num_rows


def read_embeddings_from_table(table: pa.Table) -> np.ndarray:
    from diffgap_search.storage import vectors_from_column

    return vectors_from_column(table.column("embedding"), "embeddings")


def _write_errors(out: Path, failed: list[tuple[str, str]]) -> None:
    path = errors_path(out)
    if not failed:
        if path.exists():
            path.unlink()
        return

    def write(fh) -> None:
        writer = csv.writer(fh)
        writer.writerow(["path", "reason"])
        writer.writerows(failed)

    write_file_atomic(path, write, "w", newline="")


def embed_captions(encoder, inputs: list[str | Path], out: str | Path, *, batch: int = 256, progress: bool = True) -> IngestReport:
    """Embed captions (text files, one per line, or caption CSVs) into the shard `out`."""
    from tqdm.auto import tqdm

    out = Path(out)
    t0 = time.perf_counter()
    require(encoder, "text", "captions need a CLAP encoder (hf:laion/clap-htsat-unfused, or laion-clap:HTSAT-tiny "
                             "with --checkpoint)")
    captions = read_captions(inputs)
    vectors = [encoder.encode_text(captions[i : i + batch])
               for i in tqdm(range(0, len(captions), batch), desc="embedding captions", unit="batch", disable=not progress)]
    write_shard(out, np.arange(len(captions)), np.concatenate(vectors), pa.table({"caption": captions}),
                space=encoder.space, modality="text", local_ids=True)
    return IngestReport(out, embedded=len(captions), rows=len(captions), seconds=time.perf_counter() - t0)


def embeddings_cache(index_dir: str | Path) -> Path:
    """Where `index_media` keeps the embeddings of an index's media: `<index folder>.embeddings.parquet` beside it."""
    index_dir = Path(index_dir)
    return index_dir.parent / f"{index_dir.name}.embeddings.parquet"


def index_media(media: list[str | Path], out: str | Path, *, encoder: str, checkpoint: str | Path | None = None,
                device: str = "auto", progress: bool = True, **build_options):
    """Embed audio/video files and folders with `encoder` into the cache shard `embeddings_cache(out)`,
    then build the index folder `out` from it (`Index.build` with `build_options`).

    A re-run embeds only new or changed files. `device` is torch's for the encoder and FAISS's
    for the index (auto: a GPU when each sees one). Returns (the index, the ingest report).
    """
    from diffgap_search.devices import torch_device
    from diffgap_search.encoders import load_encoder
    from diffgap_search.index import Index

    cache = embeddings_cache(out)
    enc = load_encoder(encoder, device=torch_device(device), checkpoint=checkpoint)
    report = embed_media(enc, list(media), cache, progress=progress)
    return Index.build([cache], out, device=device, **build_options), report
