"""Widgets of chapter 4, reading text lines: the reader's attention over a line, and the encoder's receptive field.
Paper: Lee and Osindero (2016), Recursive Recurrent Nets with Attention Modeling for OCR in the Wild (R2AM)."""

from __future__ import annotations

import math

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from ..data.text_lines import FONTS, HEIGHT, WIDTH, encode, render_line
from ..experiments.r2am import column_centres
from ..r2am import R2AM, R2AMConfig, _text_line, read_line, receptive_field
from . import FigureWidget, interactive_figure, message_figure


def reading_figure(image, result: dict, centres=None, text: str | None = None) -> plt.Figure:
    """A text line with the model's reading: the image with the attended position of each character, and the
    alignment matrix (characters x columns) with the true centres marked."""
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
    top.imshow(image, cmap="gray", vmin=0, vmax=1, extent=(0, WIDTH, HEIGHT, 0), aspect="auto")
    x = column_centres(alpha.shape[-1])
    looked = (alpha * x).sum(-1)
    for label, position in zip(labels, looked.tolist()):
        if label != "EOS":
            top.axvline(position, color="#ff7f0e", lw=1, alpha=0.8)
            top.text(position, -1.5, label, color="#ff7f0e", ha="center", fontsize=9)
    title = f"read: {result['text']!r}" + (f"   (truth: {text!r})" if text is not None else "")
    top.set_title(title, fontsize=10, pad=14)
    top.set_xlim(0, WIDTH)
    top.axis("off")
    bottom.imshow(alpha, cmap="viridis", aspect="auto", extent=(0, WIDTH, steps - 0.5, -0.5), vmin=0)
    bottom.set_yticks(range(steps), labels=labels, fontsize=8)
    bottom.set_xlabel("pixels from the left (columns of 4 pixels)", fontsize=8)
    if centres is not None:
        truth = torch.as_tensor(centres).cpu()
        for t, c in enumerate(truth.tolist()[:steps]):
            if not math.isnan(c):
                bottom.plot([c], [t], marker="o", mfc="none", mec="#d62728", ms=6)
    fig.tight_layout()
    return fig


def text_line_explorer(models: dict, text: str = "attention") -> FigureWidget:
    """Type a string, pick a font, noise, blur and rotation; see the line, the model's reading and where it looked
    for each character (the true centres as red circles). ``models`` maps names to trained R2AM models."""
    if not models:
        raise ValueError("models must name at least one R2AM reader, e.g. {'recurrent': model}")
    style = {"description_width": "initial"}

    def draw(model, text, font, noise, blur, rotation):
        text = text.strip()
        try:
            encode(text)
        except ValueError as error:
            return message_figure(str(error))
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
    top.imshow(line[0, 0], cmap="gray", vmin=0, vmax=1, extent=(0, WIDTH, HEIGHT, 0), aspect="auto")
    top.axvspan(centre - r / 2, centre + r / 2, color="#ff7f0e", alpha=0.3)
    top.set_title(f"T = {T}: column {column} sees {r} pixels (25 + 12 T; fewer at the edges, where padding stands "
                  f"in), {2 * (T + 1)} convolutions in the blocks", fontsize=9)
    top.axis("off")
    bottom.fill_between(range(WIDTH), influence.numpy(), color="#1f77b4", step="mid")
    bottom.axvline(centre - r / 2, color="#ff7f0e")
    bottom.axvline(centre + r / 2, color="#ff7f0e")
    bottom.set_xlim(0, WIDTH)
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
        column=W.IntSlider(12, 0, R2AMConfig().columns - 1, description="column", continuous_update=False),
        text=W.Text(value="recursion", description="text", continuous_update=False),
    )
