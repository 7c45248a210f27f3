"""``slopekp viewer DIR``: look at ``slopekp predict``'s meshes in a browser (:mod:`slopekp.viewer`).

Serves a local page on http://127.0.0.1:PORT/ until Ctrl-C: each prediction's GLB in an orbit view (drag to turn,
scroll to zoom, double-click for the predicted viewpoint) beside its input crop, with links to the OBJ, the figure,
the turntable and the camera.
"""

from __future__ import annotations

import argparse

from slopekp.commands import add_command


def register(sub) -> None:
    p = add_command(
        sub, "viewer", doc=__doc__,
        help="show the meshes of `slopekp predict --out DIR` in a local web page",
    )
    p.add_argument("folder", metavar="DIR", help="an output folder of `slopekp predict`")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.set_defaults(func=_viewer)


def _viewer(args: argparse.Namespace) -> int:
    from slopekp.viewer import make_server

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    server = make_server(args.folder, args.host, args.port)
    url = f"http://{args.host}:{server.server_address[1]}/"
    print(f"serving {args.folder} at {url} (Ctrl-C stops)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0
