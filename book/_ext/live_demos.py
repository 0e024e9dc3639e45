"""A local Sphinx extension that puts the live demos' files into the built book.

The chapters' live-demo blocks (written by :func:`attn_course.web.live_demo`) load their
scripts from ``_live/`` beside the chapters' folder. After an HTML build this extension
fills ``<outdir>/_live/`` with

- the page scripts and their style sheet, from ``book/_web/``;
- the models and ``demos.json``, from ``_build/web/`` (``make web-models``:
  ``python -m attn_course export-web --out _build/web``), each model checked against the
  SHA-256 that ``demos.json`` records;
- the three files of the browser runtime, onnxruntime-web :data:`ORT_VERSION` (its ES-module
  loader, the wasm loader and the wasm binary), from ``web/node_modules/`` (``make
  web-runtime``: ``npm ci`` against ``web/package-lock.json``, which pins the package's
  sha512), each checked against the SHA-256 below.

The folder is on purpose not the root ``_static/``, whose scripts Jupyter Book adds to every
page: only the pages with a demo load these files. A missing file fails the build with the
command that makes it, rather than shipping a book whose demos cannot start.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from sphinx.errors import ExtensionError

ORT_VERSION = "1.30.0"
RUNTIME = {  # file in onnxruntime-web's dist/ -> its SHA-256 in version ORT_VERSION
    "ort.wasm.min.mjs": "219e6a1fc8a9938268d18efca3c91d310bd2f4a59bbd13744df5b2b7fc6cee3b",
    "ort-wasm-simd-threaded.mjs": "e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b",
    "ort-wasm-simd-threaded.wasm": "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2",
}
OUT_DIR = "_live"


def _sources(srcdir: Path) -> dict[str, Path]:
    return {"scripts": srcdir / "book" / "_web", "models": srcdir / "_build" / "web",
            "runtime": srcdir / "web" / "node_modules" / "onnxruntime-web" / "dist"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_version(runtime: Path) -> None:
    package = runtime.parent / "package.json"
    version = json.loads(package.read_text())["version"] if package.is_file() else None
    if version != ORT_VERSION:
        raise ExtensionError(f"live demos: onnxruntime-web {ORT_VERSION} expected in {runtime.parent}, found "
                             f"{version or 'none'}; run `make web-runtime` (npm ci --prefix web)")


def files_to_copy(srcdir: Path) -> list[tuple[Path, str | None]]:
    """(source file, expected SHA-256 or None) for everything ``_live/`` holds; raises on a missing or wrong file."""
    where = _sources(srcdir)
    _check_version(where["runtime"])
    demos = where["models"] / "demos.json"
    if not demos.is_file():
        raise ExtensionError(f"live demos: {demos} is missing; run `make web-models` "
                             "(python -m attn_course export-web --out _build/web)")
    models = json.loads(demos.read_text())["models"]
    files = [(where["runtime"] / name, digest) for name, digest in RUNTIME.items()]
    files += [(where["models"] / name, about["sha256"]) for name, about in models.items()]
    files += [(demos, None)]
    files += [(path, None) for path in sorted(where["scripts"].iterdir()) if path.suffix in (".js", ".css")]
    for path, digest in files:
        if not path.is_file():
            raise ExtensionError(f"live demos: {path} is missing; run `make web`")
        if digest is not None and _sha256(path) != digest:
            raise ExtensionError(f"live demos: {path} does not have the SHA-256 {digest}; run `make web` again")
    return files


def check_inputs(app) -> None:
    if app.builder.format == "html":
        files_to_copy(Path(app.srcdir))


def copy_live_files(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / OUT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for path, _ in files_to_copy(Path(app.srcdir)):
        shutil.copy2(path, target / path.name)


def setup(app):
    app.connect("builder-inited", check_inputs)
    app.connect("build-finished", copy_live_files)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
