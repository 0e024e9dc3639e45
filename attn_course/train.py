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
evaluation, optional gradient clipping, mixed precision (AMP on CUDA, bfloat16 autocast
on a CPU), an optional ``torch.compile`` of the model, a guard that stops
at the first non-finite loss and names the step, atomic checkpoints, and exact resume:
Ctrl-C (SIGINT) or SIGTERM stops the run at the end of the current step and saves it
there, and the same call resumes it so that weights, optimiser state and history equal
those of an uninterrupted run. A second Ctrl-C stops at once, after saving the state of
the last completed step.

For the next maintainer: what must stay is one :func:`fit` for every chapter, with
exact resume at step boundaries (a resumed run equals an uninterrupted one bitwise;
``tests/test_train.py`` signals at every point of a step to check it). It rests on
four things. Everything a step changes (weights, buffers, optimiser, scheduler, scaler,
step, history, the unlogged window, the owed evaluation, every RNG) is in the saved
state, and the update that changes it runs in a ``_StopSignals.protected`` block ending
with ``_Run._mark`` (see :class:`_Run`), so a save at any moment writes the last completed
step. Saves are atomic, so a crash keeps the last good file. The state is read
back with ``weights_only`` (:func:`~attn_course.checkpoints.load_state_file`), so it
holds tensors and plain values only, checked before the first step, and a planted file
cannot run code. The NaN guard raises before the update and names the step, so the
weights stay those of the last good step. A change to what the state holds needs a new
``STATE_FORMAT``. The loop, ``_Run.train``, reads as its steps: ``_resume_or_start``;
``_train_and_save``, whose ``_steps`` run ``_one_step`` (``_forward``, ``_backward``,
``_read_back``, ``_update`` with ``_log``), ``_show_progress``, ``_maybe_evaluate`` and
``_maybe_checkpoint`` per step, then ``_final_evaluation``; ``_finish``.

On a GPU the loop waits for the device once per step: ``_read_back`` reads the loss and
every metric in one transfer after the backward pass is queued (the NaN guard needs the
loss before the update). Without a ``checkpoint_path`` nothing can be saved, so the
step-boundary records (``_mark``: every RNG state, a copy of each buffer) are not taken.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import CheckpointError, atomic_torch_save, check_writable, load_state_file, output_lock
from .history import History
from .runtime import report

Batch = Any
LossFn = Callable[[nn.Module, Batch], "tuple[torch.Tensor, Mapping[str, Any]]"]
STATE_FORMAT = "attn_course.train/2"


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclass
class TrainConfig:
    """How long and how to train.

    ``amp``: autocast to a 16-bit float, bfloat16 on a CPU (fast on CPUs with bfloat16
    instructions) and on GPUs that support it, float16 with a gradient scaler on older
    GPUs; ``None`` means on CUDA only. ``compile``: call the model through
    ``torch.compile`` (minutes of compiling in the first step, then fused element-wise
    kernels; ``loss_fn``'s own operations stay eager). The weights and the saved state
    are those of the uncompiled model. Compiled code draws its random numbers with its
    own generator and rounds differently, so a run resumes only as it was started,
    compiled or not.
    """

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    log_every: int = 25
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 0  # 0: checkpoint only at the end (and when stopped)
    clip_grad_norm: float | None = None
    amp: bool | None = None
    compile: bool = False

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
    interrupted: bool = False  # stopped by a signal; the same call resumes
    checkpoint: Path | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- RNG state


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a step draws from (cheap to take: see :func:`_plain_rng_state`)."""
    state = {"data_generator": generator.get_state(), "torch": torch.get_rng_state(),
             "python": random.getstate(), "numpy": np.random.get_state(legacy=True)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _plain_rng_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`_rng_state` as tensors and plain values, which a ``weights_only`` load reads back."""
    py_version, py_internal, py_gauss = state["python"]
    np_name, np_keys, np_pos, np_has_gauss, np_cached = state["numpy"]
    return {
        **state,
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
    }


def _set_rng_state(generator: torch.Generator, state: Mapping[str, Any]) -> None:
    """Restore a :func:`_plain_rng_state`."""
    generator.set_state(state["data_generator"])
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def make_generator(seed: int) -> torch.Generator:
    """The data order of a run: a CPU ``torch.Generator`` seeded with ``seed``.

    It lives on the CPU whatever the training device, so that a run draws the same
    batches on every device and a state saved on a GPU resumes on a CPU.
    """
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- stopping


class _StopSignals:
    """SIGINT and SIGTERM ask the loop to stop at the next step boundary.

    The first signal only records the request. A second one means the user insists:
    it raises ``KeyboardInterrupt`` at once, except inside :meth:`protected` (the
    optimiser update, a save), which is finished first. Installed in the main thread
    only; a signal that was ignored (SIGINT in a ``nohup ... &`` job) stays ignored, and
    the previous handlers are put back on exit.
    """

    def __init__(self):
        self.requested: int | None = None
        self._depth = 0
        self._pending = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(signum)
                if previous is signal.SIG_IGN:
                    continue
                signal.signal(signum, self._handle)
                self._previous[signum] = previous
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.requested is None:
            self.requested = signum
            _note(f"\n{signal.Signals(signum).name}: stopping at the end of this step "
                  "(press Ctrl-C again to stop at once)\n")
            return
        if self._depth:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def protected(self, *, raise_pending: bool = True) -> Iterator[None]:
        """A block a second signal does not cut; it raises ``KeyboardInterrupt`` after the block instead."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending and raise_pending:
            self._pending = False
            raise KeyboardInterrupt


def _note(text: str) -> None:
    """Write to the terminal from a signal handler (``os.write``: no buffered stream to re-enter)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


# --------------------------------------------------------------------------- resuming


def _plain(value: Any) -> Any:
    """JSON-like ``value`` with tuples as lists and mappings as dicts, so saved and asked compare equal."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _differences(saved: Any, asked: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, saved, asked)`` for every key, nested ones dotted, whose values differ."""
    if isinstance(saved, dict) and isinstance(asked, dict):
        out = []
        for key in list(saved) + [k for k in asked if k not in saved]:
            out += _differences(saved.get(key, _ABSENT), asked.get(key, _ABSENT), f"{prefix}{key}.")
        return out
    return [] if saved == asked else [(prefix.rstrip("."), saved, asked)]


def _load_training_state(path: Path, config: TrainConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """The state at ``path``, checked to belong to this call: same config (but steps), same extra."""
    state = load_state_file(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a training state of this version of attn_course "
                         f"({STATE_FORMAT}, found {found!r}); delete it to start afresh, or choose another --out")
    saved = {k: v for k, v in state["config"].items() if k != "steps"}
    wanted = {k: v for k, v in asdict(config).items() if k != "steps"}
    if saved != wanted:
        diff = {k: (saved.get(k), wanted.get(k)) for k in wanted if saved.get(k) != wanted.get(k)}
        raise ValueError(
            f"cannot resume from {path}: its training config differs in {diff} (saved, asked); "
            "delete the checkpoint or pass resume=False to start afresh"
        )
    differ = _differences(_plain(state.get("extra") or {}), extra)
    if differ:
        detail = "; ".join(f"{key}: saved {a!r}, asked {b!r}" for key, a, b in differ)
        raise ValueError(f"cannot resume from {path}: it holds another run ({detail}); "
                         "delete it to start afresh, or choose another --out")
    if state["step"] > config.steps:
        raise ValueError(
            f"{path} has already trained {state['step']} steps, more than the {config.steps} asked for; "
            "ask for at least that many steps, delete it to start afresh, or choose another --out")
    return state


_PLAIN_TYPES = (int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device)


def _not_plain(value: Any, where: str) -> str | None:
    """Where ``value`` holds something a ``weights_only`` load refuses (e.g. a numpy scalar), else None."""
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN_TYPES:
        return None
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _PLAIN_TYPES:
                return f"{where} (key {key!r} of type {type(key).__qualname__})"
            found = _not_plain(item, f"{where}.{key}")
            if found:
                return found
        return None
    if type(value) in (list, tuple, torch.Size):
        for index, item in enumerate(value):
            found = _not_plain(item, f"{where}[{index}]")
            if found:
                return found
        return None
    return f"{where} (a {type(value).__module__}.{type(value).__qualname__})"


# --------------------------------------------------------------------------- the loop


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


def _as_floats(named: list[tuple[str, Any]]) -> list[float]:
    """The values of ``named`` (name, scalar tensor or number) pairs as floats, in their order.

    The tensors on an accelerator are read back in one transfer per device, so a GPU is
    waited for once, not once per value; CPU tensors are read one by one (no wait to save).
    A value with more than one element is a ``ValueError`` that names it.
    """
    floats: list[float | None] = [None] * len(named)
    on_device: dict[torch.device, list[int]] = {}
    for index, (name, value) in enumerate(named):
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"{name!r} must be a scalar (one element), got a tensor of shape "
                                 f"{tuple(value.shape)}")
            if value.device.type != "cpu":
                on_device.setdefault(value.device, []).append(index)
                continue
        floats[index] = _to_float(value)
    for indices in on_device.values():
        together = torch.stack([named[i][1].detach().float().reshape(()) for i in indices]).tolist()
        for index, value in zip(indices, together):
            floats[index] = value
    return floats


def _amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _mixed_precision(config: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """The autocast dtype (None: full precision) and, for float16 only, a gradient scaler."""
    use_amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    if use_amp and device.type not in ("cuda", "cpu"):
        raise ValueError(f"mixed precision (amp=True) needs a CUDA device or the CPU, got {device}")
    amp_dtype = _amp_dtype(device) if use_amp else None
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    return amp_dtype, scaler


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
    training state (weights, optimiser, scheduler, step, history, unlogged running means,
    every RNG) is saved atomically every ``checkpoint_every`` steps, at the end, and when
    stopped; its folder must be writable (checked before the first step) and no other
    process may train into it (:func:`~attn_course.checkpoints.output_lock`). With
    ``resume`` an existing state there is loaded first and training goes on from its
    step; a state of another config, another ``extra_state``, or of more steps than
    asked is a ``ValueError``. ``extra_state`` (JSON-like, e.g. the model config) is
    stored alongside. A failed save raises
    :class:`~attn_course.checkpoints.CheckpointError` and keeps the previous file.

    Ctrl-C or SIGTERM ends the current step, saves, and returns with ``interrupted=True``;
    a second one raises ``KeyboardInterrupt`` after saving the last completed step. Any
    other error saves the last completed step too before it propagates.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=config.lr)
    amp_dtype, scaler = _mixed_precision(config, device)
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    extra = _plain(dict(extra_state or {}))

    with ExitStack() as stack:
        if checkpoint_path is not None:
            check_writable(checkpoint_path)
            stack.enter_context(output_lock(checkpoint_path))
        run = _Run(model, optimizer, scheduler, scaler, config, device, amp_dtype, checkpoint_path, extra,
                   evaluate, sample_batch, loss_fn)
        return run.train(resume, progress, desc)


class _Run:
    """The state of one :func:`fit` call and its loop.

    What a resumed run needs changes inside :meth:`_StopSignals.protected` blocks only,
    except the RNG and the model buffers, which change in every forward pass: each block
    ends with :meth:`_mark`, which records those two, so a save at any later moment (even
    one cut into the next step) writes the state of the last completed step.
    """

    def __init__(self, model, optimizer, scheduler, scaler, config, device, amp_dtype, checkpoint_path, extra,
                 evaluate, sample_batch, loss_fn):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.config, self.device, self.amp_dtype = config, device, amp_dtype
        self.checkpoint_path, self.extra, self.evaluate = checkpoint_path, extra, evaluate
        self.sample_batch, self.loss_fn = sample_batch, loss_fn
        self.forward_model = torch.compile(model) if config.compile else model  # the same parameters
        self.generator = make_generator(config.seed)
        torch.manual_seed(config.seed)
        self.history = History()
        self.step = 0
        self.window: dict[str, float] = {}  # running sums of the metrics since the last log
        self.window_count = 0
        self.eval_owed = False  # the periodic evaluation of this step has not run yet
        self.final_metrics: dict[str, float] | None = None
        self.saved_step = 0  # the step of the file at checkpoint_path (0: none, or nothing new to save)
        self.updating = False  # inside the optimiser update, the one moment the state is half-changed
        self.means: dict[str, float] = {}  # the last logged running means, for the progress bar
        self.stop = _StopSignals()
        self.evaluation_seconds = 0.0  # spent in evaluate() during this call
        self._saves = checkpoint_path is not None  # without a file, the step-boundary records go unused
        self._persistent = set(model.state_dict())
        self._rng: dict[str, Any] = {}
        self._buffers: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- state

    def _mark(self) -> None:
        """Record the RNG and buffers of this moment, a step boundary (only when the run can be saved)."""
        if not self._saves:
            return
        self._rng = _rng_state(self.generator)
        self._buffers = {name: b.detach().clone() for name, b in self.model.named_buffers(remove_duplicate=False)
                         if name in self._persistent}

    def state_dict(self) -> dict[str, Any]:
        model_state = self.model.state_dict()
        model_state.update(self._buffers)
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "config": asdict(self.config),
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": self.history.state_dict(),
            "window": {"sums": dict(self.window), "count": self.window_count},
            "eval_owed": self.eval_owed,
            "final_metrics": self.final_metrics,
            "rng": _plain_rng_state(self._rng),
            "extra": self.extra,
        }

    def checked_state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict`, refused if it holds objects a safe load could not read back."""
        state = self.state_dict()
        for key in ("scheduler", "scaler", "extra", "optimizer"):
            found = _not_plain(state[key], key)
            if found:
                raise TypeError(
                    f"cannot save the training state to {self.checkpoint_path}: {found} is not a tensor or plain "
                    "value, so the state could not be loaded back safely; keep such objects out of the "
                    "scheduler's and optimiser's attributes and out of extra_state")
        return state

    def load(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.history = History.from_state_dict(state["history"])
        self.window = dict(state["window"]["sums"])
        self.window_count = int(state["window"]["count"])
        self.step = int(state["step"])
        self.eval_owed = bool(state["eval_owed"])
        if self.step == self.config.steps and state["final_metrics"] is not None:
            self.final_metrics = dict(state["final_metrics"])
        _set_rng_state(self.generator, state["rng"])
        self.saved_step = self.step

    def save(self, *, raise_pending: bool = True) -> Path | None:
        if self.checkpoint_path is None:
            return None
        with self.stop.protected(raise_pending=raise_pending):
            atomic_torch_save(self.checked_state_dict(), self.checkpoint_path)
            self.saved_step = self.step
        return self.checkpoint_path

    # ----------------------------------------------------------------- the run

    def train(self, resume: bool, progress: bool, desc: str) -> TrainResult:
        """Resume or start; the steps and the save under the signal handlers; the result."""
        self._resume_or_start(resume)
        start, first_step = time.perf_counter(), self.step
        self.model.train()
        bar = tqdm(total=self.config.steps, initial=self.step, desc=desc, disable=not progress, dynamic_ncols=True)
        try:
            with self.stop:
                saved_at = self._train_and_save(bar)
        finally:
            bar.close()
        return self._finish(saved_at, start, first_step, desc)

    def _resume_or_start(self, resume: bool) -> None:
        """Load the state at checkpoint_path if asked and there, and check that this run's state could be saved."""
        if self.checkpoint_path is not None and resume and self.checkpoint_path.exists():
            self.load(_load_training_state(self.checkpoint_path, self.config, self.extra))
        self._mark()
        if self.checkpoint_path is not None:
            self.checked_state_dict()  # before the first step: a state that could not be resumed is no use

    def _train_and_save(self, bar) -> Path | None:
        """The steps, then the save; when stopped or failed, the save of the last completed step.

        Returns where the state was saved (None: no checkpoint_path). A second signal, a
        ``KeyboardInterrupt`` raised inside the optimiser update, a failed save and any
        other error propagate.
        """
        try:
            self._steps(bar)
            return self.save()
        except KeyboardInterrupt:
            if self.updating:  # raised inside the optimiser update (not by a signal): half-changed
                print(f"interrupted inside the optimiser update of step {self.step + 1}: not saved"
                      + (f"; {self.checkpoint_path} keeps step {self.saved_step}" if self.saved_step else ""))
                raise
            insisted = self.stop.requested is not None  # a second signal: save, then stop at once
            self.stop.requested = self.stop.requested or signal.SIGINT
            saved_at = self.save(raise_pending=False)
            if insisted:
                self._report_stop(saved_at)
                raise
            return saved_at
        except CheckpointError:
            raise
        except Exception as error:
            self._save_after_error(error)
            raise

    def _save_after_error(self, error: Exception) -> None:
        """Save the last completed step if not saved yet, and say so in a note on ``error``."""
        if not self.updating and self.step != self.saved_step and self.checkpoint_path is not None:
            try:
                self.save(raise_pending=False)
            except Exception:
                pass
            else:
                error.add_note(f"the training state of step {self.step} was saved to {self.checkpoint_path}")

    def _finish(self, saved_at: Path | None, start: float, first_step: int, desc: str) -> TrainResult:
        interrupted = self.stop.requested is not None
        if interrupted:
            self._report_stop(saved_at)
        result = TrainResult(
            history=self.history,
            step=self.step,
            wall_time=time.perf_counter() - start,
            interrupted=interrupted,
            checkpoint=saved_at,
            final_metrics=dict(self.final_metrics or {}),
        )
        self._report(result, first_step, desc)
        return result

    def _report(self, result: TrainResult, first_step: int, desc: str) -> None:
        """This call in one record for ``runtime.report`` (written only when a profiling tool asks for it)."""
        steps = self.step - first_step
        training_seconds = result.wall_time - self.evaluation_seconds
        report("fit", desc=desc, device=str(self.device), steps=steps, total_steps=self.step,
               batch_size=self.config.batch_size, seconds=round(result.wall_time, 3),
               steps_per_second=round(steps / training_seconds, 3) if training_seconds > 0 else None,
               train={name: self.history.last(name) for name in self.history.names() if not name.startswith("eval_")},
               eval=result.final_metrics, interrupted=result.interrupted)

    def _report_stop(self, saved_at: Path | None) -> None:
        message = f"interrupted at step {self.step} of {self.config.steps}"
        if saved_at is not None:
            message += f"; training state saved to {saved_at}: run the same call again to resume"
        else:
            message += " (no checkpoint_path: nothing was saved)"
        print(message)

    # ----------------------------------------------------------------- the steps

    def _steps(self, bar) -> None:
        """Steps until done or asked to stop, then the final evaluation (not when stopped)."""
        self._maybe_evaluate()  # owed by the step a stopped run was saved at
        while self.step < self.config.steps and self.stop.requested is None:
            self._one_step(self.sample_batch(self.generator, self.config.batch_size))
            self._show_progress(bar)
            self._maybe_evaluate()
            self._maybe_checkpoint()
        if self.stop.requested is None and self.final_metrics is None:
            self._final_evaluation(bar)

    def _one_step(self, batch: Batch) -> None:
        loss, metrics = self._forward(batch)
        self._backward(loss)
        self._update(self._read_back(loss, metrics))

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, Mapping[str, Any]]:
        """The loss and the step's metrics, as ``loss_fn`` returns them (under autocast with AMP)."""
        mixed = self.amp_dtype is not None
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype) if mixed else nullcontext():
            return self.loss_fn(self.forward_model, batch)

    def _read_back(self, loss: torch.Tensor, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The loss and metrics as floats (one wait for a GPU); stops at a non-finite loss, before the update."""
        loss_value, *metric_values = _as_floats([("loss", loss), *metrics.items()])
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"the training loss became {loss_value} at step {self.step + 1} (of {self.config.steps}); "
                "weights from before this step are unchanged. Lower the learning rate, clip gradients "
                "(clip_grad_norm) or check the inputs of this batch."
            )
        return {"loss": loss_value, **dict(zip(metrics, metric_values))}

    def _backward(self, loss: torch.Tensor) -> None:
        """The gradients (scaled and unscaled again with a scaler), clipped if asked."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)

    def _update(self, metrics: dict[str, float]) -> None:
        """Optimiser and scheduler step, step count, log, owed evaluation, mark: one block a signal does not cut."""
        config = self.config
        with self.stop.protected():
            self.updating = True
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.step += 1
            self._log(metrics)
            self.eval_owed = bool(config.eval_every and self.step % config.eval_every == 0
                                  and self.step < config.steps)
            self._mark()
            self.updating = False

    def _log(self, metrics: dict[str, float]) -> None:
        """Add the step's metrics to the window; every log_every steps and at the last, log the window's means."""
        for name, value in metrics.items():
            self.window[name] = self.window.get(name, 0.0) + value
        self.window_count += 1
        if self.step % self.config.log_every == 0 or self.step == self.config.steps:
            self.means = {name: total / self.window_count for name, total in self.window.items()}
            self.history.log(self.step, **self.means)
            self.window, self.window_count = {}, 0

    def _show_progress(self, bar) -> None:
        bar.update(1)
        if self.step % self.config.log_every == 0:
            bar.set_postfix({k: f"{v:.4g}" for k, v in self.means.items()}, refresh=False)

    def _maybe_evaluate(self) -> None:
        if self.eval_owed:
            self._evaluation()

    def _maybe_checkpoint(self) -> None:
        """Save every checkpoint_every steps but the last (the run saves at its end anyway)."""
        every = self.config.checkpoint_every
        if every and self.step % every == 0 and self.step < self.config.steps:
            self.save()

    def _final_evaluation(self, bar) -> None:
        self.final_metrics = self._evaluation()
        if self.final_metrics:
            bar.set_postfix({f"eval_{k}": f"{v:.4g}" for k, v in self.final_metrics.items()}, refresh=True)

    def _evaluation(self) -> dict[str, float]:
        """``evaluate(model)`` in eval mode without gradients, logged to the history as ``eval_*``."""
        metrics = {}
        if self.evaluate is not None:
            start = time.perf_counter()
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                metrics = {name: _to_float(value) for name, value in self.evaluate(self.model).items()}
            self.model.train(was_training)
            self.evaluation_seconds += time.perf_counter() - start
        with self.stop.protected():
            if metrics:
                self.history.log(self.step, **{f"eval_{name}": value for name, value in metrics.items()})
            self.eval_owed = False
            self._mark()
        return metrics
