"""Avatar kinds: the registry of what a bundle's manifest `kind` means.

A bundle (facecast.avatars.bundle) is a container and knows no kinds. Each kind registered here says how
to check a bundle's contents, so that a broken one fails when it is opened rather than at its first frame,
and how to draw it. The built-in characters are `procedural` bundles packed on the fly; photos become
`portrait` bundles. A new kind is one `register_kind` call; readers that do not know a kind refuse it
with a message naming the kinds they know.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from facecast.avatars.bundle import MANIFEST_NAME, Bundle, BundleError, read_bundle
from facecast.avatars.portrait import PortraitData, PortraitRenderer
from facecast.avatars.presets import frame_size
from facecast.avatars.procedural import ProceduralRenderer, style_from_bundle
from facecast.engine.types import Renderer

# (bundle, width, height, aspect, background) → a renderer of frames of that size.
MakeRenderer = Callable[[Bundle, int, int, str, str], Renderer]


@dataclass(frozen=True, slots=True)
class AvatarKind:
    """name: the manifest's `kind`; description: one line for lists and docs; check: raises BundleError
    saying what is wrong with a bundle's contents (its return value is not used); renderer: draws a
    checked bundle."""

    name: str
    description: str
    check: Callable[[Bundle], object]
    renderer: MakeRenderer


_REGISTRY: dict[str, AvatarKind] = {}


def register_kind(kind: AvatarKind) -> None:
    """Make a kind known; registering another kind under a taken name raises ValueError."""
    known = _REGISTRY.get(kind.name)
    if known is not None and known != kind:
        raise ValueError(f"avatar kind {kind.name!r} is registered already ({known.description})")
    _REGISTRY[kind.name] = kind


def kind_names() -> tuple[str, ...]:
    """The kinds this Facecast knows, in registration order."""
    return tuple(_REGISTRY)


def avatar_kind(name: str) -> AvatarKind:
    """The kind called `name`; BundleError naming the known ones if there is none."""
    kind = _REGISTRY.get(name)
    if kind is None:
        raise BundleError(
            f"{MANIFEST_NAME}: unknown kind {name!r}; this Facecast knows {', '.join(_REGISTRY)} "
            "(a newer Facecast may support it)"
        )
    return kind


def check_bundle(bundle: Bundle) -> Bundle:
    """`bundle`, once its kind has checked its contents; BundleError says what is wrong."""
    try:
        kind = avatar_kind(bundle.manifest.kind)
    except BundleError as e:
        raise BundleError(f"{bundle.path}: {e}") from None
    kind.check(bundle)
    return bundle


def open_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle file and check its contents by its kind: what to call before rendering or storing
    one. Anything wrong raises BundleError saying what and what to do."""
    return check_bundle(read_bundle(path))


def renderer_from_bundle(
    bundle: Bundle, *, aspect: str = "1:1", quality: str = "high", background: str = "scene"
) -> Renderer:
    """A renderer for a bundle at a preset frame size, by the bundle's kind."""
    width, height = frame_size(aspect, quality)
    return avatar_kind(bundle.manifest.kind).renderer(bundle, width, height, aspect, background)


def _procedural_renderer(bundle: Bundle, width: int, height: int, aspect: str, background: str) -> Renderer:
    return ProceduralRenderer(style_from_bundle(bundle), width, height, background=background)


def _portrait_renderer(bundle: Bundle, width: int, height: int, aspect: str, background: str) -> Renderer:
    return PortraitRenderer(bundle, width, height, aspect=aspect, background=background)


PROCEDURAL = AvatarKind(
    "procedural",
    "a drawn character from a style file (the built-ins)",
    style_from_bundle,
    _procedural_renderer,
)
PORTRAIT = AvatarKind(
    "portrait", "a photo of a person, warped to talk", PortraitData.from_bundle, _portrait_renderer
)
register_kind(PROCEDURAL)
register_kind(PORTRAIT)
