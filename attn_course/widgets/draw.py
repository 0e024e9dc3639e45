"""Widgets of chapter 2, DRAW: the attention window, the filterbank's read and write, and generation step by step.
Paper: Gregor, Danihelka, Graves, Rezende and Wierstra (2015), DRAW: A Recurrent Neural Network for Image Generation."""

from __future__ import annotations

import math

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from ..draw import DRAW, Window, filterbank, grid_points, read, window_box, write
from ..viz import draw_box, show_image
from . import FigureWidget, as_chw, check_positive, check_range, image_batch, interactive_figure

WRITE_COLOR, READ_COLOR = "#d62728", "#2ca02c"


def draw_window(ax, window, N: int, color: str = WRITE_COLOR):
    """A DRAW attention window (g_X, g_Y, delta, sigma^2, gamma) as its N x N grid's square on an image.

    As in Gregor et al. (2015, figure 1), the border's width shows the focal precision:
    the wider the Gaussians (sigma), the thicker the line. Returns the patch.
    """
    window = torch.as_tensor(window, dtype=torch.float32).cpu()
    if window.shape != (5,):
        raise ValueError(f"expected a window (g_X, g_Y, delta, sigma2, gamma) of shape (5,), got {tuple(window.shape)}")
    if not torch.isfinite(window).all() or not (window[2:] > 0).all():
        raise ValueError(f"window must be finite, with delta, sigma2 and gamma positive, got {window.tolist()}")
    if N < 1:
        raise ValueError(f"N must be positive, got {N}")
    linewidth = 0.8 + min(math.sqrt(float(window[3])), 6.0) / 2
    return draw_box(ax, window_box(window, N), color=color, linewidth=linewidth)


def filterbank_figure(image, g_X: float, g_Y: float, delta: float, sigma2: float, gamma: float = 1.0,
                      N: int = 5) -> plt.Figure:
    """DRAW's read and write by hand (chapter 2, equations (2.7)-(2.11)).

    Five panels: the grid centres (mu_X^i, mu_Y^j) over the image; F_X (N x A) and
    F_Y (N x B); the read patch gamma F_Y x F_X^T; and that patch written back,
    (1/gamma) F_Y^T patch F_X. Parameters in pixels, counted from 1 as in the paper.
    """
    x = as_chw(image)[0]
    B, A = x.shape
    check_positive(delta=delta, sigma2=sigma2, gamma=gamma)
    if not (math.isfinite(g_X) and math.isfinite(g_Y)):
        raise ValueError(f"g_X and g_Y must be finite, got {g_X} and {g_Y}")
    if N < 2:
        raise ValueError(f"N must be at least 2 (the grid's stride divides by N - 1), got {N}")
    window = Window(*(torch.tensor([float(v)]) for v in (g_X, g_Y, delta, sigma2, gamma)))
    F_X, F_Y = filterbank(window.g_X, window.g_Y, window.delta, window.sigma2, N, A, B)
    patch = read(x[None], x[None], F_X, F_Y, window.gamma)[0, 0]
    back = write(patch[None], F_X, F_Y, window.gamma)[0]
    fig, axes = plt.subplots(1, 5, figsize=(14, 3.0), gridspec_kw={"width_ratios": [1, 1.3, 1.3, 1, 1]})
    show_image(axes[0], x, f"the {N}x{N} grid over x")
    xs, ys = grid_points(window, N)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    with_limits = axes[0].get_xlim(), axes[0].get_ylim()
    axes[0].plot(X.flatten().numpy(), Y.flatten().numpy(), "+", color=READ_COLOR, markersize=6)
    axes[0].set_xlim(*with_limits[0])
    axes[0].set_ylim(*with_limits[1])
    draw_window(axes[0], torch.tensor([g_X, g_Y, delta, sigma2, gamma]), N, color=READ_COLOR)
    for ax, matrix, name, size in ((axes[1], F_X, "F_X", "A"), (axes[2], F_Y, "F_Y", "B")):
        ax.imshow(matrix[0].numpy(), cmap="viridis", aspect="auto", interpolation="nearest", vmin=0)
        ax.set_title(f"{name} ({N} x {size}): rows sum to 1", fontsize=9)
        ax.set_xlabel("pixel", fontsize=8)
        ax.set_ylabel("grid row", fontsize=8)
    show_image(axes[3], patch, "read: gamma F_Y x F_X^T")
    # (1/gamma) F_Y^T patch F_X spreads each value over a Gaussian blob whose weights sum
    # to 1 along each axis, so the written image is faint: show it on its own scale
    gain = 1.0 / max(float(back.max()), 1e-8)
    show_image(axes[4], back * gain, f"written back (x {gain:.0f} to show)" if gain > 1.5 else "written back")
    fig.tight_layout()
    return fig


def filterbank_explorer(images, N: int = 5) -> FigureWidget:
    """Sliders for DRAW's filterbank: centre (g_X, g_Y), stride delta, variance sigma^2, intensity gamma, N, image."""
    images = image_batch(images)
    check_range("N", N, 2, 12)
    B, A = images.shape[-2:]
    style = {"description_width": "initial"}
    return interactive_figure(
        lambda index, g_X, g_Y, delta, sigma2, gamma, N: filterbank_figure(images[index], g_X, g_Y, delta, sigma2,
                                                                           gamma, N),
        index=W.IntSlider(0, 0, len(images) - 1, description="image", style=style),
        g_X=W.FloatSlider((A + 1) / 2, min=0.0, max=A + 1.0, step=0.5, description="g_X", style=style),
        g_Y=W.FloatSlider((B + 1) / 2, min=0.0, max=B + 1.0, step=0.5, description="g_Y", style=style),
        delta=W.FloatSlider(3.0, min=0.25, max=12.0, step=0.25, description="delta", style=style),
        sigma2=W.FloatLogSlider(1.0, base=10, min=-2, max=2, step=0.1, description="sigma^2", style=style),
        gamma=W.FloatSlider(1.0, min=0.1, max=3.0, step=0.1, description="gamma", style=style),
        N=W.IntSlider(N, min=2, max=12, description="N", style=style),
    )


def draw_generation_step(axes, canvases, step: int, windows=None, N: int = 5, initial=None) -> None:
    """Step ``step`` of one DRAW sample on two axes: the canvas sigmoid(c_t) with the write window,
    and what this step changed, sigmoid(c_t) - sigmoid(c_{t-1}) (red: ink added, blue: removed).

    ``canvases`` (T, B, A); ``windows`` (T, 5) or None (DRAW without attention); ``initial``
    (B, A), sigmoid(c_0), the canvas before step 1 (default 1/2 everywhere, c_0 = 0).
    """
    canvases = torch.as_tensor(canvases).float().cpu()
    if canvases.dim() != 3:
        raise ValueError(f"expected canvases of shape (T, B, A), got {tuple(canvases.shape)}")
    T = len(canvases)
    if not 0 <= step < T:
        raise ValueError(f"step must be in [0, {T - 1}], got {step}")
    if windows is not None and torch.as_tensor(windows).shape != (T, 5):
        raise ValueError(f"expected windows of shape ({T}, 5), one per step, got "
                         f"{tuple(torch.as_tensor(windows).shape)}")
    if initial is not None and torch.as_tensor(initial).shape != canvases.shape[1:]:
        raise ValueError(f"expected initial of shape {tuple(canvases.shape[1:])} like a canvas, got "
                         f"{tuple(torch.as_tensor(initial).shape)}")
    left, right = axes
    show_image(left, canvases[step], f"canvas, t = {step + 1} of {T}")
    if windows is not None:
        draw_window(left, torch.as_tensor(windows)[step], N)
    if step > 0:
        before = canvases[step - 1]
    else:
        before = torch.full_like(canvases[0], 0.5) if initial is None else torch.as_tensor(initial).float().cpu()
    change = (canvases[step] - before).numpy()
    limit = max(float(abs(change).max()), 1e-3)
    right.imshow(change, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    right.set_xticks([])
    right.set_yticks([])
    right.set_title("what step t wrote", fontsize=9)


def generation_figure(canvases, step: int, windows=None, N: int = 5, initial=None) -> plt.Figure:
    """:func:`draw_generation_step` as a figure of its own."""
    fig, axes = plt.subplots(1, 2, figsize=(5.6, 2.9))
    try:
        draw_generation_step(axes, canvases, step, windows, N, initial)
    except ValueError:
        plt.close(fig)
        raise
    fig.tight_layout()
    return fig


def generation_stepper(model, num_seeds: int = 20) -> FigureWidget:
    """Step through a DRAW model's generation: pick the seed of z_1..z_T and the step t.

    Each seed's sample is generated once (T decoder steps) and kept, so moving the step
    slider costs no model call.
    """
    if not isinstance(model, DRAW):
        raise TypeError(f"model must be a DRAW model, got {type(model).__name__}")
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be positive, got {num_seeds}")
    config = model.config
    samples: dict[int, dict] = {}

    def sample(seed):
        if seed not in samples:
            out = model.generate(1, generator=torch.Generator().manual_seed(seed))
            samples[seed] = {k: v[:, 0].cpu() for k, v in out.items()}
        return samples[seed]

    def figure(seed, step):
        out = sample(seed)
        return generation_figure(out["canvases"], step - 1, out.get("write_windows"), config.write_N,
                                 initial=torch.sigmoid(model.c_0.detach()))

    style = {"description_width": "initial"}
    return interactive_figure(
        figure,
        seed=W.IntSlider(0, 0, num_seeds - 1, description="seed", style=style),
        step=W.IntSlider(config.T, 1, config.T, description="step t", style=style),
    )
