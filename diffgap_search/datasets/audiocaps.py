"""AudioCaps manifests (`train.csv`, `val.csv`, `test.csv` of cdjkim/audiocaps).

Columns `audiocap_id,youtube_id,start_time,caption`, one row per caption: a clip (a
YouTube id and a start time) has 5 rows in val and test, 1 in train. A clip's id is
`<youtube_id>_<start_time>` (e.g. `7fmOlUlwoNg_20`).

Media file names tried, in this order, with any audio or video extension:
`<youtube_id>_<start_time>` (`7fmOlUlwoNg_20.wav`), `Y<youtube_id>_<start_time>`,
AudioSet's `Y<youtube_id>_<start>.000_<start+10>.000` and `<youtube_id>_<start>.000_<start+10>.000`,
`<audiocap_id>` of any of the clip's captions (`103549.wav`), and, when the YouTube id
has only one clip in the manifest, `Y<youtube_id>` and `<youtube_id>` (`Y7fmOlUlwoNg.wav`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from diffgap_search.datasets.manifest import Clip, Manifest, read_csv_rows, require_columns, seconds
from diffgap_search.errors import DiffgapError

COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
CLIP_SECONDS = 10


def read_audiocaps(path: str | Path, *, split: str | None = None) -> Manifest:
    """The clips of an AudioCaps CSV in file order, each with its captions in file order.

    The file is one split; `split` labels its clips (train / val / test)."""
    path = Path(path)
    header, rows = read_csv_rows(path)
    col = require_columns(path, header, COLUMNS, "audiocaps")
    captions: dict[tuple[str, int | float], list[tuple[str, str]]] = {}
    for n, row in enumerate(rows, start=2):
        if len(row) < len(header):
            raise DiffgapError(f"{path}: row {n} has {len(row)} fields; expected {len(header)} ({', '.join(header)})")
        ytid = row[col["youtube_id"]].strip()
        if not ytid:
            raise DiffgapError(f"{path}: row {n}: empty youtube_id")
        start = seconds(row[col["start_time"]], path, n, "start_time")
        text = row[col["caption"]].strip()
        entry = captions.setdefault((ytid, start), [])
        if text:
            entry.append((text, row[col["audiocap_id"]].strip()))
    clips_per_ytid = Counter(ytid for ytid, _ in captions)
    clips = []
    for (ytid, start), caps in captions.items():
        stamp = f"{float(start):.3f}_{float(start) + CLIP_SECONDS:.3f}"
        names = [f"{ytid}_{start}", f"Y{ytid}_{start}", f"Y{ytid}_{stamp}", f"{ytid}_{stamp}"]
        names += [cap_id for _, cap_id in caps if cap_id]
        if clips_per_ytid[ytid] == 1:
            names += [f"Y{ytid}", ytid]
        clips.append(Clip(
            clip_id=f"{ytid}_{start}", names=tuple(names), captions=tuple(t for t, _ in caps),
            caption_ids=tuple(i for _, i in caps), split=split, fields={"youtube_id": ytid, "start_s": float(start)},
        ))
    return Manifest("audiocaps", path, clips, rows=len(rows))
