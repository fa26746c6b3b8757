"""Style files of the built-in procedural characters: a small TOML file per character.

Every key is validated on load so that a typo fails with the file and key named, not with a
strange-looking face.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

RGB = tuple[int, int, int]

FACE_SHAPES: tuple[str, ...] = ("oval", "round", "square")
HAIR_STYLES: tuple[str, ...] = ("long", "short", "bun", "curly", "buzz")
CLOTHES_STYLES: tuple[str, ...] = ("shirt", "blazer", "hoodie", "sweater")
SHAPE_KINDS: tuple[str, ...] = ("ellipse", "rect")

# The benchmark reads mouth opening as "pixels with luma < 60 in the mouth box", so the interior must
# be clearly below that and everything else near the mouth clearly above it.
MAX_INTERIOR_LUMA = 45.0


def luma(c: RGB) -> float:
    """BT.601 luma of an RGB colour (what OpenCV's RGB→GRAY uses)."""
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


@dataclass(frozen=True, slots=True)
class BackgroundShape:
    """A soft shape on the backdrop; centre and size are fractions of the frame width/height."""

    kind: str
    center: tuple[float, float]
    size: tuple[float, float]
    color: RGB
    opacity: float
    blur: float  # Gaussian sigma as a fraction of the frame height


@dataclass(frozen=True, slots=True)
class Style:
    name: str
    display_name: str
    description: str
    face_shape: str
    face_width: float  # face width / face height
    skin: RGB
    blush: RGB
    blush_strength: float
    hair_style: str
    hair_color: RGB
    hair_highlight: RGB
    iris: RGB
    liner: RGB
    lashes: bool
    brow_color: RGB
    brow_thickness: float
    brow_arch: float
    upper_lip: RGB
    lower_lip: RGB
    mouth_width: float
    mouth_interior: RGB
    teeth: RGB
    tongue: RGB
    clothes_style: str
    clothes_color: RGB
    clothes_accent: RGB
    background_top: RGB
    background_bottom: RGB
    background_shapes: tuple[BackgroundShape, ...]


class _Reader:
    """Typed access to one table of a style file with errors that name the key."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self._data = data
        self._where = where

    def _get(self, key: str) -> Any:
        if key not in self._data:
            raise ValueError(f"{self._where}: missing key {key!r}")
        return self._data[key]

    def table(self, key: str) -> _Reader:
        value = self._get(key)
        if not isinstance(value, dict):
            raise ValueError(f"{self._where}: {key!r} must be a table")
        return _Reader(value, f"{self._where}.{key}")

    def text(self, key: str, choices: tuple[str, ...] | None = None) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise ValueError(f"{self._where}.{key}: expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"{self._where}.{key}: {value!r} is not one of {', '.join(choices)}")
        return value

    def number(self, key: str, lo: float, hi: float) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise ValueError(f"{self._where}.{key}: expected a number in {lo}..{hi}, got {value!r}")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise ValueError(f"{self._where}.{key}: expected true or false, got {value!r}")
        return value

    def color(self, key: str) -> RGB:
        return parse_color(self._get(key), f"{self._where}.{key}")

    def pair(self, key: str, lo: float, hi: float) -> tuple[float, float]:
        value = self._get(key)
        ok = isinstance(value, list) and len(value) == 2
        ok = ok and all(
            isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi for v in value
        )
        if not ok:
            raise ValueError(f"{self._where}.{key}: expected [a, b] with values in {lo}..{hi}, got {value!r}")
        return float(value[0]), float(value[1])

    def items(self, key: str) -> list[_Reader]:
        value = self._data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ValueError(f"{self._where}.{key}: expected an array of tables")
        return [_Reader(v, f"{self._where}.{key}[{i}]") for i, v in enumerate(value)]


def parse_color(value: object, where: str = "color") -> RGB:
    """'#rrggbb' → (r, g, b)."""
    if not isinstance(value, str) or len(value) != 7 or value[0] != "#":
        raise ValueError(f"{where}: expected a colour like '#a1b2c3', got {value!r}")
    try:
        return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)
    except ValueError:
        raise ValueError(f"{where}: expected a colour like '#a1b2c3', got {value!r}") from None


def parse_style(data: dict[str, Any], name: str) -> Style:
    """Validate a parsed style file; `name` is used in error messages and as the style's name."""
    r = _Reader(data, name)
    face, hair, eyes, brows = r.table("face"), r.table("hair"), r.table("eyes"), r.table("brows")
    mouth, clothes, bg = r.table("mouth"), r.table("clothes"), r.table("background")
    interior = mouth.color("interior")
    if luma(interior) > MAX_INTERIOR_LUMA:
        raise ValueError(
            f"{name}.mouth.interior: must be dark (luma <= {MAX_INTERIOR_LUMA:g}), got {interior}"
        )
    shapes = tuple(
        BackgroundShape(
            kind=s.text("kind", SHAPE_KINDS),
            center=s.pair("center", -1.0, 2.0),
            size=s.pair("size", 0.0, 3.0),
            color=s.color("color"),
            opacity=s.number("opacity", 0.0, 1.0),
            blur=s.number("blur", 0.0, 0.5),
        )
        for s in bg.items("shapes")
    )
    return Style(
        name=name,
        display_name=r.text("display_name"),
        description=r.text("description"),
        face_shape=face.text("shape", FACE_SHAPES),
        face_width=face.number("width", 0.65, 0.9),
        skin=face.color("skin"),
        blush=face.color("blush"),
        blush_strength=face.number("blush_strength", 0.0, 1.0),
        hair_style=hair.text("style", HAIR_STYLES),
        hair_color=hair.color("color"),
        hair_highlight=hair.color("highlight"),
        iris=eyes.color("iris"),
        liner=eyes.color("liner"),
        lashes=eyes.flag("lashes"),
        brow_color=brows.color("color"),
        brow_thickness=brows.number("thickness", 0.0, 1.0),
        brow_arch=brows.number("arch", 0.0, 1.0),
        upper_lip=mouth.color("upper_lip"),
        lower_lip=mouth.color("lower_lip"),
        mouth_width=mouth.number("width", 0.8, 1.2),
        mouth_interior=interior,
        teeth=mouth.color("teeth"),
        tongue=mouth.color("tongue"),
        clothes_style=clothes.text("style", CLOTHES_STYLES),
        clothes_color=clothes.color("color"),
        clothes_accent=clothes.color("accent"),
        background_top=bg.color("top"),
        background_bottom=bg.color("bottom"),
        background_shapes=shapes,
    )


def style_names() -> list[str]:
    """Names of the built-in styles (the .toml files shipped in facecast/avatars/styles)."""
    folder = resources.files("facecast.avatars").joinpath("styles")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_style(name: str) -> Style:
    """Load a built-in style by name; unknown names raise ValueError listing the available ones."""
    names = style_names()
    if name not in names:
        raise ValueError(f"unknown avatar {name!r}; available: {', '.join(names)}")
    text = resources.files("facecast.avatars").joinpath("styles").joinpath(f"{name}.toml").read_text("utf-8")
    return parse_style(tomllib.loads(text), name)
