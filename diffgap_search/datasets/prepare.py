"""A dataset manifest -> a pairs file (DESIGN.md "Pairs file"), from media or from precomputed embeddings.

    manifest -> clips -> audio side (one row per clip)    -+
                      -> query side (one row per caption, -+-> pairs: a = audio row, b = query row,
                         or per clip for video)             |   group_id = clip id, split, metadata
                                                            +-> <out>.missing.csv: clips left out, why

Each side comes either from media (`MediaSource`: a folder searched for each clip's file
by the adapter's naming conventions, embedded by `embed_media` into a cache shard
`<out>.audio.parquet` / `<out>.video.parquet` beside the output, which a re-run reuses)
or from embeddings computed elsewhere (`EmbeddingSource`: a shard or a `.npy` with its
keys, looked up the way `precomputed:` encoders look up files). Text queries from a
text encoder are encoded directly; from embeddings they are found by their caption
text (a `caption`, `text` or `label` column, as `embed --modality text` writes), by
caption id (AudioCaps `audiocap_id` as the key) or, for video, by the clip's file names.

A clip without media, whose file fails to decode, or without embeddings is left out,
listed in `<out>.missing.csv` (clip_id, side, reason) and counted; it never stops the run.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from diffgap_search.audio_io import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from diffgap_search.datasets.manifest import Clip, Manifest, match_keys, match_media
from diffgap_search.encoders.base import Encoder, require
from diffgap_search.errors import DiffgapError
from diffgap_search.storage import write_file_atomic

TEXT_COLUMNS = ("caption", "text", "label")
QUERY_MODALITY = {"audiocaps": "text", "clotho": "text", "vggsound": "video"}  # the paper's pairing of each


@dataclass(frozen=True)
class MediaSource:
    folder: Path
    encoder: Encoder  # from encoders.load_encoder


@dataclass(frozen=True)
class EmbeddingSource:
    path: Path  # a parquet shard, or a .npy with its keys in FILE.csv / FILE.parquet


@dataclass
class SideRows:
    """One side's vectors and, per clip, its rows (audio and video: one; text: one per caption)."""

    vectors: np.ndarray  # float32 [n, d], unit rows
    rows: dict[str, list[int]]  # clip_id -> rows of `vectors`
    keys: dict[str, str]  # clip_id -> the media path or key it came from
    missing: dict[str, str]  # clip_id -> why the clip has no row
    space: str | None
    modality: str
    cache: Path | None = None
    partial: dict[str, str] = field(default_factory=dict)  # clip_id -> captions left out (the clip still pairs)


@dataclass
class PrepareReport:
    out: Path
    dataset: str
    clips: int  # clips in the manifest (of the split asked for)
    paired_clips: int
    pairs: int
    missing: list[tuple[str, str, str]]  # (clip_id, side, reason), one per clip left out or cut short
    missing_csv: Path | None
    caches: list[Path]
    duplicates: int  # manifest rows repeating a clip
    seconds: float
    left_out: dict[str, int] = field(default_factory=dict)  # side -> clips left out for want of it
    query_modality: str = "text"

    @property
    def missing_clips(self) -> int:
        return self.clips - self.paired_clips


def prepare_pairs(manifest: Manifest, out: str | Path, *, audio: MediaSource | EmbeddingSource,
                  query: MediaSource | EmbeddingSource, query_modality: str = "text", progress: bool = True) -> PrepareReport:
    """Write the pairs file `out` for the clips of `manifest`; see the module docstring."""
    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix != ".parquet":
        raise DiffgapError(f"--out {out}: the pairs file is parquet; use a name ending in .parquet")
    if query_modality not in ("text", "video"):
        raise DiffgapError(f"query modality {query_modality!r}: pairs are audio with text or with video")
    if query_modality == "text" and not any(c.texts for c in manifest.clips):
        raise DiffgapError(f"{manifest.source}: no captions or labels to use as text queries")
    clips = manifest.clips
    a_side = _media_side(clips, audio, out, "audio", progress) if isinstance(audio, MediaSource) else _keyed_side(clips, audio, "audio")
    wanted = [c for c in clips if c.clip_id in a_side.rows]  # query side only for clips with audio
    if not wanted:
        first = a_side.missing[clips[0].clip_id] if clips else "the manifest has no clips"
        raise DiffgapError(f"none of the {len(clips)} clips of {manifest.source} has audio (first clip "
                           f"{clips[0].clip_id if clips else ''}: {first}); check the folder or the embeddings file")
    if query_modality == "text":
        q_side = (_text_from_encoder(wanted, query.encoder, progress) if isinstance(query, MediaSource)
                  else _text_from_embeddings(wanted, query))
    else:
        q_side = (_media_side(wanted, query, out, "video", progress) if isinstance(query, MediaSource)
                  else _keyed_side(wanted, query, "video"))

    a_rows, b_rows, group_id, split, meta = [], [], [], [], {k: [] for k in ("path", "query", "query_id")}
    extra: dict[str, list] = {}
    for clip in wanted:
        if clip.clip_id not in q_side.rows:
            continue
        a_row = a_side.rows[clip.clip_id][0]
        q_rows = q_side.rows[clip.clip_id]
        for i, q_row in enumerate(q_rows):
            a_rows.append(a_row)
            b_rows.append(q_row)
            group_id.append(clip.clip_id)
            split.append(clip.split)
            meta["path"].append(a_side.keys[clip.clip_id])
            if query_modality == "text":
                text_index = q_side.text_index[clip.clip_id][i]
                meta["query"].append(clip.texts[text_index])
                meta["query_id"].append(clip.caption_ids[text_index] if clip.caption_ids else None)
            else:
                meta["query"].append(q_side.keys[clip.clip_id])
            for k, v in clip.fields.items():
                extra.setdefault(k, []).append(v)
            if clip.label is not None:
                extra.setdefault("label", []).append(clip.label)
    if not a_rows:
        first = next(iter(q_side.missing.items()))
        raise DiffgapError(f"no clip of {manifest.source} has both audio and a {query_modality} query "
                           f"({len(wanted)} have audio; first without a query: {first[0]}: {first[1]})")
    metadata = {"path": meta["path"]}
    if query_modality == "text":
        metadata["caption"] = meta["query"]
        if any(v is not None for v in meta["query_id"]):
            metadata["caption_id"] = meta["query_id"]
    else:
        metadata["video_path"] = meta["query"]
    metadata.update(extra)
    from diffgap_search.pairs import write_pairs

    write_pairs(out, a_side.vectors[np.asarray(a_rows)], q_side.vectors[np.asarray(b_rows)], group_id=group_id,
                split=split if any(s is not None for s in split) else None, metadata=metadata,
                space_a=a_side.space, space_b=q_side.space, modality_b=query_modality)

    missing = [(cid, "audio", why) for cid, why in a_side.missing.items()]
    missing += [(cid, query_modality, why) for cid, why in q_side.missing.items()]
    missing += [(cid, query_modality, why) for cid, why in q_side.partial.items()]
    order = {c.clip_id: i for i, c in enumerate(clips)}
    missing.sort(key=lambda m: order[m[0]])
    missing_csv = _write_missing(out, missing)
    paired = len(set(group_id))
    left_out = {"audio": len(a_side.missing), query_modality: len(q_side.missing)}
    return PrepareReport(out, manifest.dataset, len(clips), paired, len(a_rows), missing, missing_csv,
                         [s.cache for s in (a_side, q_side) if s.cache is not None], manifest.duplicates,
                         time.perf_counter() - t0, {k: v for k, v in left_out.items() if v}, query_modality)


def prepare_dataset(dataset: str, manifest: str | Path, out: str | Path, *, audio_dir: Path | None = None,
                    audio_encoder: str | None = None, text_encoder: str | None = None, video_dir: Path | None = None,
                    video_encoder: str | None = None, audio_embeddings: Path | None = None,
                    query_embeddings: Path | None = None, checkpoint: Path | None = None, split: str | None = None,
                    frames: int = 8, batch_size: int = 16, device: str = "auto", progress: bool = True) -> PrepareReport:
    """`prepare_pairs` for a manifest of `dataset`, from folders and encoder specs or embeddings made before.

    Checks that the sources fit together, chooses the query modality (`query_modality`), loads each
    encoder once (a CLAP --audio-encoder also embeds the captions) and writes the pairs file `out`.
    """
    from diffgap_search.datasets import read_manifest
    from diffgap_search.devices import torch_device
    from diffgap_search.encoders import load_encoder

    modality, text_encoder = query_modality(dataset, audio_dir=audio_dir, audio_encoder=audio_encoder,
                                            text_encoder=text_encoder, video_dir=video_dir, video_encoder=video_encoder,
                                            audio_embeddings=audio_embeddings, query_embeddings=query_embeddings,
                                            checkpoint=checkpoint)
    clips = read_manifest(dataset, manifest, split=split)
    loaded: dict[str, object] = {}

    def encoder(spec: str, num_frames: int | None = None):
        if spec not in loaded:
            loaded[spec] = load_encoder(spec, device=torch_device(device), batch_size=batch_size, num_frames=num_frames,
                                        checkpoint=checkpoint if spec.startswith("laion-clap:") else None)
        return loaded[spec]

    audio = MediaSource(audio_dir, encoder(audio_encoder)) if audio_dir else EmbeddingSource(audio_embeddings)
    if query_embeddings:
        query = EmbeddingSource(query_embeddings)
    elif modality == "video":
        query = MediaSource(video_dir or audio_dir, encoder(video_encoder, num_frames=frames))
    else:
        query = MediaSource(audio_dir, encoder(text_encoder))
    return prepare_pairs(clips, out, audio=audio, query=query, query_modality=modality, progress=progress)


def query_modality(dataset: str, *, audio_dir: Path | None, audio_encoder: str | None, text_encoder: str | None,
                   video_dir: Path | None, video_encoder: str | None, audio_embeddings: Path | None,
                   query_embeddings: Path | None, checkpoint: Path | None) -> tuple[str, str | None]:
    """(the queries' modality, their text encoder) for these sources; refuses sources that do not fit together.

    A video encoder makes video queries, a text encoder text queries; query embeddings are of the
    dataset's own pairing (`QUERY_MODALITY`); with neither, the CLAP audio encoder embeds the captions.
    """
    if bool(audio_dir) != bool(audio_encoder):
        raise DiffgapError("--audio-dir and --audio-encoder go together (the folder and the encoder of its clips)")
    if bool(audio_dir) == bool(audio_embeddings):
        raise DiffgapError("give the audio as --audio-dir DIR --audio-encoder SPEC, or as --audio-embeddings FILE "
                           "(not both and not neither)")
    if sum(map(bool, (text_encoder, video_encoder, query_embeddings))) > 1:
        raise DiffgapError("give the queries one way: --text-encoder, --video-encoder or --query-embeddings")
    if video_dir and not video_encoder:
        raise DiffgapError("--video-dir needs --video-encoder (e.g. hf:openai/clip-vit-base-patch32)")
    specs = [s for s in (audio_encoder, text_encoder, video_encoder) if s]
    if checkpoint and not any(s.startswith("laion-clap:") for s in specs):
        raise DiffgapError("--checkpoint is the weights file of a laion-clap:... encoder; no encoder here is one")
    if video_encoder:
        modality = "video"
    elif text_encoder:
        modality = "text"
    elif query_embeddings:
        if dataset not in QUERY_MODALITY:
            raise DiffgapError(f"dataset {dataset!r} is unknown; use one of {', '.join(QUERY_MODALITY)}")
        modality = QUERY_MODALITY[dataset]
    elif dataset == "vggsound":
        raise DiffgapError("VGGSound queries are videos: give --video-encoder (frames of --video-dir, default "
                           "--audio-dir) or --query-embeddings FILE (e.g. CAVP features); --text-encoder uses the labels")
    else:
        modality, text_encoder = "text", audio_encoder  # a CLAP encoder embeds both
    if modality == "video" and not (video_dir or audio_dir or query_embeddings):
        raise DiffgapError("--video-encoder needs --video-dir DIR (the videos of the clips)")
    return modality, text_encoder


def cache_path(out: Path, modality: str) -> Path:
    """Where the media embeddings of a prepare run are kept: `<out stem>.<modality>.parquet` beside it."""
    return out.parent / f"{out.stem}.{modality}.parquet"


def missing_path(out: Path) -> Path:
    return out.parent / f"{out.stem}.missing.csv"


# ---------------------------------------------------------------------------
# the sides
# ---------------------------------------------------------------------------


def _media_side(clips: list[Clip], source: MediaSource, out: Path, modality: str, progress: bool) -> SideRows:
    """Match each clip's file in the folder, embed the matched files with `embed_media` into the cache shard."""
    from diffgap_search.ingest import embed_media
    from diffgap_search.storage import read_embeddings

    extensions = VIDEO_EXTENSIONS if modality == "video" and not source.encoder.precomputed else AUDIO_EXTENSIONS | VIDEO_EXTENSIONS
    match = match_media(clips, source.folder, extensions)
    missing = dict(match.missing)
    if not match.found:
        return SideRows(np.zeros((0, 1), np.float32), {}, {}, missing, source.encoder.space, modality)
    files = sorted({p.resolve() for p in match.found.values()})
    cache = cache_path(out, modality)
    report = embed_media(source.encoder, files, cache, modality=modality, progress=progress)
    failed = dict(report.failed)
    emb = read_embeddings(cache)
    row_of = {p: i for i, p in enumerate(emb.metadata.column("path").to_pylist())}
    rows, keys = {}, {}
    for clip_id, path in match.found.items():
        resolved = str(path.resolve())
        if resolved in failed:
            missing[clip_id] = f"{path} could not be read: {failed[resolved]}"
        elif resolved not in row_of:
            missing[clip_id] = f"{path} has no row in {cache}"
        else:
            rows[clip_id], keys[clip_id] = [row_of[resolved]], str(path)
    return SideRows(emb.vectors, rows, keys, missing, emb.space or source.encoder.space, modality, cache)


def _keyed_side(clips: list[Clip], source: EmbeddingSource, modality: str) -> SideRows:
    """One row per clip from embeddings keyed by path, file name or stem (as `precomputed:` encoders)."""
    from diffgap_search.encoders.precomputed import PrecomputedEncoder

    features = PrecomputedEncoder(str(source.path), modality=modality)
    found, missing = match_keys(clips, features.rows, str(source.path))
    key_of = {row: key for key, row in features.rows.items()}
    return SideRows(features.vectors, {c: [r] for c, r in found.items()}, {c: key_of[r] for c, r in found.items()},
                    missing, features.space, modality)


@dataclass
class TextRows(SideRows):
    text_index: dict[str, list[int]] = field(default_factory=dict)  # clip_id -> index in clip.texts of each row


def _text_from_encoder(clips: list[Clip], encoder, progress: bool, batch: int = 256) -> TextRows:
    """Encode each distinct caption (or label) once; every clip gets a row per caption."""
    from tqdm.auto import tqdm

    require(encoder, "text", "captions need a CLAP encoder (--text-encoder hf:laion/clap-htsat-unfused)")
    distinct = list(dict.fromkeys(t for c in clips for t in c.texts))
    vectors = [encoder.encode_text(distinct[i : i + batch])
               for i in tqdm(range(0, len(distinct), batch), desc=f"embedding captions ({encoder.space})", unit="batch",
                             disable=not progress)]
    row_of = {t: i for i, t in enumerate(distinct)}
    rows, index, missing = {}, {}, {}
    for c in clips:
        if c.texts:
            rows[c.clip_id], index[c.clip_id] = [row_of[t] for t in c.texts], list(range(len(c.texts)))
        else:
            missing[c.clip_id] = "the clip has no caption or label in the manifest"
    return TextRows(np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32), rows, {}, missing,
                    encoder.space, "text", text_index=index)


def _text_columns(path: Path) -> tuple[str | None, Path | None]:
    """The text column of an embeddings file (or of the keys beside its .npy), and that keys file."""
    if not path.exists():
        raise DiffgapError(f"{path}: no such embeddings file")
    if path.suffix == ".npy":
        keys = next((p for p in (path.with_suffix(".csv"), path.with_suffix(".parquet")) if p.exists()), None)
        if keys is None:
            return None, None
        if keys.suffix == ".csv":
            with open(keys, newline="", encoding="utf-8-sig") as fh:
                names = next(csv.reader(fh), [])
        else:
            names = pq.read_schema(keys).names
    else:
        keys = None
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise DiffgapError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    return next((c for c in TEXT_COLUMNS if c in names), None), keys


def _text_from_embeddings(clips: list[Clip], source: EmbeddingSource) -> TextRows:
    """Caption rows by caption text (a caption/text/label column), else by caption id (AudioCaps audiocap_id)."""
    from diffgap_search.storage import read_embeddings, read_npy

    path = Path(source.path)
    column, keys_file = _text_columns(path)
    if column is None:
        if not any(c.caption_ids for c in clips):
            raise DiffgapError(f"{path}: text embeddings need a column named one of {', '.join(TEXT_COLUMNS)} holding "
                               "each caption (as `diffgap-search embed MANIFEST.csv --modality text` writes)")
        return _text_by_caption_id(clips, source)
    emb = read_npy(path, metadata=keys_file) if path.suffix == ".npy" else read_embeddings(path)
    row_of: dict[str, int] = {}
    for i, text in enumerate(emb.metadata.column(column).to_pylist()):
        if text is not None:
            row_of.setdefault(str(text).strip(), i)
    rows, index, missing, partial = {}, {}, {}, {}
    for c in clips:
        found = [(i, row_of[t]) for i, t in enumerate(c.texts) if t in row_of]
        if not found:
            missing[c.clip_id] = f"none of its {len(c.texts)} captions is in column {column!r} of {path}"
            continue
        index[c.clip_id], rows[c.clip_id] = [i for i, _ in found], [r for _, r in found]
        if len(found) < len(c.texts):
            partial[c.clip_id] = f"{len(c.texts) - len(found)} of its {len(c.texts)} captions are not in column {column!r} of {path}"
    return TextRows(emb.vectors, rows, {}, missing, emb.space or f"features:{path.stem}", "text", partial=partial,
                    text_index=index)


def _text_by_caption_id(clips: list[Clip], source: EmbeddingSource) -> TextRows:
    from diffgap_search.encoders.precomputed import PrecomputedEncoder

    features = PrecomputedEncoder(str(source.path), modality="text")
    rows, index, missing, partial = {}, {}, {}, {}
    for c in clips:
        found = [(i, features.rows[k]) for i, k in enumerate(c.caption_ids) if k in features.rows]
        if not found:
            missing[c.clip_id] = f"none of its caption ids {', '.join(c.caption_ids)} is a key of {source.path}"
            continue
        index[c.clip_id], rows[c.clip_id] = [i for i, _ in found], [r for _, r in found]
        if len(found) < len(c.caption_ids):
            partial[c.clip_id] = f"{len(c.caption_ids) - len(found)} of its caption ids are not keys of {source.path}"
    return TextRows(features.vectors, rows, {}, missing, features.space, "text", partial=partial, text_index=index)


def _write_missing(out: Path, missing: list[tuple[str, str, str]]) -> Path | None:
    """`<out stem>.missing.csv` (clip_id, side, reason), written atomically; removed when nothing is missing."""
    path = missing_path(out)
    if not missing:
        if path.exists():
            path.unlink()
        return None
    def write(fh) -> None:
        writer = csv.writer(fh)
        writer.writerow(["clip_id", "side", "reason"])
        writer.writerows(missing)

    return write_file_atomic(path, write, "w", newline="")
