"""One training loop for every chapter.

A chapter supplies three small functions and a config; :func:`fit` does the rest:

``sample_batch(generator, batch_size)``
    a training batch, drawn with the given CPU ``torch.Generator`` (so the data order
    is part of the saved state and a resumed run sees the same batches);
``loss_fn(model, batch)``
    ``(loss, metrics)``: a scalar tensor and a dict of scalar metrics for the bar;
``evaluate(model)`` (optional)
    a dict of held-out metrics, called every ``eval_every`` steps and at the end.

What the loop gives every chapter: a ``tqdm.auto`` progress bar with the live loss
and metrics, a :class:`~attn_course.history.History` for the plots, periodic
evaluation, optional gradient clipping, mixed precision on CUDA, a guard that stops
at the first non-finite loss and names the step, atomic checkpoints, exact resume
(the weights after an interrupted and resumed run equal those of an uninterrupted
one), and Ctrl-C saving a checkpoint before it returns.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from contextlib import contextmanager
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import atomic_torch_save, load_state_file
from .history import History

Batch = Any
LossFn = Callable[[nn.Module, Batch], "tuple[torch.Tensor, Mapping[str, Any]]"]


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclass
class TrainConfig:
    """How long and how to train. ``amp=None`` means: mixed precision on CUDA only."""

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    log_every: int = 25
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 0  # 0: checkpoint only at the end (and on Ctrl-C)
    clip_grad_norm: float | None = None
    amp: bool | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        for name in ("eval_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"TrainConfig.clip_grad_norm must be positive or None, got {self.clip_grad_norm!r}")


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    history: History
    step: int  # steps completed
    wall_time: float  # seconds spent in this call
    interrupted: bool = False
    checkpoint: Path | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- RNG state


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "data_generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(generator: torch.Generator, state: Mapping[str, Any], step: int) -> None:
    try:
        generator.set_state(state["data_generator"])
    except RuntimeError:  # saved by an older version that drew the data on the GPU
        generator.manual_seed(1_000_003 * (step + 1))
        print(f"note: the saved data order could not be restored here; batches from step {step} on are new draws")
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_generator(seed: int) -> torch.Generator:
    """The data order of a run: a CPU ``torch.Generator`` seeded with ``seed``.

    It lives on the CPU whatever the training device, so that a run draws the same
    batches on every device and a state saved on a GPU resumes on a CPU.
    """
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- the loop


@contextmanager
def _terminate_as_interrupt():
    """Treat SIGTERM like Ctrl-C while training, so ``kill`` (or a job scheduler) saves a checkpoint too.

    Background jobs started with ``nohup ... &`` ignore SIGINT, so SIGTERM is the way to stop them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


def _amp_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def fit(
    model: nn.Module,
    sample_batch: Callable[[torch.Generator, int], Batch],
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, Any]] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "training",
    extra_state: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimiser steps; see the module docstring.

    ``optimizer`` defaults to Adam with ``config.lr``. With ``checkpoint_path`` the full
    training state (weights, optimiser, scheduler, step, history, every RNG) is saved
    atomically every ``checkpoint_every`` steps, at the end, and on Ctrl-C; with
    ``resume`` an existing checkpoint there is loaded first and training goes on from
    its step. ``extra_state`` (JSON-like, e.g. the model config) is stored alongside.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=config.lr)
    use_amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    if use_amp and device.type != "cuda":
        raise ValueError(f"mixed precision (amp=True) needs a CUDA device, got {device}")
    amp_dtype = _amp_dtype(device) if use_amp else None
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None

    generator = make_generator(config.seed)
    torch.manual_seed(config.seed)
    history = History()
    step = 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None

    def training_state() -> dict[str, Any]:
        return {
            "format": "attn_course.train/1",
            "step": step,
            "config": asdict(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "history": history.state_dict(),
            "rng": _rng_state(generator),
            "extra": dict(extra_state or {}),
        }

    def save() -> Path | None:
        if checkpoint_path is None:
            return None
        atomic_torch_save(training_state(), checkpoint_path)
        return checkpoint_path

    if checkpoint_path is not None and resume and checkpoint_path.exists():
        state = load_state_file(checkpoint_path, weights_only=False)
        if state.get("format") != "attn_course.train/1":
            raise ValueError(f"{checkpoint_path} is not a training checkpoint of attn_course.train")
        saved = {k: v for k, v in state["config"].items() if k != "steps"}
        wanted = {k: v for k, v in asdict(config).items() if k != "steps"}
        if saved != wanted:
            diff = {k: (saved.get(k), wanted.get(k)) for k in wanted if saved.get(k) != wanted.get(k)}
            raise ValueError(
                f"cannot resume from {checkpoint_path}: its training config differs in {diff} (saved, asked); "
                "delete the checkpoint or pass resume=False to start afresh"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        history = History.from_state_dict(state["history"])
        step = int(state["step"])
        _set_rng_state(generator, state["rng"], step)

    def run_evaluation() -> dict[str, float]:
        if evaluate is None:
            return {}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = {name: _to_float(value) for name, value in evaluate(model).items()}
        model.train(was_training)
        history.log(step, **{f"eval_{name}": value for name, value in metrics.items()})
        return metrics

    start = time.perf_counter()
    interrupted = False
    final_metrics: dict[str, float] = {}
    window: dict[str, float] = {}
    window_count = 0
    model.train()
    bar = tqdm(total=config.steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
    sigterm = _terminate_as_interrupt()
    sigterm.__enter__()
    try:
        while step < config.steps:
            batch = sample_batch(generator, config.batch_size)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                loss, metrics = loss_fn(model, batch)
            loss_value = _to_float(loss)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"the training loss became {loss_value} at step {step + 1} (of {config.steps}); "
                    "weights from before this step are unchanged. Lower the learning rate, clip gradients "
                    "(clip_grad_norm) or check the inputs of this batch."
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if config.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            bar.update(1)

            window["loss"] = window.get("loss", 0.0) + loss_value
            for name, value in metrics.items():
                window[name] = window.get(name, 0.0) + _to_float(value)
            window_count += 1
            if step % config.log_every == 0 or step == config.steps:
                means = {name: total / window_count for name, total in window.items()}
                history.log(step, **means)
                bar.set_postfix({name: f"{value:.4g}" for name, value in means.items()}, refresh=False)
                window, window_count = {}, 0
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                run_evaluation()
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                save()
        final_metrics = run_evaluation()
        if final_metrics:
            bar.set_postfix({f"eval_{k}": f"{v:.4g}" for k, v in final_metrics.items()}, refresh=True)
    except KeyboardInterrupt:
        interrupted = True
        where = save()
        message = f"interrupted at step {step} of {config.steps}"
        if where is not None:
            message += f"; training state saved to {where}: run the same call again to resume"
        print(message)
    finally:
        bar.close()
        sigterm.__exit__(None, None, None)
    saved_at = save() if not interrupted else (checkpoint_path if checkpoint_path is not None else None)
    return TrainResult(
        history=history,
        step=step,
        wall_time=time.perf_counter() - start,
        interrupted=interrupted,
        checkpoint=saved_at,
        final_metrics=final_metrics,
    )
