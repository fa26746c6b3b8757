"""`facecast avatar setup-face-tools`: the face analysis virtualenv set up on request, from PyPI or only
from a local folder of wheels, and what it says to run when it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from facecast.avatars import faces
from facecast.cli import main


@pytest.fixture
def fresh_tools_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "tools"
    monkeypatch.setenv("FACECAST_FACE_TOOLS_DIR", str(target))
    monkeypatch.delenv(faces.WHEELS_ENV, raising=False)
    return target


def test_a_missing_wheel_folder_is_named_with_how_to_fill_it(
    fresh_tools_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-wheels"
    assert main(["avatar", "setup-face-tools", "--wheels", str(missing), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"wheel folder {missing} does not exist" in err
    assert f"-d {missing} --no-deps mediapipe=={faces.MEDIAPIPE_VERSION}" in err
    assert not fresh_tools_dir.exists()


def test_an_offline_install_from_an_empty_folder_fails_and_says_what_to_run(
    fresh_tools_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # The folder comes from the environment here; --no-index keeps pip away from any index.
    monkeypatch.setenv(faces.WHEELS_ENV, str(wheels))
    assert main(["avatar", "setup-face-tools", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"pip install mediapipe=={faces.MEDIAPIPE_VERSION} failed" in err
    assert f"from the wheels in {wheels} only (no package index)" in err
    assert "pip download --only-binary=:all:" in err and "'numpy<2'" in err
    assert f"facecast avatar setup-face-tools --wheels {wheels}" in err
    # Nothing half-installed is left to be mistaken for the tools.
    assert not fresh_tools_dir.exists()
    assert not list(fresh_tools_dir.parent.glob(f".{fresh_tools_dir.name}.tmp-*"))


def test_the_download_commands_name_every_requirement_for_the_python_given() -> None:
    commands = faces.download_commands("/w", python=(3, 12)).splitlines()
    assert len(commands) == 2
    assert all(c.startswith("pip download --only-binary=:all: --python-version 3.12 -d /w") for c in commands)
    assert commands[0].endswith(f"--no-deps mediapipe=={faces.MEDIAPIPE_VERSION}")
    for requirement in faces.TOOL_REQUIREMENTS:
        assert f"'{requirement}'" in commands[1]
