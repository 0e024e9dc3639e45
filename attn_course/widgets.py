"""Widgets: pure figure functions, wrapped in sliders.

The pattern every chapter follows: a *pure* function maps slider values to a
matplotlib figure (tests call it directly, and the book shows its output as a static
figure), and :func:`interactive_figure` wraps it in ipywidgets controls that redraw
it in a live kernel. The widget keeps the last figure it drew in ``widget.figure``
so that tests can drive the sliders and check what changed.
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
from .viz import draw_box, show_image


class FigureWidget(W.VBox):
    """Controls above an output area that shows ``fn(**values)``; ``figure`` is the last one drawn."""

    def __init__(self, fn: Callable[..., plt.Figure], controls: dict[str, W.ValueWidget]):
        self.fn = fn
        self.controls = controls
        self.output = W.Output()
        self.figure: plt.Figure | None = None
        self.last_update_seconds: float | None = None
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
        plt.close(figure)
        self.figure = figure
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
