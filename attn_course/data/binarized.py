"""Binarised MNIST for the generative models (DRAW, chapter 2), batched on the device.

A pixel's grey level p in [0, 1] becomes a Bernoulli draw x ~ Bernoulli(p):

* training batches are binarised afresh every time they are drawn (*dynamic*
  binarisation), from a seed drawn with the training loop's generator, so a resumed
  run sees the same bits;
* the 10,000 test digits are binarised once, with the fixed seed :data:`TEST_SEED`,
  on the CPU, so that every device and every evaluation scores the same bits.

The paper's test set (Gregor et al. 2015, after Murray and Salakhutdinov 2009) is
another fixed binarisation of the same digits, so bounds on the two sets are close
but not identical.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .mnist import load_mnist

TEST_SEED = 20_150_223  # the fixed binarisation of the test digits


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli samples with the grey levels of ``images`` (uint8 in [0, 255], or floats in [0, 1]) as means.

    Returns float images of 0s and 1s, of the same shape and on the same device. The
    uniform noise is drawn on ``generator``'s device and moved, so a CPU generator gives
    the same bits on every device.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 (0..255) or floats in [0, 1], got {images.dtype}")
    if images.is_floating_point() and images.numel():
        low, high = torch.aminmax(images)
        if not (float(low) >= 0.0 and float(high) <= 1.0):  # also catches NaN
            raise ValueError(f"floating images must lie in [0, 1] (they are probabilities), got values in "
                             f"[{float(low):g}, {float(high):g}]")
    p = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    where = generator.device if generator is not None else p.device
    u = torch.rand(p.shape, generator=generator, device=where).to(p.device)
    return (u < p).float()


class BinarizedMNIST:
    """MNIST digits as (B, 1, 28, 28) images of 0s and 1s: dynamic for training, fixed for testing."""

    def __init__(self, root=None, device: torch.device | str = "cpu", test_size: int | None = None,
                 test_seed: int = TEST_SEED):
        self.device = torch.device(device)
        self.train_images, _ = load_mnist("train", root=root, device=self.device)  # uint8 (60000, 28, 28)
        test_images, test_labels = load_mnist("test", root=root)
        # one fixed draw for the whole test set, on the CPU (so a subset keeps its bits); uint8 on the device
        fixed = binarize(test_images, torch.Generator().manual_seed(test_seed)).to(torch.uint8)
        if test_size is not None:
            if not 1 <= test_size <= len(fixed):
                raise ValueError(f"test_size must be in [1, {len(fixed)}], got {test_size}")
            fixed, test_labels = fixed[:test_size], test_labels[:test_size]
        self.test_images, self.test_labels = fixed.to(self.device), test_labels.to(self.device)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(B, A): height and width, in the notation of chapter 2."""
        return tuple(self.train_images.shape[1:])

    def sample(self, generator: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        """A training batch ``{"images": (batch, 1, 28, 28)}`` of 0s and 1s, freshly binarised."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        index = torch.randint(len(self.train_images), (batch_size,), generator=generator, device=generator.device)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        grey = self.train_images[index.to(self.device, non_blocking=True)]
        noise = torch.Generator(device=self.device).manual_seed(seed)
        return {"images": binarize(grey, noise)[:, None]}

    def test_batches(self, batch_size: int = 1000) -> Iterator[dict[str, torch.Tensor]]:
        """The fixed binarised test set, in batches of ``{"images", "labels"}``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self.test_images), batch_size):
            stop = start + batch_size
            yield {"images": self.test_images[start:stop, None].float(), "labels": self.test_labels[start:stop]}

    def describe(self) -> str:
        """The data in one line, for a model card."""
        return ("MNIST train split, binarised dynamically (a fresh Bernoulli draw per batch, seeded from the "
                f"run's generator); test: the {len(self.test_images):,} MNIST test digits binarised once with "
                "a fixed seed (attn_course.data.binarized.TEST_SEED)")

    def __len__(self) -> int:
        return len(self.train_images)
