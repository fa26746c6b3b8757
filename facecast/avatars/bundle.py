"""Avatar bundles: one `NAME.facecast` file per avatar, a zip of `manifest.json` plus assets.

Everything a renderer needs is computed when the bundle is built, so loading is only reading and checking.
Bundles come from users and URLs, so `read_bundle` treats every byte as hostile: it checks the zip's
structure, sizes and paths before reading anything, enforces the limits again while decompressing (headers
can lie), verifies every asset's sha256, and checks image headers before decoding. The format is
documented in docs/bundle-format.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

import cv2
import numpy as np

from facecast import __version__
from facecast.bounded_json import MessageRefused, check_depth

FORMAT_VERSION = 1
MIN_FORMAT_VERSION = 1
KINDS: tuple[str, ...] = ("procedural", "portrait")
MANIFEST_NAME = "manifest.json"
SUFFIX = ".facecast"

MAX_ENTRIES = 64
MAX_ENTRY_BYTES = 32 * 1024 * 1024
MAX_TOTAL_BYTES = 64 * 1024 * 1024
# A deflated entry cannot be much bigger than its content, so anything larger than this is not a bundle;
# checked before zipfile reads the central directory into memory.
MAX_FILE_BYTES = MAX_TOTAL_BYTES + 4 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_RATIO = 200
# Small entries (a flat mask, a short text) legitimately compress far better than 200:1 and cannot hurt.
RATIO_MIN_BYTES = 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_FRAME_SIDE = 8192
MAX_PATH_CHARS = 255
MAX_TEXT_CHARS = 10_000

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PATH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"[a-z]+/[a-z0-9][a-z0-9.+-]*")
MEDIA_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".toml": "application/toml",
    ".json": "application/json",
    ".npy": "application/x-npy",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can store: bundles are byte-reproducible
_CHUNK = 64 * 1024
_IMAGE_TYPES = ("image/png", "image/jpeg")
_JSON_NAMES: dict[type, str] = {str: "string", dict: "JSON object"}


class BundleError(ValueError):
    """A bundle (or a manifest about to become one) is malformed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class AssetInfo:
    """What the manifest records about one asset, so that a swapped or damaged file is detected."""

    sha256: str  # lowercase hex digest of the asset's bytes
    size: int  # bytes, uncompressed
    media_type: str  # e.g. "image/png"; decides how the asset may be read (image() wants PNG or JPEG)


@dataclass(frozen=True, slots=True)
class FrameSize:
    """The avatar's canonical frame: the photo's size for portraits, the design size for procedural."""

    width: int
    height: int


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`: what the bundle is, who made it, and the list of its assets.

    format_version: the bundle format (FORMAT_VERSION); bumped on any incompatible change.
    kind: which renderer draws it, one of KINDS.
    name: the avatar's id, a slug `[a-z0-9][a-z0-9_-]{0,63}`; the file is conventionally NAME.facecast.
    display_name: the human name shown in lists.
    created_at: when it was built, ISO 8601 with a UTC offset ("2025-01-31T12:00:00+00:00").
    facecast_version: the Facecast version that built it (informational).
    frame: the canonical frame size.
    assets: path inside the zip → AssetInfo, for every file except manifest.json.
    description: one line for lists; optional.
    license: licence of the assets (free text); optional.
    consent: the likeness owner's consent, for avatars of real people (free text); optional.
    extra: kind-specific data precomputed at build time (e.g. a portrait's landmarks), JSON values only.
    """

    format_version: int
    kind: str
    name: str
    display_name: str
    created_at: str
    facecast_version: str
    frame: FrameSize
    assets: dict[str, AssetInfo]
    description: str = ""
    license: str | None = None
    consent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, UTF-8 text): the same manifest always gives the same bytes."""
        data = {
            "format_version": self.format_version,
            "kind": self.kind,
            "name": self.name,
            "display_name": self.display_name,
            "created_at": self.created_at,
            "facecast_version": self.facecast_version,
            "frame": {"width": self.frame.width, "height": self.frame.height},
            "assets": {
                path: {"sha256": a.sha256, "size": a.size, "media_type": a.media_type}
                for path, a in self.assets.items()
            },
            "description": self.description,
            "license": self.license,
            "consent": self.consent,
            "extra": self.extra,
        }
        try:
            return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        except (TypeError, ValueError) as e:
            raise BundleError(f"manifest is not serialisable as JSON ({e}); use JSON values only") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate a manifest; every problem raises BundleError naming the field."""
        if isinstance(text, bytes):
            if len(text) > MAX_MANIFEST_BYTES:
                raise BundleError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise BundleError(f"{MANIFEST_NAME} is not UTF-8 text") from None
        try:
            check_depth(text)  # the standard parser recurses per level: RecursionError past ~1,000
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
        except MessageRefused as e:
            raise BundleError(f"{MANIFEST_NAME}: {e}") from None
        except ValueError as e:  # JSONDecodeError, or an integer literal past Python's 4,300 digits
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BundleError(f"{MANIFEST_NAME} must be a JSON object, got {type(data).__name__}")
        # The version first: a newer format may have fields this code would call unknown.
        version = _check_version(data.get("format_version"))
        known = {
            "format_version", "kind", "name", "display_name", "created_at", "facecast_version",
            "frame", "assets", "description", "license", "consent", "extra",
        }  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(f"{MANIFEST_NAME}: unknown field(s) {', '.join(unknown)}")
        kind = _field(data, "kind", str)
        if kind not in KINDS:
            raise BundleError(
                f"{MANIFEST_NAME}: unknown kind {kind!r}; this Facecast knows {', '.join(KINDS)} "
                "(a newer Facecast may support it)"
            )
        name = _field(data, "name", str)
        if not NAME_PATTERN.fullmatch(name):
            raise BundleError(
                f"{MANIFEST_NAME}: name {name!r} must be 1-64 of a-z 0-9 _ - starting with a letter or digit"
            )
        created_at = _field(data, "created_at", str)
        try:
            stamp = dt.datetime.fromisoformat(created_at)
        except ValueError:
            stamp = None
        if stamp is None or stamp.tzinfo is None:
            raise BundleError(
                f"{MANIFEST_NAME}: created_at {created_at!r} must be ISO 8601 with a UTC offset, "
                "like '2025-01-31T12:00:00+00:00'"
            )
        frame = _field(data, "frame", dict)
        if set(frame) != {"width", "height"}:
            raise BundleError(f'{MANIFEST_NAME}: frame must be {{"width": W, "height": H}}, got {frame}')
        width, height = frame["width"], frame["height"]
        if not all(_is_int(v) and 1 <= v <= MAX_FRAME_SIDE for v in (width, height)):
            raise BundleError(
                f"{MANIFEST_NAME}: frame width and height must be integers in 1..{MAX_FRAME_SIDE}, "
                f"got {frame}"
            )
        return cls(
            format_version=version,
            kind=kind,
            name=name,
            display_name=_text(data, "display_name", 200),
            created_at=created_at,
            facecast_version=_text(data, "facecast_version", 64),
            frame=FrameSize(width, height),
            assets=_parse_assets(_field(data, "assets", dict)),
            description=_text(data, "description", MAX_TEXT_CHARS, optional=True) or "",
            license=_text(data, "license", MAX_TEXT_CHARS, optional=True),
            consent=_text(data, "consent", MAX_TEXT_CHARS, optional=True),
            extra=_field(data, "extra", dict) if data.get("extra") is not None else {},
        )


@dataclass(frozen=True)
class Bundle:
    """A validated bundle, held in memory: every asset was read and its sha256 checked at load time."""

    path: Path
    manifest: Manifest
    files: Mapping[str, bytes]

    def asset(self, name: str) -> bytes:
        """The bytes of one asset."""
        if name not in self.files:
            have = ", ".join(sorted(self.files)) or "none"
            raise BundleError(f"{self.path}: no asset {name!r} (assets: {have})")
        return self.files[name]

    def image(self, name: str, *, gray: bool = False) -> np.ndarray:
        """A PNG or JPEG asset as an (h, w, 3) uint8 RGB array, or (h, w) with `gray`; its size is
        checked before decoding."""
        data = self.asset(name)
        width, height = image_size(data, f"{self.path}: {name}")
        # Orientation is ignored on purpose: landmarks precomputed at build time refer to the stored pixels.
        flags = (cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if img is None or img.shape[:2] != (height, width):
            raise BundleError(f"{self.path}: {name} is a damaged image; rebuild the bundle")
        return img if gray else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def array(self, name: str, shape: tuple[int, ...], dtypes: tuple[str, ...] = ("<f4",)) -> np.ndarray:
        """A `.npy` asset of exactly `shape` (-1 = any length) and one of `dtypes`, with finite values.

        Pickled objects are refused, so loading an array cannot run code."""
        where = f"{self.path}: {name}"
        try:
            arr = np.load(io.BytesIO(self.asset(name)), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise BundleError(f"{where} is not a valid .npy array ({e}); rebuild the bundle") from None
        if arr.dtype.str not in dtypes:
            raise BundleError(f"{where} has dtype {arr.dtype.str}, expected one of {', '.join(dtypes)}")
        fits = len(arr.shape) == len(shape) and all(
            w in (-1, h) for h, w in zip(arr.shape, shape, strict=True)
        )
        if not fits:
            raise BundleError(f"{where} has shape {arr.shape}, expected {shape}")
        if not np.isfinite(arr).all():
            raise BundleError(f"{where} contains NaN or infinite values; rebuild the bundle")
        return arr


def asset_info(name: str, data: bytes, media_type: str | None = None) -> AssetInfo:
    """The manifest entry for an asset; the media type is guessed from the extension unless given."""
    if media_type is None:
        media_type = MEDIA_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")
    return AssetInfo(sha256=hashlib.sha256(data).hexdigest(), size=len(data), media_type=media_type)


def write_bundle(path: str | os.PathLike[str], manifest: Manifest, files: Mapping[str, bytes]) -> Path:
    """Write a bundle atomically; the same manifest and files always give the same bytes.

    The manifest must list exactly `files` with their sizes and hashes (see asset_info), and everything
    read_bundle checks is checked here too, so a bundle that can be written can be read.
    """
    manifest = Manifest.from_json(manifest.to_json())
    manifest_bytes = manifest.to_json().encode("utf-8")
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{MANIFEST_NAME} would be {len(manifest_bytes)} bytes; the limit is {MAX_MANIFEST_BYTES}"
        )
    names = sorted(files)
    if len(names) + 1 > MAX_ENTRIES:
        raise BundleError(f"{len(names)} assets; a bundle holds at most {MAX_ENTRIES - 1}")
    total = len(manifest_bytes) + sum(len(files[n]) for n in names)
    if total > MAX_TOTAL_BYTES:
        raise BundleError(f"assets total {total} bytes; a bundle holds at most {MAX_TOTAL_BYTES}")
    for name in names:
        if len(files[name]) > MAX_ENTRY_BYTES:
            raise BundleError(f"asset {name!r} is {len(files[name])} bytes; the limit is {MAX_ENTRY_BYTES}")
    _check_assets(manifest, {n: files[n] for n in names}, "bundle to write")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w") as zf:
                for name, data in [(MANIFEST_NAME, manifest_bytes), *((n, files[n]) for n in names)]:
                    zf.writestr(_zip_info(name), data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a bundle is meant to be shared like any file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Open and fully validate a bundle; anything wrong raises BundleError saying what and what to do."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BundleError(f"{path}: {size} bytes is too large for a bundle (limit {MAX_FILE_BYTES})")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_entries(infos, path)
            raw = {info.filename: _read_entry(zf, info, path) for info in infos}
    except zipfile.BadZipFile as e:
        raise BundleError(f"{path}: not a valid zip file ({e}); is it a .facecast bundle?") from None
    if MANIFEST_NAME not in raw:
        raise BundleError(f"{path}: no {MANIFEST_NAME}; this is not a Facecast bundle")
    try:
        manifest = Manifest.from_json(raw.pop(MANIFEST_NAME))
    except BundleError as e:
        raise BundleError(f"{path}: {e}") from None
    _check_assets(manifest, raw, str(path))
    bundle = Bundle(path=path, manifest=manifest, files=MappingProxyType(raw))
    # A broken bundle fails at load, not at the first frame.
    if manifest.kind == "procedural":
        from facecast.avatars.procedural import style_from_bundle  # procedural.py reads bundles

        style_from_bundle(bundle)
    else:
        from facecast.avatars.portrait import PortraitData  # portrait.py reads bundles: import here

        PortraitData.from_bundle(bundle)
    return bundle


def header_size(data: bytes, where: str = "image") -> tuple[int, int]:
    """(width, height) from a PNG IHDR or JPEG SOF header, read without decoding (no size limit)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BundleError(f"{where}: PNG without an IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data, where)
    raise BundleError(f"{where}: not a PNG or JPEG image")


def image_size(data: bytes, where: str = "image") -> tuple[int, int]:
    """(width, height) from a PNG IHDR or JPEG SOF header, refusing images over MAX_IMAGE_PIXELS."""
    width, height = header_size(data, where)
    if width == 0 or height == 0 or width * height > MAX_IMAGE_PIXELS:
        raise BundleError(
            f"{where}: image is {width}×{height}; the limit is {MAX_IMAGE_PIXELS} pixels "
            "(e.g. 4096×4096) — resize it before building the bundle"
        )
    return width, height


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.create_system = 3  # Unix on every platform, so that the bytes do not depend on the builder's OS
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def _check_entries(infos: list[zipfile.ZipInfo], path: Path) -> None:
    """Everything that can be checked from the central directory, before any byte is decompressed."""
    if len(infos) > MAX_ENTRIES:
        raise BundleError(f"{path}: {len(infos)} entries; a bundle holds at most {MAX_ENTRIES}")
    dupes = sorted(n for n, c in Counter(i.filename for i in infos).items() if c > 1)
    if dupes:
        raise BundleError(f"{path}: duplicate entries {', '.join(map(repr, dupes))}; rebuild the bundle")
    for info in infos:
        name = info.filename
        _check_path(name, f"{path}: entry")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BundleError(f"{path}: entry {name!r} is a symlink; bundles hold only regular files")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise BundleError(f"{path}: entry {name!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise BundleError(f"{path}: entry {name!r} is encrypted; bundles cannot be encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleError(
                f"{path}: entry {name!r} uses compression method {info.compress_type}; "
                "only stored and deflated are allowed"
            )
        limit = MAX_MANIFEST_BYTES if name == MANIFEST_NAME else MAX_ENTRY_BYTES
        if info.file_size > limit:
            raise BundleError(f"{path}: entry {name!r} is {info.file_size} bytes; the limit is {limit}")
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise BundleError(f"{path}: entries total {total} bytes uncompressed; the limit is {MAX_TOTAL_BYTES}")
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_MIN_BYTES and ratio > MAX_RATIO:
            raise BundleError(
                f"{path}: entry {info.filename!r} expands {ratio:.0f}:1 (limit {MAX_RATIO}:1); "
                "this looks like a decompression bomb"
            )


def _check_path(name: str, where: str) -> None:
    """Relative POSIX paths of plain parts only: nothing that could escape a folder on any OS."""
    if name.startswith("/") or "\\" in name or ":" in name:
        raise BundleError(f"{where} {name!r} is an absolute or non-POSIX path (zip slip); rebuild the bundle")
    parts = name.split("/")
    if ".." in parts:
        raise BundleError(f"{where} {name!r} points outside the bundle (zip slip); rebuild the bundle")
    if len(name) > MAX_PATH_CHARS or not all(_PATH_PART.fullmatch(p) for p in parts):
        raise BundleError(
            f"{where} {name!r} is not a plain relative path (parts of A-Z a-z 0-9 . _ -, "
            f"no folder entries, at most {MAX_PATH_CHARS} characters)"
        )


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """Decompress in chunks and stop past the declared size: the header checks alone trust the header."""
    limit = min(info.file_size, MAX_MANIFEST_BYTES if info.filename == MANIFEST_NAME else MAX_ENTRY_BYTES)
    chunks, got = [], 0
    try:
        with zf.open(info) as f:
            while chunk := f.read(_CHUNK):
                got += len(chunk)
                if got > limit:
                    raise BundleError(
                        f"{path}: entry {info.filename!r} is larger than its header says; rebuild the bundle"
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise BundleError(f"{path}: entry {info.filename!r} is corrupt ({e}); rebuild the bundle") from None
    if got != info.file_size:
        raise BundleError(
            f"{path}: entry {info.filename!r} is shorter than its header says; rebuild the bundle"
        )
    return b"".join(chunks)


def _check_assets(manifest: Manifest, files: Mapping[str, bytes], where: str) -> None:
    missing = sorted(set(manifest.assets) - set(files))
    if missing:
        raise BundleError(f"{where}: assets listed in the manifest but missing: {', '.join(missing)}")
    unlisted = sorted(set(files) - set(manifest.assets))
    if unlisted:
        raise BundleError(f"{where}: files not listed in the manifest: {', '.join(unlisted)}")
    for name, info in manifest.assets.items():
        data = files[name]
        if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
            raise BundleError(
                f"{where}: asset {name!r} does not match its size/sha256 in the manifest; "
                "the bundle is damaged or was modified — rebuild it"
            )
        if info.media_type in _IMAGE_TYPES:
            image_size(data, f"{where}: asset {name!r}")  # image bombs fail at load, not at first use


def _check_version(value: object) -> int:
    if not _is_int(value):
        raise BundleError(f"{MANIFEST_NAME}: format_version must be an integer, got {value!r}")
    if value > FORMAT_VERSION:
        raise BundleError(
            f"bundle format {value} was made by a newer Facecast (this one, {__version__}, reads "
            f"format {MIN_FORMAT_VERSION}..{FORMAT_VERSION}); upgrade Facecast"
        )
    if value < MIN_FORMAT_VERSION:
        raise BundleError(
            f"bundle format {value} is older than this Facecast supports ({MIN_FORMAT_VERSION}.."
            f"{FORMAT_VERSION}); rebuild the bundle from its sources"
        )
    return value


def _parse_assets(data: dict[str, Any]) -> dict[str, AssetInfo]:
    assets = {}
    for name, entry in data.items():
        where = f"{MANIFEST_NAME}: asset {name!r}"
        _check_path(name, f"{MANIFEST_NAME}: asset")
        if name == MANIFEST_NAME:
            raise BundleError(f"{where}: the manifest cannot list itself")
        if not isinstance(entry, dict) or set(entry) != {"sha256", "size", "media_type"}:
            raise BundleError(f'{where}: must be {{"sha256": ..., "size": ..., "media_type": ...}}')
        sha, size, media = entry["sha256"], entry["size"], entry["media_type"]
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise BundleError(f"{where}: sha256 must be 64 lowercase hex digits, got {sha!r}")
        if not _is_int(size) or not 0 <= size <= MAX_ENTRY_BYTES:
            raise BundleError(f"{where}: size must be an integer in 0..{MAX_ENTRY_BYTES}, got {size!r}")
        if not isinstance(media, str) or not _MEDIA_TYPE.fullmatch(media):
            raise BundleError(f"{where}: media_type must look like 'image/png', got {media!r}")
        assets[name] = AssetInfo(sha256=sha, size=size, media_type=media)
    return assets


def _field(data: dict[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise BundleError(f"{MANIFEST_NAME}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise BundleError(f"{MANIFEST_NAME}: {key} must be a {_JSON_NAMES[kind]}, got {value!r}")
    return value


def _text(data: dict[str, Any], key: str, max_chars: int, *, optional: bool = False) -> str | None:
    if optional and data.get(key) is None:
        return None
    value: str = _field(data, key, str)
    if not optional and not value.strip():
        raise BundleError(f"{MANIFEST_NAME}: {key} must not be empty")
    if len(value) > max_chars:
        raise BundleError(f"{MANIFEST_NAME}: {key} is longer than {max_chars} characters")
    return value


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted(k for k, c in Counter(keys).items() if c > 1)
    if dupes:
        raise BundleError(f"{MANIFEST_NAME}: duplicate key(s) {', '.join(dupes)}")
    return dict(pairs)


def _no_constant(value: str) -> Any:
    raise BundleError(f"{MANIFEST_NAME}: {value} is not valid JSON")


def _jpeg_size(data: bytes, where: str) -> tuple[int, int]:
    """Walk the JPEG marker segments up to the first SOF (frame header), which holds the size."""
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in sof:
            if length < 7 or i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header
            break
        i += 2 + length
    raise BundleError(f"{where}: JPEG without a readable frame header")
