"""The training loop: learning, history, exact resume after a signal at any point, NaN guard, checkpoints."""

import functools
import json
import math
import os
import signal
import sys

import pytest
import torch
from torch import nn

from attn_course import train as train_module
from attn_course.checkpoints import CheckpointError, OutputLockedError, atomic_torch_save, load_state_file
from attn_course.train import NonFiniteLossError, TrainConfig, fit
from lock_holder import hold_lock


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: threads only cost time here, the more so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_problem(seed=0):
    """A small regression problem with noise drawn through the global RNG (like a stochastic policy)."""
    torch.manual_seed(seed)
    true_w = torch.randn(8, 1)

    def sample_batch(generator, batch_size):
        x = torch.randn(batch_size, 8, generator=generator)
        return x, x @ true_w

    def loss_fn(model, batch):
        x, y = batch
        noise = 0.01 * torch.randn_like(y)  # global RNG: must be restored on resume too
        loss = ((model(x) + noise - y) ** 2).mean()
        return loss, {"abs_err": (model(x) - y).abs().mean()}

    return sample_batch, loss_fn


def new_model():
    torch.manual_seed(123)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def test_fit_learns_and_logs_history():
    sample_batch, loss_fn = make_problem()
    model = new_model()
    config = TrainConfig(steps=200, batch_size=32, lr=1e-2, log_every=20, eval_every=50)
    result = fit(model, sample_batch, loss_fn, config, evaluate=lambda m: {"zero": 0.0}, progress=False)
    steps, losses = result.history.series("loss")
    assert steps == list(range(20, 201, 20))
    assert losses[-1] < 0.1 * losses[0]
    assert "abs_err" in result.history.names()
    eval_steps, _ = result.history.series("eval_zero")
    assert eval_steps == [50, 100, 150, 200]
    assert result.step == 200 and not result.interrupted


# --------------------------------------------------------------------------- exact resume

# Logging, evaluation and checkpoints fall between steps at different periods, and the
# evaluation draws from the global RNG, so that every piece of the state matters.
RESUME_CONFIG = TrainConfig(steps=30, batch_size=16, lr=1e-2, log_every=7, eval_every=10, checkpoint_every=9)


def bn_model():
    """A model with buffers that change in the forward pass (BatchNorm running statistics)."""
    torch.manual_seed(123)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))


def noisy_evaluate(model):
    return {"noise": torch.rand(()).item(), "w": model[0].weight.sum()}


class Scheduler(torch.optim.lr_scheduler.LambdaLR):
    """A decaying learning rate that can call ``hook(where)`` just before and after each step."""

    def __init__(self, optimizer, hook=None):
        self.hook = None
        super().__init__(optimizer, lambda s: 0.95 ** s)
        self.hook = hook

    def state_dict(self):
        return {k: v for k, v in super().state_dict().items() if k != "hook"}

    def step(self, *args, **kwargs):
        if self.hook:
            self.hook("before_scheduler")
        super().step(*args, **kwargs)
        if self.hook:
            self.hook("after_scheduler")


class Signaller:
    """Sends ``signals`` to this process at the ``at``-th time the training passes ``point``."""

    def __init__(self, point, at, signals):
        self.point, self.at, self.signals, self.counts = point, at, signals, {}

    def __call__(self, where):
        self.counts[where] = self.counts.get(where, 0) + 1
        if where == self.point and self.counts[where] == self.at:
            for signum in self.signals:
                os.kill(os.getpid(), signum)


def run_fit(path=None, hook=None, **kwargs):
    """One fit of the resume problem; ``hook(where)`` is called at every point of every step."""
    hook = hook or (lambda where: None)
    sample_batch, loss_fn = make_problem()
    model = bn_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=RESUME_CONFIG.lr)
    scheduler = Scheduler(optimizer, hook)
    optimizer.register_step_pre_hook(lambda *a: hook("after_backward"))
    optimizer.register_step_post_hook(lambda *a: hook("after_optimizer"))

    def sampler(generator, batch_size):
        batch = sample_batch(generator, batch_size)
        hook("sample")
        return batch

    def loss(model, batch):
        result = loss_fn(model, batch)
        hook("loss")
        return result

    def evaluate(model):
        metrics = noisy_evaluate(model)
        hook("evaluate")
        return metrics

    result = fit(model, sampler, loss, RESUME_CONFIG, optimizer=optimizer, scheduler=scheduler, evaluate=evaluate,
                 checkpoint_path=path, progress=False, **kwargs)
    return model, optimizer, scheduler, result


@functools.lru_cache(maxsize=1)
def uninterrupted():
    model, optimizer, scheduler, result = run_fit()
    return model.state_dict(), optimizer.state_dict(), scheduler.state_dict(), result


def assert_same(a, b, where="state"):
    """Equal nested states, tensors compared exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_equals_uninterrupted(model, optimizer, scheduler, result):
    ref_model, ref_optimizer, ref_scheduler, ref = uninterrupted()
    assert result.step == 30 and not result.interrupted
    assert_same(model.state_dict(), ref_model, "model")
    assert_same(optimizer.state_dict(), ref_optimizer, "optimizer")
    assert_same(scheduler.state_dict(), ref_scheduler, "scheduler")
    assert_same(result.history.state_dict(), ref.history.state_dict(), "history")
    assert result.final_metrics == ref.final_metrics


POINTS = ["sample", "loss", "after_backward", "after_optimizer", "before_scheduler", "after_scheduler"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point, at", [(p, 12) for p in POINTS] + [("after_optimizer", 30), ("evaluate", 2)])
def test_a_signal_anywhere_in_a_step_stops_at_its_end_and_resumes_exactly(tmp_path, capsys, point, at, signum):
    path = tmp_path / "run.state"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopped = run_fit(path, Signaller(point, at, [signum]))[3]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back
    stop_step = 20 if point == "evaluate" else at  # the evaluation of step 20 belongs to step 20
    assert stopped.interrupted and stopped.step == stop_step and stopped.checkpoint == path
    assert f"interrupted at step {stop_step} of 30" in capsys.readouterr().out
    assert load_state_file(path)["step"] == stop_step
    # A fresh process would build a fresh model: everything must come from the state file.
    assert_equals_uninterrupted(*run_fit(path))


# Before the optimiser step the stop is at once (the step is dropped); from the optimiser
# step on, the update of the step is finished first; a save is finished too.
@pytest.mark.parametrize("point, at, saved_step", [("sample", 12, 11), ("loss", 12, 11), ("after_backward", 12, 12),
                                                    ("after_scheduler", 12, 12), ("evaluate", 1, 10),
                                                    ("save", 1, 9)])
def test_a_second_ctrl_c_stops_at_once_after_saving_the_last_completed_step(tmp_path, monkeypatch, point, at,
                                                                             saved_step):
    path = tmp_path / "run.state"
    hook = Signaller(point, at, [signal.SIGINT, signal.SIGINT])

    def save(obj, target):  # a second Ctrl-C during a save lets the save finish first
        hook("save")
        return atomic_torch_save(obj, target)

    monkeypatch.setattr(train_module, "atomic_torch_save", save)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_fit(path, hook)
    assert signal.getsignal(signal.SIGINT) is before
    assert load_state_file(path)["step"] == saved_step
    monkeypatch.undo()
    assert_equals_uninterrupted(*run_fit(path))


def test_keyboard_interrupt_raised_in_the_sampler_saves_and_resumes_exactly(tmp_path, capsys):
    path = tmp_path / "run.state"

    def hook(where):
        hook.calls += where == "sample"
        if hook.calls == 13 and where == "sample":
            raise KeyboardInterrupt

    hook.calls = 0
    stopped = run_fit(path, hook)[3]
    assert stopped.interrupted and stopped.step == 12
    assert "interrupted at step 12 of 30" in capsys.readouterr().out
    assert_equals_uninterrupted(*run_fit(path))


def test_ignored_sigint_stays_ignored_and_handlers_are_restored(tmp_path):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, mine)
    try:
        seen = []
        result = run_fit(tmp_path / "run.state", lambda where: seen.append(signal.getsignal(signal.SIGINT)))[3]
        assert not result.interrupted and set(seen) == {signal.SIG_IGN}
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    generator = train_module.make_generator(5)
    random.random(), np.random.normal(), torch.randn(3), torch.randn(2, generator=generator)  # noqa: B018
    state = train_module._plain_rng_state(train_module._rng_state(generator))
    atomic_torch_save(state, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.randn(3),
                torch.randn(2, generator=generator))
    random.seed(1), np.random.seed(1), torch.manual_seed(1), generator.manual_seed(1)  # noqa: B018
    train_module._set_rng_state(generator, load_state_file(tmp_path / "rng.pt"))
    again = (random.random(), random.gauss(0, 1), np.random.normal(size=3).tolist(), torch.randn(3),
             torch.randn(2, generator=generator))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3]) and torch.equal(expected[4], again[4])


# --------------------------------------------------------------------------- what a state belongs to


def small_fit(path, steps=5, sampler=None, config=None, **kwargs):
    sample_batch, loss_fn = make_problem()
    config = TrainConfig(steps=steps, lr=1e-2, **(config or {}))
    return fit(new_model(), sampler or sample_batch, loss_fn, config, checkpoint_path=path, progress=False, **kwargs)


def test_resume_refuses_a_different_config(tmp_path):
    path = tmp_path / "run.state"
    small_fit(path)
    with pytest.raises(ValueError, match="lr"):
        sample_batch, loss_fn = make_problem()
        fit(new_model(), sample_batch, loss_fn, TrainConfig(steps=10, lr=1e-3), checkpoint_path=path, progress=False)


def test_resume_refuses_the_state_of_another_run(tmp_path):
    path = tmp_path / "run.state"
    small_fit(path, extra_state={"model": "ram", "task": "mnist28",
                                 "model_config": {"hidden": 256, "glimpses": 6, "sizes": (8, 16)}})
    with pytest.raises(ValueError) as error:
        small_fit(path, extra_state={"model": "ram", "task": "translated60",
                                     "model_config": {"hidden": 256, "glimpses": 8}})
    text = str(error.value)
    assert str(path) in text and "--out" in text and "delete" in text
    assert "task: saved 'mnist28', asked 'translated60'" in text
    assert "model_config.glimpses: saved 6, asked 8" in text and "hidden" not in text
    with pytest.raises(ValueError, match="model: saved 'ram', asked \\(absent\\)"):
        small_fit(path, extra_state={"task": "mnist28", "model_config": {"hidden": 256, "glimpses": 6, "sizes": [8, 16]}})
    # the same extra resumes, whether its sequences are tuples or lists
    result = small_fit(path, steps=8, extra_state={"model": "ram", "task": "mnist28",
                                                   "model_config": {"sizes": [8, 16], "glimpses": 6, "hidden": 256}})
    assert result.step == 8


def test_resume_refuses_a_state_past_the_steps_asked_and_returns_a_finished_one(tmp_path):
    path = tmp_path / "run.state"
    evaluations = []
    done = small_fit(path, steps=8, evaluate=lambda m: evaluations.append(1) or {"e": 1.0})
    with pytest.raises(ValueError, match=f"{path} has already trained 8 steps, more than the 5 asked for"):
        small_fit(path, steps=5)
    again = small_fit(path, steps=8, evaluate=lambda m: evaluations.append(1) or {"e": 1.0},
                      sampler=lambda g, n: pytest.fail("a finished run draws no batch"))
    assert again.step == 8 and not again.interrupted and again.final_metrics == {"e": 1.0}
    assert again.history.state_dict() == done.history.state_dict() and len(evaluations) == 1


def test_a_planted_state_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    path = tmp_path / "run.state"
    torch.save({"format": train_module.STATE_FORMAT, "step": 1, "extra": Payload()}, path)
    with pytest.raises(ValueError) as error:
        small_fit(path)
    text = str(error.value)
    assert str(path) in text and "not a file written by attn_course" in text and "untrusted" in text
    assert "weights_only" not in text and error.value.__cause__ is None and error.value.__suppress_context__
    assert not marker.exists()


def test_a_state_that_could_not_be_loaded_back_is_refused_before_training(tmp_path):
    import numpy as np

    sample_batch, loss_fn = make_problem()
    model = new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scheduler.best = np.float64(1.0)  # a numpy scalar is not plain data for weights_only
    with pytest.raises(TypeError, match="scheduler.best"):
        fit(model, lambda g, n: pytest.fail("no step before the check"), loss_fn, TrainConfig(steps=3),
            optimizer=optimizer, scheduler=scheduler, checkpoint_path=tmp_path / "run.state", progress=False)


# --------------------------------------------------------------------------- failed saves, locked outputs


def test_an_unwritable_checkpoint_folder_is_refused_before_the_first_step(tmp_path):
    (tmp_path / "runs").write_text("a file where the folder should be")
    path = tmp_path / "runs" / "run.state"
    with pytest.raises(CheckpointError, match=f"cannot write {path}: files cannot be created in the folder"):
        small_fit(path, sampler=lambda g, n: pytest.fail("no step before the check"))


def test_a_failed_save_is_a_clear_error_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "run.state"
    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError) as error:
        small_fit(path, steps=20, config={"checkpoint_every": 5})
    text = str(error.value)
    assert str(path) in text and "no space left on device" in text and "last good file at that path is kept" in text
    monkeypatch.undo()
    assert load_state_file(path)["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.state"]  # no temporary or lock file left


def test_a_run_training_into_a_locked_state_is_refused(tmp_path):
    path = tmp_path / "run.state"
    holder = hold_lock(path)
    try:
        with pytest.raises(OutputLockedError, match=f"{path} is locked: another process \\(pid {holder.pid}\\)"):
            small_fit(path, sampler=lambda g, n: pytest.fail("no step while locked"))
    finally:
        holder.kill()
        holder.wait()
    assert small_fit(path).step == 5  # the operating system released the lock of the killed process


# --------------------------------------------------------------------------- guards


def test_nan_guard_names_the_step_and_keeps_weights():
    sample_batch, loss_fn = make_problem()

    def exploding_loss(model, batch):
        loss, metrics = loss_fn(model, batch)
        if exploding_loss.calls == 12:
            loss = loss * math.nan
        exploding_loss.calls += 1
        return loss, metrics

    exploding_loss.calls = 0
    model = new_model()
    with pytest.raises(NonFiniteLossError, match="at step 13"):
        fit(model, sample_batch, exploding_loss, TrainConfig(steps=50, lr=1e-2), progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_error_in_a_step_saves_the_last_completed_step(tmp_path):
    sample_batch, loss_fn = make_problem()

    def failing_sampler(generator, batch_size):
        failing_sampler.calls += 1
        if failing_sampler.calls == 8:
            raise RuntimeError("the data went away")
        return sample_batch(generator, batch_size)

    failing_sampler.calls = 0
    path = tmp_path / "run.state"
    with pytest.raises(RuntimeError, match="the data went away") as error:
        small_fit(path, steps=20, sampler=failing_sampler)
    assert load_state_file(path)["step"] == 7
    assert any(f"state of step 7 was saved to {path}" in note for note in error.value.__notes__)


def test_gradient_clipping_bounds_the_update():
    sample_batch, loss_fn = make_problem()

    def huge_loss(model, batch):
        loss, metrics = loss_fn(model, batch)
        return 1e6 * loss, metrics

    model = new_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, sample_batch, huge_loss, TrainConfig(steps=1, clip_grad_norm=1.0), optimizer=optimizer, progress=False)
    update = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert update <= 0.1 * 1.0 + 1e-6


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=10, lr=0), dict(steps=10, batch_size=-1),
                                 dict(steps=10, clip_grad_norm=0.0)])
def test_config_validation(bad):
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**bad)


def test_amp_on_cpu_trains_under_bfloat16_autocast_with_float32_weights():
    sample_batch, loss_fn = make_problem()
    seen = []

    def watched(model, batch):
        seen.append(model(batch[0]).dtype)  # a linear layer's output under autocast: bfloat16
        return loss_fn(model, batch)

    model = new_model()
    result = fit(model, sample_batch, watched, TrainConfig(steps=60, lr=1e-2, amp=True), device="cpu",
                 progress=False)
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    losses = result.history.series("loss")[1]
    assert losses[-1] < 0.2 * losses[0]
    seen.clear()
    fit(new_model(), sample_batch, watched, TrainConfig(steps=2), device="cpu", progress=False)
    assert set(seen) == {torch.float32}  # amp=None: off on a CPU


def test_amp_on_a_device_without_autocast_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA device or the CPU"):
        train_module._mixed_precision(TrainConfig(steps=1, amp=True), torch.device("meta"))


@pytest.mark.slow
def test_compile_trains_the_same_parameters_and_saves_them_uncompiled(tmp_path):
    sample_batch, loss_fn = make_problem()
    plain, compiled = new_model(), new_model()
    fit(plain, sample_batch, loss_fn, TrainConfig(steps=20, lr=1e-2), progress=False)
    path = tmp_path / "run.state"
    fit(compiled, sample_batch, loss_fn, TrainConfig(steps=20, lr=1e-2, compile=True), checkpoint_path=path,
        progress=False)
    for a, b in zip(plain.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert set(load_state_file(path)["model"]) == set(plain.state_dict())  # no _orig_mod. prefixes
    # compiled code draws its own random numbers: a compiled run resumes compiled only
    with pytest.raises(ValueError, match="compile"):
        fit(new_model(), sample_batch, loss_fn, TrainConfig(steps=25, lr=1e-2), checkpoint_path=path,
            progress=False)
    resumed = fit(new_model(), sample_batch, loss_fn, TrainConfig(steps=25, lr=1e-2, compile=True),
                  checkpoint_path=path, progress=False)
    assert resumed.step == 25


# --------------------------------------------------------------------------- on a GPU: few waits per step


def test_metrics_are_read_back_as_the_floats_item_gives():
    values = [("loss", torch.tensor(1.5)), ("count", 2), ("half", torch.tensor(0.1, dtype=torch.bfloat16)),
              ("grad", torch.tensor([0.3], requires_grad=True) * 1)]
    assert train_module._as_floats(values) == [1.5, 2.0, torch.tensor(0.1, dtype=torch.bfloat16).item(),
                                               torch.tensor(0.3).item()]


def test_a_metric_that_is_not_a_scalar_is_named():
    sample_batch, loss_fn = make_problem()

    def loss_with_a_vector(model, batch):
        loss, metrics = loss_fn(model, batch)
        return loss, {**metrics, "per_sample": torch.zeros(3)}

    with pytest.raises(ValueError, match=r"'per_sample' must be a scalar .* shape \(3,\)"):
        fit(new_model(), sample_batch, loss_with_a_vector, TrainConfig(steps=2), progress=False)


def test_a_run_that_cannot_be_saved_takes_no_step_boundary_records(monkeypatch):
    sample_batch, loss_fn = make_problem()
    monkeypatch.setattr(train_module, "_rng_state", lambda generator: pytest.fail("RNG state taken, never used"))
    result = fit(bn_model(), sample_batch, loss_fn, TrainConfig(steps=5), progress=False)
    assert result.step == 5


def test_fit_reports_each_run_when_a_profiler_asks(tmp_path, monkeypatch):
    from attn_course.runtime import REPORT_ENV, report

    monkeypatch.delenv(REPORT_ENV, raising=False)
    report("fit", steps=1)  # unset: nothing is written anywhere
    path = tmp_path / "report.jsonl"
    monkeypatch.setenv(REPORT_ENV, str(path))
    sample_batch, loss_fn = make_problem()
    fit(new_model(), sample_batch, loss_fn, TrainConfig(steps=20, log_every=10), evaluate=lambda m: {"zero": 0.0},
        progress=False, desc="toy")
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["kind"] == "fit" and record["desc"] == "toy" and record["steps"] == 20
    assert set(record["train"]) == {"loss", "abs_err"} and record["eval"] == {"zero": 0.0}
    assert record["steps_per_second"] > 0 and record["peak_memory"]["rss"] > 0
    if not torch.cuda.is_available():
        assert record["peak_memory"]["gpu_allocated"] is None
