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

This module holds that core and the input checks the chapters share; each chapter's
widgets live in the module named after the paper module they illustrate:
:mod:`.glimpse` (chapter 0), :mod:`.ram` (1), :mod:`.draw` (2), :mod:`.show_attend_tell` (3),
:mod:`.r2am` (4), :mod:`.transformer` (5), :mod:`.vit` (6) and :mod:`.scale` (7).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display


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
    if not callable(fn):
        raise TypeError(f"fn must be a function of the controls' values, got {type(fn).__name__}")
    if not controls:
        raise ValueError("interactive_figure needs at least one control")
    return FigureWidget(fn, controls)


# --------------------------------------------------------------------------- input checks shared by the chapters


def as_chw(image) -> torch.Tensor:
    """``image`` (H, W) or (C, H, W) as a float tensor (C, H, W) (uint8 0..255 is scaled to [0, 1])."""
    image = torch.as_tensor(image)
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    image = image.float()
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3:
        raise ValueError(f"expected an image of shape (H, W) or (C, H, W), got {tuple(image.shape)}")
    return image


def check_range(name: str, value, low, high) -> None:
    """A clear error unless ``low <= value <= high`` (a slider's range)."""
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")


def check_positive(**values) -> None:
    """A clear error naming the first of ``values`` that is not positive and finite."""
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value!r}")


def image_batch(images) -> torch.Tensor:
    """``images`` as a tensor, checked to be a non-empty batch (N, H, W) or (N, C, H, W)."""
    images = torch.as_tensor(images)
    if images.dim() not in (3, 4) or len(images) == 0:
        raise ValueError(f"expected a non-empty batch of images (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    return images


def message_figure(message: str) -> plt.Figure:
    """A figure that only says ``message`` (in red): what a widget shows for input it cannot draw."""
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.0, 0.5, message, fontsize=10, color="#d62728", va="center", wrap=True)
    return fig
