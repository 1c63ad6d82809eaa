"""The dashboard's files: a static page, its script and its style, shipped as package data.

They are read once when the API is built, so a package missing them fails at start with
a message saying which file, and are served with ``no-cache`` so an upgraded bench shows
its new page on the next load.
"""

from __future__ import annotations

from importlib import resources

from litestar import Response

from helexa.errors import ApiError

TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def load() -> dict[str, bytes]:
    folder = resources.files("helexa.bench") / "dashboard"
    files = {}
    for name in TYPES:
        try:
            files[name] = (folder / name).read_bytes()
        except OSError as exc:
            raise RuntimeError(f"the bench dashboard file {name} is missing from the package: {exc}") from exc
    return files


def response(files: dict[str, bytes], name: str) -> Response[bytes]:
    if name not in files:
        raise ApiError(404, f"no dashboard file {name!r} (there are {', '.join(sorted(files))})")
    return Response(files[name], media_type=TYPES[name], headers={"cache-control": "no-cache"})
