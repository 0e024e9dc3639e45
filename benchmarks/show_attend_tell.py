"""Show, Attend and Tell: training steps per second for soft, hard and no attention, and the scene generator's speed.

    python benchmarks/show_attend_tell.py                # this machine's default device
    OMP_NUM_THREADS=1 python benchmarks/show_attend_tell.py
    ATTN_COURSE_DEVICE=cuda python benchmarks/show_attend_tell.py --batch 128

Every row trains the course's model (the registered ``sat`` configuration) with Adam on
the same batches of shape scenes, drawn beforehand; a step is the forward pass, the loss
(soft: -log p(y | a) + the doubly stochastic penalty; hard: the REINFORCE surrogate with
its baseline; none: -log p(y | a)), the backward pass and the update. Each figure is the
median of several timed steps after a warm-up. The generator rows time the layouts and
captions of 10,000 scenes (the integers and token ids), and rendering images and masks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import print_rows, timed, train_step_seconds  # noqa: E402

from attn_course.data.scenes import ShapeScenes, captions, render, sample_layouts  # noqa: E402
from attn_course.registry import get_spec  # noqa: E402
from attn_course.runtime import banner, get_device  # noqa: E402
from attn_course.show_attend_tell import ATTENTION, sat_loss  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--scenes", type=int, default=10_000, help="scenes for the generator rows")
    args = parser.parse_args(argv)

    device = get_device()
    print(banner(device=device))
    data = ShapeScenes(seed=0, train_size=2000, val_size=10, test_size=10, device=device)
    batches = [data.sample(torch.Generator().manual_seed(s), args.batch) for s in range(4)]
    words = statistics.mean(int((b["captions"][:, 1:] != 0).sum()) for b in batches)
    print(f"batch {args.batch} scenes of 64 x 64, {words / args.batch:.1f} words per caption (EOS included)")

    rows = []
    for attention in ATTENTION:
        torch.manual_seed(0)
        spec = get_spec("sat")
        model = spec.build(spec.model_config(attention)).to(device)
        seconds = train_step_seconds(model, sat_loss, batches, args.repeat, 3, device)
        rows.append((f"train step, {attention} attention", seconds, f"{1 / seconds:8.1f} steps/s"))
    sample = lambda: data.sample(torch.Generator().manual_seed(0), args.batch)  # noqa: E731
    seconds = timed(sample, args.repeat, 1, device)
    rows.append((f"draw a training batch of {args.batch}", seconds, f"{args.batch / seconds:8,.0f} scenes/s"))

    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    layout = sample_layouts(generator, args.scenes)
    text = captions(layout)
    layout_seconds = time.perf_counter() - start
    rows.append((f"layouts + captions of {args.scenes:,} scenes", layout_seconds,
                 f"{args.scenes / layout_seconds:8,.0f} scenes/s"))
    chunk = 1000
    start = time.perf_counter()
    for first in range(0, args.scenes, chunk):
        images, _ = render(layout.select(slice(first, first + chunk)), 64, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    render_seconds = time.perf_counter() - start
    rows.append((f"render images + masks of {args.scenes:,} scenes", render_seconds,
                 f"{args.scenes / render_seconds:8,.0f} scenes/s"))
    assert text["captions"].shape[0] == args.scenes and images.shape[1:] == (3, 64, 64)

    print_rows(rows, decimals=1)


if __name__ == "__main__":
    main()
