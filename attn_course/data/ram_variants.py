"""The data variants of the Recurrent Attention Model paper (Mnih et al. 2014, section 4.1).

* ``translated60``: each 28x28 digit placed at a random position of a 60x60 canvas;
* ``cluttered60``: the same, plus 4 distractors: random 8x8 crops of other digits
  pasted at random positions;
* ``cluttered100``: 100x100 with 8 distractors;
* ``mnist28``: plain MNIST, for comparison.

Every sample carries its digit's bounding box ``(x0, y0, x1, y1)`` in pixels: the
ground truth for where attention should go. Generation is vectorised (no Python loop
over images) and runs on the tensors' device; the random numbers are drawn on the
CPU from a generator seeded with ``seed``, so a seed gives the same images on every
device and whatever the chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIGIT = 28


@dataclass(frozen=True)
class Variant:
    size: int
    num_distractors: int = 0
    distractor_size: int = 8
    translate: bool = True


RAM_VARIANTS = {
    "mnist28": Variant(size=28, translate=False),
    "translated60": Variant(size=60),
    "cluttered60": Variant(size=60, num_distractors=4),
    "cluttered100": Variant(size=100, num_distractors=8),
}


def _check_inputs(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 3 or images.shape[1:] != (DIGIT, DIGIT):
        raise ValueError(f"expected MNIST images of shape (N, 28, 28), got {tuple(images.shape)}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"expected labels of shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("expected at least one image, got an empty batch")


def _as_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 or floating images, got {images.dtype}")
    return images.float()


def _paste(canvas: torch.Tensor, patches: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, reduce: str) -> None:
    """``canvas[n, y0+i, x0+j] = patches[n, i, j]`` (``reduce="set"``) or the max of both (``"amax"``),
    for the whole batch at once."""
    n, size, _ = canvas.shape
    h, w = patches.shape[1:]
    rows = y0.view(-1, 1, 1) + torch.arange(h, device=canvas.device).view(1, h, 1)
    cols = x0.view(-1, 1, 1) + torch.arange(w, device=canvas.device).view(1, 1, w)
    flat = torch.arange(n, device=canvas.device).view(-1, 1, 1) * size * size + rows * size + cols
    flat, patches, pixels = flat.reshape(-1), patches.reshape(-1), canvas.view(-1)
    # One patch per image: no two entries of ``flat`` coincide, so gather-max-put is exact.
    pixels[flat] = patches if reduce == "set" else torch.maximum(pixels[flat], patches)


def _generate(images, labels, spec: Variant, seed: int, device, chunk_size: int) -> dict[str, torch.Tensor]:
    _check_inputs(images, labels)
    n, size, k, d = images.shape[0], spec.size, spec.num_distractors, spec.distractor_size
    if size < DIGIT:
        raise ValueError(f"canvas size must be at least 28, got {size}")
    if not 1 <= d <= DIGIT:
        raise ValueError(f"distractor_size must be in [1, 28], got {d}")
    if k < 0:
        raise ValueError(f"num_distractors must be >= 0, got {k}")
    if k > 0 and n < 2:
        raise ValueError("distractors are crops of *other* digits: give at least 2 images")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    device = torch.device(device) if device is not None else images.device

    # All random numbers first, on the CPU: the result does not depend on device or chunking.
    g = torch.Generator().manual_seed(int(seed))
    if spec.translate:
        offset = torch.randint(0, size - DIGIT + 1, (n, 2), generator=g)
    else:
        offset = torch.zeros(n, 2, dtype=torch.long)
    source = (torch.arange(n).view(-1, 1) + torch.randint(1, max(n, 2), (n, k), generator=g)) % n
    crop = torch.randint(0, DIGIT - d + 1, (n, k, 2), generator=g)
    place = torch.randint(0, size - d + 1, (n, k, 2), generator=g)

    images = images.to(device)
    offset, source, crop, place = (t.to(device) for t in (offset, source, crop, place))
    out = torch.zeros(n, 1, size, size, device=device)
    ar = torch.arange(d, device=device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        canvas = out[start:stop, 0]  # a contiguous view: pasting writes straight into the output
        digits = _as_unit_float(images[start:stop])
        _paste(canvas, digits, offset[start:stop, 0], offset[start:stop, 1], "set")  # onto an empty canvas
        for j in range(k):  # a handful of distractors, each pasted for the whole chunk at once
            src = source[start:stop, j].view(-1, 1, 1)
            cy = crop[start:stop, j, 1].view(-1, 1, 1) + ar.view(1, -1, 1)
            cx = crop[start:stop, j, 0].view(-1, 1, 1) + ar.view(1, 1, -1)
            patches = _as_unit_float(images[src, cy, cx])
            _paste(canvas, patches, place[start:stop, j, 0], place[start:stop, j, 1], "amax")
    boxes = torch.cat([offset, offset + DIGIT], dim=1).float()
    return {"images": out, "labels": labels.to(device), "boxes": boxes}


def translated_mnist(images, labels, size: int = 60, seed: int = 0, device=None, chunk_size: int = 8192):
    """Digits at random positions of a ``size`` x ``size`` canvas, with their boxes."""
    return _generate(images, labels, Variant(size=size), seed, device, chunk_size)


def cluttered_mnist(images, labels, size: int = 60, num_distractors: int = 4, distractor_size: int = 8,
                    seed: int = 0, device=None, chunk_size: int = 8192):
    """Translated digits plus ``num_distractors`` crops of other digits (combined by max), with boxes."""
    spec = Variant(size=size, num_distractors=num_distractors, distractor_size=distractor_size)
    return _generate(images, labels, spec, seed, device, chunk_size)


def make_variant(name: str, images, labels, seed: int = 0, device=None, chunk_size: int = 8192):
    """The named variant (see ``RAM_VARIANTS``) of ``images``: a dict of ``images``, ``labels``, ``boxes``."""
    if name not in RAM_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(RAM_VARIANTS)}")
    return _generate(images, labels, RAM_VARIANTS[name], seed, device, chunk_size)
