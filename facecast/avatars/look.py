"""How an avatar looks on the wire: which avatar, at what frame shape and size, on what background, at
what frame rate. One value shared by the CLI (`facecast render`), the server's session settings, the
LiveKit worker and the Pipecat service, so each of them checks the same rules with the same messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facecast.avatars.presets import ASPECTS, BACKGROUNDS, QUALITIES, frame_size
from facecast.engine.config import FPS_CHOICES

DEFAULT_AVATAR = "ava"
LOOK_FIELDS: tuple[str, ...] = ("avatar", "aspect", "quality", "background", "fps")


@dataclass(frozen=True, slots=True)
class Look:
    """avatar: an avatar reference as given (a built-in name, a library id, a `.facecast` path; see
    facecast.avatars.refs); aspect: one of ASPECTS; quality: one of QUALITIES (the frame size preset);
    background: one of BACKGROUNDS; fps: one of FPS_CHOICES. Invalid values raise ValueError naming the
    field and its choices."""

    avatar: str = DEFAULT_AVATAR
    aspect: str = "1:1"
    quality: str = "high"
    background: str = "scene"
    fps: int = 30

    def __post_init__(self) -> None:
        if not isinstance(self.avatar, str) or not self.avatar.strip():
            raise ValueError(
                f"avatar must be a non-empty avatar reference (e.g. {DEFAULT_AVATAR!r}), got {self.avatar!r}"
            )
        _check_choice("aspect", self.aspect, ASPECTS)
        _check_choice("quality", self.quality, QUALITIES)
        _check_choice("background", self.background, BACKGROUNDS)
        # bool is an int to Python; True is not a frame rate.
        if isinstance(self.fps, bool) or self.fps not in FPS_CHOICES:
            raise ValueError(f"fps must be one of {', '.join(map(str, FPS_CHOICES))}, got {self.fps!r}")

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) in pixels of the frames this look renders."""
        return frame_size(self.aspect, self.quality)

    def replace(self, **changes: Any) -> Look:
        """A copy with some fields changed, checked like a new one."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values, in LOOK_FIELDS order."""
        return {name: getattr(self, name) for name in LOOK_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Look | None = None) -> Look:
        """A look from `data`'s fields over `base` (default: the defaults); unknown keys raise ValueError,
        so a misspelt field is not silently ignored."""
        unknown = sorted(set(data) - set(LOOK_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown look field(s) {', '.join(map(repr, unknown))}; "
                f"the fields are {', '.join(LOOK_FIELDS)}"
            )
        return dataclasses.replace(base if base is not None else cls(), **dict(data))


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
