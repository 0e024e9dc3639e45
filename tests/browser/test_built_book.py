"""Open every page of the built book in a real browser (Debian's Chromium, driven by Playwright).

Checks that the book works offline: math rendered by the local MathJax (no raw TeX,
no math errors), every image loaded, animations play, and no request left the machine.
Run after `jupyter-book build .`; CI sets ATTN_COURSE_REQUIRE_BROWSER=1 so that a
missing build or browser fails instead of skipping.
"""

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
CHROMIUM = os.environ.get("ATTN_COURSE_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("ATTN_COURSE_REQUIRE_BROWSER") == "1"
SKIP_PAGES = {"search.html", "genindex.html", "index.html"}  # index.html only redirects to the landing page

pytestmark = pytest.mark.browser


def unavailable(reason):
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


def content_pages():
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
                  if p.name not in SKIP_PAGES and not p.relative_to(SITE).parts[0].startswith("_"))


@pytest.fixture(scope="module")
def server():
    if not (SITE / "index.html").is_file():
        unavailable(f"no built book at {SITE}: run `jupyter-book build .` first")
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        unavailable(f"no Chromium at {CHROMIUM}: install Debian's chromium (the Makefile does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield browser
        browser.close()


VISIBLE_TEXT = """() => {
  const main = (document.querySelector('main') || document.body).cloneNode(true);
  main.querySelectorAll('pre, code, .highlight, script, style, mjx-container').forEach(e => e.remove());
  return main.innerText;
}"""


def test_the_book_has_pages():
    if not SITE.is_dir():
        unavailable(f"no built book at {SITE}")
    pages = content_pages()
    assert "book/intro.html" in pages and any(p.startswith("notebooks/") for p in pages), pages


@pytest.mark.parametrize("page_path", content_pages() or ["book/intro.html"])
def test_page_renders_offline(server, browser, page_path):
    context = browser.new_context()
    page = context.new_page()
    outside = []
    page.on("request", lambda request: outside.append(request.url)
            if urlparse(request.url).scheme not in ("data", "blob", "about")
            and urlparse(request.url).hostname not in ("127.0.0.1", "localhost") else None)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/{page_path}", wait_until="networkidle")

    has_mathjax = page.evaluate("() => !!document.querySelector('script[src*=\"mathjax\"]')")
    if has_mathjax:
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20_000)
        page.evaluate("() => MathJax.startup.promise")
        page.wait_for_load_state("networkidle")
    math_nodes = page.evaluate("() => document.querySelectorAll('.math, .MathJax, mjx-container').length")
    rendered = page.evaluate("() => document.querySelectorAll('mjx-container').length")
    if math_nodes:
        assert has_mathjax, f"{page_path} has math but loads no MathJax"
        assert rendered > 0, f"{page_path}: MathJax rendered no math"
    assert page.evaluate("() => document.querySelectorAll('mjx-merror').length") == 0, f"{page_path}: math errors"
    text = page.evaluate(VISIBLE_TEXT)
    for raw in ("$$", "\\begin{", "\\frac", "\\sum"):
        assert raw not in text, f"{page_path}: raw TeX {raw!r} left in the page"

    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_load_state("networkidle")
    broken = page.evaluate("""() => Array.from(document.images)
        .filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src.slice(0, 80))""")
    assert not broken, f"{page_path}: images that did not load: {broken}"

    animations = page.evaluate("() => Array.from(document.querySelectorAll('img[id^=\"_anim_img\"]')).map(i => i.id)")
    for image_id in animations:
        anim_id = image_id[len("_anim_img"):]
        before = page.evaluate(f"() => document.getElementById('{image_id}').src")
        page.click(f"button[onclick*='anim{anim_id}.play_animation']")
        page.wait_for_timeout(1200)
        after = page.evaluate(f"() => document.getElementById('{image_id}').src")
        assert after != before, f"{page_path}: animation {anim_id} did not play"

    assert not outside, f"{page_path} requested other hosts: {sorted(set(outside))[:5]}"
    assert not errors, f"{page_path}: JavaScript errors: {errors[:3]}"
    context.close()
