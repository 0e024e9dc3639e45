"""Widgets of chapter 0, What attention is: the glimpse of :func:`attn_course.attention.glimpse`.
No paper of its own: the crop (moved, zoomed and rotated) that the hard attention of chapters 1 and 2 builds on."""

from __future__ import annotations

import math

import ipywidgets as W
import matplotlib.pyplot as plt

from ..attention import glimpse, glimpse_corners
from ..viz import draw_box, show_image
from . import FigureWidget, as_chw, check_range, image_batch, interactive_figure


def glimpse_figure(image, x: float, y: float, scale: float, angle: float, size: int = 16) -> plt.Figure:
    """The image with the glimpse's box, and the glimpse the network receives (``angle`` in degrees)."""
    image = as_chw(image)
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
    images = image_batch(images)
    check_range("size", size, 4, 32)
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
