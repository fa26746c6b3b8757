"""`facecast keys`: create, list and revoke the API keys that client apps use to start sessions."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facecast import settings
from facecast.argtypes import positive_int
from facecast.cli.common import EXIT_USAGE
from facecast.protocol import END_KEY_REVOKED
from facecast.server.auth import default_data_dir

if TYPE_CHECKING:  # the store needs the server extra; `facecast --help` builds this parser without it
    from facecast.server.store import ApiKey, Store

DATABASE_URL_ENV = settings.DATABASE_URL.name


def _add_store_options(p: argparse.ArgumentParser) -> None:
    # Defaults are resolved when the command runs, so the environment of that moment applies.
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the SQLite database lives (default: $FACECAST_DATA_DIR, $XDG_DATA_HOME/facecast "
        "or ~/.local/share/facecast)",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help=f"sqlite:///PATH.db or postgresql://... (default: ${DATABASE_URL_ENV}, else SQLite in the "
        "data directory)",
    )


def add_keys_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `keys create|list|revoke`; nested parsers are of the same class as those `subparsers` makes."""
    keys = subparsers.add_parser(
        "keys", help="manage API keys", description="Create, list and revoke API keys."
    )
    # add_subparsers defaults its parser_class to type(keys), so a raising parser class carries down.
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a key and print its secret (shown only once)")
    create.add_argument("--name", default="default", help="a label for the key (default: default)")
    create.add_argument(
        "--max-concurrent",
        type=positive_int,
        metavar="N",
        help="at most N live sessions at a time with this key (default: the server's per-key limit, "
        "FACECAST_MAX_CONCURRENT_PER_KEY, 4 unless set)",
    )
    _add_store_options(create)

    listing = actions.add_parser("list", help="list keys, revoked ones included")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_store_options(listing)

    revoke = actions.add_parser(
        "revoke",
        help="revoke a key: it no longer authenticates, the session tokens it minted stop working and its "
        "live sessions end (key_revoked)",
    )
    revoke.add_argument(
        "key", metavar="KEY_ID_OR_PREFIX", help="the key's id, or the start of its id or prefix"
    )
    _add_store_options(revoke)


def _open(args: argparse.Namespace) -> Store:
    from facecast.server.store import open_store

    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    url = args.database_url if args.database_url is not None else settings.DATABASE_URL.get()
    return open_store(url, data_dir)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _create(store: Store, args: argparse.Namespace) -> int:
    key, secret = store.create_key(args.name, max_concurrent=args.max_concurrent)
    limit = (
        "the server's per-key session limit"
        if key.max_concurrent is None
        else f"max {key.max_concurrent} live sessions"
    )
    # The secret alone goes to stdout, so `KEY=$(facecast keys create)` works; the notes go to stderr.
    print(f"created API key {key.id} ({key.name}, {limit})", file=sys.stderr)
    print(secret)
    print("Save this secret now: only its hash is stored, so it cannot be shown again.", file=sys.stderr)
    return 0


def _list(store: Store, args: argparse.Namespace) -> int:
    keys = store.list_keys()
    if args.json:
        print(json.dumps([{**asdict(k), "revoked": k.revoked} for k in keys], indent=2))
        return 0
    if not keys:
        print("no API keys yet; create one with `facecast keys create`")
        return 0
    print(_table(keys))
    return 0


def _table(keys: list[ApiKey]) -> str:
    header = ("ID", "NAME", "PREFIX", "MAX", "CREATED", "REVOKED")
    rows = [
        (
            k.id,
            k.name,
            k.prefix + "…",
            "-" if k.max_concurrent is None else str(k.max_concurrent),
            _when(k.created_at),
            _when(k.revoked_at),
        )
        for k in keys
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in (header, *rows)]
    return "\n".join(line.rstrip() for line in lines)


def _revoke(store: Store, args: argparse.Namespace) -> int:
    key = store.revoke_key(args.key)
    if key is None:
        print(f"facecast keys revoke: error: no API key matches {args.key!r}", file=sys.stderr)
        return EXIT_USAGE
    ended = store.end_key_sessions(key.id, END_KEY_REVOKED, time.time())
    print(f"revoked {key.id} ({key.name}, {key.prefix}…) at {_when(key.revoked_at)}")
    # Servers close the sessions ended here within a couple of seconds (their reaper reads the store).
    print(
        f"its session tokens no longer work; {ended} session(s) not yet ended were ended (key_revoked) and "
        "running servers close them within seconds"
    )
    return 0


def run_keys(args: argparse.Namespace) -> int:
    """Run a parsed `facecast keys ...` command line; the exit status."""
    from facecast.server.store import StoreError

    try:
        store = _open(args)
    except (ValueError, StoreError) as exc:
        print(f"facecast keys: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    command = {"create": _create, "list": _list, "revoke": _revoke}[args.keys_command]
    try:
        return command(store, args)
    except ValueError as exc:  # a bad name, an ambiguous prefix
        print(f"facecast keys {args.keys_command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()
