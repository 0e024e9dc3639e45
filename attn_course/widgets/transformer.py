"""Widgets of chapter 5, the Transformer: attention by kind, layer and head, positional encoding, softmax scaling.
Paper: Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser and Polosukhin (2017), Attention Is All You Need."""

from __future__ import annotations

import math

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from ..data.sequences import ISO_LENGTH, decode, encode_batch
from ..transformer import Transformer, attention_maps, pe_shift_matrix, positional_encoding, softmax_statistics
from ..viz import alignment_matrix
from . import FigureWidget, check_positive, interactive_figure, message_figure

DATE_OUTPUT_LENGTH = ISO_LENGTH + 1  # YYYY-MM-DD, then EOS

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


def date_attention_figure(model, text: str, kind: str = "cross", layer: int = 0, head: int = -1,
                          max_len: int = DATE_OUTPUT_LENGTH) -> plt.Figure:
    """Run ``model`` on ``text`` (greedy decoding) and draw one of its attention matrices.

    A string with characters outside the vocabulary gives a figure that says so (the
    widget must not break while someone is typing).
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    text = text.strip()
    if not text:
        return message_figure("type a date, e.g. 24 November 2026")
    try:
        src = encode_batch([text], device=next(model.parameters()).device)
    except ValueError as error:
        return message_figure(str(error))
    maps = attention_maps(model, src, max_len)
    one = {k: maps[k][:, 0].cpu() for k in ATTENTION_KINDS}
    return transformer_attention_figure(one, text, decode(maps["output"][0]), kind, layer, head)


def date_explorer(model, text: str = "Tuesday, 24 November 2026", max_len: int = DATE_OUTPUT_LENGTH) -> FigureWidget:
    """Type a date; see the model's output and any attention matrix (kind, layer, head)."""
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


def positional_encoding_figure(d_model: int = 64, position: int = 10, offset: int = 5,
                               max_len: int = 64) -> plt.Figure:
    """The sinusoidal encoding PE (positions x dimensions) with rows pos and pos + k marked, and the
    similarity PE(pos) . PE(j) over j: it depends on j - pos only, through the rotations M_k."""
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


def softmax_scaling_figure(d_k: int = 64, temperature: float = 1.0, num_keys: int = 16,
                           seed: int = 0) -> plt.Figure:
    """Softmax over the scores of one query and ``num_keys`` random keys, with and without the 1/sqrt(d_k)
    of (5.1), and how entropy and gradient (the Jacobian's norm) change with d_k at this temperature."""
    if d_k < 1:
        raise ValueError(f"d_k must be positive, got {d_k}")
    check_positive(temperature=temperature)
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
