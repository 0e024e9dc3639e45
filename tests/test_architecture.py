"""The import rules of ARCHITECTURE.md, enforced: which layer of the package may import which.

Every module of ``attn_course`` is parsed (function-level imports included). A paper module
that imported another paper module, a chapter that imported the registry, or a shared
piece that imported a chapter fails here with the offending line.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attn_course"

SHARED = {"runtime", "history", "checkpoints", "viz", "attention", "decoding", "data"}  # used by every layer above
TRAINING = {"train", "spec"}  # the one training loop, and what a chapter declares for it
TOP = {"registry", "__main__", "__init__", "experiments", "widgets", "exercises", "web"}
PAPERS = {p.stem for p in PACKAGE.glob("*.py")} - SHARED - TRAINING - TOP  # one module per paper

ALLOWED = {  # layer -> the layers it may import
    "shared": {"shared"},
    "train": {"shared"},
    "spec": {"shared", "train"},
    "paper": {"shared"},
    "experiments": {"shared", "train", "spec", "paper"},
    "widgets": {"shared", "paper", "experiments", "widgets"},
    "exercises": {"shared", "spec", "paper", "experiments", "exercises"},  # the training checks train through spec
    "registry": {"shared", "train", "spec", "paper", "experiments"},
    "web": {"shared", "paper", "experiments", "registry"},  # the live demos' export: shipped models, as loaded
    "__main__": {"shared", "train", "spec", "registry", "web", "package"},
    "package": set(),
}


def layer_of(module: str) -> str:
    """The layer of ``attn_course.<module>`` (a dotted name below the package)."""
    top = module.split(".")[0]
    if module == "" or not ((PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").is_file()):
        return "package"  # attn_course/__init__.py: the version, nothing else
    if top in SHARED:
        return "shared"
    if top in PAPERS:
        return "paper"
    return {"train": "train", "spec": "spec", "registry": "registry", "__main__": "__main__",
            "experiments": "experiments", "widgets": "widgets", "exercises": "exercises", "web": "web",
            "__init__": "package"}[top]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, here: str):
    """(line, imported module below the package) for every import of the package in ``path`` (module ``here``)."""
    package = here.split(".") if here else []
    if path.name != "__init__.py":
        package = package[:-1]
    elif package == ["__init__"]:
        package = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            elif (node.module or "").startswith("attn_course"):
                names = [node.module.removeprefix("attn_course").lstrip(".")]
            else:
                continue
            for name in names:
                yield node.lineno, name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("attn_course"):
                    yield node.lineno, alias.name.removeprefix("attn_course").lstrip(".")


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_layers_are_what_the_architecture_says():
    assert {"ram", "draw", "show_attend_tell", "r2am", "transformer", "baselines"} <= PAPERS
    experiments = {p.stem for p in (PACKAGE / "experiments").glob("*.py")} - {"__init__"}
    assert experiments <= PAPERS, f"an experiments module is named after no paper module: {experiments - PAPERS}"


def violations(path: Path, here: str) -> list[str]:
    """What in ``path`` (the module ``here``) breaks the rules, one line each."""
    layer = layer_of(here)
    wrong = []
    for line, target in imports_of(path, here):
        there = layer_of(target)
        if there == layer == "paper" and target.split(".")[0] != here.split(".")[0]:
            wrong.append(f"line {line}: a paper module imports another paper module ({target})")
        elif there == layer == "experiments" and target not in ("experiments", here) and here != "experiments":
            wrong.append(f"line {line}: a chapter's experiments import another chapter's ({target})")
        elif there != layer and there != "package" and there not in ALLOWED[layer]:
            wrong.append(f"line {line}: {layer} module imports {there} module {target}")
    return wrong


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_follow_the_layers(path):
    wrong = violations(path, module_name(path))
    assert not wrong, f"{module_name(path)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("source, here, says", [
    ("from .show_attend_tell import SoftAttention", "r2am", "paper module imports another paper module"),
    ("def f():\n    from .registry import get_spec", "ram", "paper module imports registry"),
    ("from ..experiments.ram import error_rate", "experiments.draw", "import another chapter's"),
    ("from ..widgets.ram import sensor_figure", "experiments.ram", "imports widgets module"),
    ("from attn_course.ram import ram_loss", "runtime", "shared module imports paper"),
    ("from .train import fit", "draw", "paper module imports train"),
])
def test_the_rules_catch_what_they_forbid(tmp_path, source, here, says):
    path = tmp_path / "module.py"
    path.write_text(source + "\n")
    assert any(says in v for v in violations(path, here)), violations(path, here)
    dots = "." * (here.count(".") + 1)
    path.write_text(f"import torch\nfrom {dots}data.mnist import load_mnist\n")
    assert violations(path, here) == []
