"""Face landmarks and a person mask for portrait photos, at avatar build time.

The only offline face models are the ones inside the mediapipe 0.10.21 wheel, and that release needs numpy<2
and protobuf<5, which the main environment cannot have (livekit needs protobuf>=5). So mediapipe lives in its
own virtualenv, installed on first use into a cache directory, and runs in a subprocess
(``_face_tool.py``); this module never imports it.

>>> analysis = analyze_faces(image_rgb, where="me.jpg")   # (h, w, 3) uint8 RGB
>>> analysis.largest.landmarks.shape                        # mediapipe's 478-point face mesh, in pixels
(478, 3)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facecast import settings

MEDIAPIPE_VERSION = "0.10.21"
TOOL_REQUIREMENTS: tuple[str, ...] = (
    "numpy<2",
    "opencv-python-headless<5",
    "protobuf>=4.25.3,<5",
    "absl-py",
    "attrs",
    "flatbuffers",
    "matplotlib",
)
N_LANDMARKS = 478

# mediapipe 0.10.21 has wheels for these, newest first
SUPPORTED_PYTHONS: tuple[tuple[int, int], ...] = ((3, 12), (3, 11), (3, 10), (3, 9))
TOOL_SCRIPT = Path(__file__).with_name("_face_tool.py")
TOOL_TIMEOUT_S = 120.0
VENV_TIMEOUT_S = 300.0
PIP_TIMEOUT_S = 1200.0

INSTALL_STAGE = f"installing face analysis tools (mediapipe {MEDIAPIPE_VERSION}, first use only)"
ANALYZE_STAGE = "finding the face"

# A folder of wheels to install the tools from, offline (no package index): see setup_commands().
WHEELS_ENV = settings.FACE_TOOLS_WHEELS.name
SETUP_COMMAND = "facecast avatar setup-face-tools"
_MARKER = ".ready"
_MARKER_TEXT = "\n".join((f"mediapipe=={MEDIAPIPE_VERSION}", *TOOL_REQUIREMENTS)) + "\n"
_TOOL_ERROR_PREFIX = "face tool: "
# what mediapipe, TFLite, absl and libpng print on every run whatever the log level: left out of error tails
_NOISE = re.compile(
    r"^(?:[IW]\d{4} |INFO: |WARNING: All log messages before absl::InitializeLog|libpng warning:)"
)

ProgressFn = Callable[[str, float], None]


class FaceAnalysisError(RuntimeError):
    """The face analysis tools could not be installed or run; the message says what to do."""


class NoFaceError(ValueError):
    """No face was found in a photo."""


def _no_face_message(where: str) -> str:
    return (
        f"no face found in {where}: use a photo where one face is clearly visible, facing the camera, "
        "well lit and not too small in the frame"
    )


@dataclass(frozen=True, eq=False)
class Face:
    """One face: mediapipe's 478 face-mesh landmarks (468 mesh points, then 5 per iris), in pixels.

    Columns are x, y (pixels of the photo) and z (depth, scaled like x; smaller is nearer the camera).
    """

    landmarks: np.ndarray

    def __post_init__(self) -> None:
        pts = np.array(self.landmarks, dtype=np.float32)
        if pts.shape != (N_LANDMARKS, 3):
            raise ValueError(f"a face has {N_LANDMARKS}x3 landmarks, got shape {pts.shape}")
        pts.setflags(write=False)
        object.__setattr__(self, "landmarks", pts)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1: the bounding box of the landmarks in the photo."""
        xy = self.landmarks[:, :2]
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


@dataclass(frozen=True, eq=False)
class FaceAnalysis:
    """The faces found in a photo, largest first, and how much each pixel looks like part of a person."""

    faces: tuple[Face, ...]
    person_mask: np.ndarray  # (h, w) uint8, 0 background .. 255 person

    @property
    def largest(self) -> Face:
        if not self.faces:
            raise NoFaceError(_no_face_message("the image"))
        return self.faces[0]


def _report(progress: ProgressFn | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)


# ---------------------------------------------------------------------------------------------------------
# the tools' virtualenv


@functools.cache
def _base_python() -> tuple[str, tuple[int, int]] | None:
    """An interpreter mediapipe 0.10.21 supports, and its version: this one if it fits, else one on PATH."""
    if sys.version_info[:2] in SUPPORTED_PYTHONS and sys.executable:
        return sys.executable, (sys.version_info[0], sys.version_info[1])
    for version in SUPPORTED_PYTHONS:
        found = shutil.which(f"python{version[0]}.{version[1]}")
        if found is None:
            continue
        try:  # a name on PATH can be a shim (pyenv) that fails or runs another version
            proc = subprocess.run(
                [found, "-I", "-c", "import sys; print(*sys.version_info[:2]); print(sys.executable)"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        lines = proc.stdout.splitlines()
        if proc.returncode != 0 or len(lines) < 2 or lines[0].split() != [str(v) for v in version]:
            continue
        return (lines[1].strip() or found), version
    return None


def tools_dir() -> Path:
    """Where the face-tools virtualenv lives (or will be installed).

    ``$FACECAST_FACE_TOOLS_DIR`` if set, else
    ``$XDG_CACHE_HOME/facecast/face-tools/mediapipe-0.10.21-py3.X`` (``~/.cache`` by default), 3.X being the
    Python version the virtualenv is (or would be) made with.
    """
    override = settings.FACE_TOOLS_DIR.get()
    if override is not None:
        return override.absolute()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    base = _base_python()
    major, minor = base[1] if base is not None else sys.version_info[:2]
    return (cache / "facecast" / "face-tools" / f"mediapipe-{MEDIAPIPE_VERSION}-py{major}.{minor}").absolute()


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _is_ready(venv: Path) -> bool:
    try:
        marker = (venv / _MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return marker == _MARKER_TEXT and _venv_python(venv).exists()


def _subprocess_env() -> dict[str, str]:
    """The environment for the tools' pip and python: quiet, and nothing that points them elsewhere."""
    env = dict(os.environ)
    for name in (
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "VIRTUAL_ENV",
        "PIP_USER",
        "PIP_TARGET",
        "PIP_PREFIX",
    ):
        env.pop(name, None)
    env.update(
        GLOG_minloglevel="2",
        GLOG_logtostderr="0",
        TF_CPP_MIN_LOG_LEVEL="3",
        GRPC_VERBOSITY="ERROR",
        OPENCV_LOG_LEVEL="ERROR",
        MPLBACKEND="Agg",
        PYTHONNOUSERSITE="1",
    )
    return env


def _tail(text: str, lines: int = 12) -> str:
    kept = [line.rstrip() for line in text.splitlines() if line.strip() and not _NOISE.match(line)]
    return "\n".join(kept[-lines:])


def _run_install_step(cmd: Sequence[str | Path], what: str, timeout: float, hint: str = "") -> str:
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            env=_subprocess_env(),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise FaceAnalysisError(
            f"installing the face analysis tools: {what} took more than {timeout:.0f} s{hint}"
        ) from exc
    except OSError as exc:
        raise FaceAnalysisError(f"installing the face analysis tools: {what} could not start: {exc}") from exc
    if proc.returncode != 0:
        output = _tail(proc.stdout + "\n" + proc.stderr) or "(no output)"
        raise FaceAnalysisError(
            f"installing the face analysis tools: {what} failed (exit status {proc.returncode}){hint}\n"
            f"{output}"
        )
    return proc.stdout


@contextlib.contextmanager
def _install_lock(path: Path, progress: ProgressFn | None) -> Iterator[None]:
    """An exclusive lock between installers, in this process and others (flock on ``path``)."""
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _report(progress, INSTALL_STAGE + ": waiting for another install to finish", 0.0)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _sweep_leftovers(target: Path) -> None:
    """Remove what interrupted installs left beside ``target``; only call it holding the install lock."""
    parent = target.parent
    for stale in [*parent.glob(f".{target.name}.tmp-*"), *parent.glob(f".{target.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def download_commands(folder: str | Path, python: tuple[int, int] | None = None) -> str:
    """The commands that fill `folder` with the tools' wheels on a machine with access to PyPI, for the
    Python version the tools would run on here (`python`, default: the one found on this machine)."""
    if python is None:
        base = _base_python()
        python = base[1] if base is not None else SUPPORTED_PYTHONS[0]
    common = f"pip download --only-binary=:all: --python-version {python[0]}.{python[1]} -d {folder}"
    requirements = " ".join(f"'{r}'" for r in TOOL_REQUIREMENTS)
    return f"{common} --no-deps mediapipe=={MEDIAPIPE_VERSION}\n{common} {requirements}"


def _wheels_hint(target: Path, wheels: Path | None) -> str:
    if wheels is not None:
        return (
            f"; from the wheels in {wheels} only (no package index). Fill that folder on a machine with "
            f"access to PyPI (same OS and CPU) with:\n{download_commands(wheels)}\nthen run "
            f"`{SETUP_COMMAND} --wheels {wheels}` again"
        )
    return (
        "; installing them needs access to PyPI (or the package index configured for pip) once, after "
        f"which they are kept in {target}. Offline, fill a folder with the wheels on a machine that has "
        f"access (same OS and CPU):\n{download_commands('WHEELS')}\nand run "
        f"`{SETUP_COMMAND} --wheels WHEELS` (or set {WHEELS_ENV}=WHEELS)"
    )


def _install(target: Path, progress: ProgressFn | None, wheels: Path | None) -> None:
    """Build the virtualenv in a temporary sibling and rename it into place when it works."""
    base = _base_python()
    if base is None:
        names = ", ".join(f"python{a}.{b}" for a, b in SUPPORTED_PYTHONS)
        versions = ", ".join(f"{a}.{b}" for a, b in reversed(SUPPORTED_PYTHONS))
        raise FaceAnalysisError(
            f"face analysis needs mediapipe {MEDIAPIPE_VERSION}, which runs on Python {versions} only; "
            f"this is Python {sys.version_info[0]}.{sys.version_info[1]} and none of {names} is on PATH. "
            "Install one of them (e.g. with your package manager, pyenv or `uv python install 3.12`) "
            "and try again."
        )
    base_python, _ = base
    parent = target.parent
    _sweep_leftovers(target)

    pip_hint = _wheels_hint(target, wheels)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        _report(progress, INSTALL_STAGE, 0.0)
        _run_install_step(
            [base_python, "-m", "venv", build],
            f"creating a virtualenv with {base_python}",
            VENV_TIMEOUT_S,
            " (on Debian/Ubuntu the python3-venv package provides the venv module)",
        )
        python = _venv_python(build)
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"]
        if wheels is not None:
            pip += ["--no-index", "--find-links", wheels]
        _report(progress, INSTALL_STAGE, 0.1)
        _run_install_step(
            [*pip, "--no-deps", f"mediapipe=={MEDIAPIPE_VERSION}"],
            f"pip install mediapipe=={MEDIAPIPE_VERSION}",
            PIP_TIMEOUT_S,
            pip_hint,
        )
        _report(progress, INSTALL_STAGE, 0.25)
        _run_install_step(
            [*pip, *TOOL_REQUIREMENTS], "pip install of mediapipe's requirements", PIP_TIMEOUT_S, pip_hint
        )
        _report(progress, INSTALL_STAGE, 0.9)
        check = "import cv2, numpy, mediapipe; print(mediapipe.__version__)"
        version = _run_install_step([python, "-I", "-c", check], "importing mediapipe", VENV_TIMEOUT_S)
        if version.strip() != MEDIAPIPE_VERSION:
            raise FaceAnalysisError(
                f"installing the face analysis tools: got mediapipe {version.strip()!r}, "
                f"expected {MEDIAPIPE_VERSION}"
            )
        (build / _MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        os.chmod(build, 0o755)  # mkdtemp made it private; others may share a FACECAST_FACE_TOOLS_DIR
        if target.exists() or target.is_symlink():  # an old or broken install: move it aside first
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(build, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(build, target)
        _sweep_leftovers(target)  # again: a killed installer's pip may have kept writing during the first
        _report(progress, INSTALL_STAGE, 1.0)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)


def ensure_face_tools(progress: ProgressFn | None = None, wheels: str | Path | None = None) -> Path:
    """The face-tools virtualenv's python, installing the virtualenv first if it is not there yet.

    The first call on a machine (or `facecast avatar setup-face-tools`) creates a virtualenv in
    :func:`tools_dir` and pip-installs mediapipe (about 30 s), from PyPI or the configured index, or only
    from the wheels in the folder `wheels` (default ``$FACECAST_FACE_TOOLS_WHEELS``); later calls only
    check a marker file. Concurrent callers, in this process or others, wait for one install.
    """
    if wheels is None:
        wheels = settings.FACE_TOOLS_WHEELS.get()
    wheels_dir = Path(wheels).expanduser().absolute() if wheels is not None else None
    if wheels_dir is not None and not wheels_dir.is_dir():
        raise FaceAnalysisError(
            f"the face analysis tools' wheel folder {wheels_dir} does not exist; fill it with:\n"
            f"{download_commands(wheels_dir)}"
        )
    target = tools_dir()
    python = _venv_python(target)
    if _is_ready(target):
        return python
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FaceAnalysisError(
            f"cannot create {target.parent} for the face analysis tools ({exc}); "
            "set FACECAST_FACE_TOOLS_DIR to a writable directory"
        ) from exc
    with _install_lock(target.with_name(target.name + ".lock"), progress):
        if not _is_ready(target):  # another installer may have finished while we waited
            _install(target, progress, wheels_dir)
    return python


# ---------------------------------------------------------------------------------------------------------
# analysis


def _tool_failure(proc: subprocess.CompletedProcess[str]) -> FaceAnalysisError:
    if proc.returncode < 0:
        try:
            status = f"crashed ({signal.Signals(-proc.returncode).name})"
        except ValueError:
            status = f"crashed (signal {-proc.returncode})"
    else:
        status = f"failed (exit status {proc.returncode})"
    own = [line for line in proc.stderr.splitlines() if line.startswith(_TOOL_ERROR_PREFIX)]
    detail = own[-1][len(_TOOL_ERROR_PREFIX) :] if own else _tail(proc.stderr) or "(no output)"
    return FaceAnalysisError(
        f"face analysis {status}: {detail}\n"
        f"If this keeps happening, delete {tools_dir()} to reinstall the face analysis tools."
    )


def analyze_faces(
    image_rgb: np.ndarray,
    *,
    where: str = "the image",
    max_faces: int = 5,
    progress: ProgressFn | None = None,
) -> FaceAnalysis:
    """The faces (largest first) and the person mask of an (h, w, 3) uint8 RGB photo.

    Raises NoFaceError (naming ``where``) when there is no face, ValueError for an image that is not
    (h, w, 3) uint8, and FaceAnalysisError when the tools cannot be installed or run.
    """
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"analyze_faces needs an (h, w, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    if max_faces < 1:
        raise ValueError(f"max_faces must be at least 1, got {max_faces}")
    h, w = image.shape[:2]
    python = ensure_face_tools(progress)
    _report(progress, ANALYZE_STAGE, 0.0)
    with tempfile.TemporaryDirectory(prefix="facecast-faces-") as tmp:
        png = Path(tmp) / "image.png"
        out = Path(tmp) / "faces.npz"
        if not cv2.imwrite(str(png), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise FaceAnalysisError(f"face analysis: could not write a temporary image to {png}")
        env = _subprocess_env()
        env["MPLCONFIGDIR"] = tmp  # matplotlib (imported by mediapipe) must not need a writable home
        cmd = [str(python), "-I", str(TOOL_SCRIPT), "--image", str(png), "--out", str(out)]
        cmd += ["--max-faces", str(max_faces)]
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=TOOL_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise FaceAnalysisError(
                f"face analysis of {where} took more than {TOOL_TIMEOUT_S:.0f} s and was stopped"
            ) from exc
        except OSError as exc:
            raise FaceAnalysisError(
                f"face analysis could not start {python} ({exc}); delete {tools_dir()} to reinstall "
                "the face analysis tools"
            ) from exc
        if proc.returncode != 0:
            raise _tool_failure(proc)
        try:
            with np.load(out, allow_pickle=False) as data:
                landmarks = np.array(data["landmarks"])
                mask = np.array(data["person_mask"])
        except (OSError, KeyError, ValueError) as exc:
            raise FaceAnalysisError(f"face analysis wrote no readable result ({exc})") from exc

    if landmarks.ndim != 3 or landmarks.shape[1:] != (N_LANDMARKS, 3) or not np.isfinite(landmarks).all():
        raise FaceAnalysisError(f"face analysis returned landmarks of shape {landmarks.shape}")
    if mask.shape != (h, w) or mask.dtype != np.uint8:
        raise FaceAnalysisError(f"face analysis returned a {mask.dtype} person mask of shape {mask.shape}")
    _report(progress, ANALYZE_STAGE, 1.0)
    if landmarks.shape[0] == 0:
        raise NoFaceError(_no_face_message(where))
    faces = sorted((Face(pts) for pts in landmarks), key=lambda f: f.area, reverse=True)
    mask.setflags(write=False)
    return FaceAnalysis(faces=tuple(faces), person_mask=mask)
