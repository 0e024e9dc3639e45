"""Vision Transformer training steps on the 60 x 60 canvases: time, parameters and multiply-adds per config.

    ATTN_COURSE_THREADS=1 python benchmarks/vit.py                    # the candidates below, one CPU thread
    ATTN_COURSE_THREADS=1 python benchmarks/vit.py --config 6,64,6 --config 10,96,6 --batch 64
    ATTN_COURSE_THREADS=1 python benchmarks/vit.py --config 28:7,64,4 --task mnist28

A config is ``P,D,L`` (patch side, d_model, depth; 4 heads, MLP width 2 D), or ``S:P,D,L``
for another image side S. Each row trains on the same batches of the task (fresh
translated or cluttered canvases, as in training) with chapter 6's AdamW and rate (6.9),
and gives the median of several timed steps after a warm-up, the parameters and the
multiply-adds per image of the forward pass (6.8), counted from the shapes. The banner
says how many cores other programs kept busy: a loaded machine slows every row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import timed  # noqa: E402

from attn_course.baselines import classification_loss  # noqa: E402
from attn_course.data.tasks import MNISTVariantTask  # noqa: E402
from attn_course.runtime import banner, busy_cores, get_device, set_cpu_threads  # noqa: E402
from attn_course.vit import ViT, ViTConfig, multiply_adds, parameter_count, vit_optimizer  # noqa: E402

CANDIDATES = ("6,64,6", "10,96,6", "12,128,4")


def parse_config(text: str, image_size: int) -> ViTConfig:
    size, _, rest = text.rpartition(":")
    try:
        patch, d_model, depth = (int(v) for v in rest.split(","))
    except ValueError:
        raise SystemExit(f"--config expects P,D,L or S:P,D,L (integers), got {text!r}") from None
    return ViTConfig(image_size=int(size) if size else image_size, patch=patch, d_model=d_model, depth=depth,
                     heads=4, mlp_ratio=2)


def step_seconds(config: ViTConfig, batches, repeat: int, warmup: int, device) -> float:
    torch.manual_seed(0)
    model = ViT(config).to(device)
    optimizer, schedule = vit_optimizer(model, 1e-3, 10_000, warmup=100)
    order = iter(range(10**9))

    def step():
        loss, _ = classification_loss(model, batches[next(order) % len(batches)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    return timed(step, repeat, warmup, device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="P,D,L or S:P,D,L (repeatable)")
    parser.add_argument("--task", default="translated60", choices=["mnist28", "translated60", "cluttered60"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    set_cpu_threads()
    device = get_device()
    busy = busy_cores(1.0)
    print(banner(device=device))
    print(f"{torch.get_num_threads()} thread(s); other programs kept {busy if busy is None else round(busy, 2)} "
          f"cores busy; task {args.task}, batch {args.batch}")
    task = MNISTVariantTask(args.task, device=device)
    generator = torch.Generator().manual_seed(0)
    batches = [task.sample(generator, args.batch) for _ in range(4)]
    size = task.image_size
    print(f"{'P,D,L':>10} {'tokens':>6} {'params':>9} {'MACs/image':>12} {'ms/step':>9} {'images/s':>9}")
    for text in args.config or CANDIDATES:
        config = parse_config(text, size)
        if config.image_size != size:
            raise SystemExit(f"config {text!r} is for {config.image_size} x {config.image_size} images, "
                             f"the task's are {size} x {size}")
        seconds = step_seconds(config, batches, args.repeat, args.warmup, device)
        macs = multiply_adds(config)["total"]
        params = parameter_count(config)["total"]
        name = f"{config.patch},{config.d_model},{config.depth}"
        print(f"{name:>10} {config.tokens:>6} {params:>9,} {macs:>12,} {seconds * 1e3:>9.1f} "
              f"{args.batch / seconds:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
