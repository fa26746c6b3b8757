"""Avatar bundles: round trips, determinism, and every way a hostile or damaged bundle is refused."""

from __future__ import annotations

import io
import json
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from facecast.avatars import load_renderer
from facecast.avatars.bundle import (
    FORMAT_VERSION,
    MAX_ENTRIES,
    MAX_IMAGE_PIXELS,
    Bundle,
    FrameSize,
    Manifest,
    asset_info,
    image_size,
    read_bundle,
    write_bundle,
)
from facecast.avatars.kinds import renderer_from_bundle
from facecast.avatars.procedural import bundle_from_style
from facecast.engine.types import FaceState

STAMP = "2025-01-31T12:00:00+00:00"
MiB = 1024 * 1024


@pytest.fixture
def ava() -> tuple[Manifest, dict[str, bytes]]:
    return bundle_from_style("ava", created_at=STAMP)


def manifest_dict(manifest: Manifest) -> dict[str, Any]:
    return json.loads(manifest.to_json())


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    """A zip written entry by entry, with none of write_bundle's checks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests need
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def valid_entries(manifest: Manifest, files: dict[str, bytes]) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    return [("manifest.json", manifest.to_json().encode()), *files.items()]


def with_manifest(tmp_path: Path, data: dict[str, Any], files: dict[str, bytes]) -> Path:
    return make_zip(tmp_path / "x.facecast", [("manifest.json", json.dumps(data).encode()), *files.items()])


def set_sizes(
    path: Path, name: str, *, file_size: int | None = None, compress_size: int | None = None
) -> None:
    """Make the local and central headers of one entry lie about its sizes."""
    data = bytearray(path.read_bytes())
    raw = name.encode()
    for sig, name_at, csize_at in ((b"PK\x03\x04", 26, 18), (b"PK\x01\x02", 28, 20)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            start = i + 4
            (n,) = struct.unpack_from("<H", data, i + name_at)
            skip = 30 if sig == b"PK\x03\x04" else 46
            if bytes(data[i + skip : i + skip + n]) != raw:
                continue
            if compress_size is not None:
                struct.pack_into("<I", data, i + csize_at, compress_size)
            if file_size is not None:
                struct.pack_into("<I", data, i + csize_at + 4, file_size)
    path.write_bytes(bytes(data))


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR claims any size (its pixel data is a few bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def encoded(ext: str, width: int = 8, height: int = 6) -> tuple[bytes, np.ndarray]:
    """An encoded test image and its RGB pixels (red left half, blue right half)."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = (255, 0, 0)
    rgb[:, width // 2 :] = (0, 0, 255)
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return buf.tobytes(), rgb


def portrait(files: dict[str, bytes]) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        kind="portrait",
        name="jo",
        display_name="Jo",
        created_at=STAMP,
        facecast_version="0.1.0",
        frame=FrameSize(8, 6),
        assets={n: asset_info(n, d) for n, d in files.items()},
        consent="Jo agreed on 2025-01-30.",
        extra={"landmarks": [[1.5, 2.0], [3.0, 4.25]]},
    )


# -- round trips ----------------------------------------------------------------------------------------


def test_procedural_round_trip(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    manifest, files = ava
    bundle = read_bundle(write_bundle(tmp_path / "ava.facecast", manifest, files))
    assert bundle.manifest == manifest
    assert bundle.manifest.kind == "procedural" and bundle.manifest.display_name == "Ava"
    assert bundle.asset("style.toml") == files["style.toml"]
    assert Manifest.from_json(manifest.to_json()) == manifest
    with zipfile.ZipFile(bundle.path) as zf:
        assert zf.namelist() == ["manifest.json", "style.toml"]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}


def test_written_twice_gives_identical_bytes(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    a = write_bundle(tmp_path / "a.facecast", *ava)
    b = write_bundle(tmp_path / "b.facecast", *bundle_from_style("ava", created_at=STAMP))
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.facecast", "b.facecast"]  # no temp files left


def test_bundle_renders_like_the_builtin(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    bundle = read_bundle(write_bundle(tmp_path / "ava.facecast", *ava))
    state = FaceState(blink=0.3, smile=0.5)
    got = renderer_from_bundle(bundle, aspect="4:3", quality="low").render(state)
    want = load_renderer("ava", aspect="4:3", quality="low").render(state)
    assert got.shape == (240, 320, 3)
    np.testing.assert_array_equal(got, want)


def npy(arr: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_images_and_arrays_in_a_bundle(tmp_path: Path) -> None:
    png, rgb = encoded(".png")
    jpg, _ = encoded(".jpg")
    grid = np.arange(6, dtype="<f4").reshape(2, 3)
    files = {
        "photo.png": png,
        "layers/photo.jpg": jpg,
        "warp.npy": npy(grid),
        "bad.npy": b"\x93NUMPY fake",
        "objects.npy": npy(np.array([{"x": 1}], dtype=object), allow_pickle=True),
        "nan.npy": npy(np.array([1.0, np.nan], "<f4")),
    }
    path = write_bundle(tmp_path / "jo.facecast", portrait(files), files)
    # These files are not a portrait the renderer can use: refused when the bundle is read.
    with pytest.raises(ValueError, match=r"not a valid portrait"):
        read_bundle(path)
    bundle = Bundle(path=path, manifest=portrait(files), files=files)
    assert bundle.manifest.assets["warp.npy"].media_type == "application/x-npy"
    np.testing.assert_array_equal(bundle.image("photo.png"), rgb)  # RGB order, not OpenCV's BGR
    assert bundle.image("photo.png", gray=True).shape == (6, 8)
    jpeg_pixels = bundle.image("layers/photo.jpg")
    assert jpeg_pixels.shape == (6, 8, 3)
    assert jpeg_pixels[0, 0, 0] > 200 and jpeg_pixels[0, -1, 2] > 200
    np.testing.assert_array_equal(bundle.array("warp.npy", (2, -1)), grid)
    with pytest.raises(ValueError, match=r"has shape \(2, 3\), expected \(3, 2\)"):
        bundle.array("warp.npy", (3, 2))
    with pytest.raises(ValueError, match=r"has dtype <f4"):
        bundle.array("warp.npy", (2, 3), ("<f2",))
    with pytest.raises(ValueError, match=r"not a valid .npy"):
        bundle.array("bad.npy", (1,))
    with pytest.raises(ValueError, match=r"not a valid .npy"):  # pickles are never loaded
        bundle.array("objects.npy", (1,))
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        bundle.array("nan.npy", (2,))
    with pytest.raises(ValueError, match=r"no asset 'nope.png'"):
        bundle.asset("nope.png")


def test_header_sizes() -> None:
    assert image_size(encoded(".png", 40, 30)[0]) == (40, 30)
    assert image_size(encoded(".jpg", 40, 30)[0]) == (40, 30)
    with pytest.raises(ValueError, match=r"not a PNG or JPEG"):
        image_size(b"GIF89a....")


# -- what write_bundle refuses ----------------------------------------------------------------------------


def test_write_checks_assets_against_the_manifest(
    tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]
) -> None:
    manifest, files = ava
    target = tmp_path / "ava.facecast"
    with pytest.raises(ValueError, match=r"does not match its size/sha256"):
        write_bundle(target, manifest, {"style.toml": files["style.toml"] + b"\n"})
    with pytest.raises(ValueError, match=r"not listed in the manifest: extra.bin"):
        write_bundle(target, manifest, {**files, "extra.bin": b"x"})
    with pytest.raises(ValueError, match=r"name 'Bad Name'"):
        write_bundle(target, replace(manifest, name="Bad Name"), files)
    assert list(tmp_path.iterdir()) == []  # nothing, not even a temp file


def test_write_refuses_an_image_bomb(tmp_path: Path) -> None:
    files = {"photo.png": png_header_claiming(100_000, 100_000)}
    with pytest.raises(ValueError, match=r"100000×100000"):
        write_bundle(tmp_path / "jo.facecast", portrait(files), files)


# -- what read_bundle refuses ------------------------------------------------------------------------------


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "x.facecast"
    path.write_bytes(b"just some text, not a zip")
    with pytest.raises(ValueError, match=r"not a valid zip"):
        read_bundle(path)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../x", "outside the bundle"),
        ("assets/../../x", "outside the bundle"),
        ("/etc/passwd", "absolute"),
        ("assets\\x.png", "non-POSIX"),
        ("C:/x.png", "non-POSIX"),
        ("assets/", "plain relative path"),
    ],
)
def test_zip_slip(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]], name: str, why: str) -> None:
    path = make_zip(tmp_path / "x.facecast", [*valid_entries(*ava), (name, b"x")])
    assert name in zipfile.ZipFile(path).namelist()  # the hostile name really is in the zip
    with pytest.raises(ValueError, match=why):
        read_bundle(path)


def test_symlink_entry(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    link = zipfile.ZipInfo("style.toml")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    manifest, _ = ava
    path = make_zip(
        tmp_path / "x.facecast", [("manifest.json", manifest.to_json().encode()), (link, b"/etc")]
    )
    with pytest.raises(ValueError, match=r"is a symlink"):
        read_bundle(path)


def test_duplicate_names(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    path = make_zip(tmp_path / "x.facecast", [*valid_entries(*ava), ("style.toml", b"x")])
    with pytest.raises(ValueError, match=r"duplicate entries 'style.toml'"):
        read_bundle(path)


def test_too_many_entries(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    extra = [(f"f{i}.bin", b"") for i in range(MAX_ENTRIES)]
    with pytest.raises(ValueError, match=rf"{MAX_ENTRIES + 2} entries"):
        read_bundle(make_zip(tmp_path / "x.facecast", [*valid_entries(*ava), *extra]))


def test_huge_declared_size(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    path = make_zip(tmp_path / "x.facecast", valid_entries(*ava))
    set_sizes(path, "style.toml", file_size=0xFFFF_FFF0)
    with pytest.raises(ValueError, match=r"'style.toml' is 4294967280 bytes"):
        read_bundle(path)


def test_total_size_over_the_limit(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    names = ["a.bin", "b.bin", "c.bin"]
    path = make_zip(tmp_path / "x.facecast", [*valid_entries(*ava), *((n, b"x") for n in names)])
    for n in names:
        set_sizes(path, n, file_size=30 * MiB, compress_size=30 * MiB)  # each under the entry limit
    with pytest.raises(ValueError, match=r"total .* bytes uncompressed"):
        read_bundle(path)


def test_deflate_bomb(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    path = make_zip(tmp_path / "x.facecast", valid_entries(*ava))
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.bin", "w") as f:
        zero = bytes(MiB)
        for _ in range(20):
            f.write(zero)
    assert path.stat().st_size < 100_000  # 20 MiB that packs into a few tens of kB
    with pytest.raises(ValueError, match=r"decompression bomb"):
        read_bundle(path)


@pytest.mark.parametrize("declared", [100, 10 * MiB])
def test_lying_sizes_are_caught_while_reading(
    tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]], declared: int
) -> None:
    # Random bytes do not compress, so the ratio check cannot see the lie; only reading can.
    payload = np.random.default_rng(0).bytes(MiB)
    path = make_zip(tmp_path / "x.facecast", [*valid_entries(*ava), ("blob.bin", payload)])
    set_sizes(path, "blob.bin", file_size=declared)
    with pytest.raises(ValueError, match=r"'blob.bin' is (corrupt|shorter|larger)"):
        read_bundle(path)


def test_missing_manifest(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    with pytest.raises(ValueError, match=r"no manifest.json"):
        read_bundle(make_zip(tmp_path / "x.facecast", list(ava[1].items())))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"format_version": 1, "format_version": 1}', "duplicate key"),
        (b'{"format_version": NaN}', "NaN is not valid JSON"),
    ],
)
def test_manifest_not_json(
    tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]], text: bytes, why: str
) -> None:
    path = make_zip(tmp_path / "x.facecast", [("manifest.json", text), *ava[1].items()])
    with pytest.raises(ValueError, match=why):
        read_bundle(path)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (_set("format_version", 2), "newer Facecast.*upgrade Facecast"),
        (_set("format_version", 0), "older than this Facecast supports.*rebuild"),
        (_set("format_version", "1"), "format_version must be an integer"),
        (_set("format_version", True), "format_version must be an integer"),
        (_set("kind", "hologram"), "unknown kind 'hologram'"),
        (_set("name", "../ava"), "name '../ava'"),
        (_set("name", 5), "name must be a string"),
        (_set("display_name", " "), "display_name must not be empty"),
        (_set("created_at", "yesterday"), "created_at 'yesterday'"),
        (_set("created_at", "2025-01-31T12:00:00"), "with a UTC offset"),
        (_set("frame", {"width": 0, "height": 512}), "frame width and height"),
        (_set("frame", {"width": 512}), "frame must be"),
        (_set("extra", [1]), "extra must be a JSON object"),
        (_set("surprise", 1), "unknown field.*surprise"),
        (_drop("kind"), "missing field 'kind'"),
        (lambda d: d["assets"]["style.toml"].__setitem__("sha256", "ABC"), "64 lowercase hex"),
        (lambda d: d["assets"]["style.toml"].__setitem__("size", -1), "size must be an integer"),
        (lambda d: d["assets"]["style.toml"].__setitem__("media_type", "toml"), "media_type"),
        (lambda d: d["assets"].__setitem__("manifest.json", d["assets"]["style.toml"]), "list itself"),
    ],
)
def test_bad_manifest_fields(
    tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]], change: Callable[[dict[str, Any]], None], why: str
) -> None:
    data = manifest_dict(ava[0])
    change(data)
    with pytest.raises(ValueError, match=why):
        read_bundle(with_manifest(tmp_path, data, ava[1]))


def test_newer_version_is_reported_before_its_new_fields(
    tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]
) -> None:
    data = {**manifest_dict(ava[0]), "format_version": 2, "fps": 25}
    with pytest.raises(ValueError, match=r"newer Facecast"):
        read_bundle(with_manifest(tmp_path, data, ava[1]))


def test_asset_checks(tmp_path: Path, ava: tuple[Manifest, dict[str, bytes]]) -> None:
    manifest, files = ava
    data = manifest_dict(manifest)
    with pytest.raises(ValueError, match=r"does not match its size/sha256"):
        read_bundle(
            with_manifest(tmp_path, data, {"style.toml": files["style.toml"].replace(b"Ava", b"Eve")})
        )
    with pytest.raises(ValueError, match=r"not listed in the manifest: notes.txt"):
        read_bundle(with_manifest(tmp_path, data, {**files, "notes.txt": b"hi"}))
    with pytest.raises(ValueError, match=r"listed in the manifest but missing: style.toml"):
        read_bundle(with_manifest(tmp_path, data, {}))


def test_broken_style_fails_at_load(tmp_path: Path) -> None:
    files = {"style.toml": b'display_name = "X"\n'}
    manifest, _ = bundle_from_style("ava", created_at=STAMP)
    manifest = replace(manifest, assets={"style.toml": asset_info("style.toml", files["style.toml"])})
    path = write_bundle(tmp_path / "x.facecast", manifest, files)
    with pytest.raises(ValueError, match=r"style.toml: ava: missing key 'face'"):
        read_bundle(path)


def test_image_bomb(tmp_path: Path) -> None:
    bomb = png_header_claiming(100_000, 100_000)
    assert len(bomb) < 100
    files = {"photo.png": bomb}
    path = make_zip(tmp_path / "jo.facecast", valid_entries(portrait(files), files))
    with pytest.raises(ValueError, match=rf"100000×100000; the limit is {MAX_IMAGE_PIXELS} pixels"):
        read_bundle(path)


def test_jpeg_bomb() -> None:
    jpg = bytearray(encoded(".jpg")[0])
    sof = jpg.index(b"\xff\xc0")
    struct.pack_into(">HH", jpg, sof + 5, 50_000, 50_000)
    with pytest.raises(ValueError, match=r"50000×50000"):
        image_size(bytes(jpg))


def test_unknown_builtin() -> None:
    with pytest.raises(ValueError, match=r"unknown built-in avatar 'zed'"):
        bundle_from_style("zed")
