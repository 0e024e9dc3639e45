"""Serve the built book (_build/html) on localhost, so that its live demos run (`make serve`).

The demos load ES modules and a WebAssembly binary, which browsers refuse from a page opened
as a file, and which a server must send with their types: ``.mjs`` and ``.js`` as
``text/javascript``, ``.wasm`` as ``application/wasm``. This server sets both whatever the
system's MIME table says. Any static host works the same way if it sends those types.
"""

from __future__ import annotations

import argparse
import functools
import http.server
from pathlib import Path

SITE = Path(__file__).resolve().parents[1] / "_build" / "html"
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".onnx": "application/octet-stream", ".json": "application/json"}


class BookHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--site", type=Path, default=SITE, help="the built book (default: _build/html)")
    args = parser.parse_args()
    if not (args.site / "index.html").is_file():
        raise SystemExit(f"no book in {args.site}: run make book first")
    handler = functools.partial(BookHandler, directory=str(args.site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        print(f"The book: http://127.0.0.1:{server.server_address[1]}/book/intro.html  (Ctrl-C stops the server)",
              flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
