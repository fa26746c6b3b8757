"""The closure measure of facecast.bench.truth_check reads a known shift of the truth back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from facecast.bench.corpus import SENTENCES, Phone, have_flite, synthesize
from facecast.bench.truth_check import closure_offsets_ms


@pytest.mark.skipif(not have_flite(), reason="flite is not installed (apt-get install flite)")
def test_a_truth_shifted_later_reads_that_much_later(tmp_path: Path) -> None:
    before: list[float] = []
    after: list[float] = []
    for text in SENTENCES[:4]:
        utt = synthesize(text, "slt", tmp_path)
        shifted = dataclasses.replace(
            utt, phones=tuple(Phone(p.phone, p.start + 0.02, p.end + 0.02) for p in utt.phones)
        )
        before += closure_offsets_ms(utt)
        after += closure_offsets_ms(shifted)
    assert len(before) >= 5 and len(after) == len(before)
    assert np.median(after) - np.median(before) == pytest.approx(20.0, abs=5.0)
