"""Write the student edition of every chapter: solutions removed, implement-it cells left as stubs.

    python tools/student_edition.py [--out DIR] [notebooks ...]     (make student)

An *implement-it* cell is a code cell tagged ``implement-it``. It defines the function the
student writes, with the course's reference code between a ``# BEGIN SOLUTION`` line and an
``# END SOLUTION`` line, and calls the chapter's checker after it::

    from attn_course.exercises.transformer import check_scaled_dot_product_attention

    def scaled_dot_product_attention(Q, K, V, mask=None):
        # BEGIN SOLUTION
        ...
        # END SOLUTION

    check_scaled_dot_product_attention(scaled_dot_product_attention)

In the student edition the lines from ``# BEGIN SOLUTION`` to ``# END SOLUTION`` become one
``raise NotImplementedError(...)`` at their indentation, so the checker's call reports "not
implemented yet" until the student writes the code. A code cell tagged ``implement-it-train``
right after an implement-it cell trains the chapter's model with the student's function
(``train_with_filterbank(filterbank)``); it is copied as it is, and on the stub it fails the
same way, before any training. Markdown solutions and quiz answers
(``:::{admonition} Solution ...`` and ``:::{admonition} Answer`` blocks, folded in the book)
are removed. Everything else is copied as it is;
the notebooks stay output-free. The book itself keeps the references and the folded
solutions. Each implement-it cell must run on its own (it imports what it uses), so that
``tests/test_student_edition.py`` can check every stub fails and every reference passes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "implement-it"
TRAIN_TAG = "implement-it-train"  # the training check of the implement-it cell before it
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
SOLUTION_BLOCK = re.compile(r"^:::\{admonition\} (?:Solution|Answer)[^\n]*\n.*?^:::[ \t]*\n?", re.MULTILINE | re.DOTALL)
STUB = 'raise NotImplementedError("write this function: see the exercise above")'


class EditionError(ValueError):
    """A notebook whose implement-it cells or solutions the tool cannot work with; the message says where."""


def source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def set_source(cell: dict, text: str) -> None:
    cell["source"] = text if isinstance(cell["source"], str) else text.splitlines(keepends=True)


def is_implement_it(cell: dict) -> bool:
    return cell["cell_type"] == "code" and TAG in cell.get("metadata", {}).get("tags", [])


def is_training_check(cell: dict) -> bool:
    return cell["cell_type"] == "code" and TRAIN_TAG in cell.get("metadata", {}).get("tags", [])


def stub_out(text: str, where: str = "cell") -> str:
    """``text`` with every BEGIN/END SOLUTION region replaced by a ``raise NotImplementedError`` line."""
    lines, out, inside, indent, regions = text.splitlines(keepends=True), [], False, "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise EditionError(f"{where}, line {number}: {BEGIN} inside another solution region")
            inside, indent, regions = True, line[: len(line) - len(line.lstrip())], regions + 1
            out.append(f"{indent}{STUB}\n")
        elif stripped == END:
            if not inside:
                raise EditionError(f"{where}, line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise EditionError(f"{where}: {BEGIN} without {END}")
    if not regions:
        raise EditionError(f"{where}: an implement-it cell needs a {BEGIN} ... {END} region")
    return "".join(out)


def reference(text: str) -> str:
    """``text`` with the solution markers dropped: the code the book runs."""
    return "".join(line for line in text.splitlines(keepends=True) if line.strip() not in (BEGIN, END))


def student_notebook(notebook: dict, name: str) -> tuple[dict, int, int]:
    """The student edition of ``notebook``; also the numbers of stubbed cells and removed solutions."""
    stubs = removed = 0
    for number, cell in enumerate(notebook["cells"]):
        text = source(cell)
        if is_implement_it(cell):
            set_source(cell, stub_out(text, f"{name}, cell {number}"))
            stubs += 1
        elif cell["cell_type"] == "markdown":
            kept, count = SOLUTION_BLOCK.subn("", text)
            if count:
                set_source(cell, kept.rstrip("\n") + "\n" if kept.strip() else "")
                removed += count
        elif BEGIN in text or END in text:
            raise EditionError(f"{name}, cell {number}: solution markers in a cell not tagged {TAG!r}")
        if is_training_check(cell) and (number == 0 or not is_implement_it(notebook["cells"][number - 1])):
            raise EditionError(f"{name}, cell {number}: a {TRAIN_TAG!r} cell must follow the {TAG!r} cell whose "
                               "function it trains with")
    notebook["cells"] = [c for c in notebook["cells"] if c["cell_type"] != "markdown" or source(c).strip()]
    return notebook, stubs, removed


def write_edition(paths: list[Path], out: Path) -> list[tuple[str, int, int]]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        notebook, stubs, removed = student_notebook(json.loads(path.read_text(encoding="utf-8")), path.name)
        target = out / path.name
        temporary = target.with_suffix(".ipynb.tmp")
        temporary.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        temporary.replace(target)  # a half-written notebook never replaces a good one
        rows.append((path.name, stubs, removed))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "student", help="default: _build/student")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    try:
        rows = write_edition(paths, args.out)
    except (EditionError, OSError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, stubs, removed in rows:
        print(f"{name}: {stubs} implement-it cells stubbed, {removed} solutions removed")
    print(f"the student edition is in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
