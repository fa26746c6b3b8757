"""The avatar library: a folder of `NAME.facecast` bundles, one per avatar id.

Ids are one of the kinds of avatar reference (facecast.avatars.refs); `facecast.avatars.find_avatar`
resolves a reference against a library. Photos become library avatars when built
(`facecast.avatars.build.build_avatar`), which takes seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from facecast import settings
from facecast.avatars.bundle import (
    NAME_PATTERN,
    SUFFIX,
    Bundle,
    BundleError,
    Manifest,
    write_bundle,
)
from facecast.avatars.kinds import avatar_kind, open_bundle
from facecast.avatars.refs import is_builtin

AVATARS_DIR_ENV = settings.AVATARS_DIR.name


class AvatarNotFoundError(ValueError):
    """No avatar by that reference; the message lists where it looked and what exists."""


class AvatarExistsError(ValueError):
    """An avatar with that id exists already (or the id is a built-in's)."""


def default_avatars_dir() -> Path:
    """$FACECAST_AVATARS_DIR, else $XDG_DATA_HOME/facecast/avatars (~/.local/share/facecast/avatars)."""
    if (configured := settings.AVATARS_DIR.get()) is not None:
        return configured
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "facecast" / "avatars"


@dataclass(frozen=True, slots=True)
class StoredAvatar:
    """One bundle in the library, as listed (its manifest was validated; assets are checked on load)."""

    manifest: Manifest
    path: Path
    size_bytes: int


class AvatarLibrary:
    """A folder of validated bundles, one file per avatar id: `<root>/<id>.facecast`."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_avatars_dir()

    def path(self, avatar_id: str) -> Path:
        """Where the bundle of `avatar_id` lives (whether or not it exists)."""
        check_avatar_id(avatar_id)
        return self.root / f"{avatar_id}{SUFFIX}"

    def __contains__(self, avatar_id: object) -> bool:
        return isinstance(avatar_id, str) and _is_slug(avatar_id) and self.path(avatar_id).is_file()

    def ids(self) -> list[str]:
        """Ids of the bundles in the library, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}") if _is_slug(p.stem))

    def load(self, avatar_id: str) -> Bundle:
        """The validated bundle of `avatar_id`; AvatarNotFoundError if there is none."""
        path = self.path(avatar_id)
        if not path.is_file():
            raise AvatarNotFoundError(
                f"no avatar {avatar_id!r} in {self.root}; `facecast avatar list` shows the available ones"
            )
        return open_bundle(path)

    def entries(self) -> list[StoredAvatar]:
        """Every readable bundle in the library; damaged files are skipped (open_bundle says why)."""
        out = []
        for avatar_id in self.ids():
            path = self.path(avatar_id)
            try:
                bundle = open_bundle(path)
            except (BundleError, OSError):
                continue
            out.append(StoredAvatar(bundle.manifest, path, path.stat().st_size))
        return out

    def check_free(self, avatar_id: str, *, replace: bool = False) -> Path:
        """Where a new avatar `avatar_id` would be saved; AvatarExistsError if the id is a built-in's, or an
        existing avatar's unless `replace`. Checked before a slow build as well as when saving."""
        path = self.path(avatar_id)
        if is_builtin(avatar_id):
            raise AvatarExistsError(f"{avatar_id!r} is a built-in avatar; choose another name")
        if path.exists() and not replace:
            raise AvatarExistsError(
                f"an avatar named {avatar_id!r} exists already ({path}); delete it or choose another name"
            )
        return path

    def save(self, manifest: Manifest, files: dict[str, bytes], *, replace: bool = False) -> Path:
        """Write a bundle under its manifest name (see check_free for which names are refused)."""
        path = self.check_free(manifest.name, replace=replace)
        avatar_kind(manifest.kind)  # a kind this Facecast cannot draw never enters the library
        self.root.mkdir(parents=True, exist_ok=True)
        return write_bundle(path, manifest, files)

    def install(self, bundle_path: str | os.PathLike[str], *, replace: bool = False) -> Manifest:
        """Copy a bundle file into the library after validating it; its id is the manifest's name."""
        bundle = open_bundle(bundle_path)
        self.save(bundle.manifest, dict(bundle.files), replace=replace)
        return bundle.manifest

    def delete(self, avatar_id: str) -> bool:
        """Remove a bundle; False when there was none. Built-ins cannot be deleted."""
        if is_builtin(avatar_id):
            raise AvatarExistsError(f"{avatar_id!r} is a built-in avatar and cannot be deleted")
        path = self.path(avatar_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


def check_avatar_id(avatar_id: str) -> str:
    """`avatar_id` if it is a valid id (what a bundle's manifest name may be), else ValueError."""
    if not _is_slug(avatar_id):
        raise ValueError(
            f"avatar id {avatar_id!r} must be 1-64 of a-z 0-9 _ - starting with a letter or digit"
        )
    return avatar_id


def _is_slug(value: str) -> bool:
    return NAME_PATTERN.fullmatch(value) is not None
