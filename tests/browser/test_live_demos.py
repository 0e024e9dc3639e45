"""Drive the live demos in the served book and compare what they show with the package.

Each chapter page with a demo is opened from 127.0.0.1; the demo must start (its models load
in onnxruntime-web from ``_live/``), request nothing from another host, and answer as the
package does on the reference cases that ``python -m attn_course export-web`` wrote into
``demos.json`` from PyTorch:

- chapter 5: for each typed date, the calendar-constrained answer of ``translate_dates`` and the
  model's own greedy reading, character for character;
- chapter 1: the glimpse path of the deterministic policy on ten digits (locations within
  1e-4 of ``glimpse_paths``; the same class), and the path after a glimpse placed by a click;
- chapter 2: the filterbank read gamma F_Y x F_X^T for four settings of the sliders (1e-9).

Opened from a file, every demo must show its static figure and the line that says how to get
the live version. Load times and per-interaction latencies go to
``_build/live_demo_timings.json``. Build the book first (``make book``).
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlparse

import pytest
import torch
from test_built_book import LOCAL_HOSTS, SITE, browser, server, unavailable  # noqa: F401 (fixtures)

from attn_course.ram import glimpse_paths
from attn_course.registry import load_pretrained

pytestmark = pytest.mark.browser

PAGES = {"dates": "notebooks/05_transformer.html", "ram": "notebooks/01_recurrent_attention_model.html",
         "filterbank": "notebooks/02_draw.html"}
TIMINGS = SITE.parent / "live_demo_timings.json"


def demos() -> dict:
    path = SITE / "_live" / "demos.json"
    if not path.is_file():
        unavailable(f"no {path}: build the book with `make book` (it runs `make web`)")
    return json.loads(path.read_text())


def record(name: str, values: dict) -> None:
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    timings[name] = values
    TIMINGS.write_text(json.dumps(timings, indent=1))


def block(name: str) -> str:
    return f'.live-demo[data-demo="{name}"]'


def dataset(page, name: str, key: str):
    return page.get_attribute(block(name), f"data-{key}")


@pytest.fixture
def open_demo(server, browser):
    """open_demo(name) -> (page, seconds until the demo was ready); checks that nothing left localhost."""
    contexts, outside = [], []

    def opener(name):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        errors = []
        page.on("request", lambda request: outside.append(request.url)
                if urlparse(request.url).scheme in ("http", "https")
                and urlparse(request.url).hostname not in LOCAL_HOSTS else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        started = time.perf_counter()
        page.goto(f"{server}/{PAGES[name]}", wait_until="load")
        page.wait_for_selector(f"{block(name)}[data-state]", state="attached", timeout=60_000)
        ready = time.perf_counter() - started
        state = dataset(page, name, "state")
        assert state == "ready", f"{name}: the demo did not start: {page.inner_text(block(name))[-300:]!r}"
        assert page.is_visible(f"{block(name)} .live-demo-app") and not page.is_visible(
            f"{block(name)} .live-demo-fallback"), f"{name}: the live demo should replace the static figure"
        assert not errors, f"{name}: JavaScript errors: {errors[:3]}"
        return page, ready

    yield opener
    for context in contexts:
        context.close()
    assert not outside, f"requests to other hosts: {sorted(set(outside))[:5]}"


def test_the_dates_demo_writes_what_the_package_writes(open_demo):
    page, ready = open_demo("dates")
    latencies = []
    for example in demos()["dates"]["examples"]:
        page.fill(f"{block('dates')} input", example["text"])
        page.wait_for_function("([selector, text]) => document.querySelector(selector).dataset.input === text",
                               arg=[block("dates"), example["text"]], timeout=20_000)
        assert dataset(page, "dates", "output") == example["output"], example
        assert dataset(page, "dates", "greedy") == example["greedy"], example
        if example["corrected"]:  # the model wrote no day: the page says so beside the calendar's answer
            assert f"own reading, {example['greedy']}, is not a day" in page.inner_text(block("dates"))
        latencies.append(float(dataset(page, "dates", "ms")))
    # another head draws another map
    canvas = f"{block('dates')} canvas"
    mean = page.eval_on_selector(canvas, "c => c.toDataURL()")
    page.select_option(f"{block('dates')} select[aria-label=head]", "0")
    assert page.eval_on_selector(canvas, "c => c.toDataURL()") != mean
    # a character outside the vocabulary: a message, no output
    page.fill(f"{block('dates')} input", "3 March 2021 \u2603")
    page.wait_for_function("([selector, text]) => document.querySelector(selector).dataset.input === text",
                           arg=[block("dates"), "3 March 2021 \u2603"])
    assert dataset(page, "dates", "output") == ""
    assert "not in the vocabulary" in page.inner_text(block("dates"))
    record("dates", {"ready_s": round(ready, 2), "ms_per_date": sorted(latencies)})


def test_the_ram_demo_follows_the_package_policy(open_demo):
    page, ready = open_demo("ram")
    spec = demos()["ram"]
    T = spec["num_glimpses"]
    done = "([selector, n]) => document.querySelector(selector).dataset.glimpses === n"
    started, steps = time.perf_counter(), []
    for d in range(len(spec["digits"])):
        page.click(f"{block('ram')} button[data-digit='{d}']")
        page.click(f"{block('ram')} button:text('all {T}')")
        page.wait_for_function(done, arg=[block("ram"), str(T)], timeout=20_000)
        locations = json.loads(dataset(page, "ram", "locations"))
        expected = spec["paths"]["locations"][d]
        worst = max(abs(a - b) for step, ref in zip(locations, expected) for a, b in zip(step, ref))
        assert len(locations) == T and worst < 1e-4, (d, locations, expected)
        assert int(dataset(page, "ram", "predicted")) == spec["paths"]["predicted"][d]
        steps.append(float(dataset(page, "ram", "ms")))
    per_digit = (time.perf_counter() - started) / len(spec["digits"])
    # the second glimpse placed by a click, then the policy again
    page.click(f"{block('ram')} button[data-digit='0']")
    page.click(f"{block('ram')} button:text('next glimpse')")
    page.wait_for_function(done, arg=[block("ram"), "1"])
    x, y = spec["placed"]["at"]["1"]
    box = page.locator(f"{block('ram')} canvas").bounding_box()
    inner = page.eval_on_selector(f"{block('ram')} canvas",  # the picture, inside the canvas's border
                                  "c => [c.clientLeft, c.clientTop, c.clientWidth, c.clientHeight]")
    page.mouse.click(box["x"] + inner[0] + (x + 1) / 2 * inner[2], box["y"] + inner[1] + (y + 1) / 2 * inner[3])
    page.wait_for_function(done, arg=[block("ram"), "2"])
    page.click(f"{block('ram')} button:text('all {T}')")
    page.wait_for_function(done, arg=[block("ram"), str(T)])
    locations = json.loads(dataset(page, "ram", "locations"))
    expected = spec["placed"]["locations"][0]
    assert max(abs(a - b) for step, ref in zip(locations, expected) for a, b in zip(step, ref)) < 1e-4
    assert int(dataset(page, "ram", "predicted")) == spec["placed"]["predicted"][0]
    # a digit drawn with the mouse: the page reads it as the package does
    page.click(f"{block('ram')} button:text('draw your own')")
    box = page.locator(f"{block('ram')} canvas").bounding_box()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    for step in range(1, 11):  # a stroke down the middle: a 1
        page.mouse.move(box["x"] + (0.5 - 0.01 * step) * box["width"], box["y"] + (0.2 + 0.06 * step) * box["height"])
    page.mouse.up()
    page.click(f"{block('ram')} button:text('all {T}')")
    page.wait_for_function(done, arg=[block("ram"), str(T)])
    drawn = page.eval_on_selector(block("ram"), "b => Array.from(b.ramImage)")
    assert sum(v > 0.5 for v in drawn) > 20, "the stroke left ink"
    image = torch.tensor(drawn, dtype=torch.float32).view(1, 1, spec["image_size"], spec["image_size"])
    paths = glimpse_paths(load_pretrained("ram", "mnist28", device="cpu"), image)
    locations = json.loads(dataset(page, "ram", "locations"))
    assert torch.allclose(torch.tensor(locations), paths["locations"][0], atol=1e-4)
    assert int(dataset(page, "ram", "predicted")) == int(paths["predicted"][0])
    record("ram", {"ready_s": round(ready, 2), "ms_per_digit_all_glimpses": round(1000 * per_digit, 1),
                   "ms_last_glimpse_step": sorted(steps)})


def test_the_filterbank_demo_reads_like_the_package(open_demo):
    page, ready = open_demo("filterbank")
    set_value = "(input, value) => { input.value = value; input.dispatchEvent(new Event('input')); }"
    redraws = []
    for case in demos()["filterbank"]["cases"]:
        for name in ("g_X", "g_Y", "delta", "sigma2", "gamma", "N"):
            page.eval_on_selector(f"{block('filterbank')} input[data-parameter='{name}']", set_value, str(case[name]))
        params = json.loads(dataset(page, "filterbank", "params"))
        assert all(params[name] == case[name] for name in params), (params, case)
        patch = json.loads(dataset(page, "filterbank", "patch"))
        expected = [v for row in case["patch"] for v in row]
        assert len(patch) == case["N"] ** 2 and max(abs(a - b) for a, b in zip(patch, expected)) < 1e-9, case
        redraws.append(float(dataset(page, "filterbank", "ms")))
    record("filterbank", {"ready_s": round(ready, 2), "ms_per_slider_move": sorted(redraws)})


@pytest.mark.parametrize("name", sorted(PAGES))
def test_a_page_opened_from_a_file_shows_the_static_figure(browser, name):
    path = SITE / PAGES[name]
    if not path.is_file():
        unavailable(f"no {path}: run `make book` first")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(path.as_uri(), wait_until="load")
        page.wait_for_timeout(500)  # time for a script that should not run
        assert page.locator(block(name)).count() == 1, f"{PAGES[name]} has no {name} demo"
        assert not page.eval_on_selector(block(name), "b => b.classList.contains('live')")
        image = f"{block(name)} .live-demo-fallback img"
        assert page.is_visible(image) and page.eval_on_selector(image, "i => i.complete && i.naturalWidth > 0")
        note = page.inner_text(f"{block(name)} .live-demo-note")
        assert "make serve" in note and "live" in note.lower(), note
    finally:
        context.close()
