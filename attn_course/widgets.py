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
from .viz import attention_heatmap, draw_box, draw_trajectory, show_image


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


def _check_range(name: str, value, low, high) -> None:
    """A clear error unless ``low <= value <= high`` (a slider's range)."""
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value!r}")


def _image_batch(images) -> torch.Tensor:
    """``images`` as a tensor, checked to be a non-empty batch (N, H, W) or (N, C, H, W)."""
    images = torch.as_tensor(images)
    if images.dim() not in (3, 4) or len(images) == 0:
        raise ValueError(f"expected a non-empty batch of images (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    return images


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
    images = _image_batch(images)
    _check_range("size", size, 4, 32)
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
    _check_range("x", x, -1.0, 1.0)
    _check_range("y", y, -1.0, 1.0)
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
    images = _image_batch(images)
    _check_range("glimpse_size", glimpse_size, 4, 16)
    _check_range("num_scales", num_scales, 1, 4)
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
    if image is not None:
        _as_chw(image)  # a bad image fails here, not at the first redraw
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
    if len(axes) != 2:
        raise ValueError(f"axes must be two axes (the path, the probabilities), got {len(axes)}")
    _check_range("glimpse_size", glimpse_size, 1, 4 * max(image.shape[1:]))
    _check_range("num_scales", num_scales, 1, 8)
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


# --------------------------------------------------------------------------- chapter 2: DRAW


WRITE_COLOR, READ_COLOR = "#d62728", "#2ca02c"


def draw_window(ax, window, N: int, color: str = WRITE_COLOR):
    """A DRAW attention window (g_X, g_Y, delta, sigma^2, gamma) as its N x N grid's square on an image.

    As in Gregor et al. (2015, figure 1), the border's width shows the focal precision:
    the wider the Gaussians (sigma), the thicker the line. Returns the patch.
    """
    from .draw import window_box

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
    from .draw import Window, filterbank, grid_points, read, write

    x = _as_chw(image)[0]
    B, A = x.shape
    _check_positive(delta=delta, sigma2=sigma2, gamma=gamma)
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
    show_image(axes[3], patch, f"read: gamma F_Y x F_X^T")
    # (1/gamma) F_Y^T patch F_X spreads each value over a Gaussian blob whose weights sum
    # to 1 along each axis, so the written image is faint: show it on its own scale
    gain = 1.0 / max(float(back.max()), 1e-8)
    show_image(axes[4], back * gain, f"written back (x {gain:.0f} to show)" if gain > 1.5 else "written back")
    fig.tight_layout()
    return fig


def filterbank_explorer(images, N: int = 5) -> FigureWidget:
    """Sliders for DRAW's filterbank: centre (g_X, g_Y), stride delta, variance sigma^2, intensity gamma, N, image."""
    images = _image_batch(images)
    _check_range("N", N, 2, 12)
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
        raise ValueError(f"expected windows of shape ({T}, 5), one per step, got {tuple(torch.as_tensor(windows).shape)}")
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
    from .draw import DRAW

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


# --------------------------------------------------------------------------- chapter 5: the Transformer

ATTENTION_KINDS = {"encoder": "encoder self-attention", "decoder": "decoder self-attention (causal)",
                   "cross": "cross-attention (decoder -> encoder)"}


def _attention_labels(kind: str, source: str, output: str) -> tuple[list[str], list[str]]:
    """Row and column labels of one attention matrix: queries down, keys across."""
    predicted = list(output) + ["</s>"]
    if kind == "encoder":
        return list(source), list(source)
    if kind == "decoder":
        return predicted, ["<s>"] + list(output)
    return predicted, list(source)


def _kind_weights(maps, kind: str) -> torch.Tensor:
    """One example's ``maps[kind]`` (L, h, rows, cols), checked."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    if kind not in maps:
        raise ValueError(f"maps has no {kind!r} weights; it has: {', '.join(map(str, maps))}")
    weights = torch.as_tensor(maps[kind])
    if weights.dim() != 4 or 0 in weights.shape[:2]:
        raise ValueError(f"expected {kind} weights of shape (L, h, rows, cols) with L, h >= 1, got "
                         f"{tuple(weights.shape)}")
    return weights


def _head_matrix(maps, kind: str, layer: int, head: int) -> torch.Tensor:
    """One example's weights (rows, cols) for ``kind``, ``layer`` and ``head`` (-1: the mean over heads)."""
    weights = _kind_weights(maps, kind)
    if not 0 <= layer < weights.shape[0]:
        raise ValueError(f"layer must be in [0, {weights.shape[0] - 1}], got {layer}")
    if not -1 <= head < weights.shape[1]:
        raise ValueError(f"head must be -1 (mean) or in [0, {weights.shape[1] - 1}], got {head}")
    return weights[layer].mean(0) if head == -1 else weights[layer, head]


def transformer_attention_figure(maps, source: str, output: str, kind: str = "cross", layer: int = 0,
                                 head: int = -1) -> plt.Figure:
    """One attention matrix of one example: ``maps[kind]`` (L, h, rows, cols) with characters as labels.

    ``maps`` holds ``encoder``, ``decoder`` and ``cross`` weights of one example (see
    :func:`attn_course.transformer.attention_maps`); row t of ``decoder`` and ``cross`` is the
    query that predicted output character t; ``head`` -1 averages over the heads.
    """
    from .viz import alignment_matrix

    matrix = _head_matrix(maps, kind, layer, head)
    rows, cols = _attention_labels(kind, source, output)
    rows, cols = rows[:matrix.shape[0]], cols[:matrix.shape[1]]
    fig, ax = plt.subplots(figsize=(0.22 * len(cols) + 2.2, 0.22 * len(rows) + 1.6))
    image = alignment_matrix(ax, matrix[:len(rows), :len(cols)], rows, cols)
    ax.tick_params(labelsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04)
    which = "mean over heads" if head == -1 else f"head {head + 1}"
    ax.set_title(f"{ATTENTION_KINDS[kind]}, layer {layer + 1}, {which}\n{source!r} -> {output!r}", fontsize=9)
    ax.set_xlabel("key (attended to)", fontsize=8)
    ax.set_ylabel("query", fontsize=8)
    fig.tight_layout()
    return fig


def attention_grid_figure(maps, source: str, output: str, kind: str = "cross") -> plt.Figure:
    """Every layer (rows) and head (columns) of one attention kind for one example: the static view."""
    weights = _kind_weights(maps, kind).float().cpu()
    layers, heads = weights.shape[:2]
    rows, cols = _attention_labels(kind, source, output)
    panel = 2.3 * max(len(rows) / max(len(cols), 1), 0.7)  # panel height: square-ish, never flat
    fig, axes = plt.subplots(layers, heads, figsize=(2.3 * heads + 0.6, panel * layers + 0.9), squeeze=False)
    for l in range(layers):
        for h in range(heads):
            ax = axes[l, h]
            ax.imshow(weights[l, h, :len(rows), :len(cols)].numpy(), cmap="viridis", vmin=0.0, aspect="auto")
            ax.set_xticks(range(len(cols)), labels=cols, fontsize=5)
            ax.set_yticks(range(len(rows)), labels=rows, fontsize=5)
            ax.set_title(f"layer {l + 1}, head {h + 1}", fontsize=8)
    fig.suptitle(f"{ATTENTION_KINDS[kind]}: {source!r} -> {output!r}", fontsize=10)
    fig.tight_layout()
    return fig


def _message_figure(message: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.0, 0.5, message, fontsize=10, color="#d62728", va="center", wrap=True)
    return fig


def date_attention_figure(model, text: str, kind: str = "cross", layer: int = 0, head: int = -1,
                          max_len: int = 11) -> plt.Figure:
    """Run ``model`` on ``text`` (greedy decoding) and draw one of its attention matrices.

    A string with characters outside the vocabulary gives a figure that says so (the
    widget must not break while someone is typing).
    """
    from .data.sequences import decode, encode_batch
    from .transformer import attention_maps

    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    text = text.strip()
    if not text:
        return _message_figure("type a date, e.g. 24 November 2026")
    try:
        src = encode_batch([text], device=next(model.parameters()).device)
    except ValueError as error:
        return _message_figure(str(error))
    maps = attention_maps(model, src, max_len)
    one = {k: maps[k][:, 0].cpu() for k in ATTENTION_KINDS}
    return transformer_attention_figure(one, text, decode(maps["output"][0]), kind, layer, head)


def date_explorer(model, text: str = "Tuesday, 24 November 2026", max_len: int = 11) -> FigureWidget:
    """Type a date; see the model's output and any attention matrix (kind, layer, head)."""
    from .transformer import Transformer

    if not isinstance(model, Transformer):
        raise TypeError(f"model must be a Transformer, got {type(model).__name__}")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    config = model.config
    layers = max(config.encoder_layers, config.decoder_layers)
    style = {"description_width": "initial"}

    def draw(text, kind, layer, head):
        count = config.encoder_layers if kind == "encoder" else config.decoder_layers
        return date_attention_figure(model, text, kind, min(layer, count - 1), head, max_len)

    return interactive_figure(
        draw,
        text=W.Text(value=text, description="date", continuous_update=False, style=style),
        kind=W.Dropdown(options=[(v, k) for k, v in ATTENTION_KINDS.items()], value="cross", description="attention"),
        layer=W.IntSlider(0, 0, layers - 1, description="layer (0 = first)", style=style),
        head=W.Dropdown(options=[("mean over heads", -1)] + [(f"head {h + 1}", h) for h in range(config.heads)],
                        value=-1, description="head"),
    )


def positional_encoding_figure(d_model: int = 64, position: int = 10, offset: int = 5, max_len: int = 64) -> plt.Figure:
    """The sinusoidal encoding PE (positions x dimensions) with rows pos and pos + k marked, and the
    similarity PE(pos) . PE(j) over j: it depends on j - pos only, through the rotations M_k."""
    from .transformer import pe_shift_matrix, positional_encoding

    if d_model < 2 or d_model % 2:
        raise ValueError(f"d_model must be a positive even number (sin and cos pairs), got {d_model}")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if not 0 <= position < max_len or not 0 <= position + offset < max_len:
        raise ValueError(f"position and position + offset must lie in [0, {max_len - 1}], got {position} and "
                         f"{position + offset}")
    pe = positional_encoding(max_len, d_model)
    M = pe_shift_matrix(offset, d_model)
    error = float((M @ pe[position] - pe[position + offset]).abs().max())
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.4), gridspec_kw={"width_ratios": [1.3, 1]})
    image = left.imshow(pe.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    for row, colour in ((position, "#2ca02c"), (position + offset, "#ff7f0e")):
        left.axhline(row, color=colour, linewidth=1.5)
    left.set_xlabel("dimension (even: sin, odd: cos)")
    left.set_ylabel("position")
    left.set_title(f"PE, d_model = {d_model}", fontsize=10)
    fig.colorbar(image, ax=left, fraction=0.04)
    similarity = pe @ pe[position]
    right.plot(range(max_len), similarity.numpy(), "-", color="#1f77b4")
    right.plot([position], [float(similarity[position])], "o", color="#2ca02c", label=f"pos = {position}")
    right.plot([position + offset], [float(similarity[position + offset])], "o", color="#ff7f0e",
               label=f"pos + k = {position + offset}")
    right.set_xlabel("position j")
    right.set_title(f"PE(pos) . PE(j);  |M_k PE(pos) - PE(pos+k)| = {error:.1e}", fontsize=9)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def positional_encoding_explorer(max_len: int = 64) -> FigureWidget:
    """Sliders for d_model, the position and the offset k of the sinusoidal encoding."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    style = {"description_width": "initial"}
    return interactive_figure(
        lambda d_model, position, offset: positional_encoding_figure(d_model, position,
                                                                     min(offset, max_len - 1 - position), max_len),
        d_model=W.IntSlider(64, 8, 256, step=8, description="d_model", style=style),
        position=W.IntSlider(10, 0, max_len - 1, description="pos", style=style),
        offset=W.IntSlider(5, 0, max_len - 1, description="offset k", style=style),
    )


def softmax_scaling_figure(d_k: int = 64, temperature: float = 1.0, num_keys: int = 16, seed: int = 0) -> plt.Figure:
    """Softmax over the scores of one query and ``num_keys`` random keys, with and without the 1/sqrt(d_k)
    of (5.1), and how entropy and gradient (the Jacobian's norm) change with d_k at this temperature."""
    from .transformer import softmax_statistics

    if d_k < 1:
        raise ValueError(f"d_k must be positive, got {d_k}")
    _check_positive(temperature=temperature)
    if num_keys < 1:
        raise ValueError(f"num_keys must be positive, got {num_keys}")
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(d_k, generator=g), torch.randn(num_keys, d_k, generator=g)
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(9.5, 3.2))
    width = 0.4
    for shift, scaled, colour in ((-width / 2, True, "#1f77b4"), (width / 2, False, "#d62728")):
        p = ((k @ q) / (math.sqrt(d_k) if scaled else 1.0) / temperature).softmax(0)
        entropy = float(-(p * p.clamp_min(1e-30).log()).sum())
        bars.bar([i + shift for i in range(num_keys)], p.tolist(), width=width, color=colour,
                 label=f"{'q.k / sqrt(d_k)' if scaled else 'q.k'}: entropy {entropy:.2f}")
    bars.set_ylim(0, 1)
    bars.set_xlabel("key")
    bars.set_ylabel("attention weight")
    bars.set_title(f"d_k = {d_k}, temperature {temperature:g}", fontsize=10)
    bars.legend(fontsize=7, loc="upper left")
    dims = [2 ** i for i in range(11)]
    for scaled, colour in ((True, "#1f77b4"), (False, "#d62728")):
        stats = [softmax_statistics(d, scaled, temperature, num_keys, samples=64, seed=seed) for d in dims]
        name = "scaled" if scaled else "unscaled"
        curves.plot(dims, [s["entropy"] for s in stats], "-", color=colour, label=f"entropy, {name}")
        curves.plot(dims, [s["gradient_norm"] for s in stats], "--", color=colour, label=f"|Jacobian|, {name}")
    curves.axvline(d_k, color="gray", linewidth=1)
    curves.axhline(math.log(num_keys), color="gray", linewidth=0.8, linestyle=":")
    curves.set_xscale("log", base=2)
    curves.set_xlabel("d_k")
    curves.set_title("softmax entropy (nats) and gradient size", fontsize=10)
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def softmax_scaling_explorer() -> FigureWidget:
    """Sliders for d_k and a temperature: watch the unscaled softmax saturate and its gradient vanish."""
    style = {"description_width": "initial"}
    return interactive_figure(
        softmax_scaling_figure,
        d_k=W.IntSlider(64, 1, 1024, description="d_k", style=style),
        temperature=W.FloatLogSlider(1.0, base=10, min=-1, max=1, step=0.05, description="temperature",
                                     style=style),
    )


# --------------------------------------------------------------------------- chapter 3: Show, Attend and Tell


def caption_with_attention(model, images, beam_size: int = 1, hard: str = "argmax") -> list[dict]:
    """Caption ``images`` (B, 3, S, S) and keep, per image, what each emitted word looked at.

    Returns one dict per image: ``words`` (the caption's words, then "<eos>"), ``alpha``
    (len(words), L), ``beta`` (len(words),) and ``s`` (len(words),), the location the hard
    model read (for soft attention, the strongest one).
    """
    from .data.captions import EOS, PAD
    from .data.scenes import VOCAB
    from .show_attend_tell import ShowAttendTell, caption

    if not isinstance(model, ShowAttendTell):
        raise TypeError(f"model must be a ShowAttendTell captioner, got {type(model).__name__}")
    images = _image_batch(images)
    device = next(model.parameters()).device
    out = caption(model, images.to(device), beam_size=beam_size, hard=hard)
    results = []
    for b, row in enumerate(out["tokens"].tolist()):
        n = next((t + 1 for t, token in enumerate(row) if token in (EOS, PAD)), len(row))
        words = [VOCAB.itos[token] if token != EOS else "<eos>" for token in row[:n] if token != PAD]
        n = len(words)
        results.append({"words": words, "alpha": out["alpha"][b, :n].cpu(), "beta": out["beta"][b, :n].cpu(),
                        "s": out["s"][b, :n].cpu()})
    return results


def draw_word_attention(ax, image, word: str, alpha, beta=None, s=None, mode: str = "soft") -> None:
    """One word of a caption over its image: soft, the attention map alpha_t (L,) upsampled; hard, the read cell."""
    if mode not in ("soft", "hard"):
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    image = _as_chw(image)
    S = image.shape[-1]
    alpha = torch.as_tensor(alpha)
    G = math.isqrt(alpha.numel())
    if alpha.dim() != 1 or G == 0 or G * G != len(alpha):
        raise ValueError(f"alpha must be one word's weights (L,) over a square grid, got {tuple(alpha.shape)}")
    if s is not None and not 0 <= int(s) < len(alpha):
        raise ValueError(f"s must be a location in [0, {len(alpha) - 1}], got {int(s)}")
    title = word if beta is None else f"{word}  (β={float(beta):.2f})"
    if mode == "soft":
        attention_heatmap(ax, image.permute(1, 2, 0), alpha.reshape(G, G), alpha=0.6)
    elif mode == "hard":
        show_image(ax, image.permute(1, 2, 0))
        if s is not None:
            cell = S / G
            row, col = divmod(int(s), G)
            draw_box(ax, (col * cell - 0.5, row * cell - 0.5, (col + 1) * cell - 0.5, (row + 1) * cell - 0.5),
                     color="#ff7f0e", linewidth=2.5)
    else:
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def caption_attention_figure(image, result: dict, mode: str = "soft", ncols: int = 9) -> plt.Figure:
    """The paper's figure: the image, then one panel per word showing where the model looked for it.

    ``result`` is one entry of :func:`caption_with_attention`.
    """
    missing = {"words", "alpha", "beta", "s"} - set(result)
    if missing:
        raise ValueError(f"result lacks {sorted(missing)} (pass one entry of caption_with_attention)")
    if mode not in ("soft", "hard"):
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    words = result["words"]
    panels = len(words) + 1
    ncols = min(ncols, panels)
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.55 * ncols, 1.95 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    show_image(axes.flat[0], _as_chw(image).permute(1, 2, 0), "image")
    axes.flat[0].axis("off")
    for t, word in enumerate(words):
        draw_word_attention(axes.flat[t + 1], image, word, result["alpha"][t], result["beta"][t], result["s"][t], mode)
    fig.suptitle(" ".join(w for w in words if w != "<eos>"), fontsize=11)
    fig.tight_layout()
    return fig


def compose_scene(objects: list[tuple[str, str, str, int, int]], image_size: int = 64) -> torch.Tensor:
    """An image (3, S, S) with up to three objects given as (size, colour, shape, column, row) of their centres."""
    from .data.scenes import COLOURS, MAX_OBJECTS, SHAPES, SIZES, Layout, render

    if image_size < 24:
        raise ValueError(f"image_size must be at least 24 pixels, got {image_size}")
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    columns = {name: [-1] * MAX_OBJECTS for name in ("shape", "colour", "size", "x", "y")}
    for k, spec in enumerate(objects):
        if len(spec) != 5:
            raise ValueError(f"objects[{k}] must be (size, colour, shape, column, row), got {spec!r}")
        size, colour, shape, x, y = spec
        for name, value, choices in (("size", size, SIZES), ("colour", colour, COLOURS), ("shape", shape, SHAPES)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
            columns[name][k] = choices.index(value)
        if not (0 <= x < image_size and 0 <= y < image_size):
            raise ValueError(f"object centres must lie inside the {image_size} x {image_size} image, got ({x}, {y})")
        columns["x"][k], columns["y"][k] = int(x), int(y)
    layout = Layout(torch.tensor([len(objects)]), *(torch.tensor([columns[n]]) for n in ("shape", "colour", "size",
                                                                                         "x", "y")))
    images, _ = render(layout, image_size)
    return images[0]


def scene_explorer(models: dict, images) -> FigureWidget:
    """Pick a test scene, or compose one, and see each model's caption and where it looked for every word.

    ``models`` maps a name ("soft", "hard") to a trained captioner; ``images`` (N, 3, S, S)
    are the scenes to pick from.
    """
    from .data.scenes import COLOURS, SHAPES, SIZES

    if not models:
        raise ValueError("models must name at least one captioner, e.g. {'soft': model}")
    images = _image_batch(images)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be RGB scenes (N, 3, S, S), got {tuple(images.shape)}")
    S = images.shape[-1]

    def draw(model, scene, beam_size, compose, size_1, colour_1, shape_1, x_1, y_1, second, size_2, colour_2, shape_2,
             x_2, y_2):
        if compose:
            objects = [(size_1, colour_1, shape_1, x_1, y_1)]
            if second:
                objects.append((size_2, colour_2, shape_2, x_2, y_2))
            image = compose_scene(objects, S)
        else:
            image = images[scene]
        captioner = models[model]
        result = caption_with_attention(captioner, image[None], beam_size)[0]
        return caption_attention_figure(image, result, "hard" if captioner.config.attention == "hard" else "soft")

    position = dict(min=6, max=S - 7, continuous_update=False)
    return interactive_figure(
        draw,
        model=W.Dropdown(options=list(models), description="attention"),
        scene=W.IntSlider(0, 0, len(images) - 1, description="test scene", continuous_update=False),
        beam_size=W.IntSlider(1, 1, 5, description="beam size", continuous_update=False),
        compose=W.Checkbox(False, description="compose a scene instead"),
        size_1=W.Dropdown(options=SIZES, value="large", description="object 1"),
        colour_1=W.Dropdown(options=COLOURS, value="red", description="colour"),
        shape_1=W.Dropdown(options=SHAPES, value="circle", description="shape"),
        x_1=W.IntSlider(value=S // 3, description="column", **position),
        y_1=W.IntSlider(value=S // 3, description="row", **position),
        second=W.Checkbox(True, description="object 2"),
        size_2=W.Dropdown(options=SIZES, value="small", description="size"),
        colour_2=W.Dropdown(options=COLOURS, value="blue", description="colour"),
        shape_2=W.Dropdown(options=SHAPES, value="square", description="shape"),
        x_2=W.IntSlider(value=2 * S // 3, description="column", **position),
        y_2=W.IntSlider(value=2 * S // 3, description="row", **position),
    )


# --------------------------------------------------------------------------- chapter 4: reading text lines


def render_line(text: str, font: str = "DejaVu Sans", noise: float = 0.0, rotation: float = 0.0, blur: float = 0.0,
                seed: int = 0) -> dict:
    """One 32 x 100 text line of ``text`` in ``font``: centred, rotated by ``rotation`` degrees, with pixel
    ``noise`` (std) and ``blur`` (sigma in pixels). Returns render's dict (images, centres, shown, tokens)."""
    from dataclasses import replace

    from .data.text_lines import FONTS, Style, render

    if font not in FONTS:
        raise ValueError(f"unknown font {font!r}; choose one of: {', '.join(FONTS)}")
    for name, value in (("noise", noise), ("blur", blur)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if not math.isfinite(rotation):
        raise ValueError(f"rotation must be finite (degrees), got {rotation!r}")
    style = replace(Style.clean(), noise=(noise, noise), blur=(blur, blur))
    fonts = torch.tensor([list(FONTS).index(font)])
    out = render([text.lower()], fonts, torch.Generator().manual_seed(seed), style, angles=torch.tensor([rotation]))
    out["shown"] = [text.lower()]
    return out


def reading_figure(image, result: dict, centres=None, text: str | None = None) -> plt.Figure:
    """A text line with the model's reading: the image with the attended position of each character, and the
    alignment matrix (characters x columns) with the true centres marked."""
    from .r2am import column_centres

    image = _text_line(image)[0, 0].cpu()
    image = image.float() / 255 if image.dtype == torch.uint8 else image
    missing = {"text", "alpha"} - set(result)
    if missing:
        raise ValueError(f"result lacks {sorted(missing)} (pass the output of read_line)")
    labels = result.get("labels") or list(result["text"]) + ["EOS"]
    steps = min(len(labels), len(result["alpha"]))  # the emitted characters and EOS
    labels = labels[:steps]
    alpha = result["alpha"][:steps].cpu()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 2.4 + 0.22 * steps),
                                      gridspec_kw={"height_ratios": [1.0, 0.3 + 0.12 * steps]})
    top.imshow(image, cmap="gray", vmin=0, vmax=1, extent=(0, 100, 32, 0), aspect="auto")
    x = column_centres(alpha.shape[-1])
    looked = (alpha * x).sum(-1)
    for label, position in zip(labels, looked.tolist()):
        if label != "EOS":
            top.axvline(position, color="#ff7f0e", lw=1, alpha=0.8)
            top.text(position, -1.5, label, color="#ff7f0e", ha="center", fontsize=9)
    title = f"read: {result['text']!r}" + (f"   (truth: {text!r})" if text is not None else "")
    top.set_title(title, fontsize=10, pad=14)
    top.set_xlim(0, 100)
    top.axis("off")
    bottom.imshow(alpha, cmap="viridis", aspect="auto", extent=(0, 100, steps - 0.5, -0.5), vmin=0)
    bottom.set_yticks(range(steps), labels=labels, fontsize=8)
    bottom.set_xlabel("pixels from the left (columns of 4 pixels)", fontsize=8)
    if centres is not None:
        truth = torch.as_tensor(centres).cpu()
        for t, c in enumerate(truth.tolist()[:steps]):
            if not math.isnan(c):
                bottom.plot([c], [t], marker="o", mfc="none", mec="#d62728", ms=6)
    fig.tight_layout()
    return fig


def _text_line(image) -> torch.Tensor:
    """One text line, (32, 100), (1, 32, 100) or (1, 1, 32, 100), as (1, 1, 32, 100); a clear error otherwise."""
    from .data.text_lines import HEIGHT, WIDTH

    line = torch.as_tensor(image)
    if line.shape not in ((HEIGHT, WIDTH), (1, HEIGHT, WIDTH), (1, 1, HEIGHT, WIDTH)):
        raise ValueError(f"image must be one text line of shape ({HEIGHT}, {WIDTH}) or (1, {HEIGHT}, {WIDTH}), got "
                         f"{tuple(line.shape)} (resize or crop the line to {HEIGHT} x {WIDTH} first)")
    return line.reshape(1, 1, HEIGHT, WIDTH)


def read_line(model, image, polarity: str = "auto") -> dict:
    """The model's reading of one line (1, 32, 100) in [0, 1]: ``text``, ``alpha`` (steps, L) and ``labels``, one per
    step up to and including EOS (a special token other than EOS shows as "?").

    ``polarity``: "auto" (default) reads light text on dark and ordinary dark text on light alike (a line
    whose median pixel is above 1/2 is inverted first); "light_on_dark" or "dark_on_light" say which it is.
    """
    from .data.text_lines import ALPHABET, EOS
    from .r2am import R2AM, read

    if not isinstance(model, R2AM):
        raise TypeError(f"model must be an R2AM reader, got {type(model).__name__}")
    device = next(model.parameters()).device
    out = read(model, _text_line(image).to(device), polarity=polarity)
    labels = []
    for token in out["tokens"][0].tolist():
        labels.append("EOS" if token == EOS else ALPHABET[token - 3] if token >= 3 else "?")
        if token == EOS:
            break
    return {"text": out["texts"][0], "alpha": out["alpha"][0, :len(labels)].cpu(), "labels": labels}


def text_line_explorer(models: dict, text: str = "attention") -> FigureWidget:
    """Type a string, pick a font, noise, blur and rotation; see the line, the model's reading and where it looked
    for each character (the true centres as red circles). ``models`` maps names to trained R2AM models."""
    from .data.text_lines import FONTS, encode

    if not models:
        raise ValueError("models must name at least one R2AM reader, e.g. {'recurrent': model}")
    style = {"description_width": "initial"}

    def draw(model, text, font, noise, blur, rotation):
        text = text.strip()
        try:
            encode(text)
        except ValueError as error:
            return _message_figure(str(error))
        line = render_line(text, font, noise, rotation, blur)
        result = read_line(models[model], line["images"][0])
        return reading_figure(line["images"][0], result, line["centres"][0], text.lower())

    return interactive_figure(
        draw,
        model=W.Dropdown(options=list(models), description="CNN"),
        text=W.Text(value=text, description="text (a-z, 0-9)", continuous_update=False, style=style),
        font=W.Dropdown(options=list(FONTS), value="DejaVu Sans", description="font"),
        noise=W.FloatSlider(0.0, min=0.0, max=0.3, step=0.02, description="noise", continuous_update=False),
        blur=W.FloatSlider(0.0, min=0.0, max=2.0, step=0.1, description="blur", continuous_update=False),
        rotation=W.FloatSlider(0.0, min=-10.0, max=10.0, step=0.5, description="rotation (degrees)",
                               continuous_update=False, style=style),
    )


def receptive_field_figure(T: int = 2, column: int = 12, text: str = "recursion") -> plt.Figure:
    """The input pixels that column ``column`` of an R2AM encoder with T recursion steps can see (4.5),
    over a rendered line: the formula's span and, shaded, the gradient of the column with respect to the input."""
    from .r2am import R2AM, R2AMConfig, column_centres, receptive_field

    if not 0 <= T <= 6:
        raise ValueError(f"T must lie in [0, 6], got {T}")
    columns = R2AMConfig().columns
    if not 0 <= column < columns:
        raise ValueError(f"column must lie in [0, {columns - 1}] (the encoder's columns), got {column}")
    torch.manual_seed(0)
    model = R2AM(R2AMConfig(T=T, c1=8, c2=8, D=16)).eval()
    line = render_line(text)["images"]
    x = line.clone().requires_grad_(True)
    model.encoder(x)[0, column].abs().sum().backward()
    influence = x.grad[0, 0].abs().sum(0)
    r = receptive_field(T)
    centre = float(column_centres()[column])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 3.0), sharex=True,
                                      gridspec_kw={"height_ratios": [1.0, 0.7]})
    top.imshow(line[0, 0], cmap="gray", vmin=0, vmax=1, extent=(0, 100, 32, 0), aspect="auto")
    top.axvspan(centre - r / 2, centre + r / 2, color="#ff7f0e", alpha=0.3)
    top.set_title(f"T = {T}: column {column} sees {r} pixels (25 + 12 T; fewer at the edges, where padding stands "
                  f"in), {2 * (T + 1)} convolutions in the blocks", fontsize=9)
    top.axis("off")
    bottom.fill_between(range(100), influence.numpy(), color="#1f77b4", step="mid")
    bottom.axvline(centre - r / 2, color="#ff7f0e")
    bottom.axvline(centre + r / 2, color="#ff7f0e")
    bottom.set_xlim(0, 100)
    bottom.set_yticks([])
    bottom.set_xlabel("input column (pixels); blue: |d a_i / d x| summed over rows (an untrained encoder)",
                      fontsize=8)
    fig.tight_layout()
    return fig


def receptive_field_explorer() -> FigureWidget:
    """A recursion-depth slider: how far one column of the encoder sees."""
    return interactive_figure(
        receptive_field_figure,
        T=W.IntSlider(2, 0, 6, description="recursion T", continuous_update=False),
        column=W.IntSlider(12, 0, 24, description="column", continuous_update=False),
        text=W.Text(value="recursion", description="text", continuous_update=False),
    )
