"""Whole-image baselines: the networks that look at every pixel at once.

Mnih et al. (2014, Table 1 and 2) compare the Recurrent Attention Model with a fully
connected network (two hidden layers of 256 rectifier units) and a convolutional
network (one layer of 8 filters of 10x10 with stride 5, then 256 rectifier units);
both see the whole image. Chapter 0 uses them to show what a fixed, whole-image view
costs on translated and cluttered digits, and chapter 1 compares RAM against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.ram_variants import RAM_VARIANTS
from .registry import ModelSpec, register
from .runtime import get_profile, pick
from .train import TrainConfig, TrainResult, fit

VARIANT_SIZES = {"mnist28": 28, "translated60": 60, "cluttered60": 60, "cluttered100": 100}
NUM_CLASSES = 10


class FullyConnected(nn.Module):
    """Two hidden rectifier layers over the flattened image: ``y = W_3 relu(W_2 relu(W_1 x))``."""

    def __init__(self, image_size: int, hidden: int = 256, num_classes: int = NUM_CLASSES):
        super().__init__()
        _check_sizes(image_size=image_size, hidden=hidden, num_classes=num_classes)
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(image_size * image_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (B, 1, S, S) -> class logits (B, 10)."""
        _check_images(images, self.image_size)
        return self.net(images)


class Convolutional(nn.Module):
    """One convolutional layer (8 filters, 10x10, stride 5), then 256 rectifier units."""

    def __init__(self, image_size: int, filters: int = 8, kernel: int = 10, stride: int = 5, hidden: int = 256,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        _check_sizes(image_size=image_size, filters=filters, kernel=kernel, stride=stride, hidden=hidden,
                     num_classes=num_classes)
        if kernel > image_size:
            raise ValueError(f"kernel {kernel} is larger than the image ({image_size}x{image_size})")
        self.image_size = image_size
        side = (image_size - kernel) // stride + 1
        self.conv = nn.Conv2d(1, filters, kernel, stride=stride)
        self.hidden = nn.Linear(filters * side * side, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (B, 1, S, S) -> class logits (B, 10)."""
        _check_images(images, self.image_size)
        features = F.relu(self.conv(images)).flatten(1)
        return self.out(F.relu(self.hidden(features)))


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_images(images: torch.Tensor, size: int) -> None:
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[2:] != (size, size):
        raise ValueError(f"expected images of shape (B, 1, {size}, {size}), got {tuple(images.shape)}")


# --------------------------------------------------------------------------- training recipes


def classification_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]):
    """Cross-entropy, with the batch accuracy as a metric."""
    logits = model(batch["images"])
    if batch["labels"].shape != logits.shape[:1]:
        raise ValueError(f"expected labels of shape ({logits.shape[0]},), one per image, got "
                         f"{tuple(batch['labels'].shape)}")
    loss = F.cross_entropy(logits, batch["labels"])
    accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
    return loss, {"accuracy": accuracy}


@torch.no_grad()
def test_accuracy(model: nn.Module, task) -> tuple[float, int]:
    """Accuracy of ``model`` on ``task``'s whole test set, and the number of examples."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=task.device)
    total = 0
    for batch in task.test_batches():
        correct += (model(batch["images"]).argmax(-1) == batch["labels"]).sum()
        total += len(batch["labels"])
    model.train(was_training)
    return float(correct.item()) / total, total


def _make_spec(name: str, description: str, cls) -> ModelSpec:
    def model_config(task: str) -> dict[str, Any]:
        if task not in VARIANT_SIZES:
            raise ValueError(f"unknown task {task!r} for {name!r}; choose one of: {', '.join(VARIANT_SIZES)}")
        return {"kind": name, "image_size": VARIANT_SIZES[task]}

    def build(config: Mapping[str, Any]) -> nn.Module:
        if config.get("kind") != name:
            raise ValueError(f"config is for model {config.get('kind')!r}, not {name!r}")
        return cls(int(config["image_size"]))

    def train(task: str, profile: str | None = None, device=None, seed: int = 0, checkpoint_path=None,
              progress: bool = True, steps: int | None = None,
              batch_size: int | None = None, extra_state=None) -> tuple[nn.Module, TrainResult, str]:
        from .data.tasks import MNISTVariantTask
        from .runtime import get_device

        for arg, value in (("steps", steps), ("batch_size", batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{arg} must be a positive int (or None for the recipe's default), got {value}")
        device = torch.device(device) if device is not None else get_device()
        profile = get_profile(profile)
        torch.manual_seed(seed)
        model = build(model_config(task)).to(device)
        data = MNISTVariantTask(task, device=device)
        steps = pick(1500, 20_000, profile) if steps is None else steps
        batch_size = 128 if batch_size is None else batch_size
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, seed=seed,
                             log_every=50, checkpoint_every=500)
        result = fit(model, data.sample, classification_loss, config, device=device,
                     evaluate=lambda m: {"accuracy": test_accuracy(m, data)[0]},
                     checkpoint_path=checkpoint_path, progress=progress, desc=f"{name} on {task}",
                     extra_state=extra_state)
        description = f"MNIST train split, variant {task} generated per batch (seed drawn from the run's generator)"
        return model, result, description

    def evaluate(model: nn.Module, task: str, device) -> tuple[dict[str, float], int]:
        from .data.tasks import MNISTVariantTask

        accuracy, total = test_accuracy(model, MNISTVariantTask(task, device=device))
        return {"accuracy": accuracy, "error": 1.0 - accuracy}, total

    return register(ModelSpec(name=name, description=description, tasks=tuple(RAM_VARIANTS),
                              model_config=model_config, build=build, train=train, evaluate=evaluate,
                              default_task="mnist28"))


FC_SPEC = _make_spec("fc", "fully connected baseline, 2 hidden layers of 256 (Mnih et al. 2014)", FullyConnected)
CONV_SPEC = _make_spec("conv", "convolutional baseline, 8 filters 10x10 stride 5 + 256 units (Mnih et al. 2014)",
                       Convolutional)
