"""The data variants of the Recurrent Attention Model paper (Mnih et al. 2014, section 4.1).

* ``translated60``: each 28x28 digit placed at a random position of a 60x60 canvas;
* ``cluttered60``: the same, plus 4 distractors: random 8x8 crops of other digits
  pasted at random positions;
* ``cluttered100``: 100x100 with 8 distractors;
* ``mnist28``: plain MNIST, for comparison.

Every sample carries its digit's bounding box ``(x0, y0, x1, y1)`` in pixels: the
ground truth for where attention should go. Generation is vectorised (no Python loop
over images) and runs on the tensors' device; the random numbers are drawn on the
CPU from a generator seeded with ``seed``, so a seed gives the same images whatever
the chunk size, and the same pixels on every device (CUDA's division by 255 may
differ from the CPU's in the last bit of a float). Large batches are generated in
chunks (``chunk_size`` images at a time: 2048 on the CPU, where that stays in the
caches, 16384 on a GPU), so the temporary memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIGIT = 28
CPU_CHUNK = 2048  # images generated at once (bounds the temporary memory)
ACCELERATOR_CHUNK = 16384


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
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"expected images and labels as torch tensors, got {type(images).__name__} and "
                         f"{type(labels).__name__}")
    if images.dim() != 3 or tuple(images.shape[1:]) != (DIGIT, DIGIT):
        raise ValueError(f"expected MNIST images of shape (N, 28, 28), got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"expected uint8 (0..255) or floating (0..1) images, got {images.dtype}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"expected labels of shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("expected at least one image, got an empty batch")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"expected integer class labels, got {labels.dtype}")


def _offsets(h: int, w: int, row_stride: int, device) -> torch.Tensor:
    """Flat offsets ``i * row_stride + j`` of an ``h`` x ``w`` patch, shape (h * w,)."""
    rows = torch.arange(h, device=device).view(h, 1) * row_stride
    return (rows + torch.arange(w, device=device).view(1, w)).reshape(-1)


def _generate(images, labels, spec: Variant, seed: int, device, chunk_size: int) -> dict[str, torch.Tensor]:
    _check_inputs(images, labels)
    n, size, k, d = images.shape[0], int(spec.size), int(spec.num_distractors), int(spec.distractor_size)
    if size < DIGIT:
        raise ValueError(f"size (the canvas side) must be at least 28, got {size}")
    if not 1 <= d <= DIGIT:
        raise ValueError(f"distractor_size must be in [1, 28], got {d}")
    if k < 0:
        raise ValueError(f"num_distractors must be >= 0, got {k}")
    if k > 0 and n < 2:
        raise ValueError("distractors are crops of *other* digits: give at least 2 images")
    device = torch.device(device) if device is not None else images.device
    if chunk_size is None:  # small chunks stay in the CPU's caches; a GPU wants big ones
        chunk_size = CPU_CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk_size = int(chunk_size)

    # All random numbers first, on the CPU: the result does not depend on device or chunking.
    g = torch.Generator().manual_seed(int(seed))
    if spec.translate:
        offset = torch.randint(0, size - DIGIT + 1, (n, 2), generator=g)
    else:
        offset = torch.zeros(n, 2, dtype=torch.long)
    source = (torch.arange(n).view(-1, 1) + torch.randint(1, max(n, 2), (n, k), generator=g)) % n
    crop = torch.randint(0, DIGIT - d + 1, (n, k, 2), generator=g)
    place = torch.randint(0, size - d + 1, (n, k, 2), generator=g)

    # Work in the input's own dtype (uint8 for MNIST: a quarter of the memory traffic) and
    # convert once at the end. Pasting is a scatter along the flattened canvas of each image:
    # flat index (y0 + i) * size + (x0 + j) for every pixel (i, j) of every patch at once.
    uint8 = images.dtype == torch.uint8
    flat_images = images.to(device).reshape(n, DIGIT * DIGIT)
    if not uint8:
        flat_images = flat_images.float()
        low, high = torch.aminmax(flat_images)
        if not (0.0 <= float(low) and float(high) <= 1.0):  # also catches NaN
            raise ValueError(
                f"floating images must lie in [0, 1], found values in [{float(low):g}, {float(high):g}] "
                "(pass uint8 images 0..255, or divide by 255 first)"
            )
    offset, source, crop, place = (t.to(device, non_blocking=True) for t in (offset, source, crop, place))
    digit_start = offset[:, 1] * size + offset[:, 0]  # (n,)
    crop_start = source * (DIGIT * DIGIT) + crop[..., 1] * DIGIT + crop[..., 0]  # (n, k), into flat_images
    place_start = place[..., 1] * size + place[..., 0]  # (n, k)
    digit_grid = _offsets(DIGIT, DIGIT, size, device)  # (784,)
    crop_grid = _offsets(d, d, DIGIT, device)  # (d*d,)
    place_grid = _offsets(d, d, size, device)  # (d*d,)

    out = torch.empty(n, 1, size, size, device=device)
    all_pixels = flat_images.reshape(-1)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        canvas = torch.zeros(stop - start, size * size, dtype=flat_images.dtype, device=device)
        canvas.scatter_(1, digit_start[start:stop, None] + digit_grid, flat_images[start:stop])
        if k:
            # (m, k * d * d): all distractor pixels of the chunk, taken and pasted in one go;
            # "amax" makes overlapping distractors (and the digit) combine by maximum.
            take = (crop_start[start:stop, :, None] + crop_grid).reshape(stop - start, -1)
            where = (place_start[start:stop, :, None] + place_grid).reshape(stop - start, -1)
            canvas.scatter_reduce_(1, where, all_pixels[take], reduce="amax")
        target = out[start:stop].view(stop - start, size * size)
        target.copy_(canvas)  # uint8 -> float32 in place, then scaled: exactly images.float() / 255
        if uint8:
            target.div_(255)
    boxes = torch.cat([offset, offset + DIGIT], dim=1).float()
    return {"images": out, "labels": labels.to(device=device, dtype=torch.long), "boxes": boxes}


def translated_mnist(images, labels, size: int = 60, seed: int = 0, device=None, chunk_size: int | None = None):
    """Digits at random positions of a ``size`` x ``size`` canvas, with their boxes."""
    return _generate(images, labels, Variant(size=size), seed, device, chunk_size)


def cluttered_mnist(images, labels, size: int = 60, num_distractors: int = 4, distractor_size: int = 8,
                    seed: int = 0, device=None, chunk_size: int | None = None):
    """Translated digits plus ``num_distractors`` crops of other digits (combined by max), with boxes."""
    spec = Variant(size=size, num_distractors=num_distractors, distractor_size=distractor_size)
    return _generate(images, labels, spec, seed, device, chunk_size)


def make_variant(name: str, images, labels, seed: int = 0, device=None, chunk_size: int | None = None):
    """The named variant (see ``RAM_VARIANTS``) of ``images``: a dict of ``images``, ``labels``, ``boxes``."""
    if name not in RAM_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(RAM_VARIANTS)}")
    return _generate(images, labels, RAM_VARIANTS[name], seed, device, chunk_size)
