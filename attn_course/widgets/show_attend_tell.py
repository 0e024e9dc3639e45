"""Widgets of chapter 3, Show, Attend and Tell: where the captioner looked for each word, on test or composed scenes.
Paper: Xu, Ba, Kiros, Cho, Courville, Salakhutdinov, Zemel and Bengio (2015), Show, Attend and Tell."""

from __future__ import annotations

import math

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from ..data.scenes import COLOURS, SHAPES, SIZES, compose_scene
from ..show_attend_tell import caption_with_attention
from ..viz import attention_heatmap, draw_box, show_image
from . import FigureWidget, as_chw, image_batch, interactive_figure


def draw_word_attention(ax, image, word: str, alpha, beta=None, s=None, mode: str = "soft") -> None:
    """One word of a caption over its image: soft, the attention map alpha_t (L,) upsampled; hard, the read cell."""
    if mode not in ("soft", "hard"):
        raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")
    image = as_chw(image)
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
    show_image(axes.flat[0], as_chw(image).permute(1, 2, 0), "image")
    axes.flat[0].axis("off")
    for t, word in enumerate(words):
        draw_word_attention(axes.flat[t + 1], image, word, result["alpha"][t], result["beta"][t], result["s"][t], mode)
    fig.suptitle(" ".join(w for w in words if w != "<eos>"), fontsize=11)
    fig.tight_layout()
    return fig


def scene_explorer(models: dict, images) -> FigureWidget:
    """Pick a test scene, or compose one, and see each model's caption and where it looked for every word.

    ``models`` maps a name ("soft", "hard") to a trained captioner; ``images`` (N, 3, S, S)
    are the scenes to pick from.
    """
    if not models:
        raise ValueError("models must name at least one captioner, e.g. {'soft': model}")
    images = image_batch(images)
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
