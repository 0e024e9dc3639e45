"""The two basic attention mechanisms of chapter 0, reused by later chapters.

*Hard* attention picks one region and reads only it: :func:`glimpse` crops a square
window at a location, a scale and a rotation (equation (0.1) of chapter 0), and
:func:`glimpse_corners` says where that window lies in the image, for drawing it.
*Soft* attention reads everything, weighted: :func:`soft_attention` returns
``z = sum_i alpha_i v_i`` with ``alpha = softmax(e)`` (equation (0.2)), which is the
expectation of the hard read :func:`hard_attention_sample` (equation (0.4)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_sample(value, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A float or a (B,) tensor as a (B,) tensor on ``like``'s device."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        value = value.expand(batch)
    elif value.shape != (batch,):
        raise ValueError(f"{name} must be a float or a tensor of shape ({batch},), got shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite, got {value.tolist()}")
    return value


def glimpse_theta(x, y, scale, angle, height: int, width: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The affine matrices (B, 2, 3) that map glimpse coordinates (u, v) in [-1, 1]^2 to image coordinates.

    Equation (0.1): with ``s`` the scale (fraction of the image side the glimpse spans),
    ``a`` the angle, ``r = H / W`` the aspect ratio, the glimpse point (u, v) reads the image at

        x_in = x + s cos(a) u - s r sin(a) v
        y_in = y + s sin(a) u / r + s cos(a) v

    i.e. a rotation by ``a`` in pixel space of a box of side ``s`` times each image side,
    centred at (x, y) in the normalised coordinates of ``F.affine_grid`` (-1 left/top, 1 right/bottom).
    As a matrix, ``theta = [[s cos a, -s r sin a, x], [s sin a / r, s cos a, y]]``; for a square
    image (r = 1) this is the zoom-rotate-move of equation (0.1) in the notebook. In pixels,
    ``(dcol, drow) = (s / 2) R(a) (W u, H v)`` with ``R(a)`` the rotation matrix, which is why
    ``r`` appears: the normalised coordinates stretch differently along the two axes.
    """
    for name, value in (("height", height), ("width", width)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
    x, y, s, a = (_per_sample(v, batch, like, n) for v, n in ((x, "x"), (y, "y"), (scale, "scale"), (angle, "angle")))
    if torch.any(s <= 0):
        raise ValueError(f"scale must be positive (the fraction of the image side the glimpse spans), got {s.tolist()}")
    r = height / width
    cos, sin = torch.cos(a), torch.sin(a)
    row_x = torch.stack([s * cos, -s * r * sin, x], dim=-1)
    row_y = torch.stack([s * sin / r, s * cos, y], dim=-1)
    return torch.stack([row_x, row_y], dim=1)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected floating-point images, got {images.dtype}")


def glimpse(images: torch.Tensor, x, y, scale, angle=0.0, size: int = 12) -> torch.Tensor:
    """Hard attention: a ``size`` x ``size`` glimpse of each image, by equation (0.1).

    ``images`` (B, C, H, W); ``x``, ``y`` the centre in [-1, 1] (floats or (B,) tensors);
    ``scale`` the fraction of the image side covered; ``angle`` in radians. Outside the
    image the glimpse reads zeros. Returns (B, C, size, size). Differentiable in the
    image (and, through bilinear interpolation, in x, y, scale and angle).
    """
    _check_images(images)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    batch, channels, height, width = images.shape
    theta = glimpse_theta(x, y, scale, angle, height, width, batch, images)
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def glimpse_corners(x, y, scale, angle, height: int, width: int) -> torch.Tensor:
    """The four corners of the glimpse in pixel coordinates (B, 4, 2) as (column, row), clockwise from top-left.

    Pixel ``(i, j)`` has its centre at column ``j``, row ``i`` (matplotlib's ``imshow``).
    """
    like = torch.zeros((), dtype=torch.float32)
    batch = max(torch.as_tensor(v).numel() for v in (x, y, scale, angle))
    if batch == 0:
        raise ValueError("x, y, scale and angle must hold at least one glimpse, got empty tensors")
    theta = glimpse_theta(x, y, scale, angle, height, width, batch, like)
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    normalised = torch.einsum("bij,kj->bki", theta, corners)
    cols = (normalised[..., 0] + 1) * width / 2 - 0.5
    rows = (normalised[..., 1] + 1) * height / 2 - 0.5
    return torch.stack([cols, rows], dim=-1)


def soft_attention(scores: torch.Tensor, values: torch.Tensor,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft attention, equation (0.2): ``alpha = softmax(e)``, ``z = sum_i alpha_i v_i``.

    ``scores`` (..., L), ``values`` (..., L, D). Returns ``(z, alpha)`` of shapes (..., D) and (..., L).
    ``mask`` (..., L), optional, is True where a position may be attended to (e.g. not
    padding); masked positions get weight exactly 0. Every row needs one allowed position.
    """
    if values.dim() < 2 or scores.shape != values.shape[:-1]:
        raise ValueError(f"scores (..., L) must match values (..., L, D): got {tuple(scores.shape)} "
                         f"and {tuple(values.shape)}")
    if mask is not None:
        if mask.shape != scores.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor shaped like scores {tuple(scores.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        if not mask.any(-1).all():
            raise ValueError("every row of mask needs at least one True position (nothing to attend to)")
        scores = scores.masked_fill(~mask, float("-inf"))
    alpha = torch.softmax(scores, dim=-1)
    return torch.einsum("...l,...ld->...d", alpha, values), alpha


def hard_attention_sample(scores: torch.Tensor, values: torch.Tensor, num_samples: int,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard attention, equation (0.3): draw positions ``s ~ Categorical(alpha)`` and read ``v_s``.

    ``scores`` (B, L), ``values`` (B, L, D). Returns ``(read, s)``: the values read,
    (num_samples, B, D), and the positions, (num_samples, B). Their mean over samples
    estimates the soft context of :func:`soft_attention` (equation (0.4)).
    """
    if scores.dim() != 2 or values.dim() != 3 or scores.shape != values.shape[:2]:
        raise ValueError(f"expected scores (B, L) and values (B, L, D), got {tuple(scores.shape)} "
                         f"and {tuple(values.shape)}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if generator is not None and generator.device.type != scores.device.type:
        raise ValueError(f"the generator is on {generator.device} but the scores are on {scores.device}: "
                         f"make it with torch.Generator(device=scores.device)")
    alpha = torch.softmax(scores, dim=-1)
    positions = torch.multinomial(alpha, num_samples, replacement=True, generator=generator)  # (B, M)
    read = torch.gather(values, 1, positions.unsqueeze(-1).expand(-1, -1, values.shape[-1]))  # (B, M, D)
    return read.transpose(0, 1), positions.T
