"""The browser test client and the drawn-face page (the mouth track): their pages here, their scripts
under /static (mounted by create_app)."""

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

WEB_DIR = resources.files("facecast.server") / "web"


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))


@router.get("/face", include_in_schema=False)
async def face() -> HTMLResponse:
    """A face drawn in the browser from a session's mouth track (docs/mouth-track.md)."""
    return HTMLResponse((WEB_DIR / "face.html").read_text(encoding="utf-8"))
