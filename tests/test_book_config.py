"""The book's configuration: notebooks stored clean, Colab links in step, TOC complete, deps in sync."""

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BIB_KEYS = ["mnih2014ram", "gregor2015draw", "kingma2014vae", "xu2015show", "lee2016r2am", "liang2015rcnn",
            "vaswani2017attention"]


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks under notebooks/"


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        for cell in cells(path):
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [], f"{path.name} is stored with outputs: clear them before committing"
                assert cell.get("execution_count") is None, f"{path.name} is stored with execution counts"


def test_notebooks_open_with_a_colab_badge_and_setup_cell_in_step_with_the_config():
    url = CONFIG["repository"]["url"].rstrip("/")
    branch = CONFIG["repository"].get("branch", "main")
    owner_repo = re.match(r"https://github\.com/([^/]+/[^/]+)$", url).group(1)
    for path in NOTEBOOKS:
        all_cells = cells(path)
        first = all_cells[0]
        assert first["cell_type"] == "markdown" and source(first).lstrip().startswith("# "), \
            f"{path.name}: the first cell must be the markdown title"
        colab = f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/notebooks/{path.name}"
        assert f"]({colab})" in source(first), f"{path.name}: the Open-in-Colab badge must link {colab}"
        assert "Open In Colab" in source(first)
        setup = next(c for c in all_cells if c["cell_type"] == "code")
        assert '"google.colab" in sys.modules' in source(setup), f"{path.name}: first code cell must be the setup"
        assert f"git+{url}" in source(setup), f"{path.name}: the setup cell must install from {url}"


def toc_files(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("root", "file"):
                yield value
            else:
                yield from toc_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from toc_files(item)


def test_toc_lists_every_notebook_and_every_entry_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = list(toc_files(toc))
    for entry in entries:
        assert any((ROOT / f"{entry}{suffix}").is_file() for suffix in (".md", ".ipynb")), f"TOC entry {entry} missing"
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in entries, f"{path.name} is not in _toc.yml"


def test_build_excludes_the_virtualenv_and_build_folders():
    excluded = CONFIG["exclude_patterns"]
    for pattern in (".venv", "venv", "_build"):
        assert pattern in excluded
    assert CONFIG["execute"]["execute_notebooks"] in ("force", "cache")
    assert CONFIG["sphinx"]["config"]["nb_ipywidgets_js"] == {}, "widget JavaScript must not come from CDNs"


def test_bibliography_has_the_seven_papers():
    bib = (ROOT / CONFIG["bibtex_bibfiles"][0]).read_text()
    keys = re.findall(r"@\w+\{([^,]+),", bib)
    for key in BIB_KEYS:
        assert key in keys, f"{key} missing from references.bib"


def normalise(requirement):
    return re.sub(r"\s+", "", requirement).lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {normalise(r) for r in pip_section}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject.toml: {wanted - listed}"
    assert "python=3.11" in environment["dependencies"]
