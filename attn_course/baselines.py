"""Whole-image baselines: the networks that look at every pixel at once.

Mnih et al. (2014, Table 1 and 2) compare the Recurrent Attention Model with a fully
connected network (two hidden layers of 256 rectifier units) and a convolutional
network (one layer of 8 filters of 10x10 with stride 5, then 256 rectifier units);
both see the whole image. Chapter 0 uses them to show what a fixed, whole-image view
costs on translated and cluttered digits, and chapter 1 compares RAM against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VARIANT_SIZES = {"mnist28": 28, "translated60": 60, "cluttered60": 60, "cluttered100": 100}
NUM_CLASSES = 10


@dataclass(frozen=True)
class BaselineConfig:
    """What a stored baseline records: the side of its square input images."""

    image_size: int


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


# --------------------------------------------------------------------------- the loss


def classification_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]):
    """Cross-entropy, with the batch accuracy as a metric."""
    logits = model(batch["images"])
    if batch["labels"].shape != logits.shape[:1]:
        raise ValueError(f"expected labels of shape ({logits.shape[0]},), one per image, got "
                         f"{tuple(batch['labels'].shape)}")
    loss = F.cross_entropy(logits, batch["labels"])
    accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
    return loss, {"accuracy": accuracy}
