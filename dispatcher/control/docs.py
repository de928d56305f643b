"""``GET /docs``: Swagger UI for ``/openapi.json``, served entirely by the dispatcher.

The Swagger UI distribution comes from the ``swagger-ui-py`` package (its ``static``
directory, found without importing the package) and is served under ``/docs/assets/``. The
page loads nothing from another host, so it works offline and behind an egress firewall; its
Content-Security-Policy says so to the browser as well (``'self'`` only, no inline script).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "DOCS_PATH", "docs_page", "docs_routes", "swagger_ui_directory"]

DOCS_PATH: Final = "/docs"
ASSETS_PATH: Final = "/docs/assets"

_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

_PAGE: Final = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Edge dispatcher API</title>
  <link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
  <script src="{DOCS_PATH}/init.js"></script>
</body>
</html>
"""

# A file of its own so the CSP can forbid inline script. validatorUrl null: Swagger UI would
# otherwise send the document to an online validator.
_INIT: Final = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    validatorUrl: null,
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


def swagger_ui_directory() -> Path:
    """The directory of the Swagger UI distribution shipped by ``swagger-ui-py``."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    directory = Path(next(iter(spec.submodule_search_locations))) / "static"
    if not (directory / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"no Swagger UI distribution in {directory}")
    return directory


async def docs_page(request: Request) -> Response:
    """``GET /docs`` (declared with the control plane's other operations)."""
    return Response(
        _PAGE,
        media_type="text/html",
        headers={"content-security-policy": _CSP, "x-content-type-options": "nosniff"},
    )


def docs_routes() -> list[BaseRoute]:
    """The files of the ``/docs`` page: its initializer script and the Swagger UI assets."""

    async def init(request: Request) -> Response:
        return Response(_INIT, media_type="text/javascript")

    return [
        Route(f"{DOCS_PATH}/init.js", init, methods=["GET"]),
        Mount(ASSETS_PATH, app=StaticFiles(directory=swagger_ui_directory())),
    ]
