"""Clotho manifests (`clotho_captions_{development,validation,evaluation}.csv`).

Columns `file_name,caption_1,...,caption_5`, one row per clip; the clip's id is its
file name. Media: the file of that name, or the same name with another audio
extension (`Santa Motor.flac` for `Santa Motor.wav`).
"""

from __future__ import annotations

from pathlib import Path

from diffgap_search.datasets.manifest import Clip, Manifest, read_csv_rows, require_columns
from diffgap_search.errors import DiffgapError


def read_clotho(path: str | Path, *, split: str | None = None) -> Manifest:
    """The clips of a Clotho captions CSV in file order, each with its (non-empty) captions.

    The file is one split; `split` labels its clips (development is `train`, validation `val`,
    evaluation `test`, as the caller chooses)."""
    path = Path(path)
    header, rows = read_csv_rows(path)
    col = require_columns(path, header, ("file_name", "caption_1"), "clotho")
    caption_cols = [col[c] for c in header if c.startswith("caption_")]
    clips, seen = [], set()
    for n, row in enumerate(rows, start=2):
        name = row[col["file_name"]].strip() if len(row) > col["file_name"] else ""
        if not name:
            raise DiffgapError(f"{path}: row {n}: empty file_name")
        if name in seen:
            raise DiffgapError(f"{path}: row {n}: file_name {name!r} appears twice; each Clotho clip has one row")
        seen.add(name)
        captions = tuple(row[i].strip() for i in caption_cols if i < len(row) and row[i].strip())
        clips.append(Clip(clip_id=name, names=(name,), captions=captions, split=split, fields={"file_name": name}))
    return Manifest("clotho", path, clips, rows=len(rows))
