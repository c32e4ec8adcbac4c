"""Precomputed features (CAVP, or any other model's) as an encoder: `precomputed:FILE`.

FILE is an embedding shard (parquet) or a `.npy` matrix [n, d] with its keys in a sibling
file of the same stem (`FILE.csv` or `FILE.parquet`, one row per vector, in order). The key
of a row is its first column among KEY_COLUMNS; a media file matches the row whose key is
its path, its file name or its file name without extension. `embed` then writes, for each
media file, the row of its features, so precomputed video features line up with the audio
embeddings of the same files (`diffgap-search pair`).

The space is the shard's own `diffgap.space` when it names one, else `features:<FILE stem>`. Its
`modalities` are what the features are of: the modality asked for, else the shard's own
`diffgap.modality`; a `.npy` does not say, and its features are taken for audio or video files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffgap_search.errors import DiffgapError

KEY_COLUMNS = ("key", "path", "file_name", "filename", "file", "video_id", "ytid", "youtube_id", "id")


def from_spec(name: str, options) -> PrecomputedEncoder:
    """The encoder of precomputed:`name` (`options`: an encoders.EncoderOptions; nothing in them applies)."""
    return PrecomputedEncoder(name)


class PrecomputedEncoder:
    precomputed = True

    def __init__(self, name: str, *, modality: str | None = None):
        from diffgap_search.storage import read_embeddings, read_npy

        path = Path(name).expanduser()
        if not path.exists():
            raise DiffgapError(f"precomputed features {path}: no such file; give a parquet shard or a .npy with its keys "
                               f"in {path.stem}.csv beside it")
        if path.suffix == ".npy":
            keys_file = next((p for p in (path.with_suffix(".csv"), path.with_suffix(".parquet")) if p.exists()), None)
            if keys_file is None:
                raise DiffgapError(f"{path}: a .npy of features needs its keys beside it in {path.with_suffix('.csv').name} "
                                   f"(a column named one of {', '.join(KEY_COLUMNS)}, one row per vector)")
            emb = read_npy(path, metadata=keys_file)
            space = own_modality = None
        else:
            emb = read_embeddings(path)
            space, own_modality = emb.space, emb.modality
        table = emb.metadata
        column = next((c for c in KEY_COLUMNS if c in table.column_names), None)
        if column is None and emb.has_ids:
            keys = [str(i) for i in emb.ids.tolist()]
        elif column is None:
            raise DiffgapError(f"{path}: no key column; name one of {', '.join(KEY_COLUMNS)}")
        else:
            keys = [str(k) for k in table.column(column).to_pylist()]
        self.rows: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in self.rows:
                raise DiffgapError(f"{path}: key {k!r} appears twice (rows {self.rows[k]} and {i}); keys must be unique")
            self.rows[k] = i
        self.vectors = emb.vectors
        self.dim = int(self.vectors.shape[1])
        self.space = space or f"features:{path.stem}"
        self.modality = modality or own_modality  # None: not known
        # what `lookup` embeds: media files, by name; text features (a caption's) have no file to be found by
        self.modalities = frozenset({self.modality} - {"text"}) if self.modality else frozenset({"audio", "video"})
        self.path = path

    def row_of(self, media: str | Path) -> int | None:
        media = Path(media)
        for key in (str(media), media.name, media.stem):
            if key in self.rows:
                return self.rows[key]
        return None

    def lookup(self, media: str | Path) -> np.ndarray:
        """The unit feature row [1, d] of a media file, or DiffgapError when it has none."""
        row = self.row_of(media)
        if row is None:
            raise DiffgapError(f"no precomputed features for {Path(media).name} in {self.path.name}")
        return self.vectors[row : row + 1].copy()
