"""Avatars: the built-in procedural characters and the renderers that draw them.

>>> from facecast.avatars import load_renderer
>>> r = load_renderer("ava", aspect="1:1", quality="high")
>>> frame = r.render(FaceState())   # (512, 512, 3) uint8 RGB

An avatar reference is a built-in name, the id of a bundle in an AvatarLibrary, or a `.facecast` path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from facecast.avatars.bundle import Bundle, read_bundle
from facecast.avatars.kinds import renderer_from_bundle
from facecast.avatars.library import AvatarLibrary, AvatarNotFoundError, is_bundle_path
from facecast.avatars.presets import ASPECTS, BACKGROUNDS, QUALITIES, frame_size
from facecast.avatars.procedural import ProceduralRenderer, bundle_from_style
from facecast.avatars.style import Style, read_style, style_names
from facecast.engine.types import Renderer

DEFAULT_AVATAR = "ava"

__all__ = [
    "ASPECTS",
    "BACKGROUNDS",
    "DEFAULT_AVATAR",
    "QUALITIES",
    "AvatarInfo",
    "AvatarLibrary",
    "AvatarNotFoundError",
    "ProceduralRenderer",
    "Style",
    "frame_size",
    "list_avatars",
    "load_bundle",
    "load_renderer",
    "load_style",
]


@dataclass(frozen=True, slots=True)
class AvatarInfo:
    name: str
    display_name: str
    description: str
    kind: str = "procedural"
    builtin: bool = True


def load_style(name: str) -> Style:
    """The style of a built-in avatar; unknown names raise ValueError listing the available ones."""
    return read_style(name)


def list_avatars(library: AvatarLibrary | None = None) -> list[AvatarInfo]:
    """The built-in avatars (the default first), then the bundles in `library` if one is given."""
    names = sorted(style_names(), key=lambda n: (n != DEFAULT_AVATAR, n))
    infos = []
    for name in names:
        s = read_style(name)
        infos.append(AvatarInfo(name=name, display_name=s.display_name, description=s.description))
    if library is not None:
        for entry in library.entries():
            m = entry.manifest
            infos.append(AvatarInfo(m.name, m.display_name, m.description, kind=m.kind, builtin=False))
    return infos


def load_bundle(ref: str, library: AvatarLibrary | None = None) -> Bundle:
    """The bundle an avatar reference names: a built-in (packed on the fly), a library id or a path."""
    if ref in style_names():
        manifest, files = bundle_from_style(ref, created_at="1980-01-01T00:00:00+00:00")
        return Bundle(path=Path(f"<built-in {ref}>"), manifest=manifest, files=MappingProxyType(files))
    if is_bundle_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise AvatarNotFoundError(f"no avatar bundle at {path}")
        return read_bundle(path)
    if library is not None and ref in library:
        return library.load(ref)
    known = [a.name for a in list_avatars(library)]
    raise AvatarNotFoundError(
        f"unknown avatar {ref!r}; available: {', '.join(known)} (or give the path of a .facecast file)"
    )


def load_renderer(
    ref: str = DEFAULT_AVATAR,
    *,
    aspect: str = "1:1",
    quality: str = "high",
    background: str = "scene",
    library: AvatarLibrary | None = None,
) -> Renderer:
    """A renderer for an avatar reference at a preset frame size; unknown references raise
    AvatarNotFoundError (a ValueError) listing the available avatars."""
    if ref in style_names():
        width, height = frame_size(aspect, quality)
        return ProceduralRenderer(read_style(ref), width, height, background=background)
    return renderer_from_bundle(
        load_bundle(ref, library), aspect=aspect, quality=quality, background=background
    )
