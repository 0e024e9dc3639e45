"""Drive a real browser over the built book and check that it works offline.

Debian's Chromium (never a browser downloaded by `playwright install`) opens every
content page of `_build/html`, served from 127.0.0.1, and the test checks that

- no request goes to any other host (data: and blob: URLs are fine) and no local
  file is missing;
- math is typeset by the local MathJax: `mjx-container` elements exist on the landing
  page and on every page with math, there is no `mjx-merror`, and no raw TeX is left
  in the visible text;
- every image has loaded, and every matplotlib `to_jshtml` animation plays;
- no Markdown is left as text: no table syntax (a results table printed with
  `display(Markdown(...))` must be a table), no raw `$`;
- every cell output of a chapter is there and shows something: as many outputs as the
  executed notebook in the book's cache has, none of them empty;
- the page raises no JavaScript error.

Build the book first (`make book` or `jupyter-book build --all .`). Without a build or
a Chromium the tests skip, unless ATTN_COURSE_REQUIRE_BROWSER=1 (CI, `make test`),
which turns the skip into a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the browser fixture skips (or fails) with a clear reason
    PlaywrightTimeout = TimeoutError

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
CHROMIUM = Path(os.environ.get("ATTN_COURSE_CHROMIUM", "/usr/bin/chromium"))
REQUIRED = os.environ.get("ATTN_COURSE_REQUIRE_BROWSER") == "1"
LANDING = "book/intro.html"
# index.html only redirects to the landing page; search and the index are Sphinx's own
SKIP_PAGES = {"index.html", "search.html", "genindex.html", "py-modindex.html"}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
RAW_TEX = ("$$", "\\begin{", "\\end{", "\\frac", "\\sum", "\\(", "\\[")
# A Markdown table left as text: its delimiter row, or a line that starts and ends with a pipe.
TABLE_SYNTAX = re.compile(r"\|\s*:?-{3,}:?\s*\||^\s*\|.*\|\s*$", re.MULTILINE)
CACHE = ROOT / "_build" / ".jupyter_cache"
REMOVED_OUTPUT_TAGS = {"remove-output", "remove-cell"}

pytestmark = pytest.mark.browser


def unavailable(reason: str):
    """Skip, or fail where the browser check is required."""
    if REQUIRED:
        pytest.fail(f"{reason} (ATTN_COURSE_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def content_pages() -> list[str]:
    if not SITE.is_dir():
        return []
    pages = []
    for path in SITE.rglob("*.html"):
        relative = path.relative_to(SITE)
        if relative.name in SKIP_PAGES and len(relative.parts) == 1:
            continue
        if any(part.startswith("_") for part in relative.parts):  # _static, _sources, _images
            continue
        pages.append(relative.as_posix())
    return sorted(pages)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    if not (SITE / "index.html").is_file():
        unavailable(f"no built book at {SITE}: run `make book` (or `jupyter-book build --all .`) first")
    handler = functools.partial(QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        unavailable(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (the Makefile's `browser` target)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        unavailable("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# The text a reader sees in the main column, without code, scripts and typeset math.
VISIBLE_TEXT = """() => {
  const main = (document.querySelector('main') || document.body).cloneNode(true);
  main.querySelectorAll('pre, code, .highlight, script, style, mjx-container, mjx-assistive-mml')
      .forEach(e => e.remove());
  return main.innerText;
}"""

HAS_MATH = """() => document.querySelectorAll(
  'main .math, main mjx-container, main script[type^="math/tex"]').length"""

# Each cell output of the page: how much it shows (text, images, tables, animations).
CELL_OUTPUTS = """() => Array.from(document.querySelectorAll('main div.cell_output')).map((out, i) => ({
  index: i,
  text: out.innerText.trim().length,
  media: out.querySelectorAll('img, svg, table, canvas, video, iframe, mjx-container').length,
  html: out.innerHTML.slice(0, 120),
}))"""

BROKEN_IMAGES = """() => Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => (img.id || '') + ' ' + img.src.slice(0, 80))"""


def executed_output_count(page_path: str) -> int | None:
    """Cells with outputs in the executed notebook behind a chapter page (from the book's cache), or None."""
    source = ROOT / Path(page_path).with_suffix(".ipynb")
    if not source.is_file() or not CACHE.is_dir():
        return None
    import nbformat
    from jupyter_cache import get_cache

    try:
        _, executed = get_cache(str(CACHE)).merge_match_into_notebook(nbformat.read(source, as_version=4))
    except KeyError:  # not in the cache: the build executed it itself
        return None
    return sum(1 for cell in executed.cells if cell.cell_type == "code" and cell.get("outputs")
               and not REMOVED_OUTPUT_TAGS & set(cell.get("metadata", {}).get("tags", [])))


def check_markdown_rendered(page_path: str, text: str) -> None:
    table = TABLE_SYNTAX.search(text)
    assert table is None, f"{page_path}: Markdown table syntax left as text: {table.group(0)[:80]!r}"
    if "$" in text:
        at = text.index("$")
        pytest.fail(f"{page_path}: a raw $ in the visible text: {text[max(0, at - 40):at + 40]!r}")


def check_cell_outputs(page_path: str, outputs: list[dict]) -> None:
    empty = [o for o in outputs if o["text"] == 0 and o["media"] == 0]
    assert not empty, f"{page_path}: {len(empty)} empty cell output(s), e.g. output {empty[0]['index']}: " \
                      f"{empty[0]['html']!r}"
    expected = executed_output_count(page_path)
    if expected is not None:
        assert len(outputs) == expected, (f"{page_path}: the page shows {len(outputs)} cell outputs, the executed "
                                          f"notebook has {expected}")


def test_the_build_has_the_landing_page_and_chapters():
    if not (SITE / "index.html").is_file():
        unavailable(f"no built book at {SITE}: run `make book` first")
    pages = content_pages()
    assert LANDING in pages, pages
    assert any(page.startswith("notebooks/") for page in pages), f"no chapter pages in {pages}"


@pytest.mark.parametrize("page_path", content_pages() or [LANDING])
def test_page_works_offline(server, browser, page_path):
    context = browser.new_context()
    page = context.new_page()
    outside, missing, errors = [], [], []

    def on_request(request):
        url = urlparse(request.url)
        if url.scheme in ("data", "blob", "about"):
            return
        if url.hostname not in LOCAL_HOSTS:
            outside.append(request.url)

    def on_response(response):
        if response.status >= 400 and urlparse(response.url).hostname in LOCAL_HOSTS:
            missing.append(f"{response.status} {response.url}")

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{server}/{page_path}", wait_until="load")

        # math: wait for the local MathJax to finish typesetting
        has_math = page.evaluate(HAS_MATH) > 0
        if has_math or page_path == LANDING:
            assert has_math, f"{page_path}: the landing page should show at least one equation"
            try:
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                       timeout=10_000)
            except PlaywrightTimeout:
                pytest.fail(f"{page_path}: MathJax did not start within 10 s; requests to other hosts: "
                            f"{sorted(set(outside))[:5]}; missing local files: {missing[:5]}")
            page.evaluate("() => MathJax.startup.promise")
            typeset = page.evaluate("() => document.querySelectorAll('main mjx-container').length")
            assert typeset > 0, f"{page_path}: has math but MathJax typeset none of it"
        assert page.evaluate("() => document.querySelectorAll('mjx-merror').length") == 0, \
            f"{page_path}: MathJax reports errors (mjx-merror)"
        text = page.evaluate(VISIBLE_TEXT)
        left = [raw for raw in RAW_TEX if raw in text]
        assert not left, f"{page_path}: raw TeX {left} left in the visible text"
        assert "](data:" not in text and "](http" not in text, f"{page_path}: a Markdown image or link left as text"
        check_markdown_rendered(page_path, text)
        if page_path.startswith("notebooks/"):
            check_cell_outputs(page_path, page.evaluate(CELL_OUTPUTS))

        # images: load everything, lazy images included
        page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_load_state("networkidle")
        broken = page.evaluate(BROKEN_IMAGES)
        assert not broken, f"{page_path}: images that did not load: {broken}"

        # matplotlib to_jshtml animations: press Play, the frame must change
        for image_id in page.evaluate(
                "() => Array.from(document.querySelectorAll('img[id^=\"_anim_img\"]')).map(i => i.id)"):
            anim = image_id[len("_anim_img"):]
            before = page.evaluate("id => document.getElementById(id).src", image_id)
            page.click(f"button[onclick*='anim{anim}.play_animation']")
            page.wait_for_function("([id, src]) => document.getElementById(id).src !== src",
                                   arg=[image_id, before], timeout=5_000)
            page.click(f"button[onclick*='anim{anim}.pause_animation']")

        page.wait_for_load_state("networkidle")
        assert not outside, f"{page_path} requested other hosts: {sorted(set(outside))[:5]}"
        assert not missing, f"{page_path}: local files missing: {missing[:5]}"
        assert not errors, f"{page_path}: JavaScript errors: {errors[:3]}"
    finally:
        context.close()


def test_the_text_checks_catch_what_they_look_for():
    """The checks above can fail: raw tables, raw dollars and empty outputs are caught."""
    with pytest.raises(AssertionError, match="table syntax"):
        check_markdown_rendered("p", "Results\n| | recursive | recurrent |\n|---|---|---|\n| words | 94% | 95% |")
    with pytest.raises(AssertionError, match="table syntax"):
        check_markdown_rendered("p", "| | recursive | recurrent | |---|---|---| | word accuracy")
    with pytest.raises(pytest.fail.Exception, match="raw \\$"):
        check_markdown_rendered("p", "the bound $L^z$ in nats")
    check_markdown_rendered("p", "A table renders as cells; a | alone is fine.")
    with pytest.raises(AssertionError, match="empty cell output"):
        check_cell_outputs("notebooks/none.html", [{"index": 0, "text": 0, "media": 0, "html": "<script>"}])
    check_cell_outputs("notebooks/none.html", [{"index": 0, "text": 12, "media": 0, "html": "<pre>"}])
