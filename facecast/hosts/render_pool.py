"""Offline rendering on every core: the engine's FaceStates and audio in, an MP4 out.

The engine stays in the caller's process: it is sequential by nature (each frame's mouth depends on
the recogniser's state after all the audio before it) and PocketSphinx holds the GIL while it
decodes. Threads cannot overlap with it: even x264, which releases the GIL, runs several times
slower next to a busy Python thread, because each return into Python waits for the GIL. So the
drawing and the encoding run in forked processes:

    caller (engine) --state--> render worker n % W --slot--> encoder --> MP4
           `--------------------------audio-------------------^

Each render worker inherits the caller's renderer (renderers are deterministic given the FaceState,
so which process draws a frame does not change its pixels) and writes its frames, already in the
encoder's pixel format, into a ring of slots in memory shared by all: a 512² frame crosses processes
as a slot number, not as 400 KB of pickle. The encoder takes the frames in order and muxes exactly
what the in-process Mp4Writer would, so the file is byte-identical to a one-process render.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import signal
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facecast.engine.types import FaceState, Renderer
from facecast.hosts.file import Mp4Encoder, rgb_to_i420

_START_METHOD = "fork"  # the children inherit the renderer and the shared ring without pickling
_POLL_S = 0.5  # how often a blocked caller checks that its helpers are still alive
_READY = "ready"


def fork_available() -> bool:
    return _START_METHOD in multiprocessing.get_all_start_methods()


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def render_workers(jobs: int) -> int:
    """Render processes for `jobs` cores: the engine and the encoder each keep one process busy."""
    return max(1, jobs - 2)


class RenderPipelineError(RuntimeError):
    """A render or encoder process failed or died; the message says which and how."""


class RenderPipeline:
    """Draws and encodes an MP4 in helper processes, fed one (FaceState, audio) per frame.

    Must be created before the caller starts threads or loads models it does not want forked:
    the helpers are forks of the caller."""

    def __init__(
        self,
        renderer: Renderer,
        path: str | Path,
        *,
        fps: int,
        sample_rate: int,
        workers: int,
        slots: int | None = None,
    ) -> None:
        if not fork_available():
            raise RuntimeError("parallel rendering needs the 'fork' start method (Linux, macOS)")
        if workers < 1:
            raise ValueError(f"need at least one render worker, got {workers}")
        self.width = renderer.width + renderer.width % 2
        self.height = renderer.height + renderer.height % 2
        self.slots = slots if slots is not None else 4 * workers + 4
        if self.slots < workers:
            raise ValueError(f"need at least one slot per worker, got {self.slots} for {workers}")
        self.frames = 0
        shape = (self.height * 3 // 2, self.width)
        ctx = multiprocessing.get_context(_START_METHOD)
        # Anonymous MAP_SHARED memory: every fork reads and writes the same pages.
        self._ring = mmap.mmap(-1, shape[0] * shape[1] * self.slots)
        self._free = ctx.Semaphore(self.slots)
        self._encoded = ctx.RawValue("q", 0)
        # Every pipe exists before the first fork, and each child closes the ends it does not use:
        # a dead reader then shows as a broken pipe, a dead writer as end of file.
        tasks = [ctx.Pipe(duplex=False) for _ in range(workers)]
        results = [ctx.Pipe(duplex=False) for _ in range(workers)]
        audio_r, audio_w = ctx.Pipe(duplex=False)
        status_r, status_w = ctx.Pipe(duplex=False)
        everything = [
            c for pair in (*tasks, *results, (audio_r, audio_w), (status_r, status_w)) for c in pair
        ]
        self._procs: list[Any] = []
        self._tasks = [w for _, w in tasks]
        self._audio = audio_w
        self._status = status_r
        # A fork copies OpenCV's thread pool without its threads: the first parallel call (or any pool
        # reconfiguration) in a child would wait for them forever. Forked single-threaded, the children
        # never touch the pool; and the processes are the parallelism anyway.
        opencv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for k in range(workers):
                keep = (tasks[k][0], results[k][1])
                self._start(
                    ctx,
                    f"facecast-render-{k}",
                    _render_worker,
                    (renderer, self._ring, shape, self.width, self.height, *keep),
                    [c for c in everything if c not in keep],
                )
            keep = (audio_r, status_w, *(r for r, _ in results))
            self._start(
                ctx,
                "facecast-encoder",
                _encoder,
                (
                    str(path),
                    (renderer.width, renderer.height, fps, sample_rate),
                    self._ring,
                    shape,
                    self._free,
                    self._encoded,
                    audio_r,
                    status_w,
                    [r for r, _ in results],
                ),
                [c for c in everything if c not in keep],
            )
        finally:
            cv2.setNumThreads(opencv_threads)
            for c in everything:
                if c not in (*self._tasks, audio_w, status_r):
                    c.close()
        try:
            self._wait_status(_READY)  # the output file opened (or the reason it did not)
        except BaseException:
            self.abort()
            raise

    def _start(
        self, ctx: Any, name: str, target: Any, args: tuple[Any, ...], unused: list[Connection]
    ) -> None:
        proc = ctx.Process(target=_child, args=(target, args, unused), name=name, daemon=True)
        proc.start()
        self._procs.append(proc)

    @property
    def workers(self) -> int:
        return len(self._tasks)

    @property
    def helper_pids(self) -> dict[str, int]:
        """The helper processes by name (facecast-render-K, facecast-encoder)."""
        return {p.name: p.pid for p in self._procs}

    @property
    def encoded(self) -> int:
        """Frames encoded so far."""
        return int(self._encoded.value)

    def write(self, state: FaceState, audio: np.ndarray) -> None:
        """Append one frame: its FaceState (drawn by a worker) and the int16 audio that plays during it."""
        while not self._free.acquire(timeout=_POLL_S):
            self._check()
        n = self.frames
        try:
            self._tasks[n % self.workers].send((n % self.slots, state))
            self._audio.send(audio)
        except OSError:  # a broken pipe: the reader died
            self._check()
            raise
        self.frames += 1

    def close(self) -> None:
        """Finish the file once every frame is encoded; raises what went wrong in a helper."""
        try:
            for conn in (*self._tasks, self._audio):
                conn.send(None)
            self._wait_status("done")
        except BaseException:
            self.abort()
            raise
        self._join()

    def abort(self) -> None:
        """Stop the helpers now; the caller deletes the partial file."""
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        self._join()

    def _join(self) -> None:
        for proc in self._procs:
            proc.join()
        for conn in (*self._tasks, self._audio, self._status):
            conn.close()
        self._procs, self._tasks = [], []
        with contextlib.suppress(BufferError):  # a view still alive keeps the mapping until collected
            self._ring.close()

    def _wait_status(self, expected: str) -> None:
        while not self._status.poll(_POLL_S):
            self._check(finishing=expected == "done")
        try:
            message = self._status.recv()
        except EOFError:
            raise RenderPipelineError("the encoder process exited without finishing the file") from None
        if message != expected:
            raise _as_error(message)

    def _check(self, *, finishing: bool = False) -> None:
        """Raise if a helper died: with the reason it sent, or with its exit code."""
        # Finishing, the render workers exit as soon as their last frame is drawn.
        dead = [p for p in self._procs if not p.is_alive() and not (finishing and p.exitcode == 0)]
        if not dead:
            return
        # A killed or crashed helper could not say why; one that failed did before it exited (the
        # encoder relays the render workers' errors).
        crashed = [p for p in dead if p.exitcode != 0]
        if not crashed and self._status.poll(1.0):
            raise _as_error(self._status.recv())
        proc = (crashed or dead)[0]
        raise RenderPipelineError(
            f"{proc.name} (pid {proc.pid}) exited with code {proc.exitcode}; "
            "if it was killed for lack of memory, render with fewer --jobs"
        )


def _as_error(message: Any) -> BaseException:
    if isinstance(message, BaseException):
        return message
    return RenderPipelineError(f"rendering failed in a helper process:\n{message}")


def _slot_view(ring: mmap.mmap, slot: int, shape: tuple[int, int]) -> np.ndarray:
    size = shape[0] * shape[1]
    return np.frombuffer(ring, np.uint8, count=size, offset=slot * size).reshape(shape)


def _child(target: Any, args: tuple[Any, ...], unused: list[Connection]) -> None:
    # Ctrl-C reaches the whole process group: the caller cleans up, the helpers just stop with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for conn in unused:
        conn.close()
    target(*args)


def _render_worker(
    renderer: Renderer,
    ring: mmap.mmap,
    shape: tuple[int, int],
    width: int,
    height: int,
    tasks: Connection,
    results: Connection,
) -> None:
    try:
        while (task := tasks.recv()) is not None:
            slot, state = task
            out = _slot_view(ring, slot, shape)
            picture = rgb_to_i420(renderer.render(state), width, height, out=out)
            if picture is not out:  # OpenCV allocated instead of writing in place
                np.copyto(out, picture)
            results.send(slot)
    except EOFError:  # the caller is gone
        return
    except BaseException:
        with contextlib.suppress(OSError):
            results.send(traceback.format_exc())


def _encoder(
    path: str,
    geometry: tuple[int, int, int, int],
    ring: mmap.mmap,
    shape: tuple[int, int],
    free: Any,
    encoded: Any,
    audio: Connection,
    status: Connection,
    results: list[Connection],
) -> None:
    width, height, fps, sample_rate = geometry
    try:
        mp4 = Mp4Encoder(path, width=width, height=height, fps=fps, sample_rate=sample_rate)
    except Exception as exc:  # a MediaError reaches the caller as it is
        status.send(exc)
        return
    status.send(_READY)
    try:
        n = 0
        while (samples := audio.recv()) is not None:
            try:
                reply = results[n % len(results)].recv()
            except EOFError:
                raise RenderPipelineError(
                    f"facecast-render-{n % len(results)} stopped before frame {n}"
                ) from None
            if isinstance(reply, str):
                raise RenderPipelineError(f"facecast-render-{n % len(results)} failed:\n{reply}")
            mp4.encode(_slot_view(ring, reply, shape), samples)  # copies the picture out of its slot
            free.release()
            n += 1
            encoded.value = n
        mp4.close()
        status.send("done")
    except BaseException as exc:
        mp4.abort()
        with contextlib.suppress(OSError):
            status.send(exc if isinstance(exc, RenderPipelineError) else traceback.format_exc())
