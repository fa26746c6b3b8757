"""The `facecast` command: render audio files to lip-synced MP4, a one-command demo, the avatar library
(`facecast avatar create|list|info|preview|delete`), and the benchmark suite. User mistakes print one line
to stderr and exit with status 2; `facecast avatar` commands that fail on what they were given (an unknown
avatar, a damaged bundle, a photo without a face) exit with status 1.

One module per command group (render, serve/demo, keys, worker/say, avatar, config, bench); each adds its
parsers here and runs its commands. They import what a command needs when it runs, so `facecast --help`
works without any extra and a command that lacks its extra names it (`common.needs_extra`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from facecast import __version__
from facecast.cli import avatar, bench, config, keys, livekit, render, serve
from facecast.cli.common import (
    EXIT_ERROR,
    EXIT_USAGE,
    CommandError,
    Parser,
    UsageError,
    needs_extra,
    user_errors,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="facecast", description="Self-hosted real-time talking avatars, on a CPU.")
    parser.add_argument("--version", action="version", version=f"facecast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    render.add_parser(sub)
    serve.add_parsers(sub)
    keys.add_keys_parser(sub)
    livekit.add_livekit_parsers(sub)
    avatar.add_parsers(sub)
    bench.add_parser(sub)
    config.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["bench"]:
            # The benchmark suite owns its options; everything after `bench` is passed through.
            with needs_extra("bench", "bench"):
                return bench.main(args_list[1:])
        args = build_parser().parse_args(args_list)
        if args.command == "render":
            return render.run(args)
        if args.command in ("demo", "serve"):
            with needs_extra("server", args.command):
                return serve.run(args, demo=args.command == "demo")
        if args.command in ("worker", "say"):
            run = livekit.run_worker_command if args.command == "worker" else livekit.run_say_command
            with needs_extra("livekit", args.command):
                rc = run(args)
            if args.command == "say":
                # livekit rtc 1.1.21 sometimes aborts the process (a Rust panic that cannot unwind) in its
                # atexit FFI dispose, after the room is already closed; `say` has nothing left to finalise.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
            return rc
        if args.command == "config":
            return config.run()
        if args.command == "keys":
            with needs_extra("server", "keys"):
                return keys.run_keys(args)
        return avatar.run(args)
    except SystemExit:
        # --help and --version exit here; caught first so that user_errors(), which imports the server's
        # store when the server extra is installed, is not evaluated for them.
        raise
    except KeyboardInterrupt:
        print("facecast: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"facecast: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except user_errors() as exc:
        print(f"facecast: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
