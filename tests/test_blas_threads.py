"""One BLAS thread in processes that serve live sessions and in offline renders
(facecast/hosts/blas_threads.py), read back with threadpoolctl in a fresh interpreter: the limits are
the process's, not the test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from facecast.hosts.blas_threads import BLAS_THREAD_VARIABLES

PROBE = """
import json, numpy
from threadpoolctl import threadpool_info
from facecast.hosts.blas_threads import one_blas_thread, single_threaded_blas

def blas():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

seen = {"before": blas()}
with one_blas_thread():
    seen["inside"] = blas()
seen["after"] = blas()
single_threaded_blas()
seen["for good"] = blas()
print(json.dumps(seen))
"""


def _probe(**env: str) -> dict[str, list[int]]:
    clean = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True, timeout=60, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_blas_runs_one_thread_inside_a_render_and_in_a_host_process() -> None:
    seen = _probe()
    if not seen["before"]:
        pytest.skip("numpy here has no BLAS library that threadpoolctl can see")
    assert seen["inside"] == [1] * len(seen["before"])
    assert seen["after"] == seen["before"]  # a bounded job gives the caller's limits back
    assert seen["for good"] == [1] * len(seen["before"])


def test_the_users_own_blas_thread_setting_wins() -> None:
    seen = _probe(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    if not seen["before"]:
        pytest.skip("numpy here has no BLAS library that threadpoolctl can see")
    assert seen["inside"] == seen["before"] == seen["for good"]
