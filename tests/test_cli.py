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
        check_task, model_config = staticmethod(spec.check_task), staticmethod(spec.model_config)
        config, config_dict = staticmethod(spec.config), staticmethod(spec.config_dict)

        @staticmethod
        def train(task, **kwargs):
            seen.update(task=task, **kwargs)
            raise ValueError("recorded")

    monkeypatch.setattr(registry, "get_spec", lambda name: Recorder)
    monkeypatch.setattr(registry, "train_model", lambda spec, task, **options: spec.train(task, **options))
    out = str(tmp_path / "x.pt")
    assert main(["train", "fc", "--variant", "translated60", "--batch-size", "512", "--out", out]) == 2
    assert seen["task"] == "translated60" and seen["batch_size"] == 512
    # the run goes into the training state, so that a resume by another model, task or config is refused
    assert seen["extra_state"] == {"model": "fc", "task": "translated60",
                                   "model_config": spec.model_config("translated60")}
    seen.clear()
    assert main(["train", "fc", "--task", "mnist28", "--out", out]) == 2
    assert seen["task"] == "mnist28" and seen["batch_size"] is None  # the recipe's own default
    assert seen["amp"] is None and seen["compile"] is False  # the recipe's precision, not compiled
    seen.clear()
    assert main(["train", "fc", "--task", "mnist28", "--amp", "--compile", "--out", out]) == 2
    assert seen["amp"] is True and seen["compile"] is True


def test_no_attention_flag_selects_the_noattn_variant(monkeypatch, tmp_path, capsys):
    import attn_course.registry as registry

    seen = {}
    spec = get_spec("r2am")

    class Recorder:
        name, description, tasks, default_task = spec.name, spec.description, spec.tasks, spec.default_task
        check_task, model_config = staticmethod(spec.check_task), staticmethod(spec.model_config)
        config, config_dict = staticmethod(spec.config), staticmethod(spec.config_dict)

        @staticmethod
        def train(task, **kwargs):
            seen.update(task=task)
            raise ValueError("recorded")

    monkeypatch.setattr(registry, "get_spec", lambda name: Recorder)
    monkeypatch.setattr(registry, "train_model", lambda spec, task, **options: spec.train(task, **options))
    out = str(tmp_path / "x.pt")
    assert main(["train", "r2am", "--variant", "recurrent", "--no-attention", "--out", out]) == 2
    assert seen["task"] == "recurrent-noattn"
    assert main(["train", "r2am", "--no-attention", "--out", out]) == 2
    assert seen["task"] == "recursive-noattn"
    monkeypatch.setattr(registry, "get_spec", get_spec)
    monkeypatch.setattr(registry, "train_model", lambda spec, task, **options: Recorder.train(task))
    for model, task, without in (("draw", "mnist_paper", "mnist_paper-noattn"), ("sat", "soft", "noattn")):
        assert main(["train", model, "--task", task, "--no-attention", "--out", out]) == 2
        assert seen["task"] == without
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


# --------------------------------------------------------------------------- one clear line for every expected failure


def error_line(capsys, *argv):
    """Run ``main(argv)``: it must exit 2 with one ``error:`` line on stderr and no traceback; returns that line."""
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert lines and lines[-1].startswith(("error: ", "python -m attn_course")), captured.err
    assert "error: " in lines[-1]
    return lines[-1]


def fake_spec(monkeypatch, train=None, evaluate=None):
    """Put a spec with fc's tasks and config but the given ``train`` (and ``evaluate``) in the registry."""
    import attn_course.registry as registry

    spec = get_spec("fc")
    calls = []
    fake_evaluate = evaluate

    def default_train(task, **kwargs):
        raise AssertionError("the recipe must not be called")

    class Fake:
        name, description, tasks, default_task = spec.name, spec.description, spec.tasks, spec.default_task
        check_task, model_config, build = (staticmethod(spec.check_task), staticmethod(spec.model_config),
                                           staticmethod(spec.build))
        config, config_dict = staticmethod(spec.config), staticmethod(spec.config_dict)

        @staticmethod
        def train(task, **kwargs):
            calls.append(dict(kwargs, task=task))
            return (train or default_train)(task, **kwargs)

        evaluate = staticmethod(fake_evaluate or spec.evaluate)
        card_extras = None

    monkeypatch.setattr(registry, "get_spec", lambda name: Fake)
    monkeypatch.setattr(registry, "train_model", lambda spec, task, **options: spec.train(task, **options))
    return calls


@pytest.mark.parametrize("flag", ["--steps", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_steps_and_batch_size_below_one_are_refused(monkeypatch, tmp_path, capsys, flag, value):
    calls = fake_spec(monkeypatch)
    line = error_line(capsys, "train", "fc", flag, value, "--out", str(tmp_path / "x.pt"))
    assert line.endswith(f"error: argument {flag}: expected a positive integer, got {value}")
    assert calls == [] and not (tmp_path / "x.pt").exists()
    line = error_line(capsys, "train", "fc", flag, "many", "--out", str(tmp_path / "x.pt"))
    assert line.endswith(f"error: argument {flag}: expected a positive integer, got 'many'")


def test_steps_and_batch_size_of_one_reach_the_recipe(monkeypatch, tmp_path, capsys):
    def train(task, **kwargs):
        raise ValueError("recorded")

    calls = fake_spec(monkeypatch, train)
    assert "recorded" in error_line(capsys, "train", "fc", "--steps", "1", "--batch-size", "1",
                                    "--out", str(tmp_path / "x.pt"))
    assert calls[0]["steps"] == 1 and calls[0]["batch_size"] == 1


def test_an_unknown_device_lists_the_valid_ones(capsys, monkeypatch):
    monkeypatch.delenv("ATTN_COURSE_DEVICE", raising=False)
    line = error_line(capsys, "evaluate", "fc", "--device", "tpu")
    assert line == "error: unknown device 'tpu'; valid devices: cpu, cuda, cuda:N (N = 0, 1, ...), mps"
    monkeypatch.setenv("ATTN_COURSE_DEVICE", "tpu")
    assert "unknown device 'tpu' (from ATTN_COURSE_DEVICE)" in error_line(capsys, "evaluate", "fc")


def test_info_reports_a_bad_device_variable_and_goes_on(capsys, monkeypatch):
    monkeypatch.setenv("ATTN_COURSE_DEVICE", "tpu")
    assert main(["info"]) == 0
    captured = capsys.readouterr()
    assert "device: error: unknown device 'tpu' (from ATTN_COURSE_DEVICE)" in captured.out
    assert "models: " in captured.out and "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize("error, where", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                 "79.1 GiB of which 1.2 GiB is free."), "cuda:0"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
                  "allocate 4294967296 bytes."), "cpu"),
    (MemoryError(), "cpu"),
    (RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1 GB)"), "mps"),
])
def test_out_of_memory_names_the_device_and_suggests_a_smaller_batch(monkeypatch, tmp_path, capsys, error, where):
    def train(task, **kwargs):
        raise error

    fake_spec(monkeypatch, train)
    line = error_line(capsys, "train", "fc", "--batch-size", "4096", "--out", str(tmp_path / "x.pt"))
    assert line.startswith(f"error: out of memory on {where}")
    assert "while training fc: try a smaller --batch-size (this run used 4096)" in line
    if "2.00 GiB" in str(error):
        assert "it tried to allocate 2.00 GiB" in line
    line = error_line(capsys, "train", "fc", "--out", str(tmp_path / "x.pt"))
    assert line.endswith("try a smaller --batch-size (this run used the recipe's default)")


def test_out_of_memory_in_evaluate_suggests_another_device(monkeypatch, capsys):
    def evaluate(model, task, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 1 has ...")

    fake_spec(monkeypatch, evaluate=evaluate)
    line = error_line(capsys, "evaluate", "fc", "--device", "cpu")
    assert line.startswith("error: out of memory on cuda:1") and "--device cpu" in line


def test_programming_errors_keep_their_traceback(monkeypatch, tmp_path):
    for error in (TypeError("a bug"), RuntimeError("shape mismatch: a bug, not memory"), KeyError("bug")):
        def train(task, error=error, **kwargs):
            raise error

        fake_spec(monkeypatch, train)
        with pytest.raises(type(error)):
            main(["train", "fc", "--out", str(tmp_path / "x.pt")])


def test_a_non_finite_loss_is_one_line_naming_the_step(monkeypatch, tmp_path, capsys):
    from attn_course.train import TrainConfig, fit

    def train(task, checkpoint_path=None, **kwargs):  # a real fit whose loss turns NaN at its third step
        model = torch.nn.Linear(1, 1)

        def loss_fn(model, step):
            loss = model(torch.ones(1, 1)).sum() * 0
            return (loss + float("nan") if step >= 3 else loss), {}

        steps = iter(range(1, 100))
        return fit(model, lambda generator, batch_size: next(steps), loss_fn, TrainConfig(steps=10, checkpoint_every=1),
                   checkpoint_path=checkpoint_path, progress=False)

    fake_spec(monkeypatch, train)
    out = tmp_path / "x.pt"
    line = error_line(capsys, "train", "fc", "--out", str(out))
    assert line.startswith("error: training fc on mnist28 stopped: the training loss became nan at step 3 (of 10)")
    assert line.endswith(f"the last saved state is kept in {out.with_suffix('.state')}")
    assert not out.exists()


@pytest.fixture
def damaged_data(tmp_path, monkeypatch):
    """A data root whose image files are damaged: train images garbage, test images truncated."""
    from attn_course.data.mnist import MNIST_FILES

    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for key, spec in MNIST_FILES.items():
        (root / "mnist" / spec.name).symlink_to(Path(DATA, "mnist", spec.name).resolve())
    (root / "mnist" / MNIST_FILES["train-images"].name).unlink()
    (root / "mnist" / MNIST_FILES["train-images"].name).write_bytes(b"this is not a gzip file" * 10)
    test_images = root / "mnist" / MNIST_FILES["test-images"].name
    raw = test_images.read_bytes()
    test_images.unlink()
    test_images.write_bytes(raw[:5000])
    monkeypatch.setenv("ATTN_COURSE_DATA", str(root))
    return root / "mnist"


@needs_mnist
def test_a_damaged_data_file_is_named_by_train_evaluate_and_info(damaged_data, tmp_path, capsys):
    line = error_line(capsys, "train", "fc", "--steps", "1", "--device", "cpu", "--no-progress",
                      "--out", str(tmp_path / "fc.pt"))
    assert line.startswith(f"error: {damaged_data / 'train-images-idx3-ubyte.gz'} is not a complete gzip file")
    assert not (tmp_path / "fc.pt").exists()
    assert main(["info"]) == 0  # info reports each file's problem and carries on
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    out = captured.out
    assert "mnist/train-images-idx3-ubyte.gz: corrupt: " in out and "mnist/t10k-images-idx3-ubyte.gz: corrupt: " in out
    assert "mnist/train-labels-idx1-ubyte.gz: ok" in out and "mnist/t10k-labels-idx1-ubyte.gz: ok" in out
    assert "models: " in out and "pretrained: " in out
    train_images = damaged_data / "train-images-idx3-ubyte.gz"
    train_images.unlink()
    train_images.symlink_to(Path(DATA, "mnist", train_images.name).resolve())  # repaired: the test images are next
    line = error_line(capsys, "evaluate", "fc", "--device", "cpu")
    assert line.startswith(f"error: {damaged_data / 't10k-images-idx3-ubyte.gz'} is not a complete gzip file "
                           "(EOFError: Compressed file ended before the end-of-stream marker was reached)")


def test_info_reports_a_data_file_it_cannot_read(tmp_path, monkeypatch, capsys):
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").mkdir(parents=True)  # a folder in its place
    monkeypatch.setenv("ATTN_COURSE_DATA", str(tmp_path))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"mnist/train-images-idx3-ubyte.gz: unreadable: {tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz'}" in out
    assert "mnist/t10k-labels-idx1-ubyte.gz: missing" in out and "models: " in out


def trained_file(tmp_path, card=None):
    spec = get_spec("fc")
    torch.manual_seed(0)
    model = spec.build(spec.model_config("mnist28"))
    card = {"model": "fc", "task": "mnist28", "metrics": {"error": 0.5, "accuracy": 0.5}} if card is None else card
    path, card_path = save_pretrained(model, spec.model_config("mnist28"), card, tmp_path / "runs" / "fc.pt")
    return path, card_path


@pytest.mark.parametrize("text, says", [
    ("[1, 2, 3]", "JSON list"),
    ('{"model": "fc", ', "invalid JSON"),
    ('"fc"', "JSON str"),
])
def test_ship_refuses_a_malformed_card_naming_it_before_writing(tmp_path, capsys, text, says):
    path, card_path = trained_file(tmp_path)
    card_path.write_text(text)
    to = tmp_path / "shipped"
    line = error_line(capsys, "ship", "fc", "--task", "mnist28", "--checkpoint", str(path), "--to", str(to))
    assert line.startswith(f"error: {card_path} is not a model card") and says in line
    assert not to.exists()


def test_ship_refuses_a_card_without_metrics_before_writing(tmp_path, capsys):
    path, card_path = trained_file(tmp_path, {"model": "fc", "task": "mnist28", "steps": 3})
    to = tmp_path / "shipped"
    line = error_line(capsys, "ship", "fc", "--task", "mnist28", "--checkpoint", str(path), "--float16",
                      "--to", str(to))
    assert line.startswith(f"error: {card_path} is not a complete model card") and "metrics" in line
    assert not to.exists()  # neither the .pt nor the card


def test_ship_refuses_weights_that_do_not_match_their_card(tmp_path, capsys):
    path, card_path = trained_file(tmp_path)
    spec = get_spec("fc")
    save_pretrained(spec.build(spec.model_config("mnist28")), spec.model_config("mnist28"), {}, tmp_path / "other.pt")
    path.write_bytes((tmp_path / "other.pt").read_bytes())  # new weights beside the old card
    to = tmp_path / "shipped"
    line = error_line(capsys, "ship", "fc", "--task", "mnist28", "--checkpoint", str(path), "--to", str(to))
    assert str(path) in line and str(card_path) in line and "do not belong together" in line
    assert not to.exists()


def test_ship_refuses_an_unwritable_target_before_evaluating(tmp_path, capsys, monkeypatch):
    path, _ = trained_file(tmp_path)
    (tmp_path / "a-file").write_text("in the way")
    fake_spec(monkeypatch, evaluate=lambda *a: pytest.fail("evaluated before the target was checked"))
    to = tmp_path / "a-file" / "shipped"
    line = error_line(capsys, "ship", "fc", "--task", "mnist28", "--checkpoint", str(path), "--to", str(to))
    assert line.startswith(f"error: cannot write {to / 'fc-mnist28.pt'}")


def test_unsafe_load_advice_is_never_relayed(tmp_path, monkeypatch, capsys):
    import attn_course.registry as registry

    from fractions import Fraction  # any Python object that is not plain data

    spec = get_spec("fc")
    path = tmp_path / "planted.pt"
    torch.save({"model_config": spec.model_config("mnist28"), "state_dict": {"w": Fraction(1, 3)}}, path)
    line = error_line(capsys, "evaluate", "fc", "--checkpoint", str(path), "--device", "cpu")
    assert str(path) in line and "weights_only" not in line
    torch_text = (  # what torch.load says when it refuses a file, as a wrapped error relays it
        f"cannot read checkpoint {path}: UnpicklingError: Weights only load failed. This file can still be loaded, "
        "to do so you have two options, \x1b[1mdo those steps only if you trust the source of the checkpoint\x1b[0m. "
        "\n\t(1) In PyTorch 2.6, we changed the default value of the `weights_only` argument in `torch.load` from "
        "`False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it can "
        "result in arbitrary code execution. Do it only if you got the file from a trusted source.\n\t(2) "
        "Alternatively, to load with `weights_only=True` please check the recommended steps in the following error "
        "message.\n\tWeightsUnpickler error: Unsupported global: GLOBAL __main__.Planted was not an allowed global by "
        "default. Please use `torch.serialization.add_safe_globals([__main__.Planted])` or the "
        "`torch.serialization.safe_globals([__main__.Planted])` context manager to allowlist this global if you "
        "trust this class/function.\n\nCheck the documentation of torch.load to learn more about types accepted by "
        "default with weights_only https://pytorch.org/docs/stable/generated/torch.load.html.")

    def load_model_file(*args, **kwargs):
        raise ValueError(torch_text)

    monkeypatch.setattr(registry, "load_model_file", load_model_file)
    line = error_line(capsys, "evaluate", "fc", "--checkpoint", str(path), "--device", "cpu")
    assert line.startswith(f"error: cannot read checkpoint {path}: UnpicklingError: it holds something other than")
    assert "Unsupported global: GLOBAL __main__.Planted" in line
    assert "weights_only" not in line and "add_safe_globals" not in line and "\x1b" not in line
    monkeypatch.setattr(registry, "load_model_file", lambda *a, **k: (_ for _ in ()).throw(ValueError(
        f"cannot read {path}. Re-running `torch.load` with `weights_only=False` will likely succeed. It is damaged.")))
    line = error_line(capsys, "evaluate", "fc", "--checkpoint", str(path))
    assert line == f"error: cannot read {path}. It is damaged."


def test_an_unwritable_out_is_found_before_training(monkeypatch, tmp_path, capsys):
    calls = fake_spec(monkeypatch)
    (tmp_path / "a-file").write_text("in the way")
    out = tmp_path / "a-file" / "fc.pt"
    line = error_line(capsys, "train", "fc", "--out", str(out))
    assert line.startswith(f"error: cannot write {out}: files cannot be created in the folder {out.parent}")
    assert calls == []


def test_a_second_run_on_the_same_out_is_refused(monkeypatch, tmp_path, capsys):
    calls = fake_spec(monkeypatch)
    out = tmp_path / "fc.pt"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom attn_course.checkpoints import output_lock\n"
                               "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n",
         str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = error_line(capsys, "train", "fc", "--out", str(out))
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert line.startswith(f"error: {out} is locked: another process (pid {holder.pid}) is writing it")
    assert calls == [] and not out.exists()


def test_a_state_of_another_run_is_not_resumed(monkeypatch, tmp_path, capsys):
    calls = fake_spec(monkeypatch)
    out = tmp_path / "fc.pt"
    conv = get_spec("conv")
    torch.save({"format": "attn_course.train/1", "step": 5,
                "extra": {"model": "conv", "task": "mnist28", "model_config": conv.model_config("mnist28")}},
               out.with_suffix(".state"))
    line = error_line(capsys, "train", "fc", "--out", str(out))
    assert line.startswith(f"error: {out.with_suffix('.state')} holds an unfinished run of 'conv' for 'mnist28'")
    assert "not of 'fc' for 'mnist28'" in line and calls == []
    fc = get_spec("fc")
    torch.save({"format": "attn_course.train/1", "step": 5,
                "extra": {"model": "fc", "task": "translated60", "model_config": fc.model_config("translated60")}},
               out.with_suffix(".state"))
    line = error_line(capsys, "train", "fc", "--task", "cluttered60", "--out", str(out))
    assert "unfinished run of 'fc' for 'translated60', not of 'fc' for 'cluttered60'" in line and calls == []
    with pytest.raises(AssertionError, match="must not be called"):  # its own run goes on to the recipe
        main(["train", "fc", "--task", "translated60", "--out", str(out)])


@pytest.mark.parametrize("error, says", [
    (OSError(28, "No space left on device", "RUN.state"), "error: No space left on device: RUN.state"),
    ("checkpoint", "error: could not save RUN.state: no space left on device; the last good file at that path is kept"),
])
def test_a_failed_save_while_training_names_the_file(monkeypatch, tmp_path, capsys, error, says):
    from attn_course.checkpoints import CheckpointError

    state = str(tmp_path / "fc.state")
    if error == "checkpoint":
        error = CheckpointError(f"could not save {state}: no space left on device; the last good file at that path "
                                "is kept")
    else:
        error.filename = state

    def train(task, **kwargs):
        raise error

    fake_spec(monkeypatch, train)
    assert error_line(capsys, "train", "fc", "--out", str(tmp_path / "fc.pt")) == says.replace("RUN.state", state)


def test_a_failed_final_save_keeps_the_state_and_says_so(monkeypatch, tmp_path, capsys):
    import attn_course.checkpoints as checkpoints
    from attn_course.history import History
    from attn_course.train import TrainResult

    spec = get_spec("fc")

    def train(task, checkpoint_path=None, **kwargs):
        return spec.build(spec.model_config(task)), TrainResult(History(), 3, 0.1), "fake data"

    def save_pretrained(*args, **kwargs):
        raise OSError(28, "No space left on device")

    fake_spec(monkeypatch, train, evaluate=lambda *a: ({"accuracy": 0.5}, 10))
    monkeypatch.setattr(checkpoints, "save_pretrained", save_pretrained)
    out = tmp_path / "fc.pt"
    line = error_line(capsys, "train", "fc", "--out", str(out))
    assert line == (f"error: cannot write {out}: [Errno 28] No space left on device; the trained state is kept in "
                    f"{out.with_suffix('.state')}: run the same command again to write it")


@pytest.mark.slow
def test_errors_are_one_line_without_traceback_from_the_shell(tmp_path):
    env = {**os.environ, "ATTN_COURSE_DEVICE": "tpu"}
    run = subprocess.run([sys.executable, "-m", "attn_course", "train", "fc", "--out", str(tmp_path / "x.pt")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == ("error: unknown device 'tpu' (from ATTN_COURSE_DEVICE); valid devices: cpu, cuda, "
                                  "cuda:N (N = 0, 1, ...), mps")


def test_set_changes_the_config_that_is_trained_and_recorded(monkeypatch, tmp_path, capsys):
    import attn_course.registry as registry

    seen = {}

    def record(spec, task, **options):
        seen.update(options, task=task)
        raise ValueError("recorded")

    monkeypatch.setattr(registry, "train_model", record)
    out = str(tmp_path / "x.pt")
    assert main(["train", "sat", "--task", "soft", "--set", "lambda_=1.0", "--set", "gate=false", "--out", out]) == 2
    assert seen["config"].lambda_ == 1.0 and seen["config"].gate is False and seen["config"].attention == "soft"
    assert seen["extra_state"]["model_config"]["lambda_"] == 1.0  # a resume with other settings is refused
    assert "bogus" in error_line(capsys, "train", "sat", "--set", "bogus=1", "--out", out)
    assert "--set gate: expected true or false" in error_line(capsys, "train", "sat", "--set", "gate=maybe",
                                                              "--out", out)
    assert "--set T:" in error_line(capsys, "train", "r2am", "--set", "T=two", "--out", out)


@needs_mnist
def test_ship_adds_what_the_spec_records_beside_the_metrics(tmp_path, capsys, monkeypatch):
    import dataclasses

    from attn_course import registry
    from attn_course.checkpoints import read_card

    spec = dataclasses.replace(get_spec("fc"), card_extras=lambda model, task, device: {
        "samples": [{"task": task, "parameters": sum(p.numel() for p in model.parameters())}]})
    monkeypatch.setattr(registry, "get_spec", lambda name: spec)
    torch.manual_seed(0)
    model = spec.build(spec.model_config("mnist28"))
    card = {"model": "fc", "task": "mnist28", "metrics": {"error": 0.5, "accuracy": 0.5}, "steps": 3}
    trained, _ = save_pretrained(model, spec.model_config("mnist28"), card, tmp_path / "runs" / "fc.pt")
    assert main(["ship", "fc", "--task", "mnist28", "--checkpoint", str(trained), "--to", str(tmp_path / "s")]) == 0
    shipped = read_card(tmp_path / "s" / "fc-mnist28.pt")
    assert shipped["samples"] == [{"task": "mnist28", "parameters": sum(p.numel() for p in model.parameters())}]


def test_evaluate_reads_a_run_trained_with_set_by_its_own_config(tmp_path, capsys):
    import dataclasses

    spec = get_spec("transformer")
    config = dataclasses.replace(spec.config("copy"), heads=2)  # what `train --set heads=2` trains
    torch.manual_seed(0)
    model = spec.build(config)
    card = {"model": "transformer", "task": "copy", "metrics": {"exact_match": 0.0}, "steps": 1}
    path, _ = save_pretrained(model, spec.config_dict(config), card, tmp_path / "run.pt")
    assert main(["evaluate", "transformer", "--task", "copy", "--checkpoint", str(path), "--device", "cpu"]) == 0
    assert last_json_line(capsys.readouterr().out)["test_examples"] == 2000
    # its card says it was trained on copy: asked for as another task, the config must be that task's
    assert main(["evaluate", "transformer", "--task", "reverse", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "config mismatch" in err and "heads: file has 2, expected 4" in err
    # shipping it is refused: a shipped checkpoint must hold the task's config
    assert main(["ship", "transformer", "--task", "copy", "--checkpoint", str(path), "--to", str(tmp_path / "s")]) == 2
    assert "config mismatch" in capsys.readouterr().err
