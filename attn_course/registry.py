"""The models the command line knows, collected from the chapters' experiments.

``python -m attn_course train MODEL --task T`` and ``evaluate MODEL --task T`` look models
up here by name. The registry imports the chapters (through :mod:`attn_course.experiments`)
and no chapter imports it, so adding a chapter means adding its module to
``experiments.CHAPTERS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .spec import ModelSpec
from .spec import train_model as _train_spec
from .train import TrainResult


def _collect() -> dict[str, ModelSpec]:
    from .experiments import CHAPTERS

    specs: dict[str, ModelSpec] = {}
    for chapter in CHAPTERS:
        for spec in chapter.SPECS:
            if spec.name in specs:
                raise ValueError(f"two models are named {spec.name!r}")
            specs[spec.name] = spec
    return specs


_REGISTRY: dict[str, ModelSpec] = {}


def _registry() -> dict[str, ModelSpec]:
    if not _REGISTRY:
        _REGISTRY.update(_collect())
    return _REGISTRY


def get_spec(name: str | ModelSpec) -> ModelSpec:
    """The model called ``name``; a clear error lists the choices."""
    if isinstance(name, ModelSpec):
        return name
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(registry))}")
    return registry[name]


def all_specs() -> list[ModelSpec]:
    registry = _registry()
    return [registry[name] for name in sorted(registry)]


def train_model(model: str | ModelSpec, task: str | None = None, **options) -> tuple[nn.Module, TrainResult, str]:
    """Train the model called ``model`` on ``task`` with its recipe: see :func:`attn_course.spec.train_model`
    for the options (profile, device, seed, steps, batch_size, lr, config, data, checkpoint_path, progress)."""
    return _train_spec(get_spec(model), task, **options)


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


def load_model_file(spec: ModelSpec, task: str, path, device: torch.device | str,
                    own_config: bool = False) -> nn.Module:
    """Build ``spec``'s model for ``task`` and load the weights in ``path`` into it.

    The file's config must be the task's (a shipped checkpoint, or one to ship). With ``own_config``,
    a run that ``train --set`` trained with a changed config is built from the config it stores, when
    the card beside it says it was trained as this model on this task (so on this task's data).
    """
    from .checkpoints import load_weights, read_card

    card = {}
    if own_config:
        try:
            card = read_card(path, verify=True)
        except (OSError, ValueError):
            card = {}  # no usable card: the file must hold the task's own config
    trained_here = (card.get("model"), card.get("task")) == (spec.name, task)
    config, state_dict = load_weights(path, expected_config=None if trained_here else spec.model_config(task))
    if trained_here and config.get("kind") != spec.config_kind:
        raise ValueError(f"{path} holds a {config.get('kind')!r} model, not {spec.config_kind!r}")
    model = spec.build(config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fit model {spec.name!r} built from {config}: {error}") from error
    return model.to(device).eval()


# --------------------------------------------------------------------------- the run a training state belongs to


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
