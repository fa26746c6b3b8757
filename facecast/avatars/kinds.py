"""Avatar kinds: which renderer draws a bundle of each kind."""

from __future__ import annotations

from facecast.avatars.bundle import Bundle
from facecast.avatars.portrait import PortraitRenderer
from facecast.avatars.presets import frame_size
from facecast.avatars.procedural import ProceduralRenderer, style_from_bundle
from facecast.engine.types import Renderer


def renderer_from_bundle(
    bundle: Bundle, *, aspect: str = "1:1", quality: str = "high", background: str = "scene"
) -> Renderer:
    """A renderer for a bundle at a preset frame size."""
    width, height = frame_size(aspect, quality)
    if bundle.manifest.kind == "portrait":
        return PortraitRenderer(bundle, width, height, aspect=aspect, background=background)
    return ProceduralRenderer(style_from_bundle(bundle), width, height, background=background)
