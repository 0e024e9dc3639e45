"""The training loop: learning, history, resume equality, NaN guard, Ctrl-C, checkpoints."""

import math

import pytest
import torch
from torch import nn

from attn_course.train import NonFiniteLossError, TrainConfig, fit


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


class StopAt:
    """A sampler wrapper that raises KeyboardInterrupt at a given call, like Ctrl-C."""

    def __init__(self, sample_batch, stop_at):
        self.sample_batch, self.stop_at, self.calls = sample_batch, stop_at, 0

    def __call__(self, generator, batch_size):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.sample_batch(generator, batch_size)


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, capsys):
    sample_batch, loss_fn = make_problem()
    config = TrainConfig(steps=60, batch_size=16, lr=1e-2, log_every=7, checkpoint_every=25)

    straight = new_model()
    fit(straight, sample_batch, loss_fn, config, progress=False)

    path = tmp_path / "run.state"
    resumed = new_model()
    first = fit(resumed, StopAt(sample_batch, 38), loss_fn, config, checkpoint_path=path, progress=False)
    assert first.interrupted and first.step == 37
    assert "interrupted at step 37" in capsys.readouterr().out
    assert path.exists()
    # A fresh process would build a fresh model: weights must come from the checkpoint.
    resumed = new_model()
    second = fit(resumed, sample_batch, loss_fn, config, checkpoint_path=path, progress=False)
    assert second.step == 60 and not second.interrupted
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # the history continues where it stopped, without gaps or repeats
    steps, _ = second.history.series("loss")
    assert steps == sorted(set(steps)) and steps[-1] == 60


def test_resume_refuses_a_different_config(tmp_path):
    sample_batch, loss_fn = make_problem()
    path = tmp_path / "run.state"
    fit(new_model(), sample_batch, loss_fn, TrainConfig(steps=5, lr=1e-2), checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        fit(new_model(), sample_batch, loss_fn, TrainConfig(steps=10, lr=1e-3), checkpoint_path=path, progress=False)


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


def test_amp_on_cpu_is_a_clear_error():
    sample_batch, loss_fn = make_problem()
    with pytest.raises(ValueError, match="CUDA"):
        fit(new_model(), sample_batch, loss_fn, TrainConfig(steps=1, amp=True), device="cpu", progress=False)


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path):
    import os
    import signal

    sample_batch, loss_fn = make_problem()
    calls = []

    def terminating_sampler(generator, batch_size):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. `kill PID` on a background job
        return sample_batch(generator, batch_size)

    path = tmp_path / "run.state"
    before = signal.getsignal(signal.SIGTERM)
    result = fit(new_model(), terminating_sampler, loss_fn, TrainConfig(steps=50), checkpoint_path=path,
                 progress=False)
    assert result.interrupted and result.step == 4 and path.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
