"""The operator page at ``/``: one self-contained HTML document, read-only.

The page polls the unauthenticated GET API (status, peers, nat, and exports /
imports where the gateway has them) from its own origin and draws everything
in the browser; it holds no data of its own and never sees a credential.

``build`` is pure: the template with the stylesheet and the script inlined, and
the Content-Security-Policy that allows exactly those two by their SHA-256 and
nothing else (no inline handlers, no eval, no other origin: an air-gapped
cluster has no CDN, and a hostile peer name must not become markup).
``add_route`` is the FastAPI adapter.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

SCRIPT_SLOT = "/*SCRIPT*/"
STYLE_SLOT = "/*STYLE*/"


@dataclass(frozen=True)
class Page:
    html: str
    csp: str

    def headers(self) -> dict[str, str]:
        return {
            "Content-Security-Policy": self.csp,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        }


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def build(template: str, css: str, js: str) -> Page:
    """The document and its policy. The slots must each appear once, inside
    ``<style>`` and ``<script>``; the inlined text must not close its element."""
    if template.count(SCRIPT_SLOT) != 1 or template.count(STYLE_SLOT) != 1:
        raise ValueError("page template needs exactly one script and one style slot")
    if "</script" in js.lower() or "</style" in css.lower():
        raise ValueError("inlined script/style must not close its element")
    html = template.replace(STYLE_SLOT, css).replace(SCRIPT_SLOT, js)
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {_sha256(js)}",
        f"style-src {_sha256(css)}",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        # every DOM write goes through textContent/createElement: an HTML string sink throws
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ])
    return Page(html, csp)


@functools.cache
def page() -> Page:
    files = resources.files(__name__)

    def read(name: str) -> str:
        return files.joinpath(name).read_text(encoding="utf-8")

    # one script: the drawing helpers, then the page that uses them
    return build(read("index.html"), read("page.css"), read("draw.js") + "\n" + read("page.js"))


def add_route(app: FastAPI) -> None:
    """``GET /``: the page (not in the OpenAPI document: it is for people, not clients)."""

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        p = page()
        return HTMLResponse(p.html, headers=p.headers())
