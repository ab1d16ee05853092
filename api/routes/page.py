"""GET /: the chat page, served with a Content-Security-Policy that allows exactly its own
inline script and style; GET /favicon.ico: its icon (which browsers also ask for by
themselves, e.g. when a citation link opens the page).

Left out: a build step (the page is plain HTML and JavaScript); icon sizes past 48 px
(touch icons, a web manifest).
"""

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter()
PAGE = Path(__file__).parent.parent / "static" / "index.html"
ICON = PAGE.parent / "favicon.ico"  # 16, 32 and 48 px


def _csp(page: str) -> str:
    """A Content-Security-Policy allowing exactly the page's own inline script and style."""
    def digest(tag: str) -> str:
        found = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        code = found.group(1) if found else ""
        return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"

    return (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


PAGE_HTML = PAGE.read_bytes()


PAGE_HEADERS = {"Content-Security-Policy": _csp(PAGE_HTML.decode()), "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


@router.get("/", include_in_schema=False)
def page() -> Response:
    """The chat page: no build step, plain HTML and JavaScript."""
    return Response(PAGE_HTML, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


ICON_BYTES = ICON.read_bytes()
ICON_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """The page's icon: no data, so no key (api.app.OPEN_PATHS)."""
    return Response(ICON_BYTES, media_type="image/x-icon", headers=ICON_HEADERS)
