"""One thread for BLAS and OpenCV in processes that serve live sessions, one BLAS thread in offline renders
(facecast/hosts/native_threads.py), read back (threadpoolctl, cv2.getNumThreads) in a fresh interpreter:
the limits are the process's, not the test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from facecast.hosts.native_threads import BLAS_THREAD_VARIABLES, OPENCV_THREAD_VARIABLE

PROBE = """
import json, cv2, numpy
from threadpoolctl import threadpool_info
from facecast.hosts.native_threads import limit_native_threads, one_blas_thread

def blas():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

seen = {"before": blas(), "opencv before": [cv2.getNumThreads()]}
with one_blas_thread():
    seen["inside"] = blas()
seen["after"] = blas()
limit_native_threads()
seen["for good"] = blas()
seen["opencv for good"] = [cv2.getNumThreads()]
print(json.dumps(seen))
"""


def _probe(**env: str) -> dict[str, list[int]]:
    chosen = (*BLAS_THREAD_VARIABLES, OPENCV_THREAD_VARIABLE)
    clean = {k: v for k, v in os.environ.items() if k not in chosen}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True, timeout=60, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_one_blas_thread_inside_a_render_and_one_of_each_in_a_host_process() -> None:
    seen = _probe()
    if not seen["before"]:
        pytest.skip("numpy here has no BLAS library that threadpoolctl can see")
    assert seen["inside"] == [1] * len(seen["before"])
    assert seen["after"] == seen["before"]  # a bounded job gives the caller's limits back
    assert seen["for good"] == [1] * len(seen["before"])
    assert seen["opencv for good"] == [1]


def test_the_users_own_thread_settings_win() -> None:
    seen = _probe(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", OPENCV_FOR_THREADS_NUM="2")
    if not seen["before"]:
        pytest.skip("numpy here has no BLAS library that threadpoolctl can see")
    assert seen["inside"] == seen["before"] == seen["for good"]
    assert seen["opencv for good"] == seen["opencv before"]
