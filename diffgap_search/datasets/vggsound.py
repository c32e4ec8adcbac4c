"""VGGSound manifests (hche11/VGGSound), both without a header:

- the test list, `<youtube_id>_<start:06d>.mp4,<label>` (e.g. `glLQrEijrKg_000300.mp4,playing hammond organ`);
- the full `vggsound.csv`, `<youtube_id>,<start>,<label>,<split>` with split `train` or `test`.

A clip's id is `<youtube_id>_<start:06d>`. Media file names tried, in this order, with any
audio or video extension: `<youtube_id>_<start:06d>` (`glLQrEijrKg_000300.mp4` or `.wav`),
`<youtube_id>_<start>` (`glLQrEijrKg_300.wav`), `<youtube_id>_<start>_<start+10>`, and, when
the YouTube id has only one clip in the manifest, `<youtube_id>`. A row repeating a clip
already read is left out and counted.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from diffgap_search.datasets.manifest import Clip, Manifest, read_csv_rows
from diffgap_search.errors import DiffgapError

CLIP_SECONDS = 10
TEST_LIST_NAME = re.compile(r"^(?P<ytid>.+)_(?P<start>\d+)\.(?P<ext>\w+)$")
HEADER_NAMES = {"ytid", "youtube_id", "youtube id", "# youtube id", "start", "start_seconds", "start seconds",
                "label", "split", "file", "file_name", "filename", "video"}


def read_vggsound(path: str | Path, *, split: str | None = None) -> Manifest:
    """The clips of a VGGSound test list or full CSV in file order, each with its label.

    The full CSV has a split per row: `split` keeps that split's rows only. The test list
    has none: `split` labels its clips."""
    path = Path(path)
    _, rows = read_csv_rows(path, header=False)
    if rows and {c.strip().lower() for c in rows[0]} <= HEADER_NAMES:
        rows = rows[1:]  # tolerate a header line, though the official files have none
    if not rows:
        raise DiffgapError(f"{path}: the manifest has no rows")
    width = len(rows[0])
    if width not in (2, 4):
        raise DiffgapError(f"{path}: a VGGSound manifest has 2 columns (<ytid>_<start>.mp4,label) or 4 "
                           f"(ytid,start,label,split) and no header; row 1 has {width}: {','.join(rows[0])[:120]}")
    entries: list[tuple[str, int, str, str | None]] = []
    for n, row in enumerate(rows, start=1):
        if len(row) != width:
            raise DiffgapError(f"{path}: row {n} has {len(row)} fields; the rows above have {width}")
        if width == 2:
            m = TEST_LIST_NAME.match(row[0].strip())
            if m is None:
                raise DiffgapError(f"{path}: row {n}: {row[0]!r} is not a clip file name <youtube_id>_<start>.mp4")
            ytid, start, row_split = m["ytid"], int(m["start"]), split
        else:
            ytid, start_text, row_split = row[0].strip(), row[1].strip(), row[3].strip()
            if not start_text.isdigit():
                raise DiffgapError(f"{path}: row {n}: start {start_text!r} is not a whole number of seconds "
                                   "(expected ytid,start,label,split)")
            start = int(start_text)
            if split is not None and row_split != split:
                continue
        entries.append((ytid, start, row[-1 if width == 2 else 2].strip(), row_split))
    if width == 4 and not entries:
        raise DiffgapError(f"{path}: no row of split {split!r}; the file's splits are "
                           f"{', '.join(sorted({r[3].strip() for r in rows}))}")
    clips_per_ytid = Counter(ytid for ytid, start in {(e[0], e[1]) for e in entries})
    clips, seen, duplicates = [], set(), 0
    for ytid, start, label, row_split in entries:
        clip_id = f"{ytid}_{start:06d}"
        if clip_id in seen:
            duplicates += 1
            continue
        seen.add(clip_id)
        names = [clip_id, f"{ytid}_{start}", f"{ytid}_{start}_{start + CLIP_SECONDS}"]
        if clips_per_ytid[ytid] == 1:
            names.append(ytid)
        clips.append(Clip(clip_id=clip_id, names=tuple(names), label=label, split=row_split,
                          fields={"youtube_id": ytid, "start_s": float(start)}))
    return Manifest("vggsound", path, clips, rows=len(rows), duplicates=duplicates)
