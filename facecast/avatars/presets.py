"""Output frame presets: aspect ratio × quality → pixel size, and the background modes.

The values are the wire's (`facecast.protocol`), so that a client checks them without the avatars."""

from __future__ import annotations

from facecast.protocol import ASPECTS, BACKGROUNDS, QUALITIES, check_choice, frame_size

__all__ = ["ASPECTS", "BACKGROUNDS", "CHROMA_GREEN", "QUALITIES", "check_background", "frame_size"]

# Chroma-key green (#00B140, the broadcast "chroma green"), RGB.
CHROMA_GREEN: tuple[int, int, int] = (0x00, 0xB1, 0x40)


def check_background(background: str) -> None:
    check_choice(background, BACKGROUNDS, "background")
