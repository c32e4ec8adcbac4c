"""Dataset adapters: AudioCaps, Clotho and VGGSound manifests -> clips -> pairs files.

    read_manifest("audiocaps", "test.csv", split="test")  -> Manifest (clips with captions / labels)
    prepare_pairs(manifest, "test.parquet", audio=..., query=...)  -> the pairs file and a report

Each adapter module says which media file names it matches; `prepare` is the command.
"""

from __future__ import annotations

from pathlib import Path

from diffgap_search.datasets.audiocaps import read_audiocaps
from diffgap_search.datasets.clotho import read_clotho
from diffgap_search.datasets.manifest import Clip, Manifest, match_media
from diffgap_search.datasets.prepare import (QUERY_MODALITY, EmbeddingSource, MediaSource, PrepareReport, prepare_dataset,
                                             prepare_pairs)
from diffgap_search.datasets.vggsound import read_vggsound
from diffgap_search.errors import DiffgapError

READERS = {"audiocaps": read_audiocaps, "clotho": read_clotho, "vggsound": read_vggsound}


def read_manifest(dataset: str, path: str | Path, *, split: str | None = None) -> Manifest:
    """The clips of a manifest of `dataset` (audiocaps, clotho or vggsound)."""
    if dataset not in READERS:
        raise DiffgapError(f"dataset {dataset!r} is unknown; use one of {', '.join(READERS)}")
    return READERS[dataset](path, split=split)


__all__ = ["Clip", "EmbeddingSource", "Manifest", "MediaSource", "PrepareReport", "QUERY_MODALITY", "READERS", "match_media",
           "prepare_dataset", "prepare_pairs", "read_audiocaps", "read_clotho", "read_manifest", "read_vggsound"]
