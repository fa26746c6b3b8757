"""`facecast avatar create|list|info|preview|delete|setup-face-tools` (and `facecast avatars`): the avatar
library. What the user gave being wrong (an unknown avatar, a damaged bundle, a photo without a face) exits
with status 1."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from facecast.cli.common import EXIT_ERROR, CommandError, Parser, UsageError, one_line, print_table

if TYPE_CHECKING:
    import numpy as np

    from facecast.avatars import AvatarLibrary

_PREVIEW_POSES = ("rest", "open (D)", "smile", "blink")


def _add_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="the avatar library folder (default: $FACECAST_AVATARS_DIR or ~/.local/share/facecast/avatars)",
    )


def add_parsers(sub: Any) -> None:
    """Add `avatar ACTION` and its `avatars` shorthand to the main parser's subparsers."""
    from facecast.avatars import ASPECTS, BACKGROUNDS, QUALITIES

    avatar = sub.add_parser(
        "avatar",
        help="create, list, inspect, preview and delete avatars (the avatar library)",
        description="Manage the avatar library: a folder of NAME.facecast bundles. Anything that takes an "
        "avatar (render --avatar, the server, the LiveKit worker, the plugins) accepts a built-in name, the "
        "id of a library avatar, or the path of a .facecast file.",
    )
    actions = avatar.add_subparsers(
        dest="avatar_command", required=True, metavar="ACTION", parser_class=Parser
    )

    create = actions.add_parser(
        "create",
        help="build an avatar from a photo (or install a .facecast file) into the library",
        description="Build a portrait avatar from a photo of one person facing the camera and save it in "
        "the library as ID.facecast; the first build also installs the face analysis tools (about half a "
        "minute). With --from-bundle, copy a .facecast file into the library instead.",
    )
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--image", metavar="PATH_OR_URL", help="the photo: a PNG/JPEG/WebP file or http(s) URL"
    )
    source.add_argument("--from-bundle", metavar="FILE", help="install this .facecast file into the library")
    create.add_argument(
        "--name",
        metavar="ID",
        help="the avatar's id: 1-64 of a-z 0-9 _ - (required with --image; with --from-bundle it renames)",
    )
    create.add_argument("--display-name", metavar="TEXT", help="the name shown in lists (default: the id)")
    create.add_argument("--description", metavar="TEXT", default="", help="one line for lists")
    create.add_argument(
        "--consent", metavar="TEXT", help="the pictured person's consent (recorded in the bundle)"
    )
    create.add_argument("--license", metavar="TEXT", help="the photo's licence (recorded in the bundle)")
    create.add_argument("--replace", action="store_true", help="overwrite an avatar with the same id")
    create.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    _add_dir_option(create)

    listing = actions.add_parser("list", help="list the built-in avatars and those in the library")
    _add_dir_option(listing)

    info = actions.add_parser(
        "info",
        help="show an avatar's manifest (and check its bundle)",
        description="Read and fully validate an avatar's bundle, then show its manifest. REF is a built-in "
        "name, a library id or a .facecast path.",
    )
    info.add_argument("ref", metavar="REF", help="built-in name, library id, or .facecast path")
    info.add_argument("--json", action="store_true", help="print manifest.json instead")
    _add_dir_option(info)

    preview = actions.add_parser(
        "preview",
        help="render a few frames of an avatar (rest, open mouth, smile, blink) into a PNG",
    )
    preview.add_argument("ref", metavar="REF", help="built-in name, library id, or .facecast path")
    preview.add_argument("-o", "--output", metavar="OUT.png", help="PNG to write (default: REF-preview.png)")
    preview.add_argument("--aspect", default="1:1", choices=list(ASPECTS), help="aspect ratio (default 1:1)")
    preview.add_argument(
        "--quality", default="medium", choices=list(QUALITIES), help="frame size (default medium)"
    )
    preview.add_argument(
        "--background", default="scene", choices=list(BACKGROUNDS), help="background (default scene)"
    )
    _add_dir_option(preview)

    setup = actions.add_parser(
        "setup-face-tools",
        help="install the face analysis tools that photo avatars need (once per machine)",
        description="Create the face analysis virtualenv (mediapipe, in its own environment) now rather "
        "than on the first photo build: from PyPI, or offline from a folder of wheels.",
    )
    setup.add_argument(
        "--wheels",
        metavar="DIR",
        help="install only from the wheels in DIR, without a package index (default: "
        "$FACECAST_FACE_TOOLS_WHEELS; unset: PyPI)",
    )
    setup.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    delete = actions.add_parser("delete", help="delete an avatar from the library")
    delete.add_argument("id", metavar="ID", help="the library avatar to delete")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    _add_dir_option(delete)

    avatars = sub.add_parser("avatars", help="list the avatars (the same as `facecast avatar list`)")
    _add_dir_option(avatars)


def run(args: argparse.Namespace) -> int:
    """`facecast avatar ...` and `facecast avatars`; what the user gave being wrong exits EXIT_ERROR."""
    from facecast.avatars import AvatarLibrary

    action = "list" if args.command == "avatars" else args.avatar_command
    if action == "setup-face-tools":
        return _cmd_setup_face_tools(args)
    library = AvatarLibrary(args.dir)
    try:
        if action == "create":
            return _cmd_avatar_create(args, library)
        if action == "info":
            return _cmd_avatar_info(args, library)
        if action == "preview":
            return _cmd_avatar_preview(args, library)
        if action == "delete":
            return _cmd_avatar_delete(args, library)
        return _cmd_avatar_list(library)
    except (ValueError, LookupError, OSError) as exc:  # BundleError, AvatarNotFoundError, FetchError, ...
        raise CommandError(one_line(exc)) from None


def _cmd_setup_face_tools(args: argparse.Namespace) -> int:
    from facecast.avatars.faces import FaceAnalysisError, ensure_face_tools, tools_dir

    progress = BuildProgress(enabled=not args.quiet)
    try:
        python = ensure_face_tools(progress, wheels=args.wheels)
    except FaceAnalysisError as exc:
        raise CommandError(str(exc)) from None
    finally:
        progress.close()
    print(f"face analysis tools ready in {tools_dir()} ({python})")
    return 0


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    if n < 1000_000:
        return f"{n / 1000:.1f} kB"
    return f"{n / 1000_000:.1f} MB"


def _cmd_avatar_list(library: AvatarLibrary) -> int:
    from facecast.avatars import DEFAULT_AVATAR, list_avatars

    rows = [["ID", "KIND", "DISPLAY NAME", "SIZE", "DESCRIPTION"]]
    for a in list_avatars():
        size = "built-in (default)" if a.name == DEFAULT_AVATAR else "built-in"
        rows.append([a.name, a.kind, a.display_name, size, a.description])
    entries = library.entries()
    for e in entries:
        m = e.manifest
        rows.append(
            [
                e.path.name.removesuffix(".facecast"),
                m.kind,
                m.display_name,
                _size(e.size_bytes),
                m.description,
            ]
        )
    print_table(rows)
    readable = {e.path.name for e in entries}
    damaged = [i for i in library.ids() if library.path(i).name not in readable]
    for avatar_id in damaged:
        print(
            f"facecast: warning: {library.path(avatar_id)} is damaged; "
            f"`facecast avatar info {avatar_id}` says why",
            file=sys.stderr,
        )
    print(f"\nlibrary: {library.root} ({len(entries)} avatar{'' if len(entries) == 1 else 's'})")
    return 0


def _cmd_avatar_info(args: argparse.Namespace, library: AvatarLibrary) -> int:
    from facecast.avatars import load_bundle
    from facecast.avatars.style import style_names

    bundle = load_bundle(args.ref, library)
    m = bundle.manifest
    if args.json:
        sys.stdout.write(m.to_json())
        return 0
    if args.ref in style_names():
        source = "built-in"
    else:
        source = f"{bundle.path} ({_size(bundle.path.stat().st_size)})"
    fields = [
        ("id", m.name),
        ("display name", m.display_name),
        ("kind", m.kind),
        ("description", m.description or "-"),
        ("bundle", source),
        ("frame", f"{m.frame.width}x{m.frame.height}"),
        ("created", m.created_at),
        ("facecast version", m.facecast_version),
        ("format version", str(m.format_version)),
        ("license", m.license or "-"),
        ("consent", m.consent or "-"),
    ]
    if m.extra:
        fields.append(("extra", ", ".join(sorted(m.extra))))
    width = max(len(k) for k, _ in fields) + 1
    for key, value in fields:
        print(f"{key + ':':<{width}} {value}")
    print(f"assets ({len(m.assets)}, {_size(sum(a.size for a in m.assets.values()))}):")
    name_w = max((len(n) for n in m.assets), default=0)
    for name, a in sorted(m.assets.items()):
        print(f"  {name:<{name_w}}  {_size(a.size):>9}  {a.media_type:<18}  sha256 {a.sha256[:12]}")
    return 0


def preview_sheet(
    ref: str, *, aspect: str, quality: str, background: str, library: AvatarLibrary
) -> np.ndarray:
    """The avatar at rest, saying "D" (mouth open), smiling and blinking, side by side with labels;
    RGB, or RGBA with a transparent background."""
    import cv2
    import numpy as np

    from facecast.avatars import load_renderer
    from facecast.engine.types import FaceState
    from facecast.engine.visemes import TARGETS, VISEME_INDEX, mouth_from_row

    renderer = load_renderer(ref, aspect=aspect, quality=quality, background=background, library=library)
    states = (
        FaceState(),
        FaceState(mouth=mouth_from_row(TARGETS[VISEME_INDEX["D"]], "D")),
        FaceState(smile=0.9),
        FaceState(blink=1.0),
    )
    tiles = []
    band = max(18, renderer.height // 18)
    for label, state in zip(_PREVIEW_POSES, states, strict=True):
        frame = renderer.render(state)
        channels = frame.shape[2]
        top = np.full((band, frame.shape[1], channels), 250, np.uint8)
        scale = band / 42
        cv2.putText(
            top,
            label,
            (6, round(band * 0.72)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (40, 40, 40, 255)[:channels],
            1,
            cv2.LINE_AA,
        )
        tiles.append(np.concatenate([top, frame], axis=0))
    return np.concatenate(tiles, axis=1)


def _cmd_avatar_preview(args: argparse.Namespace, library: AvatarLibrary) -> int:
    import cv2

    from facecast.avatars.bundle import SUFFIX

    stem = Path(args.ref).name.removesuffix(SUFFIX) or "avatar"
    out = Path(args.output) if args.output else Path(f"{stem}-preview.png")
    if not out.parent.is_dir():
        raise CommandError(f"cannot write {out}: directory {out.parent} does not exist")
    sheet = preview_sheet(
        args.ref, aspect=args.aspect, quality=args.quality, background=args.background, library=library
    )
    code = cv2.COLOR_RGBA2BGRA if sheet.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, code))
    if not ok:
        raise CommandError(f"could not encode {out} as PNG")
    out.write_bytes(png.tobytes())
    size = f"{sheet.shape[1]}x{sheet.shape[0]}"
    print(f"wrote {out}: {args.ref} ({', '.join(_PREVIEW_POSES)}), {size}")
    return 0


def _cmd_avatar_delete(args: argparse.Namespace, library: AvatarLibrary) -> int:
    from facecast.avatars import AvatarNotFoundError
    from facecast.avatars.style import style_names

    avatar_id = args.id
    if avatar_id in style_names():
        raise CommandError(f"{avatar_id!r} is a built-in avatar and cannot be deleted")
    path = library.path(avatar_id)  # checks the id
    if avatar_id not in library:
        raise AvatarNotFoundError(
            f"no avatar {avatar_id!r} in {library.root}; `facecast avatar list` shows them"
        )
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"facecast avatar delete: error: add --yes to delete {path} without asking")
        answer = input(f"delete {avatar_id} ({path})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted")
            return EXIT_ERROR
    if not library.delete(avatar_id):
        raise AvatarNotFoundError(f"no avatar {avatar_id!r} in {library.root}")
    print(f"deleted {avatar_id} ({path})")
    return 0


class BuildProgress:
    """build_avatar's progress on stderr. On a terminal one redrawn line (percentage, bar, stage); elsewhere
    a plain line at each stage change, so that logs stay short."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stage: str | None = None
        self._drawn = 0
        self._last = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        pct = round(100 * min(1.0, max(0.0, fraction)))
        if self.tty:
            now = time.monotonic()
            if stage == self._stage and now - self._last < 0.1 and pct < 100:
                return
            self._stage, self._last = stage, now
            filled = pct * 24 // 100
            line = f"{pct:3d}% [{'#' * filled}{'-' * (24 - filled)}] {stage}"
            self.stream.write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
        elif stage != self._stage:
            self._stage = stage
            self.stream.write(f"{pct:3d}% {stage}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn line (call once, when the build ends either way)."""
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0


def _cmd_avatar_create(args: argparse.Namespace, library: AvatarLibrary) -> int:
    if args.from_bundle is not None:
        return _install_bundle(args, library)
    if not args.name:
        raise UsageError("facecast avatar create: error: --image needs --name ID (the avatar's id)")
    from facecast.avatars.build import build_avatar
    from facecast.avatars.faces import FaceAnalysisError
    from facecast.avatars.fetch import FetchPolicy

    progress = BuildProgress(enabled=not args.quiet)
    try:
        manifest = build_avatar(
            args.image,
            name=args.name,
            library=library,
            display_name=args.display_name,
            description=args.description,
            consent=args.consent,
            license=args.license,
            replace=args.replace,
            fetch_policy=FetchPolicy.from_env(),
            progress=progress,
        )
    except FaceAnalysisError as exc:
        raise CommandError(one_line(exc)) from None
    finally:
        progress.close()
    for note in (*manifest.extra.get("build_changes", ()), *manifest.extra.get("build_warnings", ())):
        print(f"note: {note}", file=sys.stderr)
    _print_created(manifest.name, manifest.kind, manifest.display_name, library)
    return 0


def _install_bundle(args: argparse.Namespace, library: AvatarLibrary) -> int:
    import dataclasses

    from facecast.avatars.bundle import read_bundle

    if args.consent is not None or args.license is not None or args.description:
        raise UsageError(
            "facecast avatar create: error: --consent, --license and --description are the bundle's own; "
            "they cannot be changed with --from-bundle"
        )
    path = Path(args.from_bundle).expanduser()
    if not path.is_file():
        raise CommandError(f"no bundle file at {path}")
    bundle = read_bundle(path)
    manifest = bundle.manifest
    changes = {k: v for k, v in (("name", args.name), ("display_name", args.display_name)) if v}
    if changes:
        manifest = dataclasses.replace(manifest, **changes)
    library.save(manifest, dict(bundle.files), replace=args.replace)
    _print_created(manifest.name, manifest.kind, manifest.display_name, library)
    return 0


def _print_created(avatar_id: str, kind: str, display_name: str, library: AvatarLibrary) -> None:
    print(f"created {avatar_id} ({kind}, {display_name!r}): {library.path(avatar_id)}")
