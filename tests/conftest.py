from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SENTENCE = "Hello there, my name is Bob and I build maps for people."


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int, str]:
    """A flite sentence: (int16 mono samples, sample rate, transcript)."""
    import av

    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite)")
    path = Path(tmp_path_factory.mktemp("speech")) / "speech.wav"
    subprocess.run(
        ["flite", "-voice", "slt", "-t", SENTENCE, "-o", str(path)], check=True, capture_output=True
    )
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    return np.concatenate(chunks).astype(np.int16), rate, SENTENCE
