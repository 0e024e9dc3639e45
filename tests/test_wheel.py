"""The wheel, installed the way Colab installs it.

The wheel is built (``python -m build --wheel --no-isolation``, or ``pip wheel`` where ``build``
is missing) from a copy of the package, then installed into a fresh virtual environment that
already holds this environment's packages, as Colab already holds torch, numpy, matplotlib and
ipywidgets: the new environment sees them through a ``.pth`` file that names a folder of links
to this environment's site-packages, every package but attn-course itself.

pip runs with ``--no-index`` and no configuration, so it can fetch nothing: every requirement
must already be met, and the install must add attn-course and nothing else. It gets the same torch
pin as the notebooks' setup cell. Then the installed package, run from outside the repository,
holds every file of the source package (checkpoints, model cards, word list), and its ``info``
and ``evaluate`` commands work and match the shipped model cards.

Needs no network; about 40 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import attn_course

from mnist_files import DATA, needs_mnist

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VERSION = attn_course.__version__
KEPT = ("torch", "numpy", "matplotlib", "ipywidgets")  # what Colab ships; the setup cell pins torch
CHECKPOINTS = ROOT / "attn_course" / "checkpoints"
# Colab's ipywidgets (7.7.1 for years); the widgets are tested with it (README, "In Colab")
COLAB_IPYWIDGETS = "7.7.1"


def package_files() -> set[str]:
    """Every file of the source package, relative to the repository: git's view where there is one."""
    listing = None
    if shutil.which("git") and (ROOT / ".git").exists():
        run = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "attn_course"],
                             cwd=ROOT, capture_output=True, text=True)
        if run.returncode == 0:
            listing = {line for line in run.stdout.splitlines() if (ROOT / line).is_file()}
    if listing is None:
        listing = {str(p.relative_to(ROOT)) for p in (ROOT / "attn_course").rglob("*") if p.is_file()}
    return {name for name in listing if "__pycache__" not in name and not name.endswith((".pyc", ".state"))}


def quiet_env(**extra: str) -> dict[str, str]:
    """This environment less pip's settings, PYTHONPATH and the word-list override."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "ATTN_COURSE_WORDS", "PYTHONSAFEPATH")}
    if "PYTHONPATH" in extra and not extra["PYTHONPATH"]:
        del extra["PYTHONPATH"]
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               ATTN_COURSE_DEVICE="cpu", **extra)
    return env


def run(args: list, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=quiet_env(**extra), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """attn_course-VERSION-py3-none-any.whl, built from a copy of the project (the build writes build/ in place)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in package_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    dist = work / "dist"
    if importlib.util.find_spec("build"):  # (the build runs with this interpreter's PYTHONPATH, if any)
        built = run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source], work,
                    PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    else:  # `build` is in the dev extra; until .venv has it, pip builds the same wheel
        built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                     "-w", dist, source], work)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"attn_course-{VERSION}-py3-none-any.whl"]
    return wheels[0]


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> dict:
    """A fresh environment that already holds this one's packages, attn-course excepted."""
    work = tmp_path_factory.mktemp("colab")
    ours = Path(sysconfig.get_paths()["purelib"])
    preinstalled = work / "preinstalled"
    preinstalled.mkdir()
    for entry in ours.iterdir():
        name = entry.name
        if name.startswith(("attn_course", "attn-course", "__editable__", "__pycache__")) or name.endswith(".pth"):
            continue
        (preinstalled / name).symlink_to(entry)
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)  # pip comes with the preinstalled packages
    python = env_dir / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work)
                .stdout.strip())
    (site / "preinstalled.pth").write_text(f"{preinstalled}\n", encoding="utf-8")
    return {"work": work, "python": python, "site": site, "preinstalled": preinstalled, "bin": env_dir / "bin"}


def kept_packages(colab: dict) -> dict[str, list[str]]:
    """{name: [version, folder it is imported from]} for Colab's own packages, as the new environment sees them."""
    probe = ("import importlib, importlib.metadata as m, json, pathlib\n"
             f"print(json.dumps({{n: [m.version(n), str(pathlib.Path(importlib.import_module(n).__file__).parent"
             f".parent)] for n in {KEPT!r}}}))")
    got = run([colab["python"], "-c", probe], colab["work"])
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


@pytest.fixture(scope="module")
def installed(wheel, colab) -> dict:
    before = kept_packages(colab)
    pin = f"torch=={before['torch'][0]}"  # as the setup cell pins it
    pip = run([colab["python"], "-m", "pip", "install", "--no-index", wheel, pin], colab["work"])
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return {**colab, "before": before, "pip": pip.stdout, "package": colab["site"] / "attn_course"}


def test_wheel_metadata_is_the_projects(wheel):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    with zipfile.ZipFile(wheel) as archive:
        metadata = Parser().parsestr(archive.read(f"attn_course-{VERSION}.dist-info/METADATA").decode())
    assert metadata["Name"] == "attn-course" and metadata["Version"] == VERSION
    required = sorted(r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r)
    assert [str(Requirement(r)) for r in required] == sorted(str(Requirement(r)) for r in project["dependencies"])
    ipywidgets = next(Requirement(r) for r in required if r.startswith("ipywidgets"))
    assert ipywidgets.specifier.contains(COLAB_IPYWIDGETS), f"{ipywidgets} would make Colab upgrade its ipywidgets"
    torch = next(Requirement(r) for r in required if r.startswith("torch"))
    assert not any(s.operator in ("==", "<", "<=", "~=", "===") for s in torch.specifier), \
        f"{torch}: torch is only bounded below, so Colab keeps its own build"


def test_wheel_holds_the_whole_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = sorted(package_files() - names)
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
    shipped = sorted(p.name for p in CHECKPOINTS.iterdir() if p.suffix in (".pt", ".json"))
    assert shipped and {f"attn_course/checkpoints/{n}" for n in shipped} <= names


def test_install_adds_attn_course_and_keeps_colabs_packages(installed):
    lines = [line for line in installed["pip"].splitlines() if line.startswith("Successfully installed")]
    assert lines == [f"Successfully installed attn-course-{VERSION}"], installed["pip"][-3000:]
    assert kept_packages(installed) == installed["before"]  # same versions, from the same folders
    for name, (_, folder) in installed["before"].items():
        assert Path(folder) == installed["preinstalled"], f"{name} is imported from {folder}"
    assert sorted(p.name for p in installed["site"].iterdir()) == \
        sorted(["attn_course", f"attn_course-{VERSION}.dist-info", "preinstalled.pth"])


def test_installed_package_holds_every_file(installed):
    for name in sorted(package_files()):
        copy = installed["site"] / name
        assert copy.is_file(), f"{name} was not installed"
        assert copy.read_bytes() == (ROOT / name).read_bytes(), f"{name} differs from the repository's"


def test_info_runs_from_the_installed_package(installed):
    info = run([installed["bin"] / "attn-course", "info"], installed["work"])
    assert info.returncode == 0, info.stderr[-3000:]
    assert f"attn_course {VERSION} at {installed['package'].resolve()}" in info.stdout
    pretrained = next(line for line in info.stdout.splitlines() if line.startswith("pretrained: "))
    assert sorted(pretrained.removeprefix("pretrained: ").split(", ")) == sorted(p.stem for p in CHECKPOINTS.glob("*.pt"))


def evaluate(installed: dict, *args: str, **extra: str) -> tuple[dict, dict]:
    """(the JSON last line of `python -m attn_course evaluate ARGS`, the shipped model card)."""
    got = run([installed["python"], "-m", "attn_course", "evaluate", *args], installed["work"], **extra)
    assert got.returncode == 0, got.stderr[-3000:]
    result = json.loads(got.stdout.strip().splitlines()[-1])
    card = json.loads((installed["package"] / "checkpoints" / f"{result['model']}-{result['task']}.json").read_text())
    return result, card


def check_against_card(result: dict, card: dict) -> None:
    assert result["test_examples"] == card["test_examples"]
    assert result["metrics"].keys() == card["metrics"].keys()
    for metric, value in card["metrics"].items():
        assert result["metrics"][metric] == pytest.approx(value, abs=2e-3), metric


@needs_mnist
def test_evaluate_fc_from_the_installed_package(installed):
    result, card = evaluate(installed, "fc", "--task", "mnist28", ATTN_COURSE_DATA=str(Path(DATA).resolve()))
    assert (result["model"], result["task"]) == ("fc", "mnist28")
    check_against_card(result, card)


def test_evaluate_r2am_reads_the_installed_word_list(installed):
    """r2am's test lines come from the word list shipped in the package, and its metrics use rapidfuzz."""
    result, card = evaluate(installed, "r2am", "--variant", "recurrent")
    assert (result["model"], result["task"]) == ("r2am", "recurrent")
    check_against_card(result, card)
