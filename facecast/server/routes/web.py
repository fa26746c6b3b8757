"""The browser test client: its page here, its scripts under /static (mounted by create_app)."""

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

WEB_DIR = resources.files("facecast.server") / "web"


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))
