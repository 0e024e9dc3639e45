"""R2AM: training steps per second for each block with and without attention, and the text-line generator's speed.

    python benchmarks/r2am.py                # this machine's default device
    OMP_NUM_THREADS=1 python benchmarks/r2am.py
    ATTN_COURSE_DEVICE=cuda python benchmarks/r2am.py --batch 256

Every row trains the course's model (the registered ``r2am`` configuration of that
variant) with Adam on the same few batches of text lines, drawn beforehand; a step is
the forward pass with teacher forcing, the loss (4.7), the backward pass and the update.
Each figure is the median of several timed steps after a warm-up. The generator rows time
drawing and rendering a training batch, and rendering many lines in large batches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import print_rows, timed, train_step_seconds  # noqa: E402

from attn_course.data.text_lines import TextLines  # noqa: E402
from attn_course.experiments.r2am import TASKS  # noqa: E402
from attn_course.r2am import r2am_loss  # noqa: E402
from attn_course.registry import get_spec  # noqa: E402
from attn_course.runtime import banner, get_device  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--lines", type=int, default=10_000, help="lines for the generator row")
    parser.add_argument("--variants", nargs="*", default=list(TASKS))
    args = parser.parse_args(argv)

    device = get_device()
    print(banner(device=device))
    data = TextLines(device=device)
    batches = [data.sample(torch.Generator().manual_seed(s), args.batch) for s in range(3)]
    print(f"batch {args.batch} lines of 32 x 100")

    rows = []
    for task in args.variants:
        torch.manual_seed(0)
        spec = get_spec("r2am")
        model = spec.build(spec.model_config(task)).to(device)
        seconds = train_step_seconds(model, r2am_loss, batches, args.repeat, 2, device)
        params = sum(p.numel() for p in model.parameters())
        rows.append((f"train step, {task} ({params:,} parameters)", seconds, f"{1 / seconds:8.1f} steps/s"))
    generator = torch.Generator().manual_seed(0)
    seconds = timed(lambda: data.sample(generator, args.batch), args.repeat, 1, device)
    rows.append((f"draw and render a training batch of {args.batch}", seconds, f"{args.batch / seconds:8,.0f} lines/s"))
    chunk = 1000
    seconds = timed(lambda: [data.sample(generator, chunk) for _ in range(args.lines // chunk)], 1, 0, device)
    rows.append((f"draw and render {args.lines:,} lines ({chunk} a batch)", seconds,
                 f"{args.lines / seconds:8,.0f} lines/s"))

    print_rows(rows, decimals=1)


if __name__ == "__main__":
    main()
