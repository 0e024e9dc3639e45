"""The cost of attention (7.1), measured: time and peak memory of the written-out softmax(Q K^T / sqrt(d)) V, torch's
fused ``F.scaled_dot_product_attention`` (as the dispatcher picks it, and forced to its math kernel) and the blocked
loop of (7.4) (keeping its blocks for the backward pass, or recomputing them there), over sequence lengths
n = 128 .. 8192; and decoding with and without the KV cache (7.9).

    ATTN_COURSE_THREADS=1 python benchmarks/scale.py                        # n = 128, 256, ..., 8192, forward
    ATTN_COURSE_THREADS=1 python benchmarks/scale.py --n 128 --n 1024 --backward
    ATTN_COURSE_THREADS=1 python benchmarks/scale.py --method fused --heads 8 --batch 4
    ATTN_COURSE_DEVICE=cuda python benchmarks/scale.py
    ATTN_COURSE_THREADS=1 python benchmarks/scale.py --generation --tokens 64 --tokens 512

Each (method, n) point runs in a fresh Python process, so that memory one point freed (and the allocator kept)
cannot hide the next one's. The peak is what the call added to what was there before it:

* on CPU, the growth of the resident set: after the inputs are made and a small warm-up has loaded the kernels,
  writing 5 to /proc/self/clear_refs resets the high-water mark VmHWM to the current VmRSS, and VmHWM read after
  the call, less that VmRSS, is the peak (tracemalloc does not see torch's allocations). Where the mark cannot
  be reset (not Linux), the column says n/a. Small allocations reuse memory the allocator already holds without
  growing the resident set, so at n = 128 (a score matrix of 64 KiB) the column reads about 0;
* on CUDA, ``torch.cuda.max_memory_allocated`` over the call, less what was allocated before it.

The time is the median of several calls after the measured one. The column ``kernel`` is the SDPA backend that
torch's dispatcher reports for the fused method (``torch._fused_sdp_choice``); ``n^2 bytes`` is the size of one
score matrix S for all batches and heads, what the written-out form holds twice (S and P).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import timed  # noqa: E402

from attn_course.runtime import banner, busy_cores, get_device, set_cpu_threads  # noqa: E402
from attn_course.scale import (GPT, GPTConfig, attention, blocked_attention, generate,  # noqa: E402
                               kv_cache_bytes, sdpa_backend)

METHODS = ("explicit", "fused", "fused-math", "blocked", "blocked-recompute")
LENGTHS = tuple(2 ** k for k in range(7, 14))  # 128 .. 8192


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def attention_call(method: str, causal: bool, block_size: int):
    """The function of (Q, K, V) that ``method`` names."""
    if method == "explicit":
        return lambda Q, K, V: attention(Q, K, V, causal)
    if method == "fused":
        return lambda Q, K, V: torch.nn.functional.scaled_dot_product_attention(Q, K, V, is_causal=causal)
    if method == "fused-math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def math_kernel(Q, K, V):
            with sdpa_kernel(SDPBackend.MATH):
                return torch.nn.functional.scaled_dot_product_attention(Q, K, V, is_causal=causal)

        return math_kernel
    if method == "blocked":
        return lambda Q, K, V: blocked_attention(Q, K, V, block_size, causal)
    if method == "blocked-recompute":
        return lambda Q, K, V: blocked_attention(Q, K, V, block_size, causal, checkpoint=True)
    raise SystemExit(f"unknown method {method!r}: choose from {', '.join(METHODS)}")


def measure_point(method: str, n: int, d: int = 64, heads: int = 1, batch: int = 1, causal: bool = False,
                  backward: bool = False, block_size: int = 128, repeat: int = 3, device: str = "cpu") -> dict:
    """Peak memory added by one call of ``method`` at length ``n``, and the median seconds of ``repeat`` more, in
    this process (run it in a fresh one per point: see the module's docstring)."""
    device = torch.device(device)
    fn = attention_call(method, causal, block_size)
    g = torch.Generator(device=device).manual_seed(0)
    Q, K, V = (torch.randn(batch, heads, n, d, generator=g, device=device, requires_grad=backward)
               for _ in range(3))

    def call():
        out = fn(Q, K, V)
        if backward:
            out.sum().backward()
            Q.grad = K.grad = V.grad = None
        return out

    small = [x.detach()[..., :16, :].clone().requires_grad_(backward) for x in (Q, K, V)]
    out = fn(*small)  # warm-up: loads the kernels' code and the allocator's first pages
    if backward:
        out.sum().backward()
    del out, small
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        peak, how = torch.cuda.max_memory_allocated() - before, "cuda max_memory_allocated"
    else:
        reset = _reset_high_water_mark()
        before = _status_kib("VmRSS")
        call()
        after = _status_kib("VmHWM")
        peak = (after - before) * 1024 if reset and before is not None and after is not None else None
        how = "VmHWM after clear_refs" if peak is not None else "n/a"
    seconds = timed(call, repeat, 0, device)
    return {"method": method, "n": n, "peak_bytes": peak, "memory": how, "seconds": seconds,
            "kernel": sdpa_backend(Q, K, V, causal) if method == "fused" else "MATH" if method == "fused-math" else "",
            "score_bytes": batch * heads * n * n * Q.element_size()}


def run_point(args, method: str, n: int) -> dict:
    """:func:`measure_point` in a fresh Python process."""
    command = [sys.executable, __file__, "--point", method, str(n), "--d", str(args.d), "--heads", str(args.heads),
               "--batch", str(args.batch), "--block", str(args.block), "--repeat", str(args.repeat),
               "--device", args.device] + (["--causal"] if args.causal else []) + \
        (["--backward"] if args.backward else [])
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": method, "n": n, "error": reason}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / 2 ** 20:.1f}"


def attention_table(args) -> None:
    print(f"{'method':>17} {'n':>6} {'kernel':>16} {'ms':>10} {'peak MiB':>9} {'n^2 MiB':>8}  memory from")
    for n in args.n or LENGTHS:
        for method in args.method or METHODS:
            row = run_point(args, method, n)
            if "error" in row:
                print(f"{method:>17} {n:>6}  failed: {row['error']}", flush=True)
                continue
            print(f"{method:>17} {n:>6} {row['kernel']:>16} {row['seconds'] * 1e3:>10.2f} {_mib(row['peak_bytes']):>9} "
                  f"{_mib(row['score_bytes']):>8}  {row['memory']}", flush=True)


def generation_table(args, device) -> None:
    """Milliseconds per generated token with and without the cache (7.9), and the cache's size (7.10)."""
    torch.manual_seed(0)
    longest = max(args.tokens)
    config = GPTConfig(vocab_size=96, context=longest + 16, d_model=128, layers=4, heads=4, kv_heads=args.kv_heads,
                       position="rotary")
    model = GPT(config).to(device).eval()
    prompt = torch.randint(0, 96, (1, 16), device=device)
    print(f"GPT: d_model 128, 4 layers, 4 heads, {config.g} key/value heads, rotary; a prompt of 16 tokens")
    print(f"{'tokens':>7} {'cached ms/token':>16} {'uncached ms/token':>18} {'cache KiB':>10}")
    for n in args.tokens:
        cached = timed(lambda: generate(model, prompt, n, use_cache=True), 1, 1, device) / n
        plain = timed(lambda: generate(model, prompt, n, use_cache=False), 1, 1, device) / n
        size = kv_cache_bytes(config, 16 + n, 1)
        print(f"{n:>7} {cached * 1e3:>16.2f} {plain * 1e3:>18.2f} {size / 1024:>10.0f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="sequence length (repeatable; default 128 .. 8192)")
    parser.add_argument("--method", action="append", choices=METHODS, help="repeatable; default all")
    parser.add_argument("--d", type=int, default=64, help="d_k per head")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block", type=int, default=128, help="B_r = B_c of the blocked method")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--backward", action="store_true", help="time and measure forward and backward")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: $ATTN_COURSE_DEVICE, else the best)")
    parser.add_argument("--generation", action="store_true", help="decoding with and without the KV cache instead")
    parser.add_argument("--tokens", type=int, action="append", help="tokens to generate (repeatable; 64, 256)")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads of the generation model")
    parser.add_argument("--point", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    set_cpu_threads()
    device = get_device(args.device)
    args.device = str(device)
    if args.point:
        method, n = args.point
        print(json.dumps(measure_point(method, int(n), args.d, args.heads, args.batch, args.causal, args.backward,
                                       args.block, args.repeat, args.device)))
        return
    busy = busy_cores(1.0)
    print(banner(device=device))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); other programs kept "
          f"{busy if busy is None else round(busy, 2)} cores busy")
    if args.generation:
        args.tokens = args.tokens or [64, 256]
        generation_table(args, device)
        return
    print(f"batch {args.batch}, {args.heads} head(s), d = {args.d}, float32, {'causal' if args.causal else 'full'}, "
          f"{'forward and backward' if args.backward else 'forward only'}; blocked: B_r = B_c = {args.block}")
    attention_table(args)


if __name__ == "__main__":
    main()
