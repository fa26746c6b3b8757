"""Avatar references parsed once (facecast.avatars.refs), resolved against a library (find_avatar), the
LiveKit plugin's facecast-free copy of the rules, the registry of avatar kinds, and bundle.py as a pure
container."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit.plugins.facecast.api import FacecastException
from livekit.plugins.facecast.refs import classify_avatar

from facecast.avatars import AvatarLibrary, AvatarNotFoundError, find_avatar, load_bundle, load_renderer
from facecast.avatars.bundle import Bundle, BundleError, asset_info, read_bundle, write_bundle
from facecast.avatars.kinds import (
    AvatarKind,
    avatar_kind,
    kind_names,
    open_bundle,
    register_kind,
    renderer_from_bundle,
)
from facecast.avatars.procedural import bundle_from_style
from facecast.avatars.refs import (
    AvatarRef,
    AvatarRefError,
    BuiltinAvatar,
    BundleFile,
    LibraryAvatar,
    PhotoFile,
    PhotoUrl,
    parse_avatar_id,
    parse_avatar_ref,
)
from facecast.engine.types import FaceState

PARSED: list[tuple[str, AvatarRef]] = [
    ("ava", BuiltinAvatar("ava")),
    ("noah", BuiltinAvatar("noah")),
    ("alice", LibraryAvatar("alice")),
    ("av_0123456789ab", LibraryAvatar("av_0123456789ab")),
    ("photo-0123456789ab", LibraryAvatar("photo-0123456789ab")),
    ("9", LibraryAvatar("9")),
    ("a" * 64, LibraryAvatar("a" * 64)),
    ("alice.facecast", BundleFile("alice.facecast")),
    ("~/avatars/ALICE.FACECAST", BundleFile("~/avatars/ALICE.FACECAST")),
    ("/srv/a b/bob.facecast", BundleFile("/srv/a b/bob.facecast")),
    ("me.jpg", PhotoFile("me.jpg")),
    ("./shots/Me.JPEG", PhotoFile("./shots/Me.JPEG")),
    ("/tmp/face.webp", PhotoFile("/tmp/face.webp")),
    ("face.png", PhotoFile("face.png")),
    ("./odd:name.png", PhotoFile("./odd:name.png")),
    ("C:photo.png", PhotoFile("C:photo.png")),  # a drive letter, not a URL scheme
    ("https://example.com/me.jpg?size=2", PhotoUrl("https://example.com/me.jpg?size=2")),
    ("HTTP://example.com/me", PhotoUrl("HTTP://example.com/me")),
    ("http://example.com/bundle.facecast", PhotoUrl("http://example.com/bundle.facecast")),
]

REFUSED: list[tuple[str, str]] = [
    ("", "the avatar reference is empty; give an avatar id"),
    ("   ", "the avatar reference is empty"),
    ("Ava", "is not a valid reference; give .*did you mean 'ava'"),
    ("my avatar", "'my avatar' is not a valid reference; give an avatar id .* or an http\\(s\\) photo URL$"),
    ("a" * 65, "is not a valid reference"),
    ("-dash", "is not a valid reference"),
    ("ava.toml", "is not a valid reference"),
    ("ftp://example.com/me.jpg", "ftp: URLs are not supported; give an http\\(s\\) URL"),
    ("file:///tmp/me.jpg", "file: URLs are not supported"),
    ("data:image/png;base64,xyz", "data: URLs are not supported"),
    ("./alice", "is a path, but its name ends in neither .facecast \\(a bundle\\) nor .png"),
    ("/tmp/photo", "ends in neither"),
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_references_parse_to_their_kind(text: str, expected: AvatarRef) -> None:
    ref = parse_avatar_ref(text)
    assert ref == expected and type(ref) is type(expected)
    assert str(ref) == text  # the reference as given, for messages
    assert parse_avatar_ref(ref) is ref  # a parsed reference is not parsed again


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_bad_references_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(AvatarRefError, match=message):
        parse_avatar_ref(text)


def test_builtins_can_be_given() -> None:
    assert parse_avatar_ref("ava", builtins=()) == LibraryAvatar("ava")
    assert parse_avatar_ref("zed", builtins=("zed",)) == BuiltinAvatar("zed")
    with pytest.raises(AvatarRefError, match="is a string, got int"):
        parse_avatar_ref(7)  # type: ignore[arg-type]


def test_ids_refuse_files_photos_and_urls() -> None:
    assert parse_avatar_id("leo") == BuiltinAvatar("leo")
    assert parse_avatar_id("av_0123456789ab") == LibraryAvatar("av_0123456789ab")
    for text, what in (
        ("bob.facecast", "bundle file"),
        ("me.png", "photo file"),
        ("https://x.io/a", "photo URL"),
    ):
        with pytest.raises(AvatarRefError, match=f"is a {what}.*, not an avatar id; create an avatar"):
            parse_avatar_id(text)


# -- the LiveKit plugin's copy of the rules ----------------------------------------------------------------
PLUGIN_SOURCES = {"builtin": "id", "library": "id", "bundle": "bundle", "photo": "image", "url": "url"}


def assert_plugin_agrees(text: str) -> None:
    try:
        ref = parse_avatar_ref(text)
    except AvatarRefError as e:
        with pytest.raises(FacecastException) as refused:
            classify_avatar(text)
        assert str(refused.value) == str(e)  # the same rule, the same words
        return
    assert classify_avatar(text) == PLUGIN_SOURCES[ref.kind], text


@pytest.mark.parametrize("text", [t for t, _ in PARSED] + [t for t, _ in REFUSED])
def test_the_livekit_plugin_classifies_the_table_alike(text: str) -> None:
    assert_plugin_agrees(text)


REF_ALPHABET = st.sampled_from([*"abzAZ09_-.:/\\ ~", ".facecast", ".png", ".JPG", "http", "s://", "ftp:"])


@given(st.lists(REF_ALPHABET, max_size=8).map("".join))
def test_the_livekit_plugin_classifies_any_text_alike(text: str) -> None:
    assert_plugin_agrees(text)


def test_the_livekit_plugin_copies_the_constants() -> None:
    from livekit.plugins.facecast import refs as plugin_refs

    from facecast.avatars import refs

    assert plugin_refs.IMAGE_SUFFIXES == refs.PHOTO_SUFFIXES
    assert plugin_refs.BUNDLE_SUFFIX == refs.BUNDLE_SUFFIX
    assert plugin_refs._ID.pattern == refs.ID_PATTERN.pattern
    assert plugin_refs._SCHEME.pattern == refs._SCHEME.pattern


def test_the_plugin_copy_imports_no_facecast() -> None:
    code = (
        "import sys, livekit.plugins.facecast.refs; "
        "print(sorted(m for m in sys.modules if m == 'facecast' or m.startswith('facecast.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- resolving against a library -------------------------------------------------------------------------
@pytest.fixture
def library(tmp_path: Path) -> AvatarLibrary:
    lib = AvatarLibrary(tmp_path / "lib")
    manifest, files = bundle_from_style("leo")
    lib.save(dataclasses.replace(manifest, name="bob"), files)
    return lib


def test_find_avatar_resolves_what_can_be_drawn(library: AvatarLibrary, tmp_path: Path) -> None:
    assert find_avatar("ava", library) == BuiltinAvatar("ava")
    assert find_avatar("bob", library) == LibraryAvatar("bob")
    assert find_avatar(str(library.path("bob"))) == BundleFile(str(library.path("bob")))
    with pytest.raises(AvatarNotFoundError, match=r"unknown avatar 'nobody'; available: ava, .*bob"):
        find_avatar("nobody", library)
    with pytest.raises(AvatarNotFoundError, match=r"unknown avatar 'bob'; available: ava"):
        find_avatar("bob")  # no library given: only the built-ins
    with pytest.raises(AvatarNotFoundError, match="no avatar bundle at"):
        find_avatar(str(tmp_path / "gone.facecast"), library)
    for photo in ("me.png", "https://example.com/me.jpg"):
        with pytest.raises(AvatarRefError, match=f"'{photo}' is a photo, not an avatar: build it first"):
            find_avatar(photo, library)


def test_load_bundle_and_renderer_take_parsed_references(library: AvatarLibrary) -> None:
    by_text = load_renderer("bob", quality="low", library=library).render(FaceState())
    by_ref = load_renderer(LibraryAvatar("bob"), quality="low", library=library).render(FaceState())
    leo = load_renderer(BuiltinAvatar("leo"), quality="low").render(FaceState())
    np.testing.assert_array_equal(by_text, by_ref)
    np.testing.assert_array_equal(by_ref, leo)  # bob is leo's style under another name
    assert load_bundle(BuiltinAvatar("mira")).manifest.name == "mira"


# -- the registry of kinds -------------------------------------------------------------------------------
def test_the_built_in_kinds_are_registered() -> None:
    assert kind_names()[:2] == ("procedural", "portrait")
    assert avatar_kind("portrait").name == "portrait"
    with pytest.raises(
        BundleError, match=r"unknown kind 'hologram'; this Facecast knows procedural, portrait"
    ):
        avatar_kind("hologram")
    with pytest.raises(ValueError, match="'procedural' is registered already"):
        register_kind(dataclasses.replace(avatar_kind("portrait"), name="procedural"))
    register_kind(avatar_kind("procedural"))  # the same kind again is harmless


class FlatRenderer:
    """One colour: the smallest renderer a new kind could have."""

    channels = 3

    def __init__(self, width: int, height: int, value: int) -> None:
        self.width, self.height, self.value = width, height, value

    def render(self, state: FaceState) -> np.ndarray:
        return np.full((self.height, self.width, 3), self.value, np.uint8)


def check_flat(bundle: Bundle) -> None:
    if bundle.asset("value.txt").strip() not in (b"7", b"200"):
        raise BundleError(f"{bundle.path}: value.txt must be 7 or 200")


def test_a_new_kind_is_one_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, _ = bundle_from_style("ava")
    files = {"value.txt": b"200"}
    flat = dataclasses.replace(manifest, kind="flat", assets={"value.txt": asset_info("value.txt", b"200")})
    path = write_bundle(tmp_path / "flat.facecast", flat, files)
    with pytest.raises(BundleError, match="unknown kind 'flat'"):
        open_bundle(path)
    monkeypatch.setitem(
        sys.modules["facecast.avatars.kinds"]._REGISTRY,  # type: ignore[attr-defined]
        "flat",
        AvatarKind("flat", "one colour", check_flat, lambda b, w, h, a, bg: FlatRenderer(w, h, 200)),
    )
    frame = renderer_from_bundle(open_bundle(path), aspect="4:3", quality="low").render(FaceState())
    assert frame.shape == (240, 320, 3) and int(frame.max()) == 200
    bad = write_bundle(
        tmp_path / "bad.facecast",
        dataclasses.replace(flat, assets={"value.txt": asset_info("value.txt", b"9")}),
        {"value.txt": b"9"},
    )
    read_bundle(bad)  # the container is sound
    with pytest.raises(BundleError, match=r"value\.txt must be 7 or 200"):
        open_bundle(bad)


def test_the_library_refuses_kinds_it_cannot_draw(library: AvatarLibrary) -> None:
    manifest, files = bundle_from_style("ava")
    with pytest.raises(BundleError, match="unknown kind 'hologram'"):
        library.save(dataclasses.replace(manifest, name="holo", kind="hologram"), files)
    assert "holo" not in library


# -- no cycle --------------------------------------------------------------------------------------------
AVATARS = Path(__file__).resolve().parents[1] / "facecast" / "avatars"


def avatar_imports() -> dict[str, set[str]]:
    """Module → the facecast.avatars modules it imports anywhere in its text (function-level imports too);
    the package's __init__, which re-exports everything, is left out."""
    graph: dict[str, set[str]] = {}
    for path in sorted(AVATARS.glob("*.py")):
        if path.stem == "__init__":
            continue
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found |= {n.split(".")[2] for n in names if n.startswith("facecast.avatars.")}
        graph[path.stem] = found & {p.stem for p in AVATARS.glob("*.py")}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_bundle_is_a_pure_container() -> None:
    graph = avatar_imports()
    assert {"portrait", "procedural", "kinds"} <= reachable(graph, "library")  # the walk sees imports
    assert reachable(graph, "bundle").isdisjoint({"portrait", "procedural", "kinds", "style", "library"})
    assert reachable(graph, "refs").isdisjoint({"portrait", "procedural", "kinds", "library"})
    assert reachable(graph, "look") <= {"presets"}


def test_the_avatar_modules_import_each_other_without_cycles() -> None:
    graph = avatar_imports()
    cycles = sorted(m for m in graph if m in reachable(graph, m))
    assert cycles == []
