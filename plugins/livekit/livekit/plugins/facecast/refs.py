"""What an `avatar=` value is, by the rules of `facecast.avatars.refs`, without importing facecast.

Remote mode runs without facecast installed, so the rules are copied here; tests/test_avatar_refs.py in
the Facecast repository checks that both classify every reference alike. Built-ins and library avatars
are both "id" here: which ids exist is the server's (or the local library's) to say.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from .api import FacecastException

AvatarSource = Literal["id", "url", "image", "bundle"]

BUNDLE_SUFFIX = ".facecast"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_URL_SCHEMES = ("http", "https")
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")  # one letter is a Windows drive, not a scheme
_EXPECTED = (
    "an avatar id (a built-in such as 'ava', or 1-64 of a-z 0-9 _ - starting with a letter or digit), "
    f"the path of a {BUNDLE_SUFFIX} bundle, a photo ({' '.join(IMAGE_SUFFIXES)}) or an http(s) photo URL"
)


def classify_avatar(avatar: str) -> AvatarSource:
    """The kind of reference `avatar` is, from its text alone; FacecastException saying what is expected
    when it is none."""
    if not avatar.strip():
        raise FacecastException(f"the avatar reference is empty; give {_EXPECTED}")
    if scheme := _SCHEME.match(avatar):
        if scheme.group(1).lower() in _URL_SCHEMES:
            return "url"
        raise FacecastException(
            f"avatar {avatar[:200]!r}: {scheme.group(1)}: URLs are not supported; give an http(s) URL of "
            "a photo, or a local path (write ./name for a file whose name contains ':')"
        )
    lowered = avatar.lower()
    if lowered.endswith(BUNDLE_SUFFIX):
        return "bundle"
    if lowered.endswith(IMAGE_SUFFIXES):
        return "image"
    if "/" in avatar or os.sep in avatar or (os.altsep is not None and os.altsep in avatar):
        raise FacecastException(
            f"avatar {avatar[:200]!r} is a path, but its name ends in neither {BUNDLE_SUFFIX} (a bundle) "
            f"nor {', '.join(IMAGE_SUFFIXES)} (a photo); rename the file so its kind shows"
        )
    if _ID.fullmatch(avatar):
        return "id"
    hint = f"; ids are lower case: did you mean {avatar.lower()!r}?" if _ID.fullmatch(avatar.lower()) else ""
    raise FacecastException(f"avatar {avatar[:200]!r} is not a valid reference; give {_EXPECTED}{hint}")
