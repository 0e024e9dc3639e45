"""Drawing primitives shared by the chapters.

Every function draws with matplotlib and returns what it drew on, so a notebook can
add to it. :func:`animate` (built on :func:`animation_html`) turns a frame-drawing
function, or a list of drawers, into a JavaScript animation (``to_jshtml``) that plays
in the built book with no kernel.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import animation
from matplotlib.patches import Polygon, Rectangle

matplotlib.rcParams["animation.embed_limit"] = 64.0  # MB of frames an animation may embed

GLIMPSE_COLOR = "#2ca02c"

# matplotlib's to_jshtml draws its buttons with Font Awesome icons loaded from a CDN;
# the book must load nothing from other hosts, so the icons become plain characters.
_BUTTON_GLYPHS = {
    "fa fa-minus": "&minus;",
    "fa fa-fast-backward": "|&#9664;&#9664;",
    "fa fa-step-backward": "&#9664;|",
    "fa fa-play fa-flip-horizontal": "&#9664;",
    "fa fa-pause": "&#10074;&#10074;",
    "fa fa-play": "&#9654;",
    "fa fa-step-forward": "|&#9654;",
    "fa fa-fast-forward": "&#9654;&#9654;|",
    "fa fa-plus": "+",
}


def to_numpy(image) -> np.ndarray:
    """A tensor or array image as a NumPy array ready for ``imshow``: (H, W) or (H, W, C)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu").float().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)  # (C, H, W) -> (H, W, C)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape (H, W), (C, H, W) or (H, W, C), got {image.shape}")
    return image


def show_image(ax, image, title: str | None = None, cmap: str = "gray"):
    """``imshow`` without axes ticks; grayscale images on a fixed [0, max] range."""
    array = to_numpy(image)
    if array.size == 0:
        raise ValueError(f"image must hold at least one pixel, got shape {array.shape}")
    vmax = 1.0 if array.max() <= 1.0 else float(array.max())
    ax.imshow(array, cmap=cmap if array.ndim == 2 else None, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


def image_grid(images: Sequence, nrow: int = 8, titles: Sequence[str] | None = None, size: float = 1.4,
               ax=None, pad: int = 1):
    """Images in a grid of ``nrow`` columns.

    Without ``ax``: one small axes per image (with optional ``titles``) in a new figure;
    returns ``(figure, axes)`` with ``axes`` of shape (rows, nrow). With ``ax``: the images
    (all of one shape) tiled into a single mosaic, ``pad`` pixels apart, drawn on ``ax``;
    returns ``(ax.figure, ax)`` and the titles, if any, become the axes' title joined by spaces.
    """
    images = list(images)
    if not images:
        raise ValueError("image_grid needs at least one image")
    if nrow < 1:
        raise ValueError(f"nrow must be positive, got {nrow}")
    if not size > 0:
        raise ValueError(f"size (inches per image) must be positive, got {size}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    ncol = min(nrow, len(images))
    rows = -(-len(images) // ncol)
    if ax is not None:
        show_image(ax, mosaic(images, ncol, pad), " ".join(titles) if titles else None)
        return ax.figure, ax
    fig, axes = plt.subplots(rows, ncol, figsize=(size * ncol, size * rows + (0.25 * rows if titles else 0)),
                             squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index < len(images):
            show_image(ax, images[index], titles[index] if titles else None)
        else:
            ax.axis("off")
    fig.tight_layout()
    return fig, axes


def mosaic(images: Sequence, ncol: int, pad: int = 1, fill: float = 0.0) -> np.ndarray:
    """Images of one shape tiled row by row into one array, ``ncol`` per row, ``pad`` pixels of ``fill`` apart."""
    if not isinstance(ncol, int) or ncol < 1:
        raise ValueError(f"ncol must be a positive int, got {ncol!r}")
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    arrays = [to_numpy(image) for image in images]
    if not arrays:
        raise ValueError("images must hold at least one image, got none")
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"a mosaic needs images of one shape, got {sorted({a.shape for a in arrays})}")
    rows = -(-len(arrays) // ncol)
    height, width = shape[:2]
    out = np.full((rows * (height + pad) - pad, ncol * (width + pad) - pad) + shape[2:], fill, dtype=float)
    for index, array in enumerate(arrays):
        top, left = (index // ncol) * (height + pad), (index % ncol) * (width + pad)
        out[top:top + height, left:left + width] = array
    return out


def draw_box(ax, box, color: str = GLIMPSE_COLOR, linewidth: float = 1.5, keep_limits: bool = True, **kwargs):
    """A box on an image: axis-aligned ``(x0, y0, x1, y1)`` in pixels, or 4 corners ``[(col, row), ...]``.

    Axis-aligned boxes are pixel-edge boxes (a 28-pixel box starting at 0 covers pixels
    0..27); corners are drawn as given. With ``keep_limits`` (the default) the axes keep
    their limits, so a glimpse that pokes out of the image is cut at the image's edge
    instead of shrinking the image. Returns the patch.
    """
    box = np.asarray(box.detach().cpu() if isinstance(box, torch.Tensor) else box, dtype=float)
    if box.shape == (4,):
        x0, y0, x1, y1 = box
        patch = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                          linewidth=linewidth, **kwargs)
    elif box.shape == (4, 2):
        patch = Polygon(box, closed=True, fill=False, edgecolor=color, linewidth=linewidth, **kwargs)
    else:
        raise ValueError(f"expected a box (x0, y0, x1, y1) or 4 corners of shape (4, 2), got shape {box.shape}")
    with _image_frame(ax, keep_limits):
        ax.add_patch(patch)
    return patch


@contextmanager
def _image_frame(ax, keep: bool = True):
    """Keep the axes' view on the image while drawing over it (and stop later plots from widening it)."""
    if not (keep and ax.images):
        yield
        return
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    try:
        yield
    finally:
        ax.set_xlim(*xlim)  # fixing the limits also switches off autoscaling for later artists
        ax.set_ylim(*ylim)


def draw_trajectory(ax, points, color: str = GLIMPSE_COLOR, markersize: float = 7, **kwargs):
    """A path of glimpse centres ``[(col, row), ...]``: first point filled, last hollow (as in Mnih et al. 2014)."""
    points = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"expected points of shape (T, 2) with T >= 1, got {points.shape}")
    with _image_frame(ax):
        line, = ax.plot(points[:, 0], points[:, 1], "-", color=color, linewidth=1.2, **kwargs)
        ax.plot(*points[0], "o", color=color, markersize=markersize)
        ax.plot(*points[-1], "o", markerfacecolor="none", markeredgecolor=color, markersize=markersize,
                markeredgewidth=1.5)
    return line


def attention_heatmap(ax, image, weights, alpha: float = 0.55, cmap: str = "inferno"):
    """Attention ``weights`` (h, w) upsampled over ``image`` (H, W), drawn semi-transparently."""
    array = to_numpy(image)
    weights = to_numpy(weights)
    if weights.ndim != 2:
        raise ValueError(f"expected weights of shape (h, w), got {weights.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the overlay's opacity) must lie in [0, 1], got {alpha}")
    show_image(ax, array)
    height, width = array.shape[:2]
    ax.imshow(weights, cmap=cmap, alpha=alpha, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
              interpolation="bilinear")
    return ax


def alignment_matrix(ax, weights, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                     cmap: str = "viridis"):
    """An alignment matrix: rows (e.g. output steps) against columns (e.g. input positions)."""
    weights = to_numpy(weights)
    if weights.ndim != 2:
        raise ValueError(f"expected a matrix of shape (rows, cols), got {weights.shape}")
    image = ax.imshow(weights, cmap=cmap, aspect="auto", vmin=0.0)
    if row_labels is not None:
        if len(row_labels) != weights.shape[0]:
            raise ValueError(f"{len(row_labels)} row labels for {weights.shape[0]} rows")
        ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    if col_labels is not None:
        if len(col_labels) != weights.shape[1]:
            raise ValueError(f"{len(col_labels)} column labels for {weights.shape[1]} columns")
        ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    return image


def plot_history(history, names: Sequence[str] | None = None, figsize=(9, 3)):
    """Training curves from a :class:`~attn_course.history.History`: one panel per metric.

    ``history`` may also be its ``state_dict()``, such as a model card's ``card["history"]``
    (downsampled: :func:`attn_course.checkpoints.compact_card`).
    """
    from collections.abc import Mapping

    from .history import History

    if isinstance(history, Mapping):
        history = History.from_state_dict(history)
    names = list(names) if names is not None else [n for n in history.names() if not n.startswith("eval_")]
    if not names:
        raise ValueError("nothing to plot: the history has no metrics")
    unknown = [name for name in names if name not in history]
    if unknown:
        raise ValueError(f"names {unknown} are not in the history; it has: {', '.join(history.names())}")
    fig, axes = plt.subplots(1, len(names), figsize=figsize, squeeze=False)
    for ax, name in zip(axes[0], names):
        steps, values = history.series(name)
        ax.plot(steps, values, label="train")
        if f"eval_{name}" in history:
            eval_steps, eval_values = history.series(f"eval_{name}")
            ax.plot(eval_steps, eval_values, "o-", label="held out")
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, axes


def animation_html(draw_frame: Callable[[object, int], None], num_frames: int, figsize=(4, 4),
                   interval: int = 300, ncols: int = 1) -> str:
    """An animation as self-contained HTML (``to_jshtml``): plays in the built book, no kernel needed.

    ``draw_frame(axes, t)`` draws frame ``t`` on freshly cleared axes (one axes, or an
    array of ``ncols`` of them). The figure is closed afterwards, so a notebook shows
    only the animation: ``display(HTML(animation_html(...)))``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    if not interval > 0:
        raise ValueError(f"interval (milliseconds per frame) must be positive, got {interval}")
    fig, axes = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    target = axes[0, 0] if ncols == 1 else axes[0]

    def update(t):
        for ax in axes.flat:
            ax.clear()
        draw_frame(target, t)
        return list(axes.flat)

    try:
        movie = animation.FuncAnimation(fig, update, frames=num_frames, interval=interval, blit=False)
        html = movie.to_jshtml(default_mode="loop")
    finally:
        plt.close(fig)
    return offline_jshtml(html)


def animate(frames: Callable[[object, int], None] | Sequence[Callable[[object], None]],
            num_frames: int | None = None, interval: int = 300, figsize=(4, 4), ncols: int = 1) -> str:
    """The HTML of an offline JavaScript animation, from a frame function or a list of drawers.

    ``frames`` is either ``draw_frame(axes, t)`` (then ``num_frames`` is required), or a
    list of callables ``draw(axes)``, one per frame (then ``num_frames`` defaults to its
    length). Show it with ``display(HTML(animate(...)))``.
    """
    if callable(frames):
        if num_frames is None:
            raise ValueError("animate(draw_frame, num_frames): give the number of frames")
        return animation_html(frames, num_frames, figsize=figsize, interval=interval, ncols=ncols)
    drawers = list(frames)
    if not drawers or not all(callable(d) for d in drawers):
        raise ValueError("animate needs a frame function or a non-empty list of callables draw(axes)")
    if num_frames is not None and num_frames != len(drawers):
        raise ValueError(f"num_frames={num_frames} but {len(drawers)} drawers were given")
    return animation_html(lambda axes, t: drawers[t](axes), len(drawers), figsize=figsize, interval=interval,
                          ncols=ncols)


def offline_jshtml(html: str) -> str:
    """``to_jshtml`` output without its CDN stylesheet: icon buttons become plain characters."""
    if not isinstance(html, str):
        raise TypeError(f"html must be a str (to_jshtml's output), got {type(html).__name__}")
    html = re.sub(r"<link[^>]*font-awesome[^>]*>", "", html)
    for css_class, glyph in _BUTTON_GLYPHS.items():
        html = html.replace(f'<i class="{css_class}"></i>', f'<span class="anim-glyph">{glyph}</span>')
    return html
