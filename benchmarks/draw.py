"""Time DRAW (chapter 2): training steps per second, and the batched filterbank read against a loop.

    python benchmarks/draw.py                 # on this machine's default device
    OMP_NUM_THREADS=1 python benchmarks/draw.py   # as the shipped checkpoint was trained: one CPU core
    OMP_NUM_THREADS=1 python benchmarks/draw.py --t32   # the T = 32 step: float32 or bfloat16, eager or compiled
    OMP_NUM_THREADS=1 python benchmarks/draw.py --t32 --profile   # and where one eager step spends its time

``--t32`` compiles the model twice (about four minutes each on one CPU core) before it
times the compiled steps.

Each row is the median of several timed repetitions after a warm-up (``timed`` from
``benchmarks/run.py``). The CPU seconds column is the process's own CPU time per
repetition: on a machine shared with other jobs it is closer to what an idle core
would take than the wall-clock time.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import timed  # noqa: E402

from attn_course.runtime import banner, get_device  # noqa: E402


def cpu_seconds(fn, repeat: int) -> float:
    """Median process CPU time of ``fn`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def training_step(model, batch, amp: bool = False, compiled: bool = False):
    """One step of the recipe (Adam, gradients clipped at norm 10), optionally under bfloat16 autocast or compiled."""
    from attn_course.draw import draw_loss

    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    device_type = next(model.parameters()).device.type

    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = draw_loss(forward, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    return step


def draw_rows(device, repeat: int = 10):
    from attn_course.data import BinarizedMNIST
    from attn_course.draw import (CPU_CONFIG, DRAW, PAPER_CONFIG, QUICK_CONFIG, DRAWConfig, attention_window,
                                  filterbank, read, read_loop)

    data = BinarizedMNIST(device=device, test_size=1000)
    batch = data.sample(torch.Generator().manual_seed(0), 64)
    rows = []
    configs = [("quick (notebook)", QUICK_CONFIG), ("shipped, T=16", CPU_CONFIG),
               ("shipped, no attention", DRAWConfig(T=16, attention=False)), ("paper, T=64", PAPER_CONFIG)]
    for name, config in configs:
        torch.manual_seed(0)
        step = training_step(DRAW(config).to(device), batch)

        reps = max(3, repeat * 16 // config.T)
        wall = timed(step, repeat=reps, warmup=2, device=device)
        cpu = cpu_seconds(step, 3) if device.type == "cpu" else float("nan")
        rows.append((f"DRAW train step, {name}, batch 64", wall, cpu, f"{1 / wall:,.1f} steps/s"))

    images = data.test_images[:256, None].float()[:, 0]
    params = torch.randn(256, 5, generator=torch.Generator().manual_seed(1), device=device) * 0.3
    window = attention_window(params, N=5, A=28, B=28)

    def batched():
        F_X, F_Y = filterbank(window.g_X, window.g_Y, window.delta, window.sigma2, 5, 28, 28)
        return read(images, images, F_X, F_Y, window.gamma)

    fast = timed(batched, repeat=50, device=device)
    slow = timed(lambda: read_loop(images.cpu(), images.cpu(), window._replace(
        **{k: v.cpu() for k, v in window._asdict().items()}), 5), repeat=3, device=device)
    assert torch.allclose(batched().cpu(), read_loop(images.cpu(), images.cpu(), window._replace(
        **{k: v.cpu() for k, v in window._asdict().items()}), 5), atol=1e-4)
    rows.append(("DRAW read 5x5, batched filterbank (256 images 28x28)", fast, float("nan"),
                 f"{slow / fast:,.0f}x the loop"))
    rows.append(("DRAW read 5x5, per-sample Python loop (same)", slow, float("nan"), ""))
    return rows


def t32_rows(device, repeat: int = 5, profile: bool = False):
    """The T = 32 training step (batch 128) four ways: float32 or bfloat16 autocast, eager or torch.compile."""
    from attn_course.data import BinarizedMNIST
    from attn_course.draw import DRAW
    from attn_course.experiments.draw import config_for

    batch = BinarizedMNIST(device=device, test_size=1000).sample(torch.Generator().manual_seed(0), 128)
    rows = []
    for task in ("mnist32", "mnist32-noattn"):
        for compiled in (False, True):
            for amp in (False, True):
                torch.manual_seed(0)
                step = training_step(DRAW(config_for(task)).to(device), batch, amp=amp, compiled=compiled)

                start = time.perf_counter()
                step()  # compiles when compiled
                first = time.perf_counter() - start
                wall = timed(step, repeat=repeat, warmup=1, device=device)
                how = f"{'bfloat16 autocast' if amp else 'float32'}, {'compiled' if compiled else 'eager'}"
                rows.append((f"DRAW train step, {task} (T=32), batch 128, {how}", wall, float("nan"),
                             f"first step {first:,.0f} s" if compiled else ""))
                if profile and not compiled and not amp:
                    print_step_profile(step, task)
    return rows


def print_step_profile(step, name: str) -> None:
    """The share of one eager step's CPU time in matrix products and in everything else (element-wise, copies)."""
    from torch.profiler import profile

    with profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    print(f"{name}: {total / 1e3:,.0f} ms of CPU time in one step, {products / total:.0%} in matrix products "
          f"(mm, addmm, bmm), {1 - products / total:.0%} in the rest")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def main():
    device = get_device()
    print(banner(device=device))
    rows = t32_rows(device, profile="--profile" in sys.argv) if "--t32" in sys.argv else draw_rows(device)
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'wall':>9}     {'CPU':>9}")
    for name, wall, cpu, rate in rows:
        cpu_text = f"{cpu * 1e3:9.2f} ms" if cpu == cpu else " " * 12
        print(f"{name:<{width}}  {wall * 1e3:9.2f} ms  {cpu_text}  {rate}")


if __name__ == "__main__":
    main()
