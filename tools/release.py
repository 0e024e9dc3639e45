"""The release that the notebooks install in Colab, set in one place.

Two settings, each kept once:

- the version: ``__version__`` in ``attn_course/__init__.py`` (pyproject.toml reads it from
  there: ``[tool.setuptools.dynamic]``); its release is the git tag ``v<version>``;
- the repository: ``Repository`` under ``[project.urls]`` in ``pyproject.toml``.

The first code cell of every notebook (its setup cell) is written from them: in Colab it
installs ``attn-course @ git+<repository>@v<version>`` with Colab's own torch pinned (pip
never replaces it) and prints the versions it ends with (attn-course, torch, numpy, matplotlib,
ipywidgets); anywhere else it does nothing.

    python tools/release.py show           # the version, the tag, the repository and the setup cell
    python tools/release.py check          # exit 1 when a notebook's setup cell is out of step
    python tools/release.py sync           # rewrite each notebook's setup cell; nothing else changes
    python tools/release.py bump 0.3.0     # set __version__, then sync

``--root PATH`` works on another checkout (the tests use a copy). Only the standard library
is needed (Python 3.11+ for ``tomllib``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION_FILE = Path("attn_course") / "__init__.py"
VERSION_LINE = re.compile(r"""^__version__\s*=\s*(["'])([^"']*)\1""", re.MULTILINE)
VERSION_FORMAT = re.compile(r"\d+\.\d+\.\d+")
GITHUB_URL = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")
SHOWN = ("torch", "numpy", "matplotlib", "ipywidgets")  # Colab's own packages, printed after the install

# `{...}` in a %pip line is IPython's variable expansion: the pin is torch's installed version, so
# pip keeps Colab's CUDA build (or fails) rather than replace it; the rest is left to the floors
# in pyproject.toml, which Colab's packages meet.
SETUP_CELL = '''\
import sys
if "google.colab" in sys.modules:  # Colab: install the course; elsewhere: nothing
    from importlib.metadata import version
    torch_version = version("torch")  # Colab's own build: pinned, so pip keeps it
    source = "git+{url}@{tag}"
    %pip install -q "attn-course @ {{source}}" "torch=={{torch_version}}"
    shown = {shown}
    print(f"attn-course {{version('attn-course')}} installed from {tag};",
          ", ".join(f"{{name}} {{version(name)}}" for name in shown))'''


class ReleaseError(Exception):
    """A setting or a notebook that the tool cannot work with; the message says which."""


# --------------------------------------------------------------------------- the two settings

def read_version(root: Path = ROOT) -> str:
    text = (root / VERSION_FILE).read_text(encoding="utf-8")
    found = VERSION_LINE.findall(text)
    if len(found) != 1:
        raise ReleaseError(f"{VERSION_FILE} must set __version__ exactly once, found {len(found)}")
    version = found[0][1]
    if not VERSION_FORMAT.fullmatch(version):
        raise ReleaseError(f"{VERSION_FILE}: __version__ = {version!r} is not MAJOR.MINOR.PATCH")
    return version


def read_pyproject(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))


def read_repository(root: Path = ROOT) -> str:
    urls = read_pyproject(root).get("project", {}).get("urls", {})
    url = str(urls.get("Repository", "")).rstrip("/")
    if not GITHUB_URL.fullmatch(url):
        raise ReleaseError(f"pyproject.toml: [project.urls] Repository must be https://github.com/OWNER/NAME, "
                           f"not {url!r}")
    return url


def tag(version: str) -> str:
    return f"v{version}"


def setup_cell(version: str, url: str) -> str:
    """The setup cell's source for release ``version`` of the repository at ``url``."""
    shown = "(" + ", ".join(f'"{name}"' for name in SHOWN) + ")"
    return SETUP_CELL.format(tag=tag(version), url=url, shown=shown)


def settings_problems(root: Path = ROOT) -> list[str]:
    """What keeps the version or the repository from having one home."""
    problems = []
    pyproject = read_pyproject(root)
    project = pyproject.get("project", {})
    if "version" in project:
        problems.append(f"pyproject.toml sets version = {project['version']!r}: the version lives in "
                        f"{VERSION_FILE} only (declare it dynamic)")
    dynamic = pyproject.get("tool", {}).get("setuptools", {}).get("dynamic", {}).get("version", {})
    if "version" not in project.get("dynamic", []) or dynamic.get("attr") != "attn_course.__version__":
        problems.append("pyproject.toml must read the version from attn_course.__version__: "
                        'dynamic = ["version"] and [tool.setuptools.dynamic] version = { attr = "attn_course.__version__" }')
    book = root / "_config.yml"
    if book.is_file():  # the book's launch buttons and badges name the same repository
        match = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*(\S+)", book.read_text(encoding="utf-8"),
                          re.MULTILINE)
        book_url = match.group(1).strip("\"'").rstrip("/") if match else None
        if book_url != read_repository(root):
            problems.append(f"_config.yml repository.url is {book_url!r}, pyproject.toml's Repository is "
                            f"{read_repository(root)!r}: they must be the same")
    return problems


# --------------------------------------------------------------------------- notebooks

def notebooks(root: Path = ROOT) -> list[Path]:
    found = sorted((root / "notebooks").glob("*.ipynb"))
    if not found:
        raise ReleaseError(f"no notebooks under {root / 'notebooks'}")
    return found


def dump(notebook: dict) -> str:
    """Jupyter's own layout: one-space indent, unicode kept, a final newline."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def load(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    if dump(notebook) != text:  # rewriting would change more than the setup cell
        raise ReleaseError(f"{path.name} is not in Jupyter's own layout, so rewriting it would change more than its "
                           f"setup cell; save it once from Jupyter (or `jupyter nbconvert --clear-output --inplace`)")
    return notebook


def setup_cell_of(notebook: dict, name: str) -> dict:
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            return cell
    raise ReleaseError(f"{name} has no code cell to hold the setup")


def source_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def source_lines(text: str) -> list[str]:
    """Jupyter's stored form: a list of lines, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


def installs(text: str) -> str:
    """What a setup cell's pip line installs from git: ``URL@REF``, ``URL (no tag: main)`` or ``nothing from git``."""
    match = re.search(r"git\+(\S+?)(?:@([\w./-]+))?[\"'\s]", text + "\n")
    if not match:
        return "nothing from git"
    return f"{match.group(1)}@{match.group(2)}" if match.group(2) else f"{match.group(1)} (no tag: main)"


def out_of_step(root: Path = ROOT) -> list[str]:
    """One line for each notebook whose setup cell is not the one :func:`setup_cell` writes."""
    version, url = read_version(root), read_repository(root)
    wanted = setup_cell(version, url)
    stale = []
    for path in notebooks(root):
        have = source_text(setup_cell_of(load(path), path.name))
        if have == wanted:
            continue
        now = installs(have)
        if now == f"{url}@{tag(version)}":
            stale.append(f"notebooks/{path.name}: its setup cell installs {now} but differs from the one "
                         f"tools/release.py writes")
        else:
            stale.append(f"notebooks/{path.name}: its setup cell installs {now}, not {url}@{tag(version)}")
    return stale


def sync(root: Path = ROOT) -> list[Path]:
    """Rewrite each stale setup cell's source; every other byte of every notebook stays. Returns the changed paths."""
    wanted = source_lines(setup_cell(read_version(root), read_repository(root)))
    changed = []
    for path in notebooks(root):
        notebook = load(path)
        cell = setup_cell_of(notebook, path.name)
        if cell.get("source") == wanted:
            continue
        cell["source"] = wanted
        path.write_text(dump(notebook), encoding="utf-8")
        changed.append(path)
    return changed


def bump(version: str, root: Path = ROOT) -> list[Path]:
    """Set ``__version__`` to ``version`` (MAJOR.MINOR.PATCH), then sync the notebooks."""
    if not VERSION_FORMAT.fullmatch(version):
        raise ReleaseError(f"{version!r} is not MAJOR.MINOR.PATCH (write 0.3.0, not v0.3.0)")
    read_version(root)  # exactly one __version__ line to replace
    path = root / VERSION_FILE
    text = path.read_text(encoding="utf-8")
    path.write_text(VERSION_LINE.sub(lambda m: f"__version__ = {m.group(1)}{version}{m.group(1)}", text, count=1),
                    encoding="utf-8")
    return sync(root)


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/release.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to work on (default: this one)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("show", help="the version, tag, repository and setup cell")
    commands.add_parser("check", help="exit 1 when a setup cell or a setting is out of step")
    commands.add_parser("sync", help="rewrite every notebook's setup cell")
    bump_parser = commands.add_parser("bump", help="set __version__ to VERSION, then sync")
    bump_parser.add_argument("version", help="MAJOR.MINOR.PATCH")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.command == "show":
            version, url = read_version(root), read_repository(root)
            print(f"version {version} (attn_course/__init__.py), tag {tag(version)}, repository {url} (pyproject.toml)")
            print(setup_cell(version, url))
            return 0
        if args.command == "check":
            problems = settings_problems(root) + out_of_step(root)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print("run `python tools/release.py sync`, then commit the notebooks", file=sys.stderr)
                return 1
            print(f"{len(notebooks(root))} notebooks install {tag(read_version(root))} of {read_repository(root)}")
            return 0
        changed = bump(args.version, root) if args.command == "bump" else sync(root)
        for path in changed:
            print(f"rewrote the setup cell of {path.relative_to(root)}")
        print(f"{len(changed)} of {len(notebooks(root))} notebooks changed; "
              f"they install {tag(read_version(root))} of {read_repository(root)}")
        return 0
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
