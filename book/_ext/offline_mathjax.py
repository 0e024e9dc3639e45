"""A local Sphinx extension that lets the built book work without any network.

MathJax
    Sphinx points ``mathjax_path`` at a CDN by default, so an offline reader sees raw
    TeX. On ``config-inited`` this extension copies MathJax 3's CHTML bundle
    (``es5/tex-mml-chtml.js``) and its ``woff-v2`` fonts out of the PyPI package
    ``django-static-mathjax`` (imported as ``mathjax``) into
    ``<build dir>/offline_mathjax_static/mathjax/``, appends that folder to
    ``html_static_path`` and sets ``mathjax_path`` to the copy. The bundle finds its
    fonts relative to its own URL (``output/chtml/fonts/woff-v2``), so the layout of
    the copy mirrors the package. The folder is on purpose *not* the book's root
    ``_static/``: Jupyter Book adds every ``.js`` it finds there to every page, and
    MathJax would then load twice.

Thebe
    Jupyter Book always loads sphinx-thebe, which adds a script naming an unpkg.com URL
    and a loader script to every page (the inline one twice in a full build, which is
    a ``const`` redeclaration error in the browser). This book does not enable live
    code (``launch_buttons.thebe`` is off), so both scripts are dropped from the pages.
    If thebe is switched on in ``_config.yml`` they are kept.

Font Awesome from a CDN
    matplotlib's ``to_jshtml`` animations link Font Awesome 4 from maxcdn.bootstrapcdn.com
    for their button icons. ``attn_course.viz`` already removes that link; as a safety
    net for any notebook that calls ``to_jshtml`` directly, the link is also removed from
    each page body here. The buttons keep their ``fa fa-*`` classes, which the theme's own
    (local) Font Awesome script draws.

Inline SVG badges
    markdown-it (under MyST) accepts ``data:`` URIs in images only for gif, png, jpeg and
    webp, so a badge written as ``![Open In Colab](data:image/svg+xml;base64,...)`` (the
    notebooks carry their badge inline, so that opening one fetches nothing) would reach
    the page as literal text. Such leftovers are turned into ``<img>`` elements here.

Everything else the theme needs (Bootstrap, Font Awesome, its fonts) is already served
from ``_static/``; widget JavaScript is kept off CDNs by ``nb_ipywidgets_js: {}`` in
``_config.yml``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

BUNDLE = "tex-mml-chtml.js"
FONTS = Path("output") / "chtml" / "fonts" / "woff-v2"
STATIC_DIR = "offline_mathjax_static"
# ![alt](data:image/svg+xml;base64,...) left as text by markdown-it
SVG_DATA_IMAGE = re.compile(r"!\[([^\]<>]*)\]\((data:image/svg\+xml;base64,[A-Za-z0-9+/=]+)\)")
# <link ... href="https://.../font-awesome...css"> as written by matplotlib's to_jshtml
CDN_FONT_AWESOME = re.compile(r"<link\b[^>]*\bhref=[\"']?(?:https?:)?//[^\"'>]*font-awesome[^>]*>", re.IGNORECASE)


def mathjax_es5() -> Path:
    """The ``es5`` folder of the MathJax 3 copy inside the ``mathjax`` package."""
    try:
        import mathjax
    except ImportError as error:  # the set-up installs it; say what is missing if not
        raise RuntimeError("offline MathJax needs the package django-static-mathjax: "
                           "pip install 'django-static-mathjax>=3.2.2'") from error
    es5 = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (es5 / BUNDLE).is_file() or not (es5 / FONTS).is_dir():
        raise RuntimeError(f"MathJax 3 bundle ({BUNDLE}) or CHTML fonts not found under {es5}")
    return es5


def copy_mathjax(app, config) -> None:
    source = mathjax_es5()
    static = Path(app.outdir).resolve().parent / STATIC_DIR
    target = static / "mathjax"
    bundle = target / BUNDLE
    stale = not bundle.is_file() or bundle.stat().st_size != (source / BUNDLE).stat().st_size
    if stale:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / BUNDLE, bundle)
        shutil.copytree(source / FONTS, target / FONTS, dirs_exist_ok=True)
    if str(static) not in map(str, config.html_static_path):
        config.html_static_path = [*config.html_static_path, str(static)]
    # a relative path: Sphinx serves it from _static/ (…/_static/mathjax/tex-mml-chtml.js)
    config.mathjax_path = f"mathjax/{BUNDLE}"


def _thebe_enabled(config) -> bool:
    options = getattr(config, "html_theme_options", {}) or {}
    launch = options.get("launch_buttons", {}) or {}
    thebe = getattr(config, "thebe_config", {}) or {}
    return bool(launch.get("thebe")) or bool(isinstance(thebe, dict) and thebe.get("always_load"))


def _is_thebe_script(script) -> bool:
    filename = str(getattr(script, "filename", script) or "")
    body = str(getattr(script, "attributes", {}).get("body", ""))
    return filename.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in body or "unpkg.com/thebe" in filename


def clean_page(app, pagename, templatename, context, doctree) -> None:
    """Fix inline SVG badges; drop CDN Font Awesome links, unused thebe scripts and duplicate scripts."""
    body = context.get("body")
    if isinstance(body, str) and "font-awesome" in body:
        context["body"] = body = CDN_FONT_AWESOME.sub("", body)
    if isinstance(body, str) and "](data:image/svg+xml;base64," in body:
        context["body"] = SVG_DATA_IMAGE.sub(r'<img alt="\1" src="\2" style="vertical-align: middle">', body)
    scripts = context.get("script_files")
    if not scripts:
        return
    drop_thebe = not _thebe_enabled(app.config)
    seen, kept = set(), []
    for script in scripts:
        if drop_thebe and _is_thebe_script(script):
            continue
        attributes = getattr(script, "attributes", {})
        key = (str(getattr(script, "filename", script) or ""),
               tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    scripts[:] = kept


def setup(app):
    app.connect("config-inited", copy_mathjax)
    # run before the theme's handlers, which may return a template name and end the chain
    app.connect("html-page-context", clean_page, priority=100)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
