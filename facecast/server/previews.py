"""Still previews of the avatars for the client's picker: one rendered resting frame, cached."""

from __future__ import annotations

from functools import lru_cache

import cv2

from facecast.avatars import AvatarLibrary, load_renderer
from facecast.engine.types import FaceState


@lru_cache(maxsize=64)
def preview_png(avatar_id: str, library: AvatarLibrary | None = None) -> bytes:
    """A PNG of the avatar at rest. Cached by id (and library): avatar ids made by the server are never
    reused, so a cached preview cannot show another avatar. Blocking: render it in a thread."""
    renderer = load_renderer(avatar_id, quality="low", library=library)
    rgb = renderer.render(FaceState())
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode the preview of {avatar_id}")
    return png.tobytes()
