"""What every dataset adapter produces: the clips of a manifest, and how a clip finds its media.

A `Clip` is one audio clip of a dataset: its id (the pairs file's `group_id`), the file
names a copy of the dataset may give it (most specific first), its captions or label,
and its split when the manifest says. Matching by name is deliberately loose about the
extension (copies convert wav to flac, mp4 to wav) and strict about the name itself.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from diffgap_search.audio_io import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from diffgap_search.errors import DiffgapError

MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS
DISPLAY = {"audiocaps": "an AudioCaps", "clotho": "a Clotho", "vggsound": "a VGGSound"}


@dataclass(frozen=True)
class Clip:
    clip_id: str  # unique in its manifest; the pairs file's group_id
    names: tuple[str, ...]  # file names (with extension) or stems (any extension) of its media, most specific first
    captions: tuple[str, ...] = ()
    caption_ids: tuple[str, ...] = ()  # one per caption when the dataset numbers them (AudioCaps audiocap_id)
    label: str | None = None
    split: str | None = None
    fields: dict = field(default_factory=dict, compare=False)  # dataset columns kept as pair metadata

    @property
    def texts(self) -> tuple[str, ...]:
        """The clip's text queries: its captions, or its label when it has none (VGGSound)."""
        return self.captions or ((self.label,) if self.label else ())


@dataclass
class Manifest:
    dataset: str  # audiocaps / clotho / vggsound
    source: Path
    clips: list[Clip]
    rows: int  # data rows read from the file (AudioCaps: one per caption)
    duplicates: int = 0  # rows naming a clip already seen, left out (VGGSound)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def captions(self) -> int:
        return sum(len(c.captions) for c in self.clips)


def read_csv_rows(path: str | Path, *, header: bool = True) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV file; header is [] when `header=False`. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DiffgapError(f"{path}: no such manifest file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if any(cell.strip() for cell in r)]
    except UnicodeDecodeError as exc:
        raise DiffgapError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); is it a CSV manifest?") from None
    except csv.Error as exc:
        raise DiffgapError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise DiffgapError(f"{path}: the manifest is empty")
    if not header:
        return [], rows
    return [c.strip() for c in rows[0]], rows[1:]


def require_columns(path: Path, columns: list[str], needed: tuple[str, ...], dataset: str) -> dict[str, int]:
    """Column positions of `needed`, or an error naming what the file has and what it looks like."""
    missing = [c for c in needed if c not in columns]
    if missing:
        guess = guess_dataset(columns)
        hint = f" (it looks like a {guess} manifest: use `prepare {guess}`)" if guess and guess != dataset else ""
        raise DiffgapError(f"{path}: {DISPLAY[dataset]} manifest needs the columns {', '.join(needed)}; it has "
                           f"{', '.join(columns) or 'none'} and lacks {', '.join(missing)}{hint}")
    return {c: columns.index(c) for c in columns}


def guess_dataset(columns: list[str]) -> str | None:
    if {"youtube_id", "caption"} <= set(columns):
        return "audiocaps"
    if "file_name" in columns and "caption_1" in columns:
        return "clotho"
    if len(columns) in (2, 4) and columns[0].endswith((".mp4", ".wav")) or len(columns) == 4 and columns[1].isdigit():
        return "vggsound"
    return None


def seconds(value: str, path: Path, row: int, column: str) -> int | float:
    """A start time as written in a manifest: 20 -> 20, 20.0 -> 20, 20.5 -> 20.5."""
    try:
        x = float(value)
    except ValueError:
        raise DiffgapError(f"{path}: row {row}: {column} {value!r} is not a number of seconds") from None
    if not x >= 0:
        raise DiffgapError(f"{path}: row {row}: {column} {value!r} is negative")
    return int(x) if x.is_integer() else x


# ---------------------------------------------------------------------------
# clips -> media files
# ---------------------------------------------------------------------------


@dataclass
class MediaMatch:
    found: dict[str, Path]  # clip_id -> media file
    missing: dict[str, str]  # clip_id -> reason


def match_media(clips: list[Clip], folder: str | Path, extensions: set[str]) -> MediaMatch:
    """Find each clip's media file under `folder` (recursively) by the names its adapter lists.

    A name with an extension (`Santa Motor.wav`) matches that file name; every name also
    matches by stem with any of `extensions` (`Santa Motor.flac`). The first name of a
    clip that matches wins; when several files share it, the first in sorted path order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffgapError(f"{folder}: no such media folder")
    by_name: dict[str, list[Path]] = defaultdict(list)
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file()):
        by_name[path.name].append(path)
        by_stem[path.stem].append(path)
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for clip in clips:
        for name in clip.names:
            hits = by_name.get(name) or by_stem.get(name) or by_stem.get(Path(name).stem if Path(name).suffix.lower() in extensions else "")
            if hits:
                found[clip.clip_id] = hits[0]
                break
        else:
            tried = ", ".join(n if Path(n).suffix.lower() in extensions else f"{n}.*" for n in clip.names)
            missing[clip.clip_id] = f"no media file in {folder} named {tried}"
    return MediaMatch(found, missing)


def match_keys(clips: list[Clip], keys: dict[str, int], source: str) -> tuple[dict[str, int], dict[str, str]]:
    """Each clip's row among precomputed embeddings keyed by path, file name or stem, by the clip's names."""
    index: dict[str, int] = {}
    for key, row in keys.items():
        p = Path(key)
        for k in (key, p.name, p.stem):
            index.setdefault(k, row)
    found: dict[str, int] = {}
    missing: dict[str, str] = {}
    for clip in clips:
        for name in clip.names:
            row = index.get(name)
            if row is None and Path(name).suffix.lower() in MEDIA_EXTENSIONS:
                row = index.get(Path(name).stem)
            if row is not None:
                found[clip.clip_id] = row
                break
        else:
            missing[clip.clip_id] = f"no row keyed {' or '.join(clip.names)} in {source}"
    return found, missing
