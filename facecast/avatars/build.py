"""Building a portrait avatar: photo (path, URL or bytes) → face analysis → `NAME.facecast` in a library.

This is the one slow operation on avatars (seconds; the first ever build also installs the face analysis
tools, about half a minute), so it reports progress and hosts run it off their request path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from facecast.avatars.bundle import Manifest
from facecast.avatars.faces import analyze_faces
from facecast.avatars.fetch import FetchPolicy, check_image_bytes, decode_image, load_image_source
from facecast.avatars.library import AvatarLibrary
from facecast.avatars.photo_checks import prepare_photo
from facecast.avatars.portrait_build import build_portrait

ProgressFn = Callable[[str, float], None]
"""(what is happening, overall fraction done 0..1)."""

# Shares of the whole build per stage, for one progress bar; the analysis includes the one-time install.
_STAGES = {"image": (0.0, 0.05), "analysis": (0.05, 0.6), "portrait": (0.6, 0.95), "save": (0.95, 1.0)}


def build_avatar(
    source: str | bytes,
    *,
    name: str,
    library: AvatarLibrary,
    display_name: str | None = None,
    description: str = "",
    consent: str | None = None,
    license: str | None = None,
    replace: bool = False,
    fetch_policy: FetchPolicy | None = None,
    progress: ProgressFn | None = None,
) -> Manifest:
    """Build a portrait avatar from a photo and save it in `library` as `<name>.facecast`.

    `source` is an image path, an http(s) URL (fetched under `fetch_policy`) or the image bytes.
    A face turned by 90° or 180° is turned upright and a small face is cropped out first (photo_checks);
    the manifest's ``extra.build_changes`` says what was done and ``extra.build_warnings`` what will look
    poor up close, with advice.
    Raises ValueError subclasses a user can act on: FetchError (unreadable source), NoFaceError,
    AvatarExistsError, a bad name; FaceAnalysisError (a RuntimeError) when the analysis tools fail.
    """
    library.check_free(name, replace=replace)  # fail before the slow part, not after it

    def stage(key: str) -> ProgressFn:
        lo, hi = _STAGES[key]
        return lambda what, fraction: progress(what, lo + (hi - lo) * min(1.0, max(0.0, fraction)))

    report = stage if progress is not None else (lambda key: None)
    policy = fetch_policy or FetchPolicy()
    _emit(report("image"), "reading the photo", 0.0)
    if isinstance(source, bytes):
        check_image_bytes(source, "the uploaded image")
        data, where = source, "the uploaded image"
    else:
        fetched = load_image_source(source, policy)
        data, where = fetched.data, fetched.source
    image = decode_image(data, where)
    _emit(report("image"), "reading the photo", 1.0)
    analysis_progress = _monotonic(report("analysis"))  # a turned or small face is analysed more than once
    prepared = prepare_photo(
        image, lambda img: analyze_faces(img, where=where, progress=analysis_progress), where=where
    )
    manifest, files = build_portrait(
        prepared.image,
        prepared.analysis,
        name=name,
        display_name=display_name or name,
        description=description,
        consent=consent,
        license=license,
        progress=report("portrait"),
    )
    # What was corrected and what to improve stay with the bundle (`facecast avatar info` shows them).
    extra = {
        **manifest.extra,
        "build_changes": list(prepared.changes),
        "build_warnings": list(prepared.warnings),
    }
    manifest = dataclasses.replace(manifest, extra=extra)
    _emit(report("save"), "saving the bundle", 0.0)
    library.save(manifest, files, replace=replace)
    _emit(report("save"), "done", 1.0)
    return manifest


def _monotonic(fn: ProgressFn | None) -> ProgressFn | None:
    """`fn`, never going back: repeated stages report the furthest fraction reached so far."""
    if fn is None:
        return None
    furthest = 0.0

    def report(what: str, fraction: float) -> None:
        nonlocal furthest
        furthest = max(furthest, fraction)
        fn(what, furthest)

    return report


def _emit(fn: ProgressFn | None, what: str, fraction: float) -> None:
    if fn is not None:
        fn(what, fraction)
