"""What a chapter declares for each model it trains, and the one way to train any of them.

A chapter's experiments module (``attn_course/experiments/<paper>.py``) describes each model
with a :class:`ModelSpec`: the paper's config and model classes, the config per task, the
data, the loss, the evaluation for the model card, the training :class:`Recipe` and the
:class:`Target` a shipped checkpoint must reach. :func:`train_model` turns a spec into a
trained model through :func:`~attn_course.train.fit`; the command line, the notebooks and
the tests all train this way, so every chapter is seeded, scheduled, checkpointed and
resumed alike.

This module imports no chapter: chapters import it, and :mod:`attn_course.registry` (which
imports the chapters) looks their specs up by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

import torch
from torch import nn

from .runtime import get_device, get_profile, pick
from .train import TrainConfig, TrainResult, fit

LossFn = Callable[[nn.Module, Mapping[str, Any]], Any]
OptimizerFactory = Callable[[nn.Module, float, int], tuple[torch.optim.Optimizer, Any]]


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: steps per profile, batch, learning rate and its schedule, and fit's settings.

    The default optimiser is Adam at ``lr``, decayed on a cosine to ``final_lr`` (``None``:
    ``lr / 20``) over the run, or kept constant (``schedule="constant"``). A chapter whose paper
    prescribes another optimiser passes ``optimizer(model, lr, steps) -> (optimizer, scheduler)``
    (the Transformer's rate (5.5)). Runs longer than ``long_run`` steps save every
    ``checkpoint_every`` steps and evaluate ``evaluations`` times on the way (at least 1,000
    steps apart); shorter ones save and evaluate at the end only.
    """

    quick_steps: int
    full_steps: int
    batch_size: int
    lr: float
    schedule: str = "cosine"  # "cosine" or "constant"; ignored when ``optimizer`` is given
    final_lr: float | None = None
    optimizer: OptimizerFactory | None = field(default=None, compare=False)
    clip_grad_norm: float | None = None
    amp: bool | None = False  # None: mixed precision on CUDA
    log_every: int = 25
    checkpoint_every: int = 500
    evaluations: int = 0
    long_run: int = 1000

    def __post_init__(self):
        for name in ("quick_steps", "full_steps", "batch_size", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Recipe.{name} must be a positive int, got {value!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"Recipe.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        _check_lr("Recipe.lr", self.lr)

    def steps(self, profile: str | None = None) -> int:
        """The number of steps of the profile (quick or full)."""
        return pick(self.quick_steps, self.full_steps, profile)

    def train_config(self, steps: int, batch_size: int, lr: float, seed: int, amp: bool | None = None,
                     compile: bool = False) -> TrainConfig:
        """The loop's config; ``amp`` None keeps the recipe's choice."""
        long = steps > self.long_run
        return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, log_every=self.log_every,
                           eval_every=max(steps // self.evaluations, 1000) if long and self.evaluations else 0,
                           checkpoint_every=self.checkpoint_every if long else 0,
                           clip_grad_norm=self.clip_grad_norm, amp=self.amp if amp is None else amp,
                           compile=compile)

    def make_optimizer(self, model: nn.Module, lr: float, steps: int) -> tuple[torch.optim.Optimizer, Any]:
        if self.optimizer is not None:
            return self.optimizer(model, lr, steps)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        if self.schedule == "constant":
            return optimizer, None
        final = lr / 20 if self.final_lr is None else self.final_lr
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=final)


@dataclass(frozen=True)
class Target:
    """What a shipped checkpoint's card must show: ``metric`` at most or at least a bound.

    A target with neither bound marks a model shipped for comparison (``why`` says with what).
    """

    metric: str
    at_most: float | None = None
    at_least: float | None = None
    why: str = ""

    def check(self, metrics: Mapping[str, float]) -> str | None:
        """``None`` if ``metrics`` meet the target, else what is wrong."""
        if self.metric not in metrics:
            return f"the card has no metric {self.metric!r} (it has {', '.join(metrics)})"
        value = metrics[self.metric]
        if self.at_most is not None and not value <= self.at_most:
            return f"{self.metric} is {value:.4g}, above the target {self.at_most:.4g}"
        if self.at_least is not None and not value >= self.at_least:
            return f"{self.metric} is {value:.4g}, below the target {self.at_least:.4g}"
        return None


def config_from_dict(cls, values: Mapping[str, Any]):
    """The config dataclass ``cls`` from a stored model config (JSON values; its ``kind`` is ignored).

    Keys ``cls`` does not know are an error naming them, so a checkpoint written for
    another version of a model fails loudly instead of loading into the wrong shape.
    """
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known - {"kind"}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class ModelSpec:
    """One trainable model of a chapter.

    ``config(task)`` is the paper's config dataclass (an instance of ``config_class``) the
    model is built from; ``model_class(config)`` the model. ``data(task, device)`` gives an
    object with ``sample(generator, batch_size)`` (a training batch) and ``describe()`` (a
    line for the card); ``loss(task)`` the ``loss_fn(model, batch) -> (loss, metrics)`` of
    :func:`~attn_course.train.fit`; ``validate(model, data)`` (optional) the held-out
    metrics logged while training; ``evaluate(model, task, device) -> (metrics, count)``
    the test metrics a card records. ``recipes`` and ``targets`` map tasks to their
    :class:`Recipe` and :class:`Target` (a target only where a checkpoint is shipped).
    """

    name: str
    description: str
    title: str  # for the progress bar
    tasks: tuple[str, ...]
    config_class: type
    model_class: type[nn.Module]
    config: Callable[[str], Any]
    data: Callable[[str, torch.device], Any]
    loss: Callable[[str], LossFn]
    evaluate: Callable[[nn.Module, str, torch.device], tuple[dict[str, float], int]]
    recipes: Mapping[str, Recipe]
    targets: Mapping[str, Target] = field(default_factory=dict)
    validate: Callable[[nn.Module, Any], Mapping[str, Any]] | None = None
    check_config: Callable[[str, Any], None] | None = None  # refuses a config the task's data cannot feed
    default_task: str | None = None
    kind: str | None = None  # the "kind" stored in model configs (default: the name)
    # the config fields a given config does not use (an option left off, a kernel its block lacks): left out of
    # the stored config, so that checkpoints written before such a field existed keep loading
    unused_fields: Callable[[Any], tuple[str, ...]] | None = None
    # what a card records beside the metrics, from the trained model (a language model's samples): a dict merged
    # into the card by train and by ship
    card_extras: Callable[[nn.Module, str, torch.device], Mapping[str, Any]] | None = None

    def __post_init__(self):
        missing = [task for task in self.tasks if task not in self.recipes]
        if missing:
            raise ValueError(f"model {self.name!r} has no recipe for task(s) {missing}")
        unknown = [task for task in self.targets if task not in self.tasks]
        if unknown:
            raise ValueError(f"model {self.name!r} has targets for unknown task(s) {unknown}")

    @property
    def config_kind(self) -> str:
        return self.kind or self.name

    def check_task(self, task: str | None) -> str:
        task = task or self.default_task or self.tasks[0]
        if task not in self.tasks:
            raise ValueError(f"model {self.name!r} has no task {task!r}; choose one of: {', '.join(self.tasks)}")
        return task

    def model_config(self, task: str) -> dict[str, Any]:
        """The stored form of ``config(task)``: its fields as JSON values, with the model's ``kind``."""
        return self.config_dict(self.config(self.check_task(task)))

    def config_dict(self, config) -> dict[str, Any]:
        unused = set(self.unused_fields(config)) if self.unused_fields else set()
        return {"kind": self.config_kind, **{k: v for k, v in asdict(config).items() if k not in unused}}

    def build(self, config: Mapping[str, Any] | Any) -> nn.Module:
        """The model from a stored config (a dict, whose ``kind`` must be this model's) or a config object."""
        if is_dataclass(config) and not isinstance(config, type):
            return self.model_class(config)
        if config.get("kind", self.config_kind) != self.config_kind:
            raise ValueError(f"config is for model {config.get('kind')!r}, not {self.config_kind!r}")
        return self.model_class(config_from_dict(self.config_class, config))


def _check_lr(name: str, lr) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not lr > 0:
        raise ValueError(f"{name} must be a positive number, got {lr!r}")


def train_model(spec: ModelSpec, task: str | None = None, *, profile: str | None = None, device=None, seed: int = 0,
                checkpoint_path=None, progress: bool = True, steps: int | None = None,
                batch_size: int | None = None, lr: float | None = None, config=None, data=None,
                extra_state: Mapping[str, Any] | None = None, amp: bool | None = None,
                compile: bool = False) -> tuple[nn.Module, TrainResult, str]:
    """Train ``spec``'s model for ``task`` from scratch with its recipe; returns (model, result, data description).

    ``steps``, ``batch_size`` and ``lr`` default to the recipe's (``steps``: the profile's);
    ``config`` replaces the task's config (an instance of ``spec.config_class``); ``data``
    replaces the task's data; ``amp`` (None: the recipe's) and ``compile`` as in
    :class:`~attn_course.train.TrainConfig`. The model config is stored in the training state with
    ``extra_state`` (the command line adds its model and task), and checked on resume.
    """
    task = spec.check_task(task)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int (or None for the recipe's default), got {value!r}")
    if lr is not None:
        _check_lr("lr", lr)
    if config is not None and not isinstance(config, spec.config_class):
        raise TypeError(f"config must be a {spec.config_class.__name__} or None, got {type(config).__name__}")
    config = spec.config(task) if config is None else config
    if spec.check_config is not None:
        spec.check_config(task, config)
    recipe = spec.recipes[task]
    device = torch.device(device) if device is not None else get_device()
    total = recipe.steps(get_profile(profile)) if steps is None else steps
    batch_size = recipe.batch_size if batch_size is None else batch_size
    lr = recipe.lr if lr is None else lr

    torch.manual_seed(seed)
    model = spec.model_class(config).to(device)
    data = spec.data(task, device) if data is None else data
    optimizer, scheduler = recipe.make_optimizer(model, lr, total)
    validate = (lambda m: spec.validate(m, data)) if spec.validate is not None else None
    result = fit(model, data.sample, spec.loss(task), recipe.train_config(total, batch_size, lr, seed, amp, compile),
                 optimizer=optimizer, scheduler=scheduler, device=device, evaluate=validate,
                 checkpoint_path=checkpoint_path, progress=progress, desc=f"{spec.title} on {task}",
                 extra_state={"model_config": spec.config_dict(config), **(extra_state or {})})
    return model, result, data.describe()
