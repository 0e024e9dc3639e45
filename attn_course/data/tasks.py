"""Classification tasks on MNIST and its RAM-paper variants, batched on the device.

A :class:`MNISTVariantTask` keeps the MNIST tensors on the training device and
generates each batch of a variant (translated or cluttered) there, from a seed drawn
with the training loop's generator; the test set is generated batch by batch from
fixed seeds, so every evaluation sees the same images without storing them all.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .mnist import load_mnist
from .ram_variants import RAM_VARIANTS, make_variant

TEST_SEED = 1_000_003  # seeds of the test batches start here; far from any training seed


class MNISTVariantTask:
    """MNIST, or one of its RAM variants (``mnist28``, ``translated60``, ``cluttered60``, ``cluttered100``)."""

    def __init__(self, variant: str, root=None, device: torch.device | str = "cpu", test_size: int | None = None):
        if variant not in RAM_VARIANTS:
            raise ValueError(f"unknown MNIST variant {variant!r}; choose one of: {', '.join(RAM_VARIANTS)}")
        self.variant = variant
        self.device = torch.device(device)
        self.train_images, self.train_labels = load_mnist("train", root=root, device=self.device)
        self.test_images, self.test_labels = load_mnist("test", root=root, device=self.device)
        if test_size is not None:
            if not 1 <= test_size <= len(self.test_labels):
                raise ValueError(f"test_size must be in [1, {len(self.test_labels)}], got {test_size}")
            self.test_images, self.test_labels = self.test_images[:test_size], self.test_labels[:test_size]

    @property
    def image_size(self) -> int:
        return int(make_variant(self.variant, self.test_images[:2], self.test_labels[:2], seed=0)["images"].shape[-1])

    def sample(self, generator: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        """A training batch: ``images`` (B, 1, S, S) in [0, 1], ``labels`` (B,), ``boxes`` (B, 4)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        index = torch.randint(len(self.train_labels), (batch_size,), generator=generator, device=generator.device)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        index = index.to(self.device, non_blocking=True)
        return make_variant(
            self.variant, self.train_images[index], self.train_labels[index], seed=seed, device=self.device
        )

    def test_batches(self, batch_size: int = 1000) -> Iterator[dict[str, torch.Tensor]]:
        """The fixed test set, in batches (the same images on every call)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for number, start in enumerate(range(0, len(self.test_labels), batch_size)):
            stop = start + batch_size
            yield make_variant(
                self.variant,
                self.test_images[start:stop],
                self.test_labels[start:stop],
                seed=TEST_SEED + number,
                device=self.device,
            )

    def describe(self) -> str:
        """The data in one line, for a model card."""
        return (f"MNIST train split, variant {self.variant} generated per batch; test: the "
                f"{len(self.test_labels):,} MNIST test digits, variant generated from fixed seeds")

    def __len__(self) -> int:
        return len(self.train_labels)
