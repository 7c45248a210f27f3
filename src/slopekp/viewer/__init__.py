"""``slopekp viewer DIR``: a local web page of ``slopekp predict``'s results, served by the standard library.

The page (``static/``: plain HTML, CSS and a WebGL 2 script with its own GLB reader, no JavaScript package) lists
the predictions of ``DIR`` (its ``predictions.json``, or else every ``DIR/<name>/mesh.glb``), each with the GLB in an
orbit view beside the input crop, starting from the predicted viewpoint. The server answers

* ``/``, ``/viewer.js``, ``/style.css``: the page;
* ``/predictions.json``: the listing (:func:`listing`);
* ``/files/<name>/<file>``: files under ``DIR`` (nothing outside it: paths are resolved and checked).

It binds to ``127.0.0.1`` unless told otherwise: the files are the user's, not for the network.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from slopekp.predict.outputs import INDEX

__all__ = ["listing", "make_server", "serve_in_thread"]

STATIC = ("index.html", "viewer.js", "style.css")
_TYPES = {".glb": "model/gltf-binary", ".obj": "text/plain", ".mtl": "text/plain", ".json": "application/json",
          ".js": "text/javascript", ".gif": "image/gif", ".png": "image/png", ".css": "text/css"}  # fmt: skip


def listing(folder: str | os.PathLike) -> dict[str, Any]:
    """What the page shows: ``{"folder", "model", "failed", "items": [{"name", "glb", "input", ...}]}``, with URLs
    under ``files/``.

    Raises:
        ValueError: naming the folder: not a folder, a damaged ``predictions.json``, or no predictions in it.
    """

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    model, failed, names = "", 0, []
    index = folder / INDEX
    if index.is_file():
        try:
            data = json.loads(index.read_text())
            entries = data["images"]
            ok = [(k, e["name"]) for k, e in enumerate(entries) if e.get("status") == "ok"]
            failed = sum(e.get("status") != "ok" for e in entries)
            card = data.get("model") or {}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: not an index of `slopekp predict` ({type(e).__name__}: {e})") from e
        names = [_entry_name(name, k, index) for k, name in ok]
        if isinstance(card, dict) and card.get("head"):
            data_name = (card.get("data") or {}).get("name")
            model = f"{card['head']} head" + (f", trained on {data_name}" if data_name else "")
    else:
        names = sorted(p.parent.name for p in folder.glob("*/mesh.glb"))
    items = []
    for name in names:
        d = folder / name
        if not (d / "mesh.glb").is_file():
            continue
        url = f"files/{quote(name)}"  # names may hold '#', '%', spaces ...
        item = {"name": name, "glb": f"{url}/mesh.glb"}
        for key, file in (("input", "input.png"), ("camera", "camera.json"), ("figure", "figure.png"),
                          ("turntable", "turntable.gif"), ("obj", "mesh.obj")):  # fmt: skip
            if (d / file).is_file():
                item[key] = f"{url}/{file}"
        items.append(item)
    if not items:
        raise ValueError(
            f"{folder}: no predictions to show (no <name>/mesh.glb; run `slopekp predict ... --out {folder}`)"
        )
    return {"folder": str(folder), "model": model, "failed": failed, "items": items}


def _entry_name(name: Any, k: int, index: Path) -> str:
    """``name``, the folder of the index's ``k``-th entry, if it is one plain path component (a string, not empty,
    no ``/`` or ``\\``, not ``.`` or ``..``); else a ValueError naming the index and the entry."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{index}: images[{k}] has the name {name!r}; a photo's folder name must be a plain "
                         "file name (a non-empty string without '/')")  # fmt: skip
    return name


class _Handler(SimpleHTTPRequestHandler):
    """The page from the package, the listing, and files under the folder; nothing else."""

    def __init__(self, *args, folder: Path, quiet: bool, **kwargs) -> None:
        self.folder, self.quiet = folder, quiet
        super().__init__(*args, directory=str(folder), **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        if not self._host_allowed():
            return self.send_error(HTTPStatus.FORBIDDEN, "this server answers requests for its own address only")
        path = unquote(urlsplit(self.path).path).lstrip("/") or "index.html"
        if path in STATIC:
            body, ctype = (resources.files("slopekp.viewer") / "static" / path).read_bytes(), _type(path)
        elif path == "predictions.json":
            try:
                body, ctype = json.dumps(listing(self.folder)).encode(), _TYPES[".json"]
            except ValueError as e:
                return self.send_error(HTTPStatus.NOT_FOUND, str(e))
        elif path.startswith("files/"):
            root = self.folder.resolve()
            try:
                target = (root / path[len("files/"):]).resolve()
                found = root in target.parents and target.is_file()
            except (ValueError, OSError):  # a NUL byte, a name too long ...
                found = False
            if not found:
                return self.send_error(HTTPStatus.NOT_FOUND, "no such file")
            body, ctype = target.read_bytes(), _type(target.name)
        else:
            return self.send_error(HTTPStatus.NOT_FOUND, "no such page")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _host_allowed(self) -> bool:
        """The Host header names this machine (or the address the server was told to bind): a page elsewhere that
        points its own name at 127.0.0.1 (DNS rebinding) cannot read the folder. A server bound to every
        address (``--host 0.0.0.0``) answers any name."""
        bound = self.server.server_address[0]
        if bound in ("0.0.0.0", "::", ""):
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
        return name.strip("[]") in {"127.0.0.1", "localhost", "::1", str(bound).lower()}

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if not self.quiet:
            super().log_message(format, *args)


def _type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def make_server(folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False) -> ThreadingHTTPServer:  # fmt: skip
    """A server for ``folder`` (checked with :func:`listing` first); ``port=0`` picks a free port
    (``server.server_address[1]``)."""
    listing(folder)
    handler = partial(_Handler, folder=Path(folder), quiet=quiet)
    return ThreadingHTTPServer((host, port), handler)


def serve_in_thread(
    folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 0
) -> tuple[ThreadingHTTPServer, str]:
    """Start :func:`make_server` in a daemon thread; returns the server (``.shutdown()`` stops it) and its URL."""
    server = make_server(folder, host, port, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/"
