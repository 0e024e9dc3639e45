"""tools/execute_notebooks.py: a failing notebook fails the run and names its report; a passing one
lands in the book's cache; an idle kernel with a cell in flight is reported as a hang, not waited out."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import execute_notebooks  # noqa: E402

pytestmark = pytest.mark.slow  # each test starts a kernel


def write_notebook(folder: Path, name: str, *sources: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path = folder / name
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setattr(execute_notebooks, "CACHE", tmp_path / "_build" / ".jupyter_cache")
    monkeypatch.setattr(execute_notebooks, "REPORTS", tmp_path / "_build" / "reports")
    return tmp_path


def test_a_failing_assert_fails_the_run_and_names_the_report(build, capsys):
    good = write_notebook(build, "good.ipynb", "x = 1", "assert x == 1")
    bad = write_notebook(build, "bad.ipynb", "x = 1", "assert x == 2, 'x should be 2'")
    assert execute_notebooks.main([str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    report = build / "_build" / "reports" / "bad.log"
    assert "FAILED" in err and str(report) in err
    assert "x should be 2" in report.read_text()
    assert not (build / "_build" / "reports" / "good.log").exists()


def test_a_passing_notebook_is_cached_for_the_book(build):
    from jupyter_cache import get_cache

    path = write_notebook(build, "cached.ipynb", "print('hello from the kernel')")
    assert execute_notebooks.main([str(path)]) == 0
    _, executed = get_cache(str(build / "_build" / ".jupyter_cache")).merge_match_into_notebook(
        nbformat.read(path, as_version=4))
    assert executed.cells[0].outputs[0]["text"] == "hello from the kernel\n"


def test_an_idle_kernel_with_a_cell_in_flight_is_a_hang(build):
    # A cell that waits without using the CPU looks, to the watchdog, like a lost reply.
    path = write_notebook(build, "idle.ipynb", "import time\ntime.sleep(60)")
    result = execute_notebooks.execute(path, cell_timeout=120, idle_limit=3)
    assert result.outcome == "hang", result
    assert "cell 0" in result.detail


def test_a_missing_notebook_is_an_error_line(build, capsys):
    assert execute_notebooks.main([str(build / "nope.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_a_hang_is_retried_once_in_a_fresh_kernel_and_counted(build, monkeypatch, capsys):
    outcomes = iter(["hang", "passed"])
    real_execute = execute_notebooks.execute

    def flaky(path, cell_timeout, idle_limit, emulate_output_widgets=False):
        result = real_execute(path, cell_timeout, idle_limit, emulate_output_widgets)
        if next(outcomes) == "hang":
            return execute_notebooks.RunResult("hang", 1.0, "cell 0: the kernel sat idle")
        return result

    monkeypatch.setattr(execute_notebooks, "execute", flaky)
    path = write_notebook(build, "flaky.ipynb", "x = 1")
    assert execute_notebooks.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "flaky.ipynb: hang" in out and "flaky.ipynb: passed" in out
    row = next(line for line in out.splitlines() if line.startswith("flaky.ipynb "))
    assert row.split()[1:5] == ["2", "1", "0", "1"], row  # runs, passed, failed, hangs


def test_output_widgets_get_no_answer_on_the_shell_socket(build, monkeypatch):
    """The executor never sends on the shell socket while a cell runs (FRONTEND_EMULATION_HANG);
    nbclient's own emulation would, and that is what hung the chapters' explorers."""
    from nbclient.output_widget import OutputWidget

    sent = []
    monkeypatch.setattr(OutputWidget, "_publish_msg", lambda self, *args, **kwargs: sent.append(args))
    path = write_notebook(build, "output_widget.ipynb",
                          "import ipywidgets\nout = ipywidgets.Output()\ndisplay(out)\n"
                          "with out:\n    print('inside')\nout.clear_output()\nwith out:\n    print('again')")
    assert execute_notebooks.execute(path, cell_timeout=120, idle_limit=60).outcome == "passed"
    assert sent == []
    assert execute_notebooks.execute(path, cell_timeout=120, idle_limit=60,
                                     emulate_output_widgets=True).outcome == "passed"
    assert sent, "with nbclient's emulation the Output widget is answered on the shell socket"


def test_the_book_gets_a_progress_bars_last_line_and_a_note_for_other_widgets(build):
    from jupyter_cache import get_cache

    path = write_notebook(build, "widgets.ipynb",
                          "from tqdm.auto import tqdm\nfor _ in tqdm(range(7), desc='training'):\n    pass",
                          "import ipywidgets\ndisplay(ipywidgets.IntSlider())")
    assert execute_notebooks.main([str(path)]) == 0
    _, executed = get_cache(str(build / "_build" / ".jupyter_cache")).merge_match_into_notebook(
        nbformat.read(path, as_version=4))
    bar, slider = (cell.outputs for cell in executed.cells)
    assert all(execute_notebooks.WIDGET_VIEW not in output.get("data", {}) for output in bar + slider)
    bar_text = " ".join(output["data"]["text/plain"] for output in bar if "data" in output)
    assert "training" in bar_text and "7/7" in bar_text, bar_text
    assert slider[0]["data"] == {"text/html": execute_notebooks.WIDGET_NOTE}
