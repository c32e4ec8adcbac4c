"""The small shared vocabulary: embedding spaces and translation directions.

A translator joins space `a` (the audio side, what indexes hold) and space `b` (the
query side: CLAP text, CLIP video). A direction names which way a vector travels:

    to-audio    b -> a   (text/video queries over an audio index; benchmark "query->audio")
    from-audio  a -> b   (audio queries over an index of captions or videos; "audio->query")

Everything that speaks of directions (the network's direction input 0/1, the CLI's
`--direction`, the benchmark's row labels) converts through `Direction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from diffgap_search.errors import DiffgapError


class Direction(str, Enum):
    TO_AUDIO = "to-audio"
    FROM_AUDIO = "from-audio"

    @property
    def index(self) -> int:
        """The network's direction input: 0 = to-audio, 1 = from-audio."""
        return 0 if self is Direction.TO_AUDIO else 1

    @property
    def reverse(self) -> "Direction":
        return Direction.FROM_AUDIO if self is Direction.TO_AUDIO else Direction.TO_AUDIO

    @property
    def label(self) -> str:
        """How retrieval tables name it: the query's side -> the gallery's side."""
        return "query->audio" if self is Direction.TO_AUDIO else "audio->query"

    @classmethod
    def of(cls, value: "Direction | str | int") -> "Direction":
        """Any spelling (enum, "to-audio", 0/1, "query->audio") -> Direction, or one clear error."""
        if isinstance(value, Direction):
            return value
        for d in cls:
            if value in (d.value, d.index, d.label) and not isinstance(value, bool):
                return d
        raise DiffgapError(f"direction {value!r} is unknown; use to-audio or from-audio")

    def __str__(self) -> str:
        return self.value


@dataclass
class Space:
    """One side of a translator: the space's name (e.g. an encoder id), its dim and modality."""

    name: str | None
    dim: int
    modality: str | None = None

    def admits(self, other: "Space") -> bool:
        """Do vectors of `other` belong here? Unknown names and modalities do not refuse."""
        return (other.dim == self.dim and (other.name is None or self.name is None or other.name == self.name)
                and (other.modality is None or self.modality is None or other.modality == self.modality))

    def describe(self) -> str:
        return f"space {self.name!r} ({self.modality or 'modality unknown'}, dim {self.dim})"
