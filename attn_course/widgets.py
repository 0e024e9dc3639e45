"""Widgets: pure figure functions, wrapped in sliders.

The pattern every chapter follows: a *pure* function maps slider values to a
matplotlib figure (tests call it directly, and the book shows its output as a static
figure), and :func:`interactive_figure` wraps it in ipywidgets controls that redraw
it in a live kernel. The widget keeps the last figure it drew in ``widget.figure``,
counts its redraws in ``widget.update_count`` and times the last one in
``widget.last_update_seconds``, so that tests can drive the sliders and check what
changed, and how fast.

A later chapter needs only a pure function and its controls::

    def attention_figure(step, head): ...            # -> matplotlib Figure
    interactive_figure(attention_figure, step=W.IntSlider(0, 0, 9), head=W.IntSlider(0, 0, 3))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from .attention import glimpse, glimpse_corners
from .viz import draw_box, draw_trajectory, show_image


class FigureWidget(W.VBox):
    """Controls above an output area that shows ``fn(**values)``; ``figure`` is the last one drawn."""

    def __init__(self, fn: Callable[..., plt.Figure], controls: dict[str, W.ValueWidget]):
        self.fn = fn
        self.controls = controls
        self.output = W.Output()
        self.figure: plt.Figure | None = None
        self.last_update_seconds: float | None = None
        self.update_count = 0
        super().__init__([W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap")), self.output])
        for control in controls.values():
            control.observe(self._redraw, names="value")
        self._redraw()

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def _redraw(self, change=None) -> None:
        start = time.perf_counter()
        figure = self.fn(**self.values())
        with self.output:
            self.output.clear_output(wait=True)
            display(figure)
        plt.close(figure)  # displayed once, in the output area; never again by the notebook
        self.figure = figure
        self.update_count += 1
        self.last_update_seconds = time.perf_counter() - start


def interactive_figure(fn: Callable[..., plt.Figure], **controls: W.ValueWidget) -> FigureWidget:
    """Wrap a pure figure function in controls: ``interactive_figure(f, x=FloatSlider(...), ...)``."""
    if not controls:
        raise ValueError("interactive_figure needs at least one control")
    return FigureWidget(fn, controls)


# --------------------------------------------------------------------------- chapter 0: the glimpse


def _as_chw(image) -> torch.Tensor:
    image = torch.as_tensor(image)
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    image = image.float()
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3:
        raise ValueError(f"expected an image of shape (H, W) or (C, H, W), got {tuple(image.shape)}")
    return image


def glimpse_figure(image, x: float, y: float, scale: float, angle: float, size: int = 16) -> plt.Figure:
    """The image with the glimpse's box, and the glimpse the network receives (``angle`` in degrees)."""
    image = _as_chw(image)
    radians = math.radians(angle)
    view = glimpse(image.unsqueeze(0), x, y, scale, radians, size)[0]
    corners = glimpse_corners(x, y, scale, radians, image.shape[1], image.shape[2])[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.2))
    show_image(left, image, "where the network looks")
    draw_box(left, corners)
    left.plot(*corners.mean(0).tolist(), "+", color="#2ca02c", markersize=10)
    left.plot(*corners[:2].mean(0).tolist(), "o", color="#2ca02c", markersize=4)  # marks the glimpse's top edge
    left.set_xlim(-0.5, image.shape[2] - 0.5)
    left.set_ylim(image.shape[1] - 0.5, -0.5)
    show_image(right, view, f"what it sees: {size}x{size} pixels")
    fig.tight_layout()
    return fig


def glimpse_explorer(images, size: int = 16) -> FigureWidget:
    """Sliders that move (x, y), zoom (scale) and rotate (angle) a glimpse over ``images[index]``."""
    images = torch.as_tensor(images)
    if images.dim() not in (3, 4) or len(images) == 0:
        raise ValueError(f"expected a non-empty batch of images (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    style = {"description_width": "initial"}

    def draw(index, x, y, scale, angle, size):
        return glimpse_figure(images[index], x, y, scale, angle, size)

    return interactive_figure(
        draw,
        index=W.IntSlider(0, 0, len(images) - 1, description="image", style=style),
        x=W.FloatSlider(0.0, min=-1.0, max=1.0, step=0.05, description="x", style=style),
        y=W.FloatSlider(0.0, min=-1.0, max=1.0, step=0.05, description="y", style=style),
        scale=W.FloatSlider(0.5, min=0.1, max=1.5, step=0.05, description="scale", style=style),
        angle=W.FloatSlider(0.0, min=-180.0, max=180.0, step=5.0, description="angle (deg)", style=style),
        size=W.IntSlider(size, min=4, max=32, description="glimpse pixels", style=style),
    )


# --------------------------------------------------------------------------- chapter 1: RAM


def sensor_figure(image, x: float, y: float, glimpse_size: int = 12, num_scales: int = 3) -> plt.Figure:
    """RAM's glimpse sensor rho(x, l): the image with the k patch outlines, and the k patches it returns."""
    from .ram import glimpse_sensor

    image = _as_chw(image)
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
    images = torch.as_tensor(images)
    if images.dim() not in (3, 4) or len(images) == 0:
        raise ValueError(f"expected a non-empty batch of images (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
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
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    generator = torch.Generator().manual_seed(seed)
    samples = (torch.tensor(mu) + std * torch.randn(num_samples, 2, generator=generator)).clamp(-1, 1)
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    if image is not None:
        ax.imshow(_as_chw(image)[0], cmap="gray", extent=(-1, 1, 1, -1))
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
    image = _as_chw(image)
    pixels, probabilities = torch.as_tensor(pixels).cpu(), torch.as_tensor(probabilities).cpu()
    T = len(pixels)
    if pixels.dim() != 2 or pixels.shape[1] != 2 or probabilities.dim() != 2 or probabilities.shape[0] != T:
        raise ValueError(f"expected pixels (T, 2) and probabilities (T, classes), got {tuple(pixels.shape)} "
                         f"and {tuple(probabilities.shape)}")
    if not 0 <= step < T:
        raise ValueError(f"step must be in [0, {T - 1}], got {step}")
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
