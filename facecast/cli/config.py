"""`facecast config`: every FACECAST_* setting with its effective value and where it comes from."""

from __future__ import annotations

from typing import Any

from facecast import settings
from facecast.cli.common import EXIT_ERROR, print_table


def add_parser(sub: Any) -> None:
    """Add `config` to the main parser's subparsers."""
    sub.add_parser(
        "config",
        help="print the effective FACECAST_* settings, secrets masked (docs/configuration.md)",
        description="Every FACECAST_* environment variable with its effective value and where it comes "
        "from; exits 1 when one holds a value that does not parse.",
    )


def run() -> int:
    """`facecast config`: the table; EXIT_ERROR when a variable holds a value that does not parse."""
    rows = settings.effective()
    print_table([["variable", "source", "value"], *([s.name, source, shown] for s, shown, source in rows)])
    return EXIT_ERROR if any(shown.startswith("invalid: ") for _, shown, _ in rows) else 0
