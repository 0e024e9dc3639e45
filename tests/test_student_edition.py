"""The student edition: every implement-it cell's reference passes its checker, every stub fails it, and the
edition keeps everything but the solutions."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import student_edition as edition  # noqa: E402
from attn_course.exercises import ExerciseFailed  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELLS = [(path, number, cell) for path in NOTEBOOKS
         for number, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"])
         if edition.is_implement_it(cell)]
IDS = [f"{path.stem[:2]}-cell{number}" for path, number, _ in CELLS]
TRAINING = [(path, number, cells) for path in NOTEBOOKS
            for cells in [json.loads(path.read_text(encoding="utf-8"))["cells"]]
            for number, cell in enumerate(cells) if edition.is_training_check(cell)]


def test_every_chapter_has_two_implement_it_exercises():
    per_notebook = {path.name: 0 for path in NOTEBOOKS}
    for path, _, _ in CELLS:
        per_notebook[path.name] += 1
    assert all(count >= 2 for count in per_notebook.values()), per_notebook


@pytest.mark.parametrize("path, number, cell", CELLS, ids=IDS)
def test_the_reference_passes_its_checker(path, number, cell, capsys):
    exec(compile(edition.reference(edition.source(cell)), f"{path.name}:{number}", "exec"), {})
    assert "\N{CHECK MARK}" in capsys.readouterr().out, "the checker should print what passed"


@pytest.mark.parametrize("path, number, cell", CELLS, ids=IDS)
def test_the_stub_fails_its_checker_saying_so(path, number, cell):
    stubbed = edition.stub_out(edition.source(cell), f"{path.name}, cell {number}")
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        exec(compile(stubbed, f"{path.name}:{number}", "exec"), {})


def test_there_are_training_checks():
    assert len(TRAINING) >= 2, [path.name for path, _, _ in TRAINING]


@pytest.mark.parametrize("path, number, cells", TRAINING,
                         ids=[f"{path.stem[:2]}-cell{number}" for path, number, _ in TRAINING])
def test_a_training_check_follows_its_exercise_and_fails_on_the_stub_before_training(path, number, cells):
    exercise, check = cells[number - 1], cells[number]
    assert edition.is_implement_it(exercise), "a training check follows the implement-it cell it trains with"
    namespace = {}
    with pytest.raises(ExerciseFailed, match="not implemented yet"):  # the checker, on the stub it defines
        exec(compile(edition.stub_out(edition.source(exercise)), f"{path.name}:{number - 1}", "exec"), namespace)
    with pytest.raises(ExerciseFailed, match="not implemented yet"):  # then the training check, at once
        exec(compile(edition.source(check), f"{path.name}:{number}", "exec"), namespace)
    student, _, _ = edition.student_notebook(json.loads(path.read_text(encoding="utf-8")), path.name)
    copied = [c for c in student["cells"] if c.get("id") == check.get("id")]
    assert copied and edition.source(copied[0]) == edition.source(check), "copied as it is"


def test_a_training_check_without_its_exercise_is_refused():
    notebook = {"cells": [{"cell_type": "code", "metadata": {"tags": [edition.TRAIN_TAG]}, "source": "train(f)\n",
                           "outputs": [], "execution_count": None}]}
    with pytest.raises(edition.EditionError, match="must follow the 'implement-it' cell"):
        edition.student_notebook(notebook, "nb")


def test_the_edition_stubs_the_exercises_and_drops_only_the_solutions(tmp_path):
    assert edition.main(["--out", str(tmp_path)]) == 0
    for path in NOTEBOOKS:
        book, student = (json.loads(p.read_text(encoding="utf-8")) for p in (path, tmp_path / path.name))
        text = "".join(edition.source(c) for c in student["cells"])
        assert edition.BEGIN not in text and ":::{admonition} Solution" not in text
        assert ":::{admonition} Answer" not in text, "quiz answers stay out of the student edition"
        assert ":::{admonition} Solution" in "".join(edition.source(c) for c in book["cells"]), path.name
        assert [c["cell_type"] for c in student["cells"] if c["cell_type"] == "code"] == \
            [c["cell_type"] for c in book["cells"] if c["cell_type"] == "code"], "no code cell is lost"
        assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("text, problem", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "without # END SOLUTION"),
    ("def f():\n    return 1\n    # END SOLUTION\n", "without # BEGIN SOLUTION"),
    ("def f():\n    return 1\n", "needs a # BEGIN SOLUTION"),
])
def test_malformed_implement_it_cells_are_named(text, problem):
    with pytest.raises(edition.EditionError, match=problem):
        edition.stub_out(text, "nb, cell 3")


def test_stubbing_keeps_the_indentation_and_the_checker_call():
    text = "def f(x):\n    # BEGIN SOLUTION\n    y = x + 1\n    return y\n    # END SOLUTION\n\ncheck(f)\n"
    assert edition.stub_out(text) == f"def f(x):\n    {edition.STUB}\n\ncheck(f)\n"
    assert edition.reference(text) == "def f(x):\n    y = x + 1\n    return y\n\ncheck(f)\n"
