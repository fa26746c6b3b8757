"""Output frame presets: aspect ratio × quality → pixel size, and the background modes."""

from __future__ import annotations

ASPECTS: tuple[str, ...] = ("4:3", "3:4", "1:1")
QUALITIES: tuple[str, ...] = ("low", "medium", "high", "very_high")
BACKGROUNDS: tuple[str, ...] = ("scene", "green", "transparent")

# Chroma-key green (#00B140, the broadcast "chroma green"), RGB.
CHROMA_GREEN: tuple[int, int, int] = (0x00, 0xB1, 0x40)

# Landscape sizes; 3:4 is the transpose of 4:3.
_SQUARE = {"low": 256, "medium": 384, "high": 512, "very_high": 768}
_LANDSCAPE = {"low": (320, 240), "medium": (480, 360), "high": (640, 480), "very_high": (960, 720)}


def _check(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def check_background(background: str) -> None:
    _check(background, BACKGROUNDS, "background")


def frame_size(aspect: str, quality: str) -> tuple[int, int]:
    """(width, height) in pixels for an aspect ratio and a quality preset."""
    _check(aspect, ASPECTS, "aspect")
    _check(quality, QUALITIES, "quality")
    if aspect == "1:1":
        side = _SQUARE[quality]
        return side, side
    w, h = _LANDSCAPE[quality]
    return (w, h) if aspect == "4:3" else (h, w)
