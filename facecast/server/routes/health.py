"""Health and Prometheus metrics."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations at runtime.

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from facecast import __version__
from facecast.server.metrics import render_metrics
from facecast.server.routes.common import ok
from facecast.server.sessions import SessionManager

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz(request: Request) -> dict[str, Any]:
    mgr: SessionManager = request.app.state.manager
    return ok(
        {
            "status": "ok",
            "version": __version__,
            "live_sessions": len(mgr.live),
            "uptime_s": round(time.time() - request.app.state.started_at, 1),
        }
    )


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    text = await render_metrics(request.app.state.manager)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
