"""PhoneTiming: a phone a speech source knows it spoke, and when. Its own module, below both the
engine (which takes timings with a segment's audio) and the TTS (which reports them), so neither
imports the other for it."""

from __future__ import annotations

from typing import NamedTuple


class PhoneTiming(NamedTuple):
    """A phone known to be spoken at [start, end) seconds of its segment's input audio — what a TTS
    engine can report about the speech it generates. `phone` is ARPAbet (CMUdict symbols)."""

    phone: str
    start: float
    end: float
