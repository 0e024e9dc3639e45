"""How long each chapter notebook takes, idle and beside one CPU-bound process, by torch thread count.

    python benchmarks/notebook_threads.py                       # every chapter, threads 1 and 2, idle and loaded
    python benchmarks/notebook_threads.py --threads 1 notebooks/02_draw.ipynb

The "load" is one other CPU-bound process (a pure-Python busy loop), what a student's
laptop sees with a training run or a browser tab busy beside the notebook. Each notebook
runs in a fresh kernel through tools/execute_notebooks.py, with ``ATTN_COURSE_THREADS``
(read by ``attn_course.runtime.set_cpu_threads`` in each chapter's first cell) and
``OMP_NUM_THREADS`` set to the thread count, or, for thread count 0, neither: the course's
policy (a thread per idle core) decides. Run it on an otherwise idle machine: the
numbers are wall-clock times. The last lines are a table: seconds idle, seconds loaded and
their ratio, per notebook and thread count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from execute_notebooks import NOTEBOOKS, execute  # noqa: E402

BUSY_LOOP = "while True:\n    pass"


def timed_run(path: Path, threads: int, loaded: bool, cell_timeout: int) -> tuple[str, float]:
    if threads:
        os.environ["ATTN_COURSE_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(threads)
    else:  # the course's policy: runtime.set_cpu_threads decides in each notebook's first cell
        os.environ.pop("ATTN_COURSE_THREADS", None)
        os.environ.pop("OMP_NUM_THREADS", None)
    burner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if loaded else None
    try:
        result = execute(path, cell_timeout=cell_timeout, idle_limit=120)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return result.outcome, result.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2],
                        help="thread counts to compare; 0 is the course's policy (default: 0 1 2)")
    parser.add_argument("--cell-timeout", type=int, default=300,
                        help="stop a run whose cell takes longer (reported as 'slow'; default 300 s)")
    args = parser.parse_args()
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("*.ipynb"))
    rows = []
    for path in paths:
        for threads in args.threads:
            outcome_idle, idle = timed_run(path, threads, loaded=False, cell_timeout=args.cell_timeout)
            outcome_loaded, loaded = timed_run(path, threads, loaded=True, cell_timeout=args.cell_timeout)
            rows.append((path.name, threads, idle, loaded, outcome_idle, outcome_loaded))
            print(f"{path.name} threads={threads}: idle {idle:.1f} s ({outcome_idle}), "
                  f"loaded {loaded:.1f} s ({outcome_loaded})", flush=True)
    print(f"\n{'notebook':34} {'threads':>7} {'idle s':>7} {'loaded s':>8} {'ratio':>6}")
    for name, threads, idle, loaded, outcome_idle, outcome_loaded in rows:
        flag = "" if outcome_idle == outcome_loaded == "passed" else f"  ({outcome_idle}/{outcome_loaded})"
        print(f"{name:34} {threads:7} {idle:7.1f} {loaded:8.1f} {loaded / idle:6.2f}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
