"""The book's configuration, checked without building it.

- notebooks are committed without outputs or execution counts;
- each notebook opens with an Open-in-Colab badge for its own path, derived from the
  repository url and branch in `_config.yml`, and a setup cell that installs the package
  from that repository only inside Colab;
- `_toc.yml` lists every notebook, and every entry exists;
- `_config.yml` keeps environments and build output out of the build, runs the
  notebooks, serves MathJax locally and loads no widget JavaScript from CDNs;
- every paper in `references.bib` is complete, and the landing page cites all of them;
- `environment.yml` lists exactly the requirements of `pyproject.toml`.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def repository() -> tuple[str, str, str]:
    """(url, owner/name, branch) from `_config.yml`."""
    repo = CONFIG["repository"]
    url = repo["url"].rstrip("/")
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?", url)
    assert match, f"repository.url must be a GitHub repository URL, not {url!r}"
    return url, match.group(1), repo.get("branch", "main")


def toc_entries(node) -> list[str]:
    """Every `root` and `file` entry of the TOC, in order."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("root", "file") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(toc_entries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(toc_entries(item))
    return found


def notebook_ids():
    return [path.name for path in NOTEBOOKS]


# --- notebooks ---------------------------------------------------------------------------

def test_there_are_notebooks():
    """The per-notebook checks below must not pass on an empty notebooks/ folder."""
    assert NOTEBOOKS, f"no notebooks under {ROOT / 'notebooks'}"


CODE_COLUMN = 85  # characters the rendered book's code column shows without a scroll bar


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_ids())
def test_notebook_code_fits_the_books_code_column(path):
    long = [f"cell {number}: {len(line)} characters: {line.strip()[:60]}..."
            for number, cell in enumerate(cells(path)) if cell["cell_type"] == "code"
            for line in text(cell).splitlines() if len(line) > CODE_COLUMN]
    assert not long, f"{path.name}: code lines over {CODE_COLUMN} characters, cut off in the book:\n" + "\n".join(long)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_ids())
def test_notebook_is_stored_without_outputs(path):
    for number, cell in enumerate(cells(path)):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs"), \
            f"{path.name}, cell {number}: stored with outputs; run `jupyter nbconvert --clear-output --inplace`"
        assert cell.get("execution_count") is None, f"{path.name}, cell {number}: stored with an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_ids())
def test_notebook_opens_with_colab_badge_and_setup_cell(path):
    url, owner_repo, branch = repository()
    all_cells = cells(path)
    assert all_cells, f"{path.name} has no cells"
    first = all_cells[0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell must be markdown (title and badge)"
    colab = f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/notebooks/{path.name}"
    links = re.findall(r"\]\((https://colab\.research\.google\.com/[^)\s]+)\)|href=[\"'](https://colab[^\"']+)",
                       text(first))
    targets = {a or b for a, b in links}
    assert colab in targets, f"{path.name}: the first cell needs an Open-in-Colab badge linking {colab}, has {targets}"
    assert re.search(r"open in colab", text(first), re.IGNORECASE), f"{path.name}: the badge needs its label"

    code = [cell for cell in all_cells if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    setup = text(code[0])
    assert '"google.colab" in sys.modules' in setup, \
        f"{path.name}: the first code cell must test `\"google.colab\" in sys.modules`"
    assert re.search(r"git\+" + re.escape(url) + r"(?:\.git)?(?:@[\w./-]+)?[\"'\s]", setup + "\n"), \
        f"{path.name}: the first code cell must pip install git+{url}"
    assert re.search(r"%pip install\b", setup), f"{path.name}: the first code cell must %pip install the course"


# --- table of contents ---------------------------------------------------------------------

def test_toc_entries_exist():
    entries = toc_entries(TOC)
    assert TOC.get("root") == "book/intro", "the landing page book/intro must be the root"
    assert len(entries) == len(set(entries)), f"duplicate TOC entries: {entries}"
    for entry in entries:
        assert [s for s in (".md", ".ipynb") if (ROOT / f"{entry}{s}").is_file()], f"TOC entry {entry} has no file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_ids())
def test_notebook_is_in_the_toc(path):
    assert f"notebooks/{path.stem}" in toc_entries(TOC), f"{path.name} is not in _toc.yml"


# --- _config.yml ---------------------------------------------------------------------------

def test_build_excludes_environments_outputs_and_code():
    excluded = CONFIG["exclude_patterns"]
    for pattern in (".venv", "venv", "_build", "**.ipynb_checkpoints", "tests", "README.md", ".ci", "attn_course",
                    "benchmarks", "runs", ".whl", ".gpu_data"):
        assert pattern in excluded, f"{pattern} missing from exclude_patterns"
    assert CONFIG["only_build_toc_files"] is True


def test_build_executes_the_notebooks_once():
    """Notebooks are stored without outputs: the build shows the outputs of tools/execute_notebooks.py's run,
    from the cache it fills, and executes any notebook that is not in it; it never hides a failure."""
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "cache"
    assert execute["cache"] == "_build/.jupyter_cache"
    assert execute["allow_errors"] is False
    assert execute["timeout"] >= 600
    tool = (ROOT / "tools" / "execute_notebooks.py").read_text()
    assert 'ROOT / "_build" / ".jupyter_cache"' in tool, "the executor must fill the cache the book reads"
    makefile = (ROOT / "Makefile").read_text()
    assert "tools/execute_notebooks.py" in makefile


def test_markdown_outputs_are_parsed_as_myst():
    """display(Markdown(table)) must render as a table: CommonMark (myst-nb's default) has none."""
    assert CONFIG["sphinx"]["config"]["nb_render_markdown_format"] == "myst"


def test_launch_buttons_and_repository():
    url, _, branch = repository()
    assert url == "https://github.com/attn-course/attention-course" and branch == "main"
    assert CONFIG["repository"]["path_to_book"] == "."
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["html"]["use_repository_button"] is True


def test_site_loads_nothing_from_cdns():
    sphinx = CONFIG["sphinx"]
    assert sphinx["config"]["nb_ipywidgets_js"] == {}, "widget JavaScript must not be loaded from CDNs"
    extensions = sphinx["local_extensions"]
    assert extensions.get("offline_mathjax") == "book/_ext", "the offline MathJax extension must be enabled"
    assert (ROOT / "book" / "_ext" / "offline_mathjax.py").is_file()
    assert not CONFIG["launch_buttons"].get("thebe"), "thebe loads its JavaScript from unpkg.com"
    assert "mathjax_path" not in sphinx["config"], "mathjax_path is set by the extension, to the local copy"
    assert not (ROOT / "_static").exists(), "Jupyter Book adds every script in a root _static/ to every page"


# --- bibliography --------------------------------------------------------------------------

def bib_entries() -> dict[str, str]:
    assert CONFIG["bibtex_bibfiles"] == ["book/references.bib"]
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    parts = re.split(r"^@\w+\{", bib, flags=re.MULTILINE)[1:]
    return {part.split(",", 1)[0].strip(): part for part in parts}


def test_bibliography_holds_the_chapters_papers_complete():
    entries = bib_entries()
    assert {"mnih2014ram", "xu2015show", "vaswani2017attention"} <= set(entries)
    for key in entries:
        assert key in entries, f"{key} missing from references.bib"
        for field in ("title", "author", "year", "booktitle"):
            assert re.search(rf"^\s*{field}\s*=", entries[key], re.MULTILINE), f"{key} has no {field}"
        year = re.search(r"year\s*=\s*\{?(\d{4})", entries[key]).group(1)
        assert year in key, f"{key}: year {year} does not match the key"


def test_landing_page_cites_every_paper():
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", intro))
    cited = {key.strip() for group in cited for key in group.split(",")}
    papers = set(bib_entries())
    assert papers <= cited, f"not cited on the landing page: {papers - cited}"
    assert "$$" in intro, "the landing page should display at least one equation"


# --- environment.yml against pyproject.toml ---------------------------------------------------

def normalise(requirement: str) -> str:
    """`Jupyter_Book >= 1.0.4, <2` -> `jupyter-book>=1.0.4,<2` (PEP 503 names, no spaces)."""
    requirement = re.sub(r"\s+", "", requirement)
    match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(.*)", requirement)
    assert match, f"not a requirement: {requirement!r}"
    name, rest = match.groups()
    return re.sub(r"[-_.]+", "-", name).lower() + rest


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    assert environment["name"] == "attn-course"
    conda = environment["dependencies"]
    assert "python=3.11" in conda and "pip" in conda
    pip_sections = [item["pip"] for item in conda if isinstance(item, dict) and "pip" in item]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    # pip options such as `-e .` install the package itself; everything else is a requirement
    listed = [normalise(r) for r in pip_sections[0] if not str(r).startswith("-")]
    assert len(listed) == len(set(listed)), f"duplicate pip entries in environment.yml: {listed}"
    assert sorted(listed) == sorted(wanted), (
        f"only in environment.yml: {sorted(set(listed) - set(wanted))}; "
        f"only in pyproject.toml: {sorted(set(wanted) - set(listed))}")
