"""The command line: info, clear errors for unknown names, evaluate's JSON, train's outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attn_course.__main__ import main
from attn_course.checkpoints import save_pretrained
from attn_course.registry import get_spec

from mnist_files import DATA, needs_mnist


def last_json_line(text):
    return json.loads(text.strip().splitlines()[-1])


@needs_mnist
def test_info_reports_versions_data_and_models(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out
    assert f"data root: {Path(DATA).resolve()}" in out
    assert out.count(": ok") == 4  # the four MNIST files, each verified
    assert "fc (" in out and "conv (" in out


def test_unknown_model_and_task_list_the_choices(capsys):
    assert main(["evaluate", "nosuchmodel"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nosuchmodel'" in err and "fc" in err and "conv" in err
    assert main(["evaluate", "fc", "--task", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "no task 'imagenet'" in err and "mnist28" in err and "cluttered100" in err


@needs_mnist
def test_evaluate_prints_json_last_and_checks_the_config(tmp_path, capsys):
    spec = get_spec("fc")
    torch.manual_seed(0)
    model = spec.build(spec.model_config("mnist28"))
    path, _ = save_pretrained(model, spec.model_config("mnist28"), {"model": "fc"}, tmp_path / "fc.pt")
    assert main(["evaluate", "fc", "--task", "mnist28", "--checkpoint", str(path), "--device", "cpu"]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["model"] == "fc" and result["task"] == "mnist28" and result["test_examples"] == 10_000
    assert 0.0 <= result["metrics"]["accuracy"] <= 0.3  # an untrained network is near chance
    assert result["metrics"]["error"] == pytest.approx(1 - result["metrics"]["accuracy"])
    # the same weights asked for as a 60x60 model: a clear config error, not a shape traceback
    assert main(["evaluate", "fc", "--task", "translated60", "--checkpoint", str(path)]) == 2
    assert "config mismatch" in capsys.readouterr().err


@needs_mnist
@pytest.mark.slow
def test_train_writes_weights_card_and_json(tmp_path):
    out = tmp_path / "fc.pt"
    env = {**os.environ, "ATTN_COURSE_PROFILE": "quick", "ATTN_COURSE_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, "-m", "attn_course", "train", "fc", "--task", "mnist28",
                          "--out", str(out), "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    result = last_json_line(run.stdout)
    assert result["metrics"]["accuracy"] > 0.9
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["command"].endswith(f"train fc --task mnist28 --out {out} --no-progress")
    assert card["steps"] == result["steps"] and card["metrics"] == result["metrics"]
    assert not out.with_suffix(".state").exists()  # the resumable state is removed once finished


def test_train_passes_variant_and_batch_size_to_the_recipe(monkeypatch, tmp_path, capsys):
    import attn_course.registry as registry

    seen = {}
    spec = get_spec("fc")

    class Recorder:
        name, description = spec.name, spec.description
        check_task = staticmethod(spec.check_task)

        @staticmethod
        def train(task, **kwargs):
            seen.update(task=task, **kwargs)
            raise ValueError("recorded")

    monkeypatch.setattr(registry, "get_spec", lambda name: Recorder)
    out = str(tmp_path / "x.pt")
    assert main(["train", "fc", "--variant", "translated60", "--batch-size", "512", "--out", out]) == 2
    assert seen["task"] == "translated60" and seen["batch_size"] == 512
    seen.clear()
    assert main(["train", "fc", "--task", "mnist28", "--out", out]) == 2
    assert seen["task"] == "mnist28" and "batch_size" not in seen  # the recipe's own default


def test_no_attention_flag_selects_the_noattn_variant(monkeypatch, tmp_path, capsys):
    import attn_course.registry as registry

    seen = {}
    spec = get_spec("r2am")

    class Recorder:
        name, description, tasks, default_task = spec.name, spec.description, spec.tasks, spec.default_task
        check_task = staticmethod(spec.check_task)

        @staticmethod
        def train(task, **kwargs):
            seen.update(task=task)
            raise ValueError("recorded")

    monkeypatch.setattr(registry, "get_spec", lambda name: Recorder)
    out = str(tmp_path / "x.pt")
    assert main(["train", "r2am", "--variant", "recurrent", "--no-attention", "--out", out]) == 2
    assert seen["task"] == "recurrent-noattn"
    assert main(["train", "r2am", "--no-attention", "--out", out]) == 2
    assert seen["task"] == "recursive-noattn"
    monkeypatch.setattr(registry, "get_spec", lambda name: spec)
    assert main(["train", "r2am", "--variant", "recursive-noattn", "--no-attention", "--out", out]) == 2
    assert "no variant without attention" in capsys.readouterr().err


@needs_mnist
def test_ship_rounds_to_float16_and_re_evaluates_the_card(tmp_path, capsys):
    from attn_course.checkpoints import load_weights, read_card, sha256_of
    from attn_course.registry import load_model_file

    spec = get_spec("fc")
    torch.manual_seed(0)
    model = spec.build(spec.model_config("mnist28"))
    card = {"model": "fc", "task": "mnist28", "metrics": {"error": 0.5, "accuracy": 0.5}, "steps": 3,
            "command": "python -m attn_course train fc --task mnist28"}
    trained, _ = save_pretrained(model, spec.model_config("mnist28"), card, tmp_path / "runs" / "fc.pt")
    to = tmp_path / "shipped"
    assert main(["ship", "fc", "--task", "mnist28", "--checkpoint", str(trained), "--float16", "--to", str(to)]) == 0
    result = last_json_line(capsys.readouterr().out)
    path = to / "fc-mnist28.pt"
    shipped = read_card(path)
    assert shipped["weights_dtype"] == "float16" and shipped["sha256"] == sha256_of(path)
    assert shipped["metrics"] == result["metrics"] and shipped["metrics_float32"] == card["metrics"]
    assert shipped["command"] == card["command"] and shipped["steps"] == 3 and shipped["test_examples"] == 10_000
    assert shipped["shipped_with"].startswith("python -m attn_course ship fc")
    assert path.stat().st_size < 0.6 * trained.stat().st_size
    _, state = load_weights(path)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    reloaded = load_model_file(spec, "mnist28", path, "cpu")
    for name, value in reloaded.state_dict().items():  # float32 again, equal to the original rounded to half
        assert value.dtype == torch.float32
        assert torch.equal(value, model.state_dict()[name].half().float())
    assert spec.evaluate(reloaded, "mnist28", torch.device("cpu"))[0] == shipped["metrics"]
    # a file trained for another task is refused with a clear error, and nothing is written
    assert main(["ship", "fc", "--task", "translated60", "--checkpoint", str(trained), "--to", str(tmp_path / "x")]) == 2
    assert "expected 'fc' for 'translated60'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
