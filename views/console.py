"""``GET /``: the console page, a browser client of the session API; its files are read once at import."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, NamedTuple

from faust.web import Request, Response

from app import app
from app.errors import ApiError
from views.api_doc import Operations
from views.base import ApiView

STATIC = Path(__file__).with_name("static")
# the page talks only to this origin (fetch, EventSource and, by CSP 3's 'self', ws://); no inline script
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Content-Security-Policy": POLICY}


class Asset(NamedTuple):
    text: str
    content_type: str  # aiohttp appends "; charset=utf-8" to a text body


def _read(name: str, content_type: str) -> Asset:
    return Asset((STATIC / name).read_text(encoding="utf-8"), content_type)


PAGE = _read("console.html", "text/html")
ASSETS = {
    "console.css": _read("console.css", "text/css"),
    "console.js": _read("console.js", "text/javascript"),
}


class AssetNotFound(ApiError):
    code = "not_found"


def _serve(view: ApiView, asset: Asset) -> Response:
    return view.text(asset.text, content_type=asset.content_type, headers=dict(HEADERS))


@app.page("/")
class Console(ApiView):
    public = True
    openapi: ClassVar[Operations] = None  # a page for people, not part of the API

    async def get(self, request: Request) -> Response:
        return _serve(self, PAGE)


@app.page("/static/{name}")
class ConsoleAsset(ApiView):
    public = True
    openapi: ClassVar[Operations] = None  # the console's files

    async def get(self, request: Request, name: str) -> Response:
        asset = ASSETS.get(name)
        if asset is None:
            raise AssetNotFound(f"no static file {name}")
        return _serve(self, asset)
