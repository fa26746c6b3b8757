"""`facecast avatar create|list|info|preview|delete` (and `facecast avatars`), run in-process through
`facecast.cli.main` against a temporary library, with real bundles: procedural ones packed from the
built-in styles, and a portrait built from a real photo."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from photos import skimage_data_dir

from facecast.avatars import AvatarLibrary
from facecast.avatars.bundle import read_bundle, write_bundle
from facecast.avatars.procedural import bundle_from_style
from facecast.cli import main
from facecast.cli.avatar import BuildProgress

ASTRONAUT = skimage_data_dir() / "astronaut.png"
COFFEE = skimage_data_dir() / "coffee.png"


def make_bundle(folder: Path, name: str = "bob", style: str = "noah", display_name: str = "Bob") -> Path:
    """A procedural bundle file named `name`, drawn with a built-in style."""
    manifest, files = bundle_from_style(style)
    manifest = dataclasses.replace(manifest, name=name, display_name=display_name)
    return write_bundle(folder / f"{name}.facecast", manifest, files)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("facecast: error: ") or err.startswith("facecast avatar"), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    return tmp_path / "lib"


def test_create_from_bundle_list_info_delete(
    lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_bundle(tmp_path)
    status, out, _ = run(capsys, "avatar", "create", "--from-bundle", str(source), "--dir", str(lib))
    assert status == 0
    assert out.strip() == f"created bob (procedural, 'Bob'): {lib / 'bob.facecast'}"
    assert AvatarLibrary(lib).ids() == ["bob"]

    # The same id again is refused unless --replace; --name installs a copy under another id.
    status, _, err = run(capsys, "avatar", "create", "--from-bundle", str(source), "--dir", str(lib))
    assert status == 1
    assert_one_line_error(err, "exists already")
    assert (
        run(capsys, "avatar", "create", "--from-bundle", str(source), "--replace", "--dir", str(lib))[0] == 0
    )
    status, out, _ = run(
        capsys, "avatar", "create", "--from-bundle", str(source), "--name", "bob-2",
        "--display-name", "Bob Two", "--dir", str(lib),
    )  # fmt: skip
    assert status == 0 and "bob-2" in out
    copy = AvatarLibrary(lib).load("bob-2").manifest
    assert (copy.name, copy.display_name, copy.kind) == ("bob-2", "Bob Two", "procedural")

    status, out, err = run(capsys, "avatar", "list", "--dir", str(lib))
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "KIND", "DISPLAY", "NAME"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip() and not line.startswith("library:")}
    assert list(rows) == ["ava", "leo", "mira", "noah", "bob", "bob-2"]  # built-ins first, the default first
    assert "built-in (default)" in rows["ava"] and "built-in" in rows["noah"]
    assert "built-in" not in rows["bob"] and "kB" in rows["bob"] and "Bob Two" in rows["bob-2"]
    assert lines[-1] == f"library: {lib} (2 avatars)"
    # `facecast avatars` is the same listing.
    assert run(capsys, "avatars", "--dir", str(lib))[1] == out

    status, out, _ = run(capsys, "avatar", "info", "bob", "--dir", str(lib))
    assert status == 0
    fields = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    assert fields["id"].strip() == "bob" and fields["kind"].strip() == "procedural"
    assert fields["display name"].strip() == "Bob" and fields["frame"].strip() == "512x512"
    assert str(lib / "bob.facecast") in fields["bundle"]
    assert "style.toml" in out and "application/toml" in out

    status, out, _ = run(capsys, "avatar", "info", "bob", "--json", "--dir", str(lib))
    assert status == 0
    assert json.loads(out) == json.loads(read_bundle(lib / "bob.facecast").manifest.to_json())

    status, out, _ = run(capsys, "avatar", "delete", "bob-2", "--yes", "--dir", str(lib))
    assert status == 0 and out.startswith("deleted bob-2")
    assert AvatarLibrary(lib).ids() == ["bob"]


def test_info_of_a_builtin_and_of_a_bundle_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "avatar", "info", "mira", "--dir", str(tmp_path / "empty"))
    assert status == 0 and "built-in" in out and "Mira" in out
    path = make_bundle(tmp_path, "carol", "leo", "Carol")
    status, out, _ = run(capsys, "avatar", "info", str(path), "--dir", str(tmp_path / "empty"))
    assert status == 0 and "carol" in out and str(path) in out


def test_preview_writes_the_four_poses(lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    AvatarLibrary(lib).install(make_bundle(tmp_path))
    out_png = tmp_path / "bob.png"
    status, out, _ = run(
        capsys, "avatar", "preview", "bob", "-o", str(out_png), "--quality", "low", "--dir", str(lib)
    )
    assert status == 0 and str(out_png) in out
    sheet = cv2.imread(str(out_png), cv2.IMREAD_UNCHANGED)
    assert sheet is not None and sheet.ndim == 3 and sheet.shape[2] == 3
    # Four 256x256 frames side by side under a label band.
    assert sheet.shape[1] == 4 * 256 and 256 < sheet.shape[0] < 256 + 40
    tiles = [sheet[-256:, i * 256 : (i + 1) * 256].astype(np.int16) for i in range(4)]
    rest = tiles[0]
    for other in tiles[1:]:
        assert np.abs(other - rest).max() > 40  # the open mouth, the smile and the blink differ from rest

    # Transparent background: an RGBA PNG; the default name is REF-preview.png in the current folder.
    path = make_bundle(tmp_path, "dana", "mira", "Dana")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "facecast", "avatar", "preview", str(path), "--background", "transparent",
         "--quality", "low", "--aspect", "4:3"],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rgba = cv2.imread(str(cwd / "dana-preview.png"), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (rgba.shape[0], 4 * 320, 4) and 240 < rgba.shape[0] < 240 + 40
    alpha = rgba[-240:, :, 3]
    assert alpha.min() == 0 and alpha.max() == 255


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["avatar", "info", "nobody"], ["unknown avatar 'nobody'", "ava"]),
        (["avatar", "preview", "nobody"], ["unknown avatar 'nobody'"]),
        (["avatar", "info", "{tmp}/missing.facecast"], ["no avatar bundle at"]),
        (["avatar", "delete", "ava", "--yes"], ["built-in", "cannot be deleted"]),
        (["avatar", "delete", "nobody", "--yes"], ["no avatar 'nobody'"]),
        (["avatar", "delete", "Not An Id", "--yes"], ["must be 1-64"]),
        (["avatar", "info", "broken"], ["broken.facecast", "not a valid zip file"]),
        (["avatar", "info", "{tmp}/damaged.facecast"], ["does not match its size/sha256"]),
        (["avatar", "preview", "ava", "-o", "{tmp}/nodir/x.png"], ["does not exist"]),
        (["avatar", "create", "--from-bundle", "{tmp}/missing.facecast"], ["no bundle file"]),
        (
            ["avatar", "create", "--from-bundle", "{tmp}/lib/broken.facecast", "--name", "x"],
            ["not a valid zip"],
        ),
        (["avatar", "create", "--image", "{tmp}/missing.png", "--name", "pic", "-q"], ["no such file"]),
    ],
)
def test_errors_exit_1_with_one_line(
    argv: list[str], fragments: list[str], lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib.mkdir()
    good = make_bundle(tmp_path, "bob")
    (lib / "broken.facecast").write_bytes(good.read_bytes()[:300])  # truncated: not a zip any more
    # A bundle whose asset was swapped after writing: the manifest's sha256 no longer matches.
    import zipfile

    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "damaged.facecast", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data if info.filename == "manifest.json" else data.replace(b"#", b"%", 1))
    args = [a.format(tmp=tmp_path) for a in argv] + ["--dir", str(lib)]
    status, out, err = run(capsys, *args)
    assert status == 1, (out, err)
    assert_one_line_error(err, *fragments)


def test_usage_errors_exit_2(lib: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["avatar"],
        ["avatar", "create", "--name", "x"],  # no source
        ["avatar", "create", "--image", "a.png"],  # no --name
        ["avatar", "create", "--image", "a.png", "--from-bundle", "b.facecast", "--name", "x"],
        ["avatar", "create", "--from-bundle", "b.facecast", "--consent", "yes"],
        ["avatar", "preview", "ava", "--quality", "8k"],
    ):
        status, _, err = run(capsys, *argv, "--dir", str(lib))
        assert status == 2, argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_delete_asks_unless_yes(
    lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    AvatarLibrary(lib).install(make_bundle(tmp_path))
    # Not a terminal and no --yes: refuses rather than deleting unasked.
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    status, _, err = run(capsys, "avatar", "delete", "bob", "--dir", str(lib))
    assert status == 2 and "--yes" in err
    assert AvatarLibrary(lib).ids() == ["bob"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert run(capsys, "avatar", "delete", "bob", "--dir", str(lib))[0] == 1
    assert AvatarLibrary(lib).ids() == ["bob"]
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert run(capsys, "avatar", "delete", "bob", "--dir", str(lib))[0] == 0
    assert AvatarLibrary(lib).ids() == []


def test_list_warns_about_damaged_bundles(lib: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lib.mkdir()
    (lib / "junk.facecast").write_bytes(b"not a zip")
    status, out, err = run(capsys, "avatar", "list", "--dir", str(lib))
    assert status == 0 and "junk" not in out and out.splitlines()[-1] == f"library: {lib} (0 avatars)"
    assert "junk.facecast is damaged" in err and "facecast avatar info junk" in err


def test_default_library_comes_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACECAST_AVATARS_DIR", str(tmp_path / "env-lib"))
    assert run(capsys, "avatar", "create", "--from-bundle", str(make_bundle(tmp_path)))[0] == 0
    assert (tmp_path / "env-lib" / "bob.facecast").is_file()
    assert "bob" in run(capsys, "avatar", "list")[1]


def test_render_accepts_library_ids_and_bundle_paths(
    speech_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACECAST_AVATARS_DIR", str(tmp_path / "lib"))
    bundle = make_bundle(tmp_path)
    AvatarLibrary(tmp_path / "lib").install(bundle)
    for avatar in ("bob", str(bundle)):
        out = tmp_path / "out.mp4"
        argv = ["render", str(speech_wav), "-o", str(out), "--avatar", avatar, "--quality", "low", "-q"]
        assert main(argv) == 0, capsys.readouterr().err
        assert out.stat().st_size > 1000
        out.unlink()


@pytest.fixture
def speech_wav(speech: tuple[np.ndarray, int, str], tmp_path: Path) -> Path:
    import soundfile as sf

    pcm, rate, _ = speech
    path = tmp_path / "speech.wav"
    sf.write(path, pcm[: rate * 1], rate)
    return path


# -- progress display ---------------------------------------------------------------------------------------


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_plain_lines_when_not_a_terminal() -> None:
    stream = _Stream(tty=False)
    bar = BuildProgress(stream)
    for stage, fraction in [
        ("reading", 0.0),
        ("reading", 0.04),
        ("analysing", 0.3),
        ("analysing", 0.5),
        ("done", 1.0),
    ]:
        bar(stage, fraction)
    bar.close()
    assert stream.getvalue().splitlines() == ["  0% reading", " 30% analysing", "100% done"]


def test_progress_redraws_one_line_on_a_terminal() -> None:
    stream = _Stream(tty=True)
    bar = BuildProgress(stream)
    bar("finding the face", 0.05)
    bar("done", 1.0)
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 2
    assert "100% [########################] done" in text
    quiet = _Stream(tty=True)
    BuildProgress(quiet, enabled=False)("x", 0.5)
    assert quiet.getvalue() == ""


# -- portraits from a photo ---------------------------------------------------------------------------------


def test_create_a_portrait_from_a_photo_then_info_and_preview(
    lib: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys, "avatar", "create", "--image", str(ASTRONAUT), "--name", "astro",
        "--display-name", "Astronaut", "--consent", "NASA photo, public domain", "--license", "public domain",
        "--dir", str(lib),
    )  # fmt: skip
    assert status == 0, err
    assert out.strip() == f"created astro (portrait, 'Astronaut'): {lib / 'astro.facecast'}"
    progress = [line for line in err.splitlines() if not line.startswith("note: ")]
    # not a terminal: one plain line per stage, ending at 100%; then the build's warnings
    assert progress[0].strip().startswith("0%") and progress[-1] == "100% done" and len(progress) >= 4
    assert err.splitlines()[-1].startswith("note: low resolution: the face is 106 px tall")

    status, out, _ = run(capsys, "avatar", "info", "astro", "--dir", str(lib))
    assert status == 0
    assert "portrait" in out and "NASA photo, public domain" in out and "photo.png" in out

    status, out, err = run(
        capsys, "avatar", "preview", "astro", "-o", str(tmp_path / "astro.png"), "--quality", "low",
        "--dir", str(lib),
    )  # fmt: skip
    assert status == 0, err
    sheet = cv2.imread(str(tmp_path / "astro.png"))
    tiles = [sheet[-256:, i * 256 : (i + 1) * 256].astype(np.int16) for i in range(4)]
    for other in tiles[1:]:
        assert np.abs(other - tiles[0]).max() > 40

    # A photo without a face is a user error: one line, exit 1, nothing saved.
    status, _, err = run(
        capsys, "avatar", "create", "--image", str(COFFEE), "--name", "cup", "-q", "--dir", str(lib)
    )
    assert status == 1
    assert_one_line_error(err, "face")
    assert AvatarLibrary(lib).ids() == ["astro"]
