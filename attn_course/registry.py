"""The models the command line knows: each chapter registers its own here.

A :class:`ModelSpec` tells the CLI how to build a model from its config, how to
train it on a task in a profile, and how to evaluate it. ``python -m attn_course
train MODEL --task T`` and ``evaluate MODEL --task T`` look models up by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .train import TrainResult


@dataclass(frozen=True)
class ModelSpec:
    """What a chapter registers for one model.

    ``model_config(task)`` gives the config the model is built from (a dict of JSON
    values); ``build(config)`` makes the ``nn.Module``; ``train(task, profile, device,
    seed, checkpoint_path, progress, steps, batch_size, extra_state)`` trains from scratch and
    returns ``(model, TrainResult, data_description)`` (``steps`` and ``batch_size``: ``None`` or
    absent means the recipe's own; ``extra_state``, if the recipe takes it, goes to
    :func:`~attn_course.train.fit`, which stores it in the training state and checks it on
    resume); ``evaluate(model, task, device)`` returns ``(metrics, num_examples)`` on the
    task's test set.
    """

    name: str
    description: str
    tasks: tuple[str, ...]
    model_config: Callable[[str], dict[str, Any]]
    build: Callable[[Mapping[str, Any]], nn.Module]
    train: Callable[..., tuple[nn.Module, TrainResult, str]]
    evaluate: Callable[[nn.Module, str, torch.device], tuple[dict[str, float], int]]
    default_task: str | None = None

    def check_task(self, task: str | None) -> str:
        task = task or self.default_task or self.tasks[0]
        if task not in self.tasks:
            raise ValueError(f"model {self.name!r} has no task {task!r}; choose one of: {', '.join(self.tasks)}")
        return task


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


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (a chapter module calls this at import)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"a model named {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def _load_chapter_modules() -> None:
    # Importing a chapter module registers its models. Add new chapters here.
    from . import baselines, draw, r2am, ram, show_attend_tell, transformer  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    """The registered model called ``name``; a clear error lists the choices."""
    _load_chapter_modules()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def all_specs() -> list[ModelSpec]:
    _load_chapter_modules()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def load_pretrained(name: str, task: str | None = None, device: torch.device | str | None = None) -> nn.Module:
    """The shipped pretrained ``name`` model for ``task``, in eval mode on ``device``."""
    from .checkpoints import PRETRAINED_DIR, available_pretrained, pretrained_name
    from .runtime import get_device

    spec = get_spec(name)
    task = spec.check_task(task)
    path = PRETRAINED_DIR / f"{pretrained_name(name, task)}.pt"
    if not path.is_file():
        have = ", ".join(available_pretrained()) or "none"
        raise FileNotFoundError(
            f"no pretrained {name!r} for task {task!r} ({path.name}); shipped: {have}. "
            f"Train one with: python -m attn_course train {name} --task {task}"
        )
    return load_model_file(spec, task, path, device or get_device())


def load_model_file(spec: ModelSpec, task: str, path, device: torch.device | str) -> nn.Module:
    """Build ``spec``'s model for ``task`` and load the weights in ``path`` into it."""
    from .checkpoints import load_weights

    config, state_dict = load_weights(path, expected_config=spec.model_config(task))
    model = spec.build(config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fit model {spec.name!r} built from {config}: {error}") from error
    return model.to(device).eval()


# --------------------------------------------------------------------------- the run a training state belongs to


def takes_extra_state(spec: ModelSpec) -> bool:
    """Whether ``spec.train`` accepts ``extra_state`` (to pass on to :func:`~attn_course.train.fit`)."""
    try:
        parameters = inspect.signature(spec.train).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "extra_state" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _describe_run(run: Mapping[str, Any]) -> str:
    return f"{run.get('model')!r} for {run.get('task')!r}"


def check_resumable(state_path: str | Path, run: Mapping[str, Any]) -> None:
    """Refuse, before any training, to resume a training state that another model or task left.

    ``run`` is what the command line passes as ``extra_state`` (``{"model", "task",
    "model_config"}``) and :func:`~attn_course.train.fit` stores as the state's ``extra``.
    Model and task are compared here; ``fit`` compares the whole ``extra`` (the model config
    too) when it resumes. A state that does not record its run so (written by a recipe that
    does not pass ``extra_state`` on, or from a notebook), or that cannot be read here, is
    left to ``fit``, which reads it again and says what is wrong.
    """
    from .checkpoints import load_state_file

    state_path = Path(state_path)
    if not state_path.is_file():
        return
    try:
        state = load_state_file(state_path)
    except (ValueError, OSError):
        return
    if not isinstance(state, Mapping):
        return
    saved = state.get("extra")
    if not isinstance(saved, Mapping) or "model" not in saved:
        return
    differ = [key for key in ("model", "task") if key in saved and saved[key] != run.get(key)]
    if differ:
        raise ValueError(
            f"{state_path} holds an unfinished run of {_describe_run(saved)}, not of {_describe_run(run)}: "
            f"resume it with its own command, choose another --out, or delete {state_path} to start afresh"
        )
