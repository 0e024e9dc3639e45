"""Execute the chapter notebooks once, fail loudly, and hand the results to the book.

    python tools/execute_notebooks.py                      # every chapter, once; fill the book's cache
    python tools/execute_notebooks.py notebooks/02_draw.ipynb
    python tools/execute_notebooks.py --repeat 5 --cell-timeout 180 --no-cache   # hang stress test
    python tools/execute_notebooks.py --synthetic 300 --repeat 20 --no-cache     # the same, on trivial cells

Each notebook runs top to bottom in a fresh kernel, in ``notebooks/`` as the chapters
expect. A cell that raises (a failed ``assert`` included) fails the notebook, as
``pytest --nbval-lax`` would. A successful run is stored in the Jupyter Book's execution
cache (``_build/.jupyter_cache``), so the book build that follows shows these outputs
instead of executing every notebook a second time. Widgets cannot work in the static book:
in the stored copy a progress bar becomes its last line of text and any other widget a note
saying where it works (the notebooks themselves keep their widgets).

A watchdog tells a *hang* from a slow cell: while a cell is in flight it samples the
kernel's CPU time, and a kernel that has used (almost) no CPU for ``--idle-limit``
seconds while the client still waits for the cell's reply is idle in its event loop
with the request lost. The watchdog then kills that kernel so the run ends at once
with "hang" instead of waiting for the cell timeout. A hang is a lost message between the
client and the kernel, not a fault of the notebook: the notebook is run once more in a
fresh kernel (``--retry-hangs``, default 1; the stress test sets 0), and the table counts
every hang.

The last lines are a table, one row per notebook: runs, passed, failed, hangs, slow
cells (timeouts with a busy kernel), and the median time of a passing run. The exit
status is 0 only if every run passed; each failure's traceback is written to
``_build/reports/<notebook>.log`` and its path printed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CACHE = ROOT / "_build" / ".jupyter_cache"
REPORTS = ROOT / "_build" / "reports"


@dataclass
class RunResult:
    outcome: str  # "passed" | "failed" | "hang" | "slow"
    seconds: float
    detail: str = ""
    notebook: nbformat.NotebookNode | None = None


@dataclass
class Tally:
    runs: list[RunResult] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.runs)


class IdleKernelWatchdog:
    """Kill the kernel when a cell is in flight but the kernel has been idle for ``idle_limit`` s."""

    def __init__(self, idle_limit: float, cpu_floor: float = 0.25, period: float = 1.0):
        self.idle_limit, self.cpu_floor, self.period = idle_limit, cpu_floor, period
        self.process: psutil.Process | None = None
        self.cell_index: int | None = None
        self.fired_at_cell: int | None = None
        self.stacks = ""
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def attach(self, client: NotebookClient) -> None:
        pid = client.km.provisioner.process.pid
        self.process = psutil.Process(pid)
        self._thread.start()

    def cell_started(self, cell_index: int) -> None:
        self.cell_index, self._samples = cell_index, []

    def cell_finished(self) -> None:
        self.cell_index, self._samples = None, []

    def stop(self) -> None:
        self._stop.set()

    def _cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def _watch(self) -> None:
        while not self._stop.wait(self.period):
            if self.cell_index is None or self.process is None:
                continue
            try:
                now, cpu = time.monotonic(), self._cpu_seconds()
            except psutil.Error:
                return
            self._samples.append((now, cpu))
            earlier = [c for t, c in self._samples if now - t >= self.idle_limit]
            if earlier and cpu - earlier[-1] < self.cpu_floor:
                self.fired_at_cell = self.cell_index
                self.stacks = kernel_stacks(self.process.pid)
                try:
                    self.process.kill()
                except psutil.Error:
                    pass
                return


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p><em>An interactive widget: it needs a running Python kernel. Open this chapter in Colab "
               "(the rocket button at the top) or in Jupyter to use it.</em></p>")


def _html_text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", "", html))).strip()


def progress_bar_text(model_id: str, widget_state: dict) -> str | None:
    """The last state of a tqdm progress bar (an HBox of HTML, FloatProgress, HTML) as one line of text."""
    children = [str(c).removeprefix("IPY_MODEL_") for c in widget_state.get(model_id, {}).get("children", [])]
    states = [widget_state.get(c, {}) for c in children]
    if [s.get("_model_name") for s in states] != ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
        return None
    return f"{_html_text(states[0].get('value', ''))} {_html_text(states[2].get('value', ''))}".strip()


def static_widget_outputs(notebook: nbformat.NotebookNode, widget_state: dict) -> None:
    """Give every widget output a form the static book can show (it has no kernel to draw widgets).

    A progress bar becomes its last line of text (steps, time, final metrics); any other widget
    becomes a note saying where it works. The source notebooks keep their live widgets.
    """
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                continue
            text = progress_bar_text(view.get("model_id", ""), widget_state)
            output["data"] = {"text/plain": text} if text else {"text/html": WIDGET_NOTE}


def kernel_stacks(pid: int) -> str:
    """The kernel's Python stacks, if py-spy is installed (``pip install py-spy``), for the report."""
    import shutil
    import subprocess

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).is_file():
        return "(install py-spy to see the kernel's stacks here)"
    try:
        return subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"(py-spy failed: {error})"


FRONTEND_EMULATION_HANG = """
Why the chapters' widget cells hung, and what this script does about it.

nbclient imitates a browser for ipywidgets' Output widget: when the kernel points an Output
widget at a message, nbclient answers with a comm message that it sends on the *shell*
socket, from the task that reads IOPub, while another task waits on that same socket for
the cell's execute_reply. ZeroMQ signals a socket's readiness on an edge-triggered file
descriptor, and a send can consume the edge that announced the reply; the waiting task
then never wakes, the kernel sits idle with its reply delivered, and the cell "runs"
until its timeout (jupyter/nbclient#312; the same class of bug as ipython/ipykernel#1554,
on the other side of the socket). It happens with ipykernel 6 and 7 alike, and only in
cells that display a widget with an Output inside: every explorer of the chapters.

The book never shows those Output widgets (there is no kernel behind the static pages),
so this script does not imitate the browser: no message is sent on the shell socket while
a cell runs. The widgets' state is still recorded. `python tools/execute_notebooks.py
--emulate-output-widgets` restores nbclient's behaviour, to measure the difference.
"""


def execute(path: Path, cell_timeout: int, idle_limit: float, emulate_output_widgets: bool = False) -> RunResult:
    """Run one notebook in a fresh kernel; classify the outcome (see FRONTEND_EMULATION_HANG)."""
    notebook = nbformat.read(path, as_version=4)
    watchdog = IdleKernelWatchdog(idle_limit)
    client = NotebookClient(
        notebook,
        timeout=cell_timeout,
        kernel_name="python3",
        record_timing=False,  # timing metadata in the cells would change the notebook's hash in the cache
        allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
        on_notebook_start=lambda notebook: watchdog.attach(client),
        on_cell_execute=lambda cell, cell_index: watchdog.cell_started(cell_index),
        on_cell_executed=lambda cell, cell_index, execute_reply: watchdog.cell_finished(),
    )
    if not emulate_output_widgets:
        client.comm_open_handlers = {"jupyter.widget": lambda msg: None}  # see FRONTEND_EMULATION_HANG
    start = time.perf_counter()
    try:
        client.execute()
        static_widget_outputs(notebook, client.widget_state)
        return RunResult("passed", time.perf_counter() - start, notebook=notebook)
    except (DeadKernelError, CellTimeoutError, CellExecutionError, RuntimeError) as error:
        seconds = time.perf_counter() - start
        if watchdog.fired_at_cell is not None:
            return RunResult("hang", seconds, f"cell {watchdog.fired_at_cell}: the kernel sat idle for "
                             f"{idle_limit:.0f} s while the client waited for the cell's reply\n"
                             f"the kernel's threads then:\n{watchdog.stacks}")
        if isinstance(error, CellTimeoutError):
            return RunResult("slow", seconds, f"a cell ran past the {cell_timeout} s timeout with a busy kernel:\n"
                             f"{error}")
        return RunResult("failed", seconds, str(error))
    finally:
        watchdog.stop()


def store_in_book_cache(path: Path, executed: nbformat.NotebookNode, seconds: float) -> None:
    """Put an executed notebook into the cache that the Jupyter Book build reads (``execute_notebooks: cache``)."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(CACHE))
    cache.cache_notebook_bundle(CacheBundleIn(executed, str(path), data={"execution_seconds": seconds}),
                                check_validity=False, overwrite=True)


# What the chapters' cells do, in miniature: print, a progress bar (a widget in a kernel),
# a slider, an Output widget redrawn (as the explorers do), a figure, a little computation.
SYNTHETIC_CELLS = (
    "x = {i}\nprint(x)",
    "from tqdm.auto import tqdm\nfor _ in tqdm(range(100), desc='cell {i}'):\n    pass",
    "import ipywidgets\ndisplay(ipywidgets.IntSlider(value={i}))",
    "out = ipywidgets.Output()\ndisplay(out)\nwith out:\n    print({i})\nout.clear_output()\nwith out:\n    print({i} + 1)",
    "import matplotlib.pyplot as plt\nplt.figure(figsize=(1, 1)); plt.plot([0, {i}]); plt.show()",
    "total = sum(range(100_000)) + {i}",
    "import torch\ny = torch.randn(256, 256)\nfor _ in range(20):\n    y = torch.tanh(y @ y.T / 256)",
)


def synthetic_notebook(cells: int, folder: Path) -> Path:
    """A notebook of ``cells`` small cells: many request/reply round trips with the chapters' kinds of output."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(SYNTHETIC_CELLS[i % len(SYNTHETIC_CELLS)].format(i=i))
                      for i in range(cells)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic_{cells}_cells.ipynb"
    nbformat.write(notebook, path)
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each notebook (default 1)")
    parser.add_argument("--cell-timeout", type=int, default=600, help="seconds a single cell may run (default 600)")
    parser.add_argument("--idle-limit", type=float, default=60.0,
                        help="seconds of an idle kernel with a cell in flight that count as a hang (default 60)")
    parser.add_argument("--retry-hangs", type=int, default=1,
                        help="runs more, in a fresh kernel, after a hang (default 1; 0 for a stress test)")
    parser.add_argument("--no-cache", action="store_true", help="do not store the results for the book build")
    parser.add_argument("--emulate-output-widgets", action="store_true",
                        help="let nbclient answer Output widgets as a browser would (it can hang: see the source)")
    parser.add_argument("--synthetic", type=int, metavar="CELLS",
                        help="run a generated notebook of CELLS trivial cells instead of the chapters")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.cell_timeout < 1 or args.idle_limit <= 0 or args.retry_hangs < 0:
        parser.error("--repeat, --cell-timeout and --idle-limit must be positive, --retry-hangs at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.synthetic:
        paths = [synthetic_notebook(args.synthetic, ROOT / "_build" / "synthetic")]
    else:
        paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    import ipykernel
    import jupyter_client
    import nbclient
    import zmq

    print(f"ipykernel {ipykernel.__version__}, jupyter_client {jupyter_client.__version__}, "
          f"nbclient {nbclient.__version__}, pyzmq {zmq.__version__}; {len(paths)} notebook(s) x {args.repeat}, "
          f"cell timeout {args.cell_timeout} s, idle limit {args.idle_limit:.0f} s, Output widgets "
          f"{'emulated' if args.emulate_output_widgets else 'not emulated'}", flush=True)
    tallies: dict[Path, Tally] = {p: Tally() for p in paths}
    for path in paths:  # a report describes this run, not an earlier one
        (REPORTS / f"{path.stem}.log").unlink(missing_ok=True)
    reports: list[Path] = []
    for round_ in range(1, args.repeat + 1):
        for path in paths:
            for attempt in range(1 + args.retry_hangs):
                result = execute(path, args.cell_timeout, args.idle_limit, args.emulate_output_widgets)
                tallies[path].runs.append(result)
                print(f"[{round_}/{args.repeat}] {path.name}: {result.outcome} in {result.seconds:.1f} s", flush=True)
                if result.outcome != "hang":
                    break
                print(f"  {result.detail}", flush=True)
            if result.outcome == "passed" and not args.no_cache:
                store_in_book_cache(path, result.notebook, result.seconds)
            if result.outcome != "passed":
                REPORTS.mkdir(parents=True, exist_ok=True)
                report = REPORTS / f"{path.stem}.log"
                with report.open("a") as f:
                    f.write(f"== run {round_}: {result.outcome} after {result.seconds:.1f} s\n{result.detail}\n")
                reports.append(report)

    print(f"\n{'notebook':34} {'runs':>4} {'passed':>6} {'failed':>6} {'hangs':>5} {'slow':>4} {'median s':>8}")
    for path, tally in tallies.items():
        times = [r.seconds for r in tally.runs if r.outcome == "passed"]
        median = f"{statistics.median(times):8.1f}" if times else f"{'-':>8}"
        print(f"{path.name:34} {len(tally.runs):4} {tally.count('passed'):6} {tally.count('failed'):6} "
              f"{tally.count('hang'):5} {tally.count('slow'):4} {median}")
    if reports:
        print("\nFAILED notebooks (reports):", file=sys.stderr)
        for report in dict.fromkeys(reports):
            print(f"  {report}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
