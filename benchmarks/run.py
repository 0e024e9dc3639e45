"""Time the course's hot paths and print a table a reader can compare.

    python benchmarks/run.py            # on this machine's default device
    ATTN_COURSE_DEVICE=cuda python benchmarks/run.py

Each row is the median of several timed repetitions after a warm-up.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from attn_course.runtime import banner, get_device


def timed(fn, repeat=5, warmup=1, device=None):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_seconds(model, loss_fn, batches, repeat=8, warmup=2, device=None):
    """Median seconds of one Adam step of ``loss_fn(model, batch)`` over ``batches`` taken in turn."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    counter = iter(range(10**9))

    def step():
        loss, _ = loss_fn(model, batches[next(counter) % len(batches)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed(step, repeat, warmup, device)


def print_rows(rows, decimals=2):
    """Print (name, seconds, rate) rows as an aligned table in milliseconds."""
    width = max(len(r[0]) for r in rows)
    for name, seconds, rate in rows:
        print(f"{name:<{width}}  {seconds * 1e3:9.{decimals}f} ms  {rate}")


def main():
    import matplotlib

    matplotlib.use("Agg")
    from attn_course.baselines import FullyConnected, classification_loss
    from attn_course.data import load_mnist
    from attn_course.data.ram_variants import make_variant

    device = get_device()
    print(banner(device=device))
    images, labels = load_mnist("train", device=device)
    rows = []
    for variant in ("translated60", "cluttered60", "cluttered100"):
        n = 10_000
        t = timed(lambda: make_variant(variant, images[:n], labels[:n], seed=1, device=device), device=device)
        rows.append((f"generate 10,000 {variant}", t, f"{n / t:,.0f} images/s"))

    model = FullyConnected(60).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    batch = make_variant("cluttered60", images[:128], labels[:128], seed=2, device=device)

    def step():
        loss, _ = classification_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    t = timed(step, repeat=50, warmup=5, device=device)
    rows.append(("fc baseline train step, batch 128, 60x60", t, f"{1 / t:,.0f} steps/s"))

    try:
        from attn_course.attention import glimpse

        big = batch["images"]
        x = torch.zeros(len(big), device=device)
        t = timed(lambda: glimpse(big, x, x, 0.5, 0.3, 12), repeat=50, device=device)
        rows.append(("glimpse 12x12 rotated, batch 128", t, f"{len(big) / t:,.0f} glimpses/s"))
        from attn_course.widgets.glimpse import glimpse_figure
        import matplotlib.pyplot as plt

        image = images[0].float() / 255

        def redraw():
            plt.close(glimpse_figure(image, 0.1, -0.2, 0.5, 0.4, 16))

        t = timed(redraw, repeat=5)
        rows.append(("chapter 0 glimpse widget redraw", t, "per slider move"))
    except ImportError as error:  # chapter 0 not installed
        print(f"skipping chapter 0 rows: {error}")

    rows += ram_rows(images, labels, device)
    print_rows(rows)


def ram_rows(images, labels, device):
    """RAM (chapter 1): training steps per second, and the vectorised glimpse sensor against a loop."""
    from attn_course.data.ram_variants import make_variant
    from attn_course.ram import PAPER_CONFIGS, RecurrentAttentionModel, glimpse_sensor, glimpse_sensor_loop, hybrid_loss

    rows = []
    rectifier = dataclasses.replace(PAPER_CONFIGS["cluttered60"], core="rnn")  # the paper's core, for comparison
    for task, config in (("mnist28", PAPER_CONFIGS["mnist28"]), ("cluttered60", PAPER_CONFIGS["cluttered60"]),
                         ("cluttered60", rectifier)):
        model = RecurrentAttentionModel(config).to(device)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        batch = make_variant(task, images[:128], labels[:128], seed=3, device=device)

        def step():
            loss, _ = hybrid_loss(model(batch["images"]), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        t = timed(step, repeat=20, warmup=3, device=device)
        rows.append((f"RAM train step, {task}, {config.core} core, batch 128", t, f"{1 / t:,.1f} steps/s"))
    batch = make_variant("cluttered100", images[:128], labels[:128], seed=4, device=device)
    l = torch.rand(128, 2, device=device) * 2 - 1
    fast = timed(lambda: glimpse_sensor(batch["images"], l, 12, 4), repeat=20, device=device)
    slow = timed(lambda: glimpse_sensor_loop(batch["images"], l, 12, 4), repeat=3, device=device)
    rows.append(("RAM glimpse sensor, vectorised (128 x 4 scales, 100x100)", fast, f"{slow / fast:,.1f}x the loop"))
    rows.append(("RAM glimpse sensor, per-sample loop (same)", slow, ""))
    return rows


if __name__ == "__main__":
    main()
