"""One JSON parser for every message a client can send (the LITE WebSocket, the WebRTC data channel), with
bounds on what it will build: size, nesting depth, integer-literal length and valid Unicode.

The standard parser recurses once per level (deep nesting raises RecursionError), converts integer
literals of any length (over 4,300 digits it raises a ValueError that is not a JSONDecodeError), and lets
lone UTF-16 surrogates (`"\\ud800"`) through, which then fail where the text is encoded (espeak, the
socket). Here each of those is one `MessageRefused` saying what is wrong. It lives outside `hosts` and
`server` so both import it without a cycle."""

from __future__ import annotations

import json
import re
from typing import Any, Final

MAX_DEPTH: Final = 32  # LITE messages are flat objects; LiveAvatar's are at most 3 levels deep
MAX_NUMBER_CHARS: Final = 64  # a float64 needs ~24; anything longer is no number a client means
MAX_MESSAGE_CHARS: Final = 2 * 1024 * 1024  # 10 s of 24 kHz PCM16 in base64 is ~640 KB

# A string literal (skipped whole, so brackets inside strings do not count) or one bracket.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class MessageRefused(ValueError):
    """A message that is not JSON this server will parse; the text says why and what to send."""


def parse_message(
    text: str | bytes,
    *,
    max_chars: int = MAX_MESSAGE_CHARS,
    max_depth: int = MAX_DEPTH,
    max_number_chars: int = MAX_NUMBER_CHARS,
) -> Any:
    """The JSON value in `text`, or MessageRefused. Bytes must be UTF-8."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageRefused(f"message is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if len(text) > max_chars:
        raise MessageRefused(f"message of {len(text)} characters is over the {max_chars} character limit")
    check_depth(text, max_depth)

    def parse_int(literal: str) -> int:
        if len(literal) > max_number_chars:
            raise MessageRefused(
                f"an integer literal of {len(literal)} digits is over the {max_number_chars} digit limit"
            )
        return int(literal)

    def parse_float(literal: str) -> float:
        if len(literal) > max_number_chars:
            raise MessageRefused(
                f"a number literal of {len(literal)} characters is over the {max_number_chars} limit"
            )
        return float(literal)

    def no_constant(name: str) -> None:
        raise MessageRefused(f"{name} is not JSON: send numbers as finite decimals")

    try:
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise MessageRefused(f"message is not JSON: {exc}") from None
    _check_unicode(value)
    return value


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """MessageRefused if `text` nests arrays/objects deeper than `max_depth` (strings are skipped)."""
    # Fast path: a message with fewer brackets than the limit cannot be nested deeper (audio has none).
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise MessageRefused(f"JSON nested deeper than {max_depth} levels of arrays/objects")
        elif token in "]}":
            depth -= 1


def _check_unicode(value: Any) -> None:
    """Refuse strings (keys included) with lone surrogates: JSON's \\u escapes admit them, UTF-8 does not."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise MessageRefused(
            f"a string holds the lone UTF-16 surrogate \\u{ord(bad):04x}, which is not valid Unicode: "
            "escape characters outside the BMP as a surrogate pair, or send them as UTF-8"
        ) from None
