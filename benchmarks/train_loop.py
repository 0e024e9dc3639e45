"""Steps per second through ``attn_course.train.fit``: the loop's own cost, and chapters' models.

    python benchmarks/train_loop.py                              # this machine's default device
    ATTN_COURSE_DEVICE=cuda python benchmarks/train_loop.py --steps 500
    python benchmarks/train_loop.py --models ram:mnist28 --steps 50 --repeat 3

The first row trains a one-weight model on a fixed batch, so that nearly all of a step is
the loop itself (autocast, the loss and metrics read back, the optimiser, the history, the
progress bar): the microseconds of overhead that every chapter pays per step, and that a
GPU pays as idle time when the loop waits on the device. The other rows train a chapter's
model (``NAME:TASK`` in the registry) at its recipe's batch size and learning rate, on its
own training data, without evaluation. Each row is the median of ``--repeat`` runs of
``--steps`` steps after a warm-up run; on a GPU ``fit`` waits for the device at its end,
so the time covers every step's work. Beside the wall-clock rate, each row gives the
process's CPU time per step, which other programs on a busy machine disturb less (with
one torch thread it is the time the loop kept a core busy; on a GPU it includes the
waits for the device, which CUDA spends spinning).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from attn_course.runtime import banner, get_device, set_cpu_threads
from attn_course.train import TrainConfig, fit


class OneWeight(nn.Module):
    """y = w x: the smallest model with a gradient and an optimiser state."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.w * x


def overhead_run(steps: int, device: torch.device) -> float:
    """Seconds of ``steps`` steps of the one-weight model, with a loss and two metrics as tensors."""
    model = OneWeight().to(device)
    batch = torch.linspace(-1, 1, 8, device=device)

    def loss_fn(model, x):
        error = model(x) - 2 * x
        loss = (error ** 2).mean()
        return loss, {"abs_error": error.abs().mean(), "weight": model.w.detach()[0]}

    result = fit(model, lambda generator, size: batch, loss_fn, TrainConfig(steps=steps, batch_size=8),
                 device=device, progress=False)
    return result.wall_time


def chapter_run(name: str, task: str, steps: int, device: torch.device, cache: dict) -> float:
    """Seconds of ``steps`` steps of a chapter's model, from scratch, at its recipe's settings."""
    from attn_course.registry import get_spec

    spec = get_spec(name)
    task = spec.check_task(task)
    recipe = spec.recipes[task]
    if (name, task) not in cache:  # the data once per row: loading MNIST is not a training step
        cache[name, task] = spec.data(task, device)
    torch.manual_seed(0)
    model = spec.model_class(spec.config(task)).to(device)
    config = TrainConfig(steps=steps, batch_size=recipe.batch_size, lr=recipe.lr, log_every=recipe.log_every,
                         clip_grad_norm=recipe.clip_grad_norm, amp=recipe.amp)
    return fit(model, cache[name, task].sample, spec.loss(task), config, device=device, progress=False).wall_time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ram:mnist28,transformer:dates",
                        help="comma-separated NAME:TASK rows after the overhead row ('' for none)")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed run (default 100)")
    parser.add_argument("--overhead-steps", type=int, default=2000, help="steps of the overhead row (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per row; the median is shown (default 3)")
    args = parser.parse_args(argv)
    if min(args.steps, args.overhead_steps, args.repeat) < 1:
        parser.error("--steps, --overhead-steps and --repeat must be positive")
    args.rows = [tuple(item.split(":", 1)) for item in args.models.split(",") if item.strip()]
    bad = [":".join(row) for row in args.rows if len(row) != 2]
    if bad:
        parser.error(f"--models takes NAME:TASK items (e.g. ram:mnist28), got {', '.join(bad)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    set_cpu_threads()
    device = get_device()
    print(banner(device=device))
    rows = []

    def measure(label, run, steps):
        """(label, steps per second, CPU milliseconds per step): medians over the timed runs."""
        run(max(steps // 10, 5))  # warm-up
        walls, cpus = [], []
        for _ in range(args.repeat):
            cpu_start = time.process_time()
            walls.append(run(steps))
            cpus.append(time.process_time() - cpu_start)
        rows.append((label, steps / statistics.median(walls), statistics.median(cpus) / steps * 1e3))

    measure("fit's own cost (one-weight model)", lambda n: overhead_run(n, device), args.overhead_steps)
    cache = {}
    for name, task in args.rows:
        measure(f"{name} on {task}", lambda n, name=name, task=task: chapter_run(name, task, n, device, cache),
                args.steps)
    width = max(len(row[0]) for row in rows)
    print(f"{'':<{width}}  {'steps/s':>10}  {'CPU ms/step':>11}")
    for label, rate, cpu_ms in rows:
        print(f"{label:<{width}}  {rate:10,.1f}  {cpu_ms:11,.3f}")


if __name__ == "__main__":
    main()
