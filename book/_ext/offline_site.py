"""Make the built book work with no network, and without script errors.

**MathJax.** Serve MathJax 3 from the built book itself, so that math renders offline.

Sphinx loads MathJax from a CDN by default. On ``config-inited`` this extension copies
the CHTML bundle (``es5/tex-mml-chtml.js``) and its ``woff-v2`` fonts from the PyPI
package ``django-static-mathjax`` (importable as ``mathjax``) into a folder under the
build directory, adds that folder to ``html_static_path`` and points ``mathjax_path``
at the copy. The folder is deliberately not the book's root ``_static/``: Jupyter Book
adds every script found there to every page, which would load MathJax twice.

**Duplicate scripts.** sphinx-thebe registers its inline configuration script once per
read phase, and a full Jupyter Book build runs it twice, so every page declared
``const THEBE_JS_URL`` twice, a JavaScript error. Identical script entries are
dropped when each page is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FONTS = Path("output") / "chtml" / "fonts" / "woff-v2"
BUNDLE = "tex-mml-chtml.js"


def mathjax_source() -> Path:
    try:
        import mathjax
    except ImportError as error:  # pragma: no cover - the set-up installs it
        raise RuntimeError("offline MathJax needs the package django-static-mathjax (pip install it)") from error
    es5 = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (es5 / BUNDLE).is_file() or not (es5 / FONTS).is_dir():
        raise RuntimeError(f"MathJax 3 bundle or fonts not found under {es5}")
    return es5


def copy_mathjax(app, config) -> None:
    source = mathjax_source()
    static = Path(app.outdir).parent / "offline_mathjax_static"
    target = static / "mathjax"
    if not (target / BUNDLE).is_file():
        (target / FONTS).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / BUNDLE, target / BUNDLE)
        shutil.copytree(source / FONTS, target / FONTS, dirs_exist_ok=True)
    config.html_static_path = list(config.html_static_path) + [str(static)]
    config.mathjax_path = f"mathjax/{BUNDLE}"


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # the same script is registered once with filename None and once with "": treat both alike
        attributes = getattr(script, "attributes", {})
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique


def setup(app):
    app.connect("config-inited", copy_mathjax)
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", drop_duplicate_scripts, priority=100)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
