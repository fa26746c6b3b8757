"""The `facecast` command line: render, demo, avatars, bench forwarding, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile as sf

from facecast.cli import main

RATE = 16000


@pytest.fixture()
def speech_wav(tmp_path: Path) -> Path:
    t = np.arange(RATE) / RATE
    tone = 0.4 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    pcm = np.concatenate([np.zeros(RATE // 4), tone, np.zeros(RATE // 4)])
    path = tmp_path / "speech.wav"
    sf.write(path, (pcm * 32767).astype(np.int16), RATE, subtype="PCM_16")
    return path


def assert_mp4(path: Path) -> None:
    with av.open(str(path)) as c:
        assert {s.type: s.codec_context.name for s in c.streams} == {"video": "h264", "audio": "aac"}


def test_render(speech_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, params = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    rc = main(
        [
            "render",
            str(speech_wav),
            "-o",
            str(out),
            "--params",
            str(params),
            "--tracker",
            "energy",
            "--fps",
            "25",
            "--lookahead-ms",
            "80",
            "--text",
            "hello there",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert_mp4(out)
    assert "frames" in captured.out and "realtime" in captured.out
    assert "100.0%" in captured.err  # the progress display ends complete
    rows = [json.loads(line) for line in params.read_text().splitlines()]
    assert len(rows) == 38  # 1.5 s at 25 fps
    assert rows[1]["t"] == pytest.approx(0.04)


def test_render_quiet_has_no_progress(
    speech_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q.mp4"
    assert main(["render", str(speech_wav), "-o", str(out), "--tracker", "energy", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_python_dash_m(speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "facecast", "render", str(speech_wav), "-o", str(out), "--tracker", "energy"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert_mp4(out)
    assert "realtime" in proc.stdout


def test_the_help_lists_every_command_without_importing_an_extra() -> None:
    """Every command group adds its parser at import; none may import what an extra installs (the bare
    wheel's `facecast --help` must run)."""
    from facecast.cli.common import EXTRA_MODULES

    extras = {m for modules in EXTRA_MODULES.values() for m in modules} | {"pipecat"}
    code = textwrap.dedent(
        """
        import contextlib, io, json, re, sys
        from facecast.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
            main(["--help"])
        commands = re.findall(r"^    (\\w+)", out.getvalue(), re.MULTILINE)
        print(json.dumps({"commands": commands, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    everything = {"render", "demo", "serve", "keys", "worker", "say", "avatar", "avatars", "bench", "config"}
    assert everything <= set(seen["commands"])
    assert "facecast" in seen["modules"] and extras.isdisjoint(seen["modules"])


def test_python_dash_m_bench_runs_the_bench_command_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "facecast.bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: facecast bench") and "lipsync" in proc.stdout


def test_python_dash_m_avatars_writes_a_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    argv = [sys.executable, "-m", "facecast.avatars", "sheet", str(out), "--tile", "40", "--avatar", "ava"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sheet = cv2.imread(str(out))
    assert sheet.shape == (40, 6 * 40, 3)  # one avatar, six mouth shapes
    assert sheet.std() > 10  # drawn, not blank


def test_render_text_with_say(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hello.mp4"
    assert main(["render", "--say", "Hello, nice to meet you.", "-o", str(out), "-q"]) == 0
    assert_mp4(out)
    assert str(out) in capsys.readouterr().out


def test_render_needs_exactly_one_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-o", str(tmp_path / "x.mp4")]) == 2
    assert main(["render", "a.wav", "--say", "hi", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "--say" in capsys.readouterr().err


def test_avatars_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["avatars"]) == 0
    listing = capsys.readouterr().out
    for name in ("ava", "noah", "mira", "leo"):
        assert name in listing


def test_bench_forwards_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    import facecast.cli.bench

    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setattr(facecast.cli.bench, "main", fake_main)
    assert main(["bench", "--quick", "lipsync"]) == 3
    assert seen == [["--quick", "lipsync"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "{tmp}/missing.wav", "-o", "{tmp}/o.mp4"], "not found"),
        (["render", "{tmp}/garbage.wav", "-o", "{tmp}/o.mp4"], "cannot decode"),
        (["render", "{wav}", "-o", "{tmp}/o.mp4", "--background", "transparent"], "green"),
        (["render", "{wav}", "-o", "{tmp}/nodir/o.mp4"], "does not exist"),
        (["render", "{wav}", "-o", "{tmp}/o.mp4", "--avatar", "nobody"], "nobody"),
        (["render", "{wav}", "-o", "{tmp}/o.mp4", "--lookahead-ms", "5000"], "lookahead"),
        (["render", "{wav}", "-o", "{tmp}/o.mp4", "--fps", "60"], "fps"),
        (["render", "{wav}"], "output"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_user_errors_exit_2(
    args: list[str], message: str, speech_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really a wave file" * 50)
    argv = [a.format(tmp=tmp_path, wav=speech_wav) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.mp4").exists()


def test_user_error_via_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "facecast", "render", str(tmp_path / "no.wav"), "-o", str(tmp_path / "o.mp4")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("facecast: error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["keys", "list"], "psycopg", "server"),
        (["serve", "--port", "0"], "uvicorn", "server"),
    ],
)
def test_a_command_without_its_extra_names_the_extra(
    argv: list[str],
    missing: str,
    extra: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As if the extra were not installed: the module cannot be imported, and nothing that imported it is
    # cached.
    for name in [n for n in sys.modules if n.startswith(("facecast.server", "facecast.bench"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.setenv("FACECAST_DATA_DIR", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"needs the {extra} extra ({missing} is not installed)" in err
    assert f"pip install 'facecast[{extra}]'" in err


def test_an_unrelated_missing_module_is_not_blamed_on_an_extra() -> None:
    from facecast.cli.common import needs_extra

    with pytest.raises(ModuleNotFoundError), needs_extra("server", "serve"):
        raise ModuleNotFoundError("No module named 'numpyy'", name="numpyy")
