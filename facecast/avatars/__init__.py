"""Avatars: the built-in procedural characters and the renderers that draw them.

>>> from facecast.avatars import load_renderer
>>> r = load_renderer("ava", aspect="1:1", quality="high")
>>> frame = r.render(FaceState())   # (512, 512, 3) uint8 RGB

An avatar reference (facecast.avatars.refs) is a built-in name, the id of a bundle in an AvatarLibrary, the
path of a `.facecast` file, or a photo (path or URL) that must be built into an avatar first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from facecast.avatars.bundle import Bundle
from facecast.avatars.kinds import open_bundle, renderer_from_bundle
from facecast.avatars.library import AvatarLibrary, AvatarNotFoundError
from facecast.avatars.look import DEFAULT_AVATAR, Look
from facecast.avatars.presets import ASPECTS, BACKGROUNDS, QUALITIES, frame_size
from facecast.avatars.procedural import ProceduralRenderer, bundle_from_style
from facecast.avatars.refs import (
    AvatarRef,
    AvatarRefError,
    BuiltinAvatar,
    BundleFile,
    LibraryAvatar,
    PhotoFile,
    PhotoUrl,
    parse_avatar_ref,
)
from facecast.avatars.style import Style, read_style, style_names
from facecast.engine.types import Renderer

Drawable = BuiltinAvatar | LibraryAvatar | BundleFile  # a reference that names an avatar, not a photo

__all__ = [
    "ASPECTS",
    "BACKGROUNDS",
    "DEFAULT_AVATAR",
    "QUALITIES",
    "AvatarInfo",
    "AvatarLibrary",
    "AvatarNotFoundError",
    "AvatarRef",
    "AvatarRefError",
    "Drawable",
    "Look",
    "ProceduralRenderer",
    "Style",
    "find_avatar",
    "frame_size",
    "list_avatars",
    "load_bundle",
    "load_look",
    "load_renderer",
    "load_style",
    "parse_avatar_ref",
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


def find_avatar(ref: str | AvatarRef, library: AvatarLibrary | None = None) -> Drawable:
    """The avatar a reference names, if it can be drawn now: a built-in, an id in `library` or a `.facecast`
    file that exists. Cheap: no bundle is read. Anything else raises ValueError saying what to do:
    AvatarRefError for what is not a reference or is a photo (build it first), AvatarNotFoundError for one
    that does not exist (listing the available avatars)."""
    parsed = parse_avatar_ref(ref)
    if isinstance(parsed, BuiltinAvatar):
        return parsed
    if isinstance(parsed, PhotoFile | PhotoUrl):
        where = f" (library {library.root})" if library is not None else ""
        raise AvatarRefError(
            f"avatar {str(parsed)[:200]!r} is a photo, not an avatar: build it first with "
            f"`facecast avatar create --image {parsed} --name ID`{where} and use the id"
        )
    if isinstance(parsed, BundleFile):
        if not parsed.path.is_file():
            raise AvatarNotFoundError(f"no avatar bundle at {parsed.path}")
        return parsed
    if library is not None and parsed.avatar_id in library:
        return parsed
    known = [a.name for a in list_avatars(library)]
    raise AvatarNotFoundError(
        f"unknown avatar {parsed.avatar_id!r}; available: {', '.join(known)} (or give the path of a "
        ".facecast file)"
    )


def load_bundle(ref: str | AvatarRef, library: AvatarLibrary | None = None) -> Bundle:
    """The checked bundle an avatar reference names: a built-in (packed on the fly), a library id or a
    path (see find_avatar for the errors)."""
    found = find_avatar(ref, library)
    if isinstance(found, BuiltinAvatar):
        manifest, files = bundle_from_style(found.name, created_at="1980-01-01T00:00:00+00:00")
        return Bundle(path=Path(f"<built-in {found.name}>"), manifest=manifest, files=MappingProxyType(files))
    if isinstance(found, BundleFile):
        return open_bundle(found.path)
    assert library is not None  # find_avatar found the id in it
    return library.load(found.avatar_id)


def load_renderer(
    ref: str | AvatarRef = DEFAULT_AVATAR,
    *,
    aspect: str = "1:1",
    quality: str = "high",
    background: str = "scene",
    library: AvatarLibrary | None = None,
) -> Renderer:
    """A renderer for an avatar reference at a preset frame size; references that cannot be drawn raise
    ValueError (AvatarRefError, AvatarNotFoundError) saying why and listing the available avatars."""
    found = find_avatar(ref, library)
    if isinstance(found, BuiltinAvatar):
        width, height = frame_size(aspect, quality)
        return ProceduralRenderer(read_style(found.name), width, height, background=background)
    return renderer_from_bundle(
        load_bundle(found, library), aspect=aspect, quality=quality, background=background
    )


def load_look(look: Look, library: AvatarLibrary | None = None) -> Renderer:
    """A renderer for a look (its fps is the engine's, not the renderer's)."""
    return load_renderer(
        look.avatar, aspect=look.aspect, quality=look.quality, background=look.background, library=library
    )
