"""The release the notebooks install: one version, one repository, every setup cell in step.

- the version lives in ``attn_course/__init__.py`` only (pyproject.toml reads it), the repository
  in pyproject's ``[project.urls] Repository`` only, and the book's ``_config.yml`` names the same one;
- every notebook's setup cell is the one ``tools/release.py`` writes from them (``sync`` fixes it);
- ``sync`` rewrites the setup cell and no other byte; ``check`` fails on a stale cell; ``bump`` moves both;
- the setup cell, run by IPython, does nothing outside Colab, and in Colab asks pip for the tagged
  release with Colab's torch pinned to the version present, and prints the versions it ends with.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

import attn_course

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "release.py"

spec = importlib.util.spec_from_file_location("release", TOOL)
release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release)

VERSION = release.read_version(ROOT)
URL = release.read_repository(ROOT)


def run_tool(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120)


def checkout_copy(tmp_path: Path) -> Path:
    """The files the tool reads and writes, copied."""
    root = tmp_path / "repo"
    (root / "attn_course").mkdir(parents=True)
    shutil.copy(ROOT / "attn_course" / "__init__.py", root / "attn_course" / "__init__.py")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(ROOT / "_config.yml", root / "_config.yml")
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def first_code_cell(path: Path) -> dict:
    return next(c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code")


# --------------------------------------------------------------------------- one home for each setting

def test_the_version_has_one_home():
    pyproject = release.read_pyproject(ROOT)
    assert "version" not in pyproject["project"], "pyproject.toml must not repeat the version"
    assert release.settings_problems(ROOT) == []
    assert attn_course.__version__ == VERSION and re.fullmatch(r"\d+\.\d+\.\d+", VERSION)


def test_the_repository_is_the_books():
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    assert re.search(rf"^\s+url:\s*{re.escape(URL)}/?\s*$", config, re.MULTILINE), \
        f"_config.yml's repository.url must be pyproject's Repository, {URL}"


# --------------------------------------------------------------------------- the notebooks

def test_every_notebook_installs_the_current_release():
    stale = release.out_of_step(ROOT)
    assert not stale, "\n".join(stale) + "\nrun `python tools/release.py sync` and commit the notebooks"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_setup_cell_pins_a_tag_not_main(path):
    source = "".join(first_code_cell(path)["source"])
    assert f'source = "git+{URL}@v{VERSION}"' in source and '%pip install -q "attn-course @ {source}"' in source, \
        f"{path.name}: the setup cell must install the tag v{VERSION}, not main; run `python tools/release.py sync`"


def test_check_fails_on_a_stale_cell_and_sync_changes_only_the_setup_cells(tmp_path):
    root = checkout_copy(tmp_path)
    paths = sorted((root / "notebooks").glob("*.ipynb"))
    old = ['import sys\n', 'if "google.colab" in sys.modules:\n',
           f'    %pip install -q "attn-course @ git+{URL}"']
    before = {}
    for path in paths:  # every notebook back to installing main
        notebook = json.loads(path.read_text(encoding="utf-8"))
        next(c for c in notebook["cells"] if c["cell_type"] == "code")["source"] = old
        path.write_text(release.dump(notebook), encoding="utf-8")
        before[path] = path.read_text(encoding="utf-8")

    check = run_tool("check", root=root)
    assert check.returncode == 1
    assert check.stderr.count("(no tag: main)") == len(paths) and "release.py sync" in check.stderr

    synced = run_tool("sync", root=root)
    assert synced.returncode == 0, synced.stderr
    assert f"{len(paths)} of {len(paths)} notebooks changed" in synced.stdout
    for path in paths:
        after = path.read_text(encoding="utf-8")
        expected = json.loads(before[path])
        next(c for c in expected["cells"] if c["cell_type"] == "code")["source"] = \
            release.source_lines(release.setup_cell(VERSION, URL))
        assert after == release.dump(expected), f"{path.name}: sync changed more than the setup cell's source"
        removed = [line.strip().rstrip(",") for line in before[path].splitlines() if line not in after.splitlines()]
        assert removed and set(removed) <= {json.dumps(line, ensure_ascii=False) for line in old}  # only old source
        cell = first_code_cell(path)
        assert cell["outputs"] == [] and cell["execution_count"] is None

    assert run_tool("check", root=root).returncode == 0
    again = run_tool("sync", root=root)
    assert again.returncode == 0 and f"0 of {len(paths)} notebooks changed" in again.stdout
    assert all(path.read_text(encoding="utf-8") != before[path] for path in paths)


def test_bump_moves_the_version_and_the_notebooks_together(tmp_path):
    root = checkout_copy(tmp_path)
    init_before = (root / "attn_course" / "__init__.py").read_text(encoding="utf-8")
    bumped = run_tool("bump", "9.8.7", root=root)
    assert bumped.returncode == 0, bumped.stderr
    init_after = (root / "attn_course" / "__init__.py").read_text(encoding="utf-8")
    assert init_after == init_before.replace(f'"{VERSION}"', '"9.8.7"') and init_after != init_before
    assert release.read_version(root) == "9.8.7"
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        assert f"git+{URL}@v9.8.7" in "".join(first_code_cell(path)["source"])
    assert run_tool("check", root=root).returncode == 0

    for bad in ("v1.0.0", "1.0"):
        refused = run_tool("bump", bad, root=root)
        assert refused.returncode == 2 and "MAJOR.MINOR.PATCH" in refused.stderr
    assert release.read_version(root) == "9.8.7"


def test_check_fails_when_the_settings_drift(tmp_path):
    root = checkout_copy(tmp_path)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(text.replace('dynamic = ["version"]', 'version = "0.0.1"\ndynamic = []'), encoding="utf-8")
    assert any("must not" in p or "version lives" in p for p in release.settings_problems(root))
    assert run_tool("check", root=root).returncode == 1
    pyproject.write_text(text.replace(URL, "https://github.com/someone/else"), encoding="utf-8")
    problems = release.settings_problems(root)
    assert any("_config.yml repository.url" in p for p in problems), problems


# --------------------------------------------------------------------------- the cell, run by IPython

RUN_CELL = textwrap.dedent("""
    import json, sys, types
    from IPython.core.interactiveshell import InteractiveShell

    calls = []
    shell = InteractiveShell.instance()
    shell.register_magic_function(lambda line: calls.append(line), "line", "pip")  # records, installs nothing
    if sys.argv[2] == "colab":
        sys.modules["google.colab"] = types.ModuleType("google.colab")
    result = shell.run_cell(open(sys.argv[1], encoding="utf-8").read())
    result.raise_error()
    print(json.dumps({"pip": calls}))
""")


def run_setup_cell(tmp_path: Path, where: str) -> tuple[list[str], list[str]]:
    """(pip magic lines, other printed lines) of the setup cell run by IPython, in a fresh interpreter."""
    (tmp_path / "cell.py").write_text(release.setup_cell(VERSION, URL), encoding="utf-8")
    (tmp_path / "run_cell.py").write_text(RUN_CELL, encoding="utf-8")
    run = subprocess.run([sys.executable, "run_cell.py", "cell.py", where], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    return json.loads(lines[-1])["pip"], lines[:-1]


def test_setup_cell_does_nothing_outside_colab(tmp_path):
    pip, printed = run_setup_cell(tmp_path, "jupyter")
    assert pip == [] and printed == []


def test_setup_cell_in_colab_installs_the_tag_and_keeps_colabs_torch(tmp_path):
    pip, printed = run_setup_cell(tmp_path, "colab")
    assert pip == [f'install -q "attn-course @ git+{URL}@v{VERSION}" "torch=={installed_version("torch")}"']
    versions = ", ".join(f"{name} {installed_version(name)}" for name in ("torch", "numpy", "matplotlib", "ipywidgets"))
    # (attn-course's own version is whatever the fake install left: the one installed here)
    assert len(printed) == 1 and re.fullmatch(rf"attn-course \S+ installed from v{re.escape(VERSION)}; "
                                              rf"{re.escape(versions)}", printed[0]), printed
