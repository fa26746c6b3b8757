"""`python -m facecast.avatars sheet|bench`: the contact sheet and the render-time bench behind
docs/avatars.md (facecast.avatars.devtools)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    import cv2

    from facecast.avatars.devtools import bench, contact_sheet

    parser = argparse.ArgumentParser(prog="python -m facecast.avatars")
    sub = parser.add_subparsers(dest="command", required=True)
    sheet = sub.add_parser("sheet", help="write a contact sheet PNG of the built-in avatars")
    sheet.add_argument("out")
    sheet.add_argument("--tile", type=int, default=200)
    sheet.add_argument(
        "--avatar", action="append", help="avatar to show (repeatable; default: the built-ins)"
    )
    b = sub.add_parser("bench", help="print render ms/frame on one core")
    b.add_argument("--frames", type=int, default=300)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--avatar", action="append", help="avatar to measure (repeatable; default: the built-ins)")
    args = parser.parse_args(argv)
    if args.command == "sheet":
        img = contact_sheet(args.tile, args.avatar)
        cv2.imwrite(args.out, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    else:
        bench(args.frames, args.repeats, args.avatar)
