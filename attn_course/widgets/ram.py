"""Widgets of chapter 1, the Recurrent Attention Model: the glimpse sensor, the location policy and trained glimpses.
Paper: Mnih, Heess, Graves and Kavukcuoglu (2014), Recurrent Models of Visual Attention (:mod:`attn_course.ram`)."""

from __future__ import annotations

import math

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from ..ram import glimpse_sensor
from ..viz import draw_box, draw_trajectory, show_image
from . import FigureWidget, as_chw, check_range, image_batch, interactive_figure


def sensor_figure(image, x: float, y: float, glimpse_size: int = 12, num_scales: int = 3) -> plt.Figure:
    """RAM's glimpse sensor rho(x, l): the image with the k patch outlines, and the k patches it returns."""
    image = as_chw(image)
    check_range("x", x, -1.0, 1.0)
    check_range("y", y, -1.0, 1.0)
    height, width = image.shape[1:]
    l = torch.tensor([[x, y]], dtype=image.dtype)
    patches = glimpse_sensor(image[None], l, glimpse_size, num_scales)[0]  # (k, C, g, g)
    fig, axes = plt.subplots(1, num_scales + 1, figsize=(2.6 * (num_scales + 1), 2.8),
                             gridspec_kw={"width_ratios": [1.6] + [1] * num_scales})
    show_image(axes[0], image, "rho(x, l): where")
    cx, cy = (x + 1) * width / 2 - 0.5, (y + 1) * height / 2 - 0.5
    for i in range(num_scales):
        half = glimpse_size * 2 ** i / 2
        draw_box(axes[0], (cx - half + 0.5, cy - half + 0.5, cx + half + 0.5, cy + half + 0.5),
                 color=plt.cm.viridis(0.2 + 0.6 * i / max(num_scales - 1, 1)))
        show_image(axes[i + 1], patches[i], f"scale {i + 1}: {glimpse_size * 2 ** i}px -> {glimpse_size}px")
    axes[0].set_xlim(-0.5, width - 0.5)
    axes[0].set_ylim(height - 0.5, -0.5)
    fig.tight_layout()
    return fig


def sensor_explorer(images, glimpse_size: int = 12, num_scales: int = 3) -> FigureWidget:
    """Sliders for the glimpse sensor: location, patch size, number of scales, image."""
    images = image_batch(images)
    check_range("glimpse_size", glimpse_size, 4, 16)
    check_range("num_scales", num_scales, 1, 4)
    style = {"description_width": "initial"}
    return interactive_figure(
        lambda index, x, y, glimpse_size, num_scales: sensor_figure(images[index], x, y, glimpse_size, num_scales),
        index=W.IntSlider(0, 0, len(images) - 1, description="image", style=style),
        x=W.FloatSlider(0.0, min=-1.0, max=1.0, step=0.05, description="l_x", style=style),
        y=W.FloatSlider(0.0, min=-1.0, max=1.0, step=0.05, description="l_y", style=style),
        glimpse_size=W.IntSlider(glimpse_size, min=4, max=16, description="g (pixels)", style=style),
        num_scales=W.IntSlider(num_scales, min=1, max=4, description="k (scales)", style=style),
    )


def policy_figure(std: float, mu=(0.3, -0.2), num_samples: int = 400, seed: int = 0, image=None) -> plt.Figure:
    """Locations sampled from RAM's Gaussian policy N(mu, std^2 I), clamped to the image [-1, 1]^2."""
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"std must be positive, got {std}")
    if torch.as_tensor(mu).shape != (2,):
        raise ValueError(f"mu must be a location (x, y), got {mu!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    generator = torch.Generator().manual_seed(seed)
    samples = (torch.tensor(mu) + std * torch.randn(num_samples, 2, generator=generator)).clamp(-1, 1)
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    if image is not None:
        ax.imshow(as_chw(image)[0], cmap="gray", extent=(-1, 1, 1, -1))
    ax.scatter(samples[:, 0], samples[:, 1], s=6, alpha=0.5, color="#ff7f0e", label="sampled l_t")
    ax.plot(*mu, "+", color="#2ca02c", markersize=14, markeredgewidth=2, label="mean mu_t")
    ax.set_xlim(-1, 1)
    ax.set_ylim(1, -1)
    ax.set_aspect("equal")
    ax.set_title(f"sigma = {std:.2f}", fontsize=10)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return fig


def policy_explorer(image=None) -> FigureWidget:
    """A slider for the policy's standard deviation, showing the spread of sampled locations."""
    if image is not None:
        as_chw(image)  # a bad image fails here, not at the first redraw
    return interactive_figure(
        lambda std: policy_figure(std, image=image),
        std=W.FloatSlider(0.15, min=0.01, max=0.6, step=0.01, description="sigma",
                          style={"description_width": "initial"}),
    )


def draw_glimpse_step(axes, image, pixels, probabilities, step: int, glimpse_size: int, num_scales: int,
                      label: int | None = None) -> None:
    """Draw a trained RAM's glimpses up to ``step`` on two axes: the path (first filled, last
    hollow) with the k patch outlines of glimpse ``step``, and the class probabilities a_t after it.

    ``pixels`` (T, 2) glimpse centres as (column, row); ``probabilities`` (T, classes).
    Used by :func:`trajectory_figure` and by the chapter's animation.
    """
    image = as_chw(image)
    pixels, probabilities = torch.as_tensor(pixels).cpu(), torch.as_tensor(probabilities).cpu()
    T = len(pixels)
    if pixels.dim() != 2 or pixels.shape[1] != 2 or probabilities.dim() != 2 or probabilities.shape[0] != T:
        raise ValueError(f"expected pixels (T, 2) and probabilities (T, classes), got {tuple(pixels.shape)} "
                         f"and {tuple(probabilities.shape)}")
    if not 0 <= step < T:
        raise ValueError(f"step must be in [0, {T - 1}], got {step}")
    if len(axes) != 2:
        raise ValueError(f"axes must be two axes (the path, the probabilities), got {len(axes)}")
    check_range("glimpse_size", glimpse_size, 1, 4 * max(image.shape[1:]))
    check_range("num_scales", num_scales, 1, 8)
    if label is not None and not 0 <= label < probabilities.shape[1]:
        raise ValueError(f"label must be a class in [0, {probabilities.shape[1] - 1}] (or None), got {label}")
    left, right = axes
    title = f"glimpse {step + 1} of {T}" + (f" (label {label})" if label is not None else "")
    show_image(left, image, title)
    draw_trajectory(left, pixels[: step + 1])
    x, y = pixels[step].tolist()
    for i in range(num_scales):
        half = glimpse_size * 2 ** i / 2
        draw_box(left, (x - half + 0.5, y - half + 0.5, x + half + 0.5, y + half + 0.5),
                 color=plt.cm.viridis(0.2 + 0.6 * i / max(num_scales - 1, 1)))
    classes = probabilities.shape[1]
    colours = ["#1f77b4"] * classes
    if label is not None:
        colours[int(label)] = "#2ca02c"
    right.bar(range(classes), probabilities[step].tolist(), color=colours)
    right.set_ylim(0, 1)
    right.set_xticks(range(classes))
    right.set_title(f"a_{step + 1}: class probabilities", fontsize=10)


def trajectory_figure(image, pixels, probabilities, step: int, glimpse_size: int, num_scales: int,
                      label: int | None = None) -> plt.Figure:
    """:func:`draw_glimpse_step` as a figure of its own (the true class's bar in green)."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.2), gridspec_kw={"width_ratios": [1.1, 1]})
    try:
        draw_glimpse_step(axes, image, pixels, probabilities, step, glimpse_size, num_scales, label)
    except ValueError:
        plt.close(fig)
        raise
    fig.tight_layout()
    return fig


def trajectory_explorer(runs) -> FigureWidget:
    """Step through a trained RAM's glimpses: pick the data set, the image and the step.

    ``runs`` maps a name to a dict with ``images`` (N, [C,] H, W), ``labels`` (N,), the
    model's ``pixels`` (N, T, 2) and ``probabilities`` (N, T, classes) (from
    :func:`attn_course.ram.glimpse_paths`, computed once, so a redraw costs no model
    call), and its ``glimpse_size`` and ``num_scales``.
    """
    if not runs:
        raise ValueError("trajectory_explorer needs at least one run")
    for name, run in runs.items():
        missing = {"images", "labels", "pixels", "probabilities", "glimpse_size", "num_scales"} - set(run)
        if missing:
            raise ValueError(f"run {name!r} lacks {sorted(missing)}")
        n = len(run["images"])
        if run["pixels"].dim() != 3 or run["probabilities"].dim() != 3 or \
                {n, len(run["labels"]), len(run["pixels"]), len(run["probabilities"])} != {n} or n == 0:
            raise ValueError(f"run {name!r} needs images (N, ...), labels (N,), pixels (N, T, 2) and probabilities "
                             f"(N, T, classes) for one N >= 1, got {len(run['images'])} images, "
                             f"{len(run['labels'])} labels, pixels {tuple(run['pixels'].shape)} and probabilities "
                             f"{tuple(run['probabilities'].shape)}")
    names = list(runs)
    longest = max(len(run["images"]) for run in runs.values())
    steps = max(run["pixels"].shape[1] for run in runs.values())
    style = {"description_width": "initial"}

    def figure(dataset, index, glimpse):
        run = runs[dataset]
        index = min(index, len(run["images"]) - 1)
        step = min(glimpse, run["pixels"].shape[1]) - 1
        return trajectory_figure(run["images"][index], run["pixels"][index], run["probabilities"][index], step,
                                 run["glimpse_size"], run["num_scales"], int(run["labels"][index]))

    return interactive_figure(
        figure,
        dataset=W.Dropdown(options=names, value=names[0], description="data"),
        index=W.IntSlider(0, 0, longest - 1, description="image", style=style),
        glimpse=W.IntSlider(steps, 1, steps, description="glimpse t", style=style),
    )
