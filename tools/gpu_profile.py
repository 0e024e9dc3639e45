"""Run every chapter notebook in the full profile on a CUDA GPU: time, peak GPU memory, key metrics.

    python tools/gpu_profile.py                        # every notebooks/*.ipynb, profile full, on CUDA
    python tools/gpu_profile.py --only 02 --only 05    # the notebooks whose names start with 02 or 05
    python tools/gpu_profile.py --profile quick --allow-cpu --only 00   # try the script on a CPU
    make gpu-profile

Each notebook runs top to bottom in a fresh kernel, in sorted order, through
``tools/execute_notebooks.py`` (the executor of ``make notebooks``, with its hang
watchdog; the results do not go into the book's cache), with ``ATTN_COURSE_PROFILE``
set to ``--profile`` (default ``full``) and ``ATTN_COURSE_DEVICE=cuda``. Without CUDA the
script refuses to start (exit status 2) unless ``--allow-cpu`` is given. A cell may run
for ``--cell-timeout`` seconds and a notebook for ``--notebook-timeout`` seconds; past
that its kernel is stopped and the notebook counts as ``timeout``.

What is measured inside each kernel: the script names a file in ``ATTN_COURSE_REPORT``;
``attn_course.train.fit`` appends a JSON line per training run (steps, steps per second
without the evaluations, the last logged training metrics, the held-out metrics at the
end) and ``attn_course.runtime`` one with the peak memory when the kernel exits
(``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``, and the peak resident
memory of the process).

The last lines are a table, one row per training run: notebook, outcome, wall-clock
seconds, peak GPU memory allocated (MiB), peak resident memory (MiB), then the run's
steps per second and its key metrics (the held-out ones where the chapter evaluates
while training, else the last logged training ones). Everything, with the machine and
the versions, is written to ``--out`` (default ``_build/gpu_profile.json``). The exit
status is 0 only if every notebook passed; a failure's traceback goes to
``_build/reports/gpu_profile_<notebook>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from execute_notebooks import NOTEBOOKS, REPORTS, RunResult, execute  # noqa: E402

PROFILE_ENV, DEVICE_ENV, REPORT_ENV, DATA_ENV = (
    "ATTN_COURSE_PROFILE", "ATTN_COURSE_DEVICE", "ATTN_COURSE_REPORT", "ATTN_COURSE_DATA")
DEFAULT_OUT = ROOT / "_build" / "gpu_profile.json"
MiB = 2**20
SHOWN_METRICS = 4  # per training run in the table; the JSON has them all


class NoCudaError(RuntimeError):
    """CUDA is not available and the run was not allowed on the CPU."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="run only the notebooks whose file names start with PREFIX (repeatable)")
    parser.add_argument("--profile", choices=("quick", "full"), default="full", help="the profile (default full)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (to try the script)")
    parser.add_argument("--cell-timeout", type=int, default=900, help="seconds one cell may run (default 900)")
    parser.add_argument("--notebook-timeout", type=int, default=1800,
                        help="seconds one notebook may run (default 1800)")
    parser.add_argument("--idle-limit", type=float, default=60.0,
                        help="seconds of an idle kernel with a cell in flight that count as a hang (default 60)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.cell_timeout < 1 or args.notebook_timeout < 1 or args.idle_limit <= 0:
        parser.error("--cell-timeout, --notebook-timeout and --idle-limit must be positive")
    return args


def select_notebooks(paths: list[Path], only: list[str]) -> list[Path]:
    """``paths`` sorted by name, only those starting with one of ``only`` (all when empty)."""
    chosen = sorted((p for p in paths if not only or p.name.startswith(tuple(only))), key=lambda p: p.name)
    if not chosen:
        names = ", ".join(p.name for p in sorted(paths)) or "none"
        raise ValueError(f"no notebook name starts with {' or '.join(only)}; the notebooks: {names}")
    return chosen


def choose_device(cuda_available: bool, allow_cpu: bool) -> str:
    """``"cuda"``, or ``"cpu"`` when CUDA is missing and ``allow_cpu``; else :class:`NoCudaError`."""
    if cuda_available:
        return "cuda"
    if allow_cpu:
        return "cpu"
    raise NoCudaError("no CUDA device here (torch.cuda.is_available() is False): this script measures the full "
                      "profile on a GPU. Run it where there is one (Colab: Runtime > Change runtime type > GPU), "
                      "or pass --allow-cpu to try it on the CPU (with --profile quick --only 00 it takes seconds).")


def read_report(path: Path) -> dict:
    """The records a kernel wrote to ``path``: ``runs`` (one per ``fit``) and ``peak_memory``.

    ``peak_memory`` comes from the kernel's exit record; without one (a kernel that was
    killed), from the last training run, and ``peak_memory_at`` says which.
    """
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    runs = [r for r in records if r.get("kind") == "fit"]
    exits = [r for r in records if r.get("kind") == "exit"]
    if exits:
        return {"runs": runs, "peak_memory": exits[-1]["peak_memory"], "peak_memory_at": "kernel exit"}
    if runs:
        return {"runs": runs, "peak_memory": runs[-1]["peak_memory"], "peak_memory_at": "the last training run"}
    return {"runs": [], "peak_memory": {}, "peak_memory_at": None}


def key_metrics(run: dict) -> str:
    """A training run in a few words: held-out metrics when there are any, else the training ones."""
    held_out, metrics = bool(run.get("eval")), run.get("eval") or run.get("train") or {}
    shown = ", ".join(f"{name} {value:.4g}" for name, value in list(metrics.items())[:SHOWN_METRICS])
    more = len(metrics) - SHOWN_METRICS
    return (f"{'held-out' if held_out else 'training'}: {shown}" if metrics else "no metrics") + (
        f" (+{more} in the JSON)" if more > 0 else "")


def _mebibytes(value: int | None) -> str:
    return f"{value / MiB:,.0f}" if isinstance(value, (int, float)) else "-"


def format_table(results: list[dict]) -> str:
    """One row per training run (a notebook without any gets one row): the table the script prints."""
    header = (f"{'notebook':34} {'outcome':8} {'wall s':>7} {'GPU MiB':>8} {'RSS MiB':>8}  "
              f"{'training run':28} {'steps/s':>8}  key metrics")
    lines = [header, "-" * len(header)]
    for result in results:
        peak = result.get("peak_memory") or {}
        first = (f"{result['notebook']:34} {result['outcome']:8} {result['seconds']:7.1f} "
                 f"{_mebibytes(peak.get('gpu_allocated')):>8} {_mebibytes(peak.get('rss')):>8}  ")
        runs = result.get("runs") or [None]
        for index, run in enumerate(runs):
            prefix = first if index == 0 else " " * len(first)
            if run is None:
                lines.append(prefix + f"{'-':28} {'-':>8}  -")
                continue
            rate = run.get("steps_per_second")
            label = f"{run['desc']}, {run['steps']:,} steps"
            lines.append(prefix + f"{label[:28]:28} {(f'{rate:,.1f}' if rate else '-'):>8}  {key_metrics(run)}")
    return "\n".join(lines)


@dataclass
class Deadline:
    """Stop this process's kernels (its ipykernel children) after ``seconds``; ``fired`` says if it did."""

    seconds: float
    fired: bool = False

    def __enter__(self) -> "Deadline":
        self._timer = threading.Timer(self.seconds, self._stop_kernels)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def _stop_kernels(self) -> None:
        import psutil

        for child in psutil.Process().children():
            try:
                if any("ipykernel" in part for part in child.cmdline()):
                    self.fired = True
                    child.kill()
            except psutil.Error:
                pass


def profile_notebook(path: Path, args: argparse.Namespace, folder: Path) -> dict:
    """Run one notebook with a report file of its own; its outcome, time, peak memory and training runs."""
    report_path = folder / f"{path.stem}.jsonl"
    os.environ[REPORT_ENV] = str(report_path)
    try:
        with Deadline(args.notebook_timeout) as deadline:
            result: RunResult = execute(path, args.cell_timeout, args.idle_limit)
    finally:
        os.environ.pop(REPORT_ENV, None)
    outcome = "timeout" if deadline.fired and result.outcome != "passed" else result.outcome
    report = read_report(report_path)
    record = {"notebook": path.name, "outcome": outcome, "seconds": round(result.seconds, 1), **report}
    if outcome != "passed":
        REPORTS.mkdir(parents=True, exist_ok=True)
        log = REPORTS / f"gpu_profile_{path.stem}.log"
        detail = (f"the notebook ran past --notebook-timeout {args.notebook_timeout} s; its kernel was stopped\n"
                  if outcome == "timeout" else "") + result.detail
        log.write_text(f"== {outcome} after {result.seconds:.1f} s\n{detail}\n", encoding="utf-8")
        record["report"] = str(log)
    return record


def machine(device: str) -> dict:
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    return {"device": device, "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpu_cores": os.cpu_count(),
            "threads": os.environ.get("ATTN_COURSE_THREADS") or "the course's policy"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        paths = select_notebooks(list(NOTEBOOKS.glob("*.ipynb")), args.only)
        import torch

        device = choose_device(torch.cuda.is_available(), args.allow_cpu)
    except (ValueError, NoCudaError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.environ[PROFILE_ENV], os.environ[DEVICE_ENV] = args.profile, device
    if os.environ.get(DATA_ENV):  # the kernels run in notebooks/: a relative data root would move
        os.environ[DATA_ENV] = str(Path(os.environ[DATA_ENV]).resolve())
    about = {"profile": args.profile, **machine(device), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
             "cell_timeout_s": args.cell_timeout, "notebook_timeout_s": args.notebook_timeout}
    print(f"profile {args.profile} on {about['device_name']} ({device}), torch {about['torch']}; "
          f"{len(paths)} notebook(s)", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_profile_") as folder:
        for path in paths:
            record = profile_notebook(path, args, Path(folder))
            results.append(record)
            peak = record["peak_memory"].get("gpu_allocated")
            print(f"{path.name}: {record['outcome']} in {record['seconds']:.1f} s, peak GPU memory "
                  f"{_mebibytes(peak)} MiB, {len(record['runs'])} training run(s)", flush=True)
            if "report" in record:
                print(f"  report: {record['report']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": about, "notebooks": results}, indent=1) + "\n", encoding="utf-8")
    print("\n" + format_table(results))
    print(f"\nresults: {args.out}")
    return 0 if all(r["outcome"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
