"""The generation bridge: query-side embeddings -> audio-space conditions for a generator.

    conditions = bridge(translator, queries, seed=0)                 # S, K, w: the translator's sampling
    write_conditions(conditions, "conditions.npy")          # + conditions.json beside it
    write_conditions(conditions, "conditions.parquet")      # id, caption, embedding
    write_conditions(conditions, "conditions.pt")           # torch.load(..., weights_only=True)

AudioLDM-style generators are trained on CLAP *audio* embeddings and driven by CLAP
*text* embeddings at inference; the translator's "to-audio" direction moves the text
(or video) embedding across the modality gap first. Each file stands alone: a
generator reads it with numpy, pyarrow or torch, without this package.

Layouts (n conditions of dim d, row i belongs to ids[i] and captions[i]):

- npy:     FILE.npy float32 [n, d], unit rows; FILE.json {"format": "diffgap-conditions",
           "format_version", "embeddings": "FILE.npy", "shape", "dtype", "sha256" (of the
           .npy), "ids", "captions", "settings"}.
- parquet: columns id int64, caption string, embedding fixed_size_list<float32>[d];
           schema metadata diffgap.space / diffgap.modality ("audio") and
           diffgap.conditions (the JSON object above without ids and captions).
- pt:      {"format": str, "format_version": int, "embeddings": float32 tensor [n, d],
           "ids": int64 tensor [n], "captions": list[str], "settings": dict}.

`settings` = translator folder, direction, S, K, w, seed, source and target space.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from diffgap_search.errors import DiffgapError
from diffgap_search.queries import Queries
from diffgap_search.types import Space
from diffgap_search.storage import write_file_atomic

FORMAT = "diffgap-conditions"
FORMAT_VERSION = 1
FORMATS = ("npy", "parquet", "pt")
SETTINGS_KEY = b"diffgap.conditions"


@dataclass
class Conditions:
    """Audio-space conditions, one row per source query."""

    vectors: np.ndarray  # float32 [n, d_audio], unit rows
    ids: np.ndarray  # int64 [n]
    captions: list[str]  # the text, the video file, or the shard's caption/path/label
    settings: dict  # how they were made (JSON-serializable scalars)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def check_source(queries: Queries, translator) -> None:
    """Refuse queries that are not on the translator's query side (b), naming both spaces."""
    side, given = translator.config.space_b, Space(queries.space, queries.dim, queries.modality)
    if not side.admits(given):
        raise DiffgapError(f"inputs are in {given.describe()}, the translator's query side is {side.describe()}; "
                           "encode them with the encoder the translator was trained on")


def bridge(translator, queries: Queries, *, steps: int | None = None, samples: int | None = None,
           guidance: float | None = None, seed: int = 0, model: str | Path | None = None) -> Conditions:
    """Translate query-side vectors to the audio space ("to-audio"), keeping ids and captions.

    S, K, w not given are the translator's (`Translator.sampling`); the settings record the ones used.
    The sampling noise comes from `torch.Generator().manual_seed(seed)`: the rows equal
    `translator.translate(queries.vectors, "to-audio", ..., generator=<that generator>)`.
    """
    check_source(queries, translator)
    sampling = translator.sampling.fill(steps, samples, guidance)
    steps, samples, guidance = sampling.steps, sampling.samples, sampling.guidance
    vectors = translator.translate(queries.vectors, "to-audio", steps=steps, samples=samples, guidance=guidance,
                                   generator=torch.Generator().manual_seed(seed))  # [n, d_audio]
    target = translator.config.space_a
    settings = {
        "model": None if model is None else str(model),
        "direction": "to-audio",
        "steps": steps,
        "samples": samples,
        "guidance": guidance,
        "seed": seed,
        "source_space": queries.space or translator.config.space_b.name,
        "source_modality": queries.modality or translator.config.space_b.modality,
        "target_space": target.name,
        "target_modality": target.modality or "audio",
        "dim": int(vectors.shape[1]),
    }
    return Conditions(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(queries.ids, dtype=np.int64),
                      [str(label) for label in queries.labels], settings)


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def output_format(out: Path, fmt: str | None) -> str:
    """The format named by --format, else by the file's suffix; refuse a suffix of another format."""
    suffix = out.suffix.lower().lstrip(".")
    if fmt is not None and fmt not in FORMATS:
        raise DiffgapError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if fmt is None:
        if suffix not in FORMATS:
            raise DiffgapError(f"--out {out}: name the file .npy, .parquet or .pt, or pass --format")
        return suffix
    if suffix in FORMATS and suffix != fmt:
        raise DiffgapError(f"--out {out} ends in .{suffix} but --format is {fmt}; name it .{fmt}")
    return fmt


def sidecar_path(out: Path) -> Path:
    """The JSON file beside an .npy output: conditions.npy -> conditions.json."""
    return out.with_suffix(".json") if out.suffix.lower() == ".npy" else out.with_name(out.name + ".json")


def write_conditions(conditions: Conditions, out: str | Path, fmt: str | None = None) -> list[Path]:
    """Write the conditions atomically in `fmt` (default: from the suffix); returns the files written."""
    out = Path(out)
    fmt = output_format(out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        return _write_npy(conditions, out)
    if fmt == "parquet":
        return [_write_parquet(conditions, out)]
    return [_write_pt(conditions, out)]


def _header(conditions: Conditions) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": conditions.settings}


def _write_npy(conditions: Conditions, out: Path) -> list[Path]:
    """The matrix first, then the sidecar that names it (with its sha256: a reader can tell a pair apart)."""
    from diffgap_search.storage import write_json_atomic

    digest = hashlib.sha256()
    write_file_atomic(out, lambda fh: np.save(_HashingWriter(fh, digest), conditions.vectors, allow_pickle=False))
    sidecar = sidecar_path(out)
    write_json_atomic({
        **_header(conditions),
        "embeddings": out.name,
        "shape": list(conditions.vectors.shape),
        "dtype": "float32",
        "sha256": digest.hexdigest(),
        "ids": [int(i) for i in conditions.ids],
        "captions": conditions.captions,
    }, sidecar)
    return [out, sidecar]


def _write_parquet(conditions: Conditions, out: Path) -> Path:
    from diffgap_search.storage import MODALITY_KEY, SPACE_KEY, fixed_size_vectors, write_table_atomic

    table = pa.table({
        "id": pa.array(conditions.ids, pa.int64()),
        "caption": pa.array(conditions.captions, pa.string()),
        "embedding": fixed_size_vectors(conditions.vectors),
    })
    settings = conditions.settings
    kv = {SETTINGS_KEY: json.dumps(_header(conditions)).encode(), MODALITY_KEY: settings["target_modality"].encode()}
    if settings.get("target_space"):
        kv[SPACE_KEY] = settings["target_space"].encode()
    return write_table_atomic(table.replace_schema_metadata(kv), out)


def _write_pt(conditions: Conditions, out: Path) -> Path:
    """Tensors, lists, strings and numbers only: loads with torch.load(weights_only=True)."""
    payload = {
        **_header(conditions),
        "embeddings": torch.from_numpy(conditions.vectors.copy()),  # [n, d] float32
        "ids": torch.from_numpy(conditions.ids.copy()),  # [n] int64
        "captions": list(conditions.captions),
    }
    write_file_atomic(out, lambda fh: torch.save(payload, fh))
    return out


class _HashingWriter:
    """A write-only file object that hashes every byte on its way to `fh` (the sha256 without reading back)."""

    def __init__(self, fh, digest):
        self.fh, self.digest = fh, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.fh.write(data)


def translate_file(translator, source: str | Path, out: str | Path, direction="to-audio", *, steps=None, samples=None,
                   guidance=None, seed: int = 0):
    """Translate a shard or .npy into the other space: `out` .parquet (ids and metadata kept) or .npy.

    S, K, w not given are the translator's validated ones. Returns (rows, the sampling used).
    """
    from diffgap_search.storage import read_embeddings, write_file_atomic, write_shard
    from diffgap_search.types import Direction

    direction, out = Direction.of(direction), Path(out)
    if out.suffix not in (".parquet", ".npy"):
        raise DiffgapError(f"--out {out}: use a .parquet or .npy file name")
    a, b = translator.config.space_a, translator.config.space_b
    source_space, target = (b, a) if direction is Direction.TO_AUDIO else (a, b)
    emb = read_embeddings(source, dim=source_space.dim)
    if emb.space and source_space.name and emb.space != source_space.name:
        raise DiffgapError(f"{source}: embeddings are in space {emb.space!r}, the translator's {direction.value} input is "
                           f"{source_space.name!r}; give embeddings of that space")
    sampling = translator.sampling.fill(steps, samples, guidance)
    x = translator.translate(emb.vectors, direction.value, steps=sampling.steps, samples=sampling.samples,
                             guidance=sampling.guidance, generator=torch.Generator().manual_seed(seed))
    if out.suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(out, lambda fh: np.save(fh, x))
    else:
        write_shard(out, emb.ids, x, emb.metadata, space=target.name, modality=target.modality)
    return len(x), sampling
