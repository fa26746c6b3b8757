"""Avatars: the built-in procedural characters and the renderers that draw them.

>>> from facecast.avatars import load_renderer
>>> r = load_renderer("ava", aspect="1:1", quality="high")
>>> frame = r.render(FaceState())   # (512, 512, 3) uint8 RGB
"""

from __future__ import annotations

from dataclasses import dataclass

from facecast.avatars.presets import ASPECTS, BACKGROUNDS, QUALITIES, frame_size
from facecast.avatars.procedural import ProceduralRenderer
from facecast.avatars.style import Style, read_style, style_names

DEFAULT_AVATAR = "ava"

__all__ = [
    "ASPECTS",
    "BACKGROUNDS",
    "DEFAULT_AVATAR",
    "QUALITIES",
    "AvatarInfo",
    "ProceduralRenderer",
    "Style",
    "frame_size",
    "list_avatars",
    "load_renderer",
    "load_style",
]


@dataclass(frozen=True, slots=True)
class AvatarInfo:
    name: str
    display_name: str
    description: str
    kind: str = "procedural"


def load_style(name: str) -> Style:
    """The style of a built-in avatar; unknown names raise ValueError listing the available ones."""
    return read_style(name)


def list_avatars() -> list[AvatarInfo]:
    """The built-in avatars, the default first."""
    names = sorted(style_names(), key=lambda n: (n != DEFAULT_AVATAR, n))
    infos = []
    for name in names:
        s = read_style(name)
        infos.append(AvatarInfo(name=name, display_name=s.display_name, description=s.description))
    return infos


def load_renderer(
    name: str = DEFAULT_AVATAR, *, aspect: str = "1:1", quality: str = "high", background: str = "scene"
) -> ProceduralRenderer:
    """A renderer for a built-in avatar at a preset frame size."""
    width, height = frame_size(aspect, quality)
    return ProceduralRenderer(read_style(name), width, height, background=background)
