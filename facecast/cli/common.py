"""What every `facecast` command shares: exit statuses, the two user-error types, the parser that raises
instead of exiting, argument types, table printing, and naming the extra a command is missing."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line; main() prints it as one line and returns EXIT_USAGE."""


class CommandError(Exception):
    """A `facecast avatar` command failed on what it was given; main() prints it and returns EXIT_ERROR."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # Raise instead of exiting so main() returns a status (callable from tests and scripts), and
        # print one line rather than the whole usage block.
        raise UsageError(f"{self.prog}: error: {message}")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip())


def user_errors() -> tuple[type[BaseException], ...]:
    from facecast.hosts.file import MediaError
    from facecast.tts import TTSError

    # ValueError covers option validation in EngineConfig and the avatar loader.
    errors: list[type[BaseException]] = [MediaError, TTSError, ValueError, OSError]
    try:
        from facecast.server.store import StoreError
    except ModuleNotFoundError:  # without the server extra there is no store to fail
        pass
    else:
        errors.append(StoreError)
    return tuple(errors)


# The top-level modules each extra installs: a command that fails to import one names the extra to install.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "server": ("fastapi", "starlette", "pydantic", "uvicorn", "aiortc", "psycopg", "multipart"),
    "livekit": ("livekit",),
    "bench": ("scipy", "psutil", "httpx", "fastapi", "uvicorn", "aiortc", "psycopg"),
}


@contextlib.contextmanager
def needs_extra(extra: str, command: str) -> Iterator[None]:
    """Turn a missing module of `extra` into a UsageError that says what to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in EXTRA_MODULES[extra]:
            raise
        raise UsageError(
            f"facecast {command} needs the {extra} extra ({missing} is not installed): "
            f"pip install 'facecast[{extra}]' (from a source checkout: pip install '.[{extra}]')"
        ) from None
