"""Avatar references: what users type or send to name an avatar, parsed once into a typed value.

A reference is one of

- a built-in character's name (`ava`): `BuiltinAvatar`;
- the id of an avatar in a library, local or on a server (`alice`, `photo-0123456789ab`): `LibraryAvatar`;
- the path of a bundle file, ending in `.facecast`: `BundleFile`;
- the path of a photo, ending in .png, .jpg, .jpeg or .webp: `PhotoFile`;
- an http(s) URL of a photo: `PhotoUrl`.

Parsing reads no files and opens no connections: whether the avatar exists is for whoever resolves it (a
library, the server). Photos are not avatars yet: they are built into a bundle first (seconds). The rules
are copied, without importing facecast, by the LiveKit plugin (`livekit.plugins.facecast.avatar`), whose
remote mode runs without facecast; tests/test_avatar_refs.py checks that both classify alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from facecast.avatars.bundle import NAME_PATTERN as ID_PATTERN  # an id is what a manifest's name may be
from facecast.avatars.bundle import SUFFIX as BUNDLE_SUFFIX
from facecast.avatars.style import style_names

PHOTO_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
URL_SCHEMES: tuple[str, ...] = ("http", "https")
# "C:\\photo.png" is a Windows path, not a URL: schemes are longer than one letter.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")

RefKind = Literal["builtin", "library", "bundle", "photo", "url"]
EXPECTED = (
    "an avatar id (a built-in such as 'ava', or 1-64 of a-z 0-9 _ - starting with a letter or digit), "
    f"the path of a {BUNDLE_SUFFIX} bundle, a photo ({' '.join(PHOTO_SUFFIXES)}) or an http(s) photo URL"
)


class AvatarRefError(ValueError):
    """Not an avatar reference; the message says what was given, what is expected and what to do."""


@dataclass(frozen=True, slots=True)
class BuiltinAvatar:
    """One of the built-in procedural characters."""

    name: str
    kind: ClassVar[RefKind] = "builtin"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class LibraryAvatar:
    """The id of an avatar in a library: the local one (`facecast avatar create`) or a server's."""

    avatar_id: str
    kind: ClassVar[RefKind] = "library"

    def __str__(self) -> str:
        return self.avatar_id


@dataclass(frozen=True, slots=True)
class BundleFile:
    """A `.facecast` file, as written (`~` is expanded by `path`)."""

    text: str
    kind: ClassVar[RefKind] = "bundle"

    @property
    def path(self) -> Path:
        return Path(self.text).expanduser()

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class PhotoFile:
    """A local photo, to be built into an avatar first."""

    text: str
    kind: ClassVar[RefKind] = "photo"

    @property
    def path(self) -> Path:
        return Path(self.text).expanduser()

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class PhotoUrl:
    """An http(s) URL of a photo, to be fetched and built into an avatar first."""

    url: str
    kind: ClassVar[RefKind] = "url"

    def __str__(self) -> str:
        return self.url


AvatarRef = BuiltinAvatar | LibraryAvatar | BundleFile | PhotoFile | PhotoUrl
AvatarId = BuiltinAvatar | LibraryAvatar  # what a server session or a library names
Photo = PhotoFile | PhotoUrl  # what must be built into an avatar before it can be drawn


def parse_avatar_ref(text: str | AvatarRef, *, builtins: Collection[str] | None = None) -> AvatarRef:
    """The typed reference `text` stands for (a parsed one is returned as it is); AvatarRefError if it is
    none. `builtins` defaults to the built-in characters of this Facecast."""
    if not isinstance(text, str):
        if isinstance(text, AvatarRef):
            return text
        raise AvatarRefError(f"an avatar reference is a string, got {type(text).__name__}; give {EXPECTED}")
    if not text.strip():
        raise AvatarRefError(f"the avatar reference is empty; give {EXPECTED}")
    if scheme := _SCHEME.match(text):
        if scheme.group(1).lower() in URL_SCHEMES:
            return PhotoUrl(text)
        raise AvatarRefError(
            f"avatar {text[:200]!r}: {scheme.group(1)}: URLs are not supported; give an http(s) URL of a "
            "photo, or a local path (write ./name for a file whose name contains ':')"
        )
    lowered = text.lower()
    if lowered.endswith(BUNDLE_SUFFIX):
        return BundleFile(text)
    if lowered.endswith(PHOTO_SUFFIXES):
        return PhotoFile(text)
    if _has_folder(text):
        raise AvatarRefError(
            f"avatar {text[:200]!r} is a path, but its name ends in neither {BUNDLE_SUFFIX} (a bundle) nor "
            f"{', '.join(PHOTO_SUFFIXES)} (a photo); rename the file so its kind shows"
        )
    if ID_PATTERN.fullmatch(text):
        known = style_names() if builtins is None else builtins
        return BuiltinAvatar(text) if text in known else LibraryAvatar(text)
    hint = (
        f"; ids are lower case: did you mean {text.lower()!r}?" if ID_PATTERN.fullmatch(text.lower()) else ""
    )
    raise AvatarRefError(f"avatar {text[:200]!r} is not a valid reference; give {EXPECTED}{hint}")


def parse_avatar_id(text: str, *, builtins: Collection[str] | None = None) -> AvatarId:
    """A reference that must be an id (a built-in or a library avatar), as a server session's avatar_id
    is; paths, photos and URLs raise AvatarRefError saying how to turn them into an id."""
    ref = parse_avatar_ref(text, builtins=builtins)
    if isinstance(ref, BuiltinAvatar | LibraryAvatar):
        return ref
    raise AvatarRefError(
        f"avatar {str(ref)[:200]!r} is a {_NAMES[ref.kind]}, not an avatar id; create an avatar from it "
        "first (POST /v1/avatars, or `facecast avatar create`) and give its id"
    )


def is_builtin(text: str) -> bool:
    """True when `text` names a built-in character."""
    return text in style_names()


_NAMES: dict[RefKind, str] = {
    "builtin": "built-in avatar",
    "library": "library avatar",
    "bundle": "bundle file",
    "photo": "photo file",
    "url": "photo URL",
}


def _has_folder(text: str) -> bool:
    return "/" in text or os.sep in text or (os.altsep is not None and os.altsep in text)
