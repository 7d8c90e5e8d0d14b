"""GET /: the playground, one static page (HTML, CSS, JS; no build step, no third-party code).

The page talks only to the server it came from: its Content-Security-Policy allows scripts, styles,
images and requests from this origin alone (images also as data: URLs, which is how previews and
results arrive), so a browser refuses anything else even if the page tried. Its files hold no data, so
they are served without an API key when keys are configured (service.api.auth.PAGE_PATHS); the page
asks for the key and sends it on its API calls.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Response

from service.api.auth import PAGE_PATHS

FOLDER = Path(__file__).resolve().parent.parent / "playground"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css", ".js": "text/javascript"}
_FILES = {path: path.removeprefix("/playground/") for path in PAGE_PATHS} | {"/": "index.html"}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return (FOLDER / name).read_bytes()


def _file(path: str) -> Response:
    name = _FILES[path]
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Response(_read(name), media_type=_TYPES[Path(name).suffix], headers=headers)


@router.get("/")
async def page() -> Response:
    return _file("/")


@router.get("/playground/{name}")
async def asset(name: str) -> Response:
    path = f"/playground/{name}"
    if path not in _FILES:
        return Response(status_code=404)
    return _file(path)
