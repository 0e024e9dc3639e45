"""Widgets of chapter 6, the Vision Transformer on chapter 1's canvases, beside the Recurrent Attention Model: the class
token's attention by layer and head, the rollout (6.7), RAM's glimpses on the same canvas, and a distractor to move.
Paper: Dosovitskiy et al. (2021), An Image is Worth 16x16 Words (:mod:`attn_course.vit`).

Every share "on the digit" below is the measure of :func:`attn_course.experiments.vit.attention_on_digit`: a
patch's weight counts as much as the share of its pixels inside the box (:func:`~attn_course.experiments.vit.
digit_overlap`), out of the weight on all patches; the chapter's statistics and these figures give the same numbers.
"""

from __future__ import annotations

import operator

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from ..experiments.ram import inside_boxes
from ..experiments.vit import digit_overlap
from ..ram import RecurrentAttentionModel, glimpse_paths
from ..runtime import evaluating
from ..vit import ViT, ViTConfig, attention_rollout, class_token_attention
from ..viz import GLIMPSE_COLOR, animation_html, attention_heatmap, draw_box, draw_trajectory, show_image
from . import FigureWidget, as_chw, image_batch, interactive_figure

DIGIT_COLOR = "#ffd700"  # the digit's box, dashed gold as in chapter 1
DISTRACTOR_COLOR = "#d62728"


# --------------------------------------------------------------------------- inputs


def _canvas(image, size: int, channels: int = 1) -> torch.Tensor:
    """``image`` (H, W) or (C, H, W) as a float (C, H, W) on the CPU, checked against the model's input."""
    canvas = as_chw(image).cpu()
    if tuple(canvas.shape) != (channels, size, size):
        raise ValueError(f"expected an image of shape ({size}, {size}) or ({channels}, {size}, {size}), "
                         f"got {tuple(canvas.shape)}")
    return canvas


def _box(box, name: str = "box") -> torch.Tensor | None:
    """``box`` (x0, y0, x1, y1) in pixels as a float tensor (4,), or None."""
    if box is None:
        return None
    value = torch.as_tensor(box, dtype=torch.float32).cpu()
    if value.shape != (4,) or not torch.isfinite(value).all() or not (value[0] < value[2] and value[1] < value[3]):
        raise ValueError(f"{name} must be (x0, y0, x1, y1) in pixels with x0 < x1 and y0 < y1, got {box!r}")
    return value


def _check_vit(model) -> ViTConfig:
    if not isinstance(model, ViT):
        raise TypeError(f"expected a ViT (attn_course.vit.ViT), got {type(model).__name__}")
    return model.config


def _check_pair(vit_model, ram_model) -> ViTConfig:
    config = _check_vit(vit_model)
    if not isinstance(ram_model, RecurrentAttentionModel):
        raise TypeError(f"expected a RecurrentAttentionModel (attn_course.ram), got {type(ram_model).__name__}")
    if ram_model.config.image_size != config.image_size or ram_model.channels != config.channels:
        raise ValueError(f"the ViT reads {config.channels} x {config.image_size} x {config.image_size} images, RAM "
                         f"{ram_model.channels} x {ram_model.config.image_size} x {ram_model.config.image_size}: "
                         f"give both models the same canvases")
    return config


def _check_view(config: ViTConfig, layer: int, head: int) -> None:
    if not 0 <= layer < config.depth:
        raise ValueError(f"layer must be in [0, {config.depth - 1}], got {layer}")
    if not -1 <= head < config.heads:
        raise ValueError(f"head must be -1 (the mean over heads) or in [0, {config.heads - 1}], got {head}")


def _check_label(label, classes: int) -> None:
    if label is not None and not 0 <= label < classes:
        raise ValueError(f"label must be a class in [0, {classes - 1}] (or None), got {label}")


def paste(image, patch, x: int, y: int) -> torch.Tensor:
    """``image`` with ``patch`` (h, w) pasted by the maximum at column ``x``, row ``y`` (its top-left pixel), as
    chapter 1's generator pastes its distractors: out[..., y + i, x + j] = max(image[..., y + i, x + j], patch[i, j]).

    ``image`` (H, W) or (C, H, W) (uint8 is scaled to [0, 1]); returns a new float tensor of the same shape
    (the patch on every channel) and leaves ``image`` as it was.
    """
    flat = torch.as_tensor(image).dim() == 2
    canvas = as_chw(image).clone()
    patch = torch.as_tensor(patch)
    patch = patch.float() / 255.0 if patch.dtype == torch.uint8 else patch.float()
    if patch.dim() != 2 or patch.numel() == 0:
        raise ValueError(f"expected a patch of shape (h, w) with h, w >= 1, got {tuple(patch.shape)}")
    for name, value in (("x", x), ("y", y)):
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"{name} must be an int (pixels), got {value!r}")
    x, y = operator.index(x), operator.index(y)
    (h, w), (H, Wd) = patch.shape, canvas.shape[1:]
    if h > H or w > Wd:
        raise ValueError(f"the patch ({h} x {w}) is larger than the image ({H} x {Wd})")
    if not (0 <= x <= Wd - w and 0 <= y <= H - h):
        raise ValueError(f"the patch ({h} x {w}) at x = {x}, y = {y} does not fit the image ({H} x {Wd}): "
                         f"x must lie in [0, {Wd - w}] and y in [0, {H - h}]")
    region = canvas[:, y:y + h, x:x + w]
    canvas[:, y:y + h, x:x + w] = torch.maximum(region, patch.to(canvas.device))
    return canvas[0] if flat else canvas


def distractor_from(image, box) -> torch.Tensor:
    """The crop (y1 - y0, x1 - x0) of a one-channel ``image`` (H, W) or (1, H, W) inside ``box`` (x0, y0, x1, y1),
    whole pixels, x1 and y1 excluded: a distractor for :func:`paste` (chapter 1's are 8 x 8 crops of other digits)."""
    canvas = as_chw(image)
    if canvas.shape[0] != 1:
        raise ValueError(f"expected a one-channel image (H, W) or (1, H, W), got {tuple(canvas.shape)}")
    value = _box(box)
    if value is None or not torch.equal(value, value.round()):
        raise ValueError(f"box must be (x0, y0, x1, y1) in whole pixels, got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in value)
    H, Wd = canvas.shape[1:]
    if x0 < 0 or y0 < 0 or x1 > Wd or y1 > H:
        raise ValueError(f"box {(x0, y0, x1, y1)} reaches outside the image ({H} x {Wd})")
    return canvas[0, y0:y1, x0:x1].clone()


# --------------------------------------------------------------------------- running the models on one canvas


def _vit_run(model: ViT, canvas: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One forward pass: the attention weights A_l (1, h, T, T) of every block and the class probabilities (K,)."""
    with evaluating(model):
        logits, attentions = model(canvas[None].to(next(model.parameters()).device), return_attention=True)
    return [A.float().cpu() for A in attentions], logits[0].float().softmax(-1).cpu()


def _ram_run(model: RecurrentAttentionModel, canvas: torch.Tensor) -> dict:
    """RAM's deterministic path from the centre (:func:`attn_course.ram.glimpse_paths`), up to its stop if it stops:
    ``locations`` (T, 2), ``pixels`` (T, 2), the finest patch's ``sides`` (T,), ``probabilities`` (K,) of its answer."""
    paths = glimpse_paths(model, canvas[None].to(next(model.parameters()).device))
    T = int(paths["glimpses_used"][0]) if "glimpses_used" in paths else paths["pixels"].shape[1]
    scales = paths["scales"][0, :T].cpu() if "scales" in paths else torch.ones(T)
    return {"locations": paths["locations"][0, :T].cpu(), "pixels": paths["pixels"][0, :T].cpu(),
            "sides": model.config.glimpse_size * scales, "probabilities": paths["probabilities"][0, T - 1].cpu()}


def _on_box(weights: torch.Tensor, box: torch.Tensor, config: ViTConfig) -> float:
    """The share of ``weights`` (N,) over the patches that falls in ``box``: attention_on_digit's measure."""
    overlap = digit_overlap(box[None], config.image_size, config.patch)[0]
    return float((weights * overlap).sum() / weights.sum())


def _said(probabilities: torch.Tensor, label: int | None = None) -> str:
    predicted = int(probabilities.argmax())
    return f"said {predicted} (p = {float(probabilities[predicted]):.2f})" + \
        (f", label {label}" if label is not None else "")


def _grid(weights: torch.Tensor, config: ViTConfig) -> torch.Tensor:
    return weights.reshape(config.grid, config.grid)  # patches are numbered row by row


def _fit(fig: plt.Figure) -> None:
    """``tight_layout`` twice: the first pass reshapes the square image axes, the second fits their titles."""
    fig.tight_layout()
    fig.tight_layout()


def _draw_boxes(ax, box, distractor_box=None) -> None:
    if box is not None:
        draw_box(ax, box, color=DIGIT_COLOR, linewidth=1.2, linestyle="--")
    if distractor_box is not None:
        draw_box(ax, distractor_box, color=DISTRACTOR_COLOR, linewidth=1.2)


def _shares(weights: torch.Tensor, config: ViTConfig, box, distractor_box=None) -> str:
    """"41.2% on the digit, 3.0% on the distractor\n" (what applies; empty without boxes)."""
    parts = [f"{_on_box(weights, b, config):.1%} on the {name}"
             for name, b in (("digit", box), ("distractor", distractor_box)) if b is not None]
    return ", ".join(parts) + "\n" if parts else ""


# --------------------------------------------------------------------------- 1. every layer and head


def class_token_figure(model: ViT, image, box=None, label: int | None = None) -> plt.Figure:
    """The class token's attention A_l^h[0, 1:] on the patch grid over the image: a row per layer, a column per
    head and one for their mean, each titled with its share on the digit's ``box`` (x0, y0, x1, y1) when given."""
    config = _check_vit(model)
    canvas, box = _canvas(image, config.image_size, config.channels), _box(box)
    _check_label(label, config.classes)
    attentions, probabilities = _vit_run(model, canvas)
    cls = class_token_attention(attentions)[0]  # (L, h, N)
    cls = torch.cat([cls, cls.mean(1, keepdim=True)], 1)  # the head mean as one more column
    L, columns = cls.shape[:2]
    fig, axes = plt.subplots(L, columns, figsize=(1.9 * columns, 1.9 * L + 0.7), squeeze=False)
    for l in range(L):
        for j in range(columns):
            ax = axes[l, j]
            attention_heatmap(ax, canvas, _grid(cls[l, j], config))
            _draw_boxes(ax, box)
            which = "mean" if j == config.heads else f"head {j + 1}"
            share = f"\n{_on_box(cls[l, j], box, config):.1%} on the digit" if box is not None else ""
            ax.set_title(f"layer {l + 1}, {which}{share}", fontsize=8)
    chance = f"; evenly spread: {float(digit_overlap(box[None], config.image_size, config.patch).mean()):.1%}" \
        if box is not None else ""
    fig.suptitle(f"the class token's attention A_l^h[0, 1:]; {_said(probabilities, label)}{chance}", fontsize=10)
    _fit(fig)
    return fig


# --------------------------------------------------------------------------- 2. ViT beside RAM


def draw_glimpse_path(ax, image, pixels, sides, title: str | None = None) -> None:
    """RAM's glimpse centres ``pixels`` (T, 2) as (column, row) over ``image``, joined as in chapter 1 (first filled,
    last hollow) and numbered 1..T, each with its finest patch outlined (``sides`` (T,) or one number, pixels)."""
    pixels = torch.as_tensor(pixels, dtype=torch.float32).cpu()
    if pixels.dim() != 2 or pixels.shape[1] != 2 or len(pixels) == 0:
        raise ValueError(f"expected pixels of shape (T, 2) with T >= 1, got {tuple(pixels.shape)}")
    sides = torch.as_tensor(sides, dtype=torch.float32).cpu().expand(len(pixels))
    show_image(ax, image, title)
    draw_trajectory(ax, pixels)
    for t, ((x, y), side) in enumerate(zip(pixels.tolist(), sides.tolist())):
        half = side / 2
        draw_box(ax, (x - half + 0.5, y - half + 0.5, x + half + 0.5, y + half + 0.5), linewidth=0.8, alpha=0.7)
        ax.text(x + 1.2, y - 1.2, str(t + 1), color=GLIMPSE_COLOR, fontsize=7, fontweight="bold")


def _ram_panel(ax, ram_model, canvas, box, distractor_box=None, label=None) -> None:
    run = _ram_run(ram_model, canvas)
    size = canvas.shape[-1]
    counts = [f"{int(inside_boxes(run['locations'][None], b[None], size).sum())} on the {name}"
              for name, b in (("digit", box), ("distractor", distractor_box)) if b is not None]
    T = len(run["pixels"])
    where = ", ".join(counts) + "\n" if counts else ""
    draw_glimpse_path(ax, canvas, run["pixels"], run["sides"],
                      f"RAM: {T} glimpse{'s' * (T != 1)}\n{where}{_said(run['probabilities'], label)}")
    _draw_boxes(ax, box, distractor_box)


def _vit_beside_ram(vit_model, ram_model, canvas, box, layer: int | None, head: int = -1, distractor_box=None,
                    label=None) -> plt.Figure:
    """Two panels on one canvas: the ViT's map (the rollout when ``layer`` is None, else the class token's
    attention of ``layer`` and ``head``, -1 the mean) and RAM's glimpse path."""
    config = vit_model.config
    attentions, probabilities = _vit_run(vit_model, canvas)
    if layer is None:
        weights, what = attention_rollout(attentions)[0, 0, 1:], "ViT: rollout R[0, 1:] (6.7)"
    else:
        A = attentions[layer][0, :, 0, 1:]  # (h, N)
        weights = A.mean(0) if head == -1 else A[head]
        what = f"ViT: layer {layer + 1}, {'mean of heads' if head == -1 else f'head {head + 1}'}"
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.6, 4.1))
    attention_heatmap(left, canvas, _grid(weights, config))
    _draw_boxes(left, box, distractor_box)
    left.set_title(f"{what}\n{_shares(weights, config, box, distractor_box)}{_said(probabilities, label)}",
                   fontsize=8)
    _ram_panel(right, ram_model, canvas, box, distractor_box, label)
    right.title.set_fontsize(8)
    _fit(fig)
    return fig


def vit_beside_ram_figure(vit_model: ViT, ram_model: RecurrentAttentionModel, image, box=None,
                          label: int | None = None) -> plt.Figure:
    """Where each model looks on one canvas: left, the ViT's attention rollout R[0, 1:] (6.7) with its answer and the
    rollout's share on the digit's ``box``; right, RAM's glimpses from the centre (the policy's mean), numbered, with
    the finest patch of each, its answer and how many glimpse centres fall in the box."""
    config = _check_pair(vit_model, ram_model)
    canvas, box = _canvas(image, config.image_size, config.channels), _box(box)
    _check_label(label, config.classes)
    return _vit_beside_ram(vit_model, ram_model, canvas, box, None, label=label)


# --------------------------------------------------------------------------- 3. layer by layer


def _draw_layer(axes, canvas, attentions, config: ViTConfig, layer: int, box) -> None:
    """Frame ``layer``: the head-averaged A_l[0, 1:] of that layer, and the rollout (6.7) of layers 1..l."""
    left, right = axes
    mean = attentions[layer][0].mean(0)[0, 1:]
    rollout = attention_rollout(attentions[:layer + 1])[0, 0, 1:]
    for ax, weights, title in ((left, mean, f"layer {layer + 1}: A_l[0, 1:], mean of heads"),
                               (right, rollout, f"rollout of layers 1..{layer + 1} (6.7)")):
        attention_heatmap(ax, canvas, _grid(weights, config))
        _draw_boxes(ax, box)
        share = f"\n{_on_box(weights, box, config):.1%} on the digit" if box is not None else ""
        ax.set_title(title + share, fontsize=8)


def _layer_inputs(model, image, box):
    config = _check_vit(model)
    canvas, box = _canvas(image, config.image_size, config.channels), _box(box)
    return config, canvas, box, _vit_run(model, canvas)[0]


def layer_figure(model: ViT, image, layer: int, box=None) -> plt.Figure:
    """One frame of :func:`layer_animation` as a figure: the class token's head-averaged attention of ``layer``
    (0 = first) and the rollout up to it."""
    config, canvas, box, attentions = _layer_inputs(model, image, box)
    _check_view(config, layer, -1)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.5))
    _draw_layer(axes, canvas, attentions, config, layer, box)
    _fit(fig)
    return fig


def layer_animation(model: ViT, image, box=None, interval: int = 800) -> str:
    """The layers one frame each (:func:`layer_figure`), as offline HTML: ``display(HTML(layer_animation(...)))``."""
    config, canvas, box, attentions = _layer_inputs(model, image, box)
    return animation_html(lambda axes, l: _draw_layer(axes, canvas, attentions, config, l, box), config.depth,
                          figsize=(6.4, 3.5), interval=interval, ncols=2)


# --------------------------------------------------------------------------- 4. a distractor to move


def distractor_figure(vit_model: ViT, ram_model: RecurrentAttentionModel, image, box, distractor, dx: int, dy: int,
                      layer: int | None = None, head: int = -1, label: int | None = None) -> plt.Figure:
    """Both models on ``image`` with ``distractor`` (h, w) pasted at column ``dx``, row ``dy`` (:func:`paste`): the
    ViT's class-token attention of ``layer`` (None: the last) and ``head`` (-1: the mean) with its shares on the
    digit's ``box`` and on the distractor (red), and RAM's glimpse path, each with its answer."""
    config = _check_pair(vit_model, ram_model)
    layer = config.depth - 1 if layer is None else layer
    _check_view(config, layer, head)
    _check_label(label, config.classes)
    canvas = paste(_canvas(image, config.image_size, config.channels), distractor, dx, dy)
    h, w = torch.as_tensor(distractor).shape
    return _vit_beside_ram(vit_model, ram_model, canvas, _box(box), layer, head,
                           torch.tensor([dx, dy, dx + w, dy + h], dtype=torch.float32), label)


def vit_explorer(vit_model: ViT, ram_model: RecurrentAttentionModel, images, boxes, distractor,
                 labels=None) -> FigureWidget:
    """Pick a canvas of ``images`` (N, [1,] S, S) with its digit's ``boxes`` (N, 4), a layer and a head of the ViT,
    and slide ``distractor`` (h, w) over the canvas: :func:`distractor_figure` redrawn."""
    config = _check_pair(vit_model, ram_model)
    images = image_batch(images)
    canvases = torch.stack([_canvas(image, config.image_size, config.channels) for image in images])
    boxes = torch.as_tensor(boxes, dtype=torch.float32).cpu()
    if boxes.shape != (len(canvases), 4):
        raise ValueError(f"expected boxes of shape ({len(canvases)}, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    for box in boxes:
        _box(box, "every box")
    if labels is not None:
        labels = torch.as_tensor(labels).cpu()
        if labels.shape != (len(canvases),):
            raise ValueError(f"expected labels of shape ({len(canvases)},), got {tuple(labels.shape)}")
        for label in labels.tolist():
            _check_label(label, config.classes)
    size = config.image_size
    paste(torch.zeros(size, size), distractor, 0, 0)  # a distractor that cannot fit fails here, not at a redraw
    h, w = torch.as_tensor(distractor).shape
    style = {"description_width": "initial"}

    def figure(index, layer, head, dx, dy):
        label = None if labels is None else int(labels[index])
        return distractor_figure(vit_model, ram_model, canvases[index], boxes[index], distractor, dx, dy, layer,
                                 head, label)

    return interactive_figure(
        figure,
        index=W.IntSlider(0, 0, len(canvases) - 1, description="canvas", style=style),
        layer=W.IntSlider(config.depth - 1, 0, config.depth - 1, description="layer (0 = first)", style=style),
        head=W.Dropdown(options=[("mean over heads", -1)] + [(f"head {j + 1}", j) for j in range(config.heads)],
                        value=-1, description="head"),
        dx=W.IntSlider(0, 0, size - w, description="distractor x", style=style),
        dy=W.IntSlider(0, 0, size - h, description="distractor y", style=style),
    )
