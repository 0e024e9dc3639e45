"""Widgets of chapter 7, attention at scale: a small GPT's attention per layer and head on a text the reader types,
the time and peak memory of attention (7.1) against the sequence length (measured rows of
:func:`attn_course.experiments.scale.attention_cost`), and the KV cache (7.9) growing one generated token at a time
(:func:`attn_course.experiments.scale.cache_trace`).
"""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np

from ..experiments.scale import TOKENIZER, attention_weights
from ..scale import GPT
from ..viz import alignment_matrix
from . import FigureWidget, interactive_figure, message_figure

METHOD_COLORS = {"explicit": "#d62728", "fused": "#1f77b4", "blocked": "#2ca02c"}
LABELLED = 40  # panels with at most this many characters get one tick label per character


def shown(character: str) -> str:
    """A character as a tick label: whitespace made visible."""
    return {"\n": "\\n", "\t": "\\t", " ": "\u00b7"}.get(character, character)


def _check_gpt(model) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"expected a GPT (attn_course.scale.GPT), got {type(model).__name__}")


def _choice(name: str, value, count: int) -> list[int]:
    """``value`` None (all) or an index in [0, count) as the list of indices it selects."""
    if value is None:
        return list(range(count))
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
        raise ValueError(f"{name} must be None (all) or an int in [0, {count - 1}], got {value!r}")
    return [value]


# --------------------------------------------------------------------------- attention per layer and head


def attention_pattern_figure(model: GPT, text: str, layer: int | None = None, head: int | None = None) -> plt.Figure:
    """The attention weights P (7.1) of the chosen ``layer`` and ``head`` (None: all of them, one panel each) on
    ``text``: row t is what character t reads, column j the character read (causal: nothing right of the
    diagonal). One panel is drawn large with a character per tick."""
    _check_gpt(model)
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    c = model.config
    if len(text) > c.context:
        raise ValueError(f"the model reads at most {c.context} characters, the text has {len(text)}")
    layers, heads = _choice("layer", layer, c.layers), _choice("head", head, c.heads)
    weights = [P[0].cpu() for P in attention_weights(model, TOKENIZER.encode(text))]
    single = len(layers) == len(heads) == 1
    side = 6.0 if single else 2.0
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(side * len(heads) + 0.6, side * len(layers) + 0.4),
                             squeeze=False)
    labels = [shown(ch) for ch in text] if len(text) <= LABELLED and (single or len(text) <= 12) else None
    for r, l in enumerate(layers):
        for k, h in enumerate(heads):
            ax = axes[r, k]
            alignment_matrix(ax, weights[l][h], labels, labels, cmap="magma")
            ax.set_title(f"layer {l + 1}, head {h + 1}", fontsize=10 if single else 8)
            if labels is None:
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.tick_params(labelsize=8 if single else 6)
    if single:
        axes[0, 0].set_xlabel("key: the character read")
        axes[0, 0].set_ylabel("query: the character reading")
    fig.suptitle(f"attention of a {c.position}-position GPT on {len(text)} characters (rows: queries)", fontsize=10)
    fig.tight_layout()
    return fig


def _pattern_or_message(model: GPT, text: str, layer, head) -> plt.Figure:
    if not text:
        return message_figure("type a text, e.g. def f(x):")
    try:
        return attention_pattern_figure(model, text, layer, head)
    except ValueError as error:
        return message_figure(str(error))


def attention_explorer(model: GPT, text: str = "for i in range(10):\n    print(i)") -> FigureWidget:
    """Type a text and pick a layer and a head ("all" for every one) to see the model's attention on it."""
    _check_gpt(model)
    c = model.config
    return interactive_figure(
        lambda text, layer, head: _pattern_or_message(model, text, layer, head),
        text=W.Textarea(value=text, description="text", continuous_update=False),
        layer=W.Dropdown(options=[("all", None)] + [(str(l + 1), l) for l in range(c.layers)], value=0,
                         description="layer"),
        head=W.Dropdown(options=[("all", None)] + [(str(h + 1), h) for h in range(c.heads)], value=None,
                        description="head"))


# --------------------------------------------------------------------------- the cost against the length


def _rows_by_method(rows) -> dict[str, list[dict]]:
    if not rows:
        raise ValueError("expected the rows of attention_cost, got none")
    methods: dict[str, list[dict]] = {}
    for row in rows:
        if not {"method", "n", "seconds", "peak_bytes"} <= set(row):
            raise ValueError(f"expected rows of attention_cost (method, n, seconds, peak_bytes), got {row!r}")
        methods.setdefault(row["method"], []).append(row)
    return {m: sorted(r, key=lambda row: row["n"]) for m, r in methods.items()}


def attention_cost_figure(rows, n: int) -> plt.Figure:
    """Milliseconds and peak MiB of attention per method (7.1) against n, on log-log axes, from the measured
    ``rows`` of :func:`~attn_course.experiments.scale.attention_cost`, with the values at length ``n`` (one of
    the measured lengths) marked and written in the title."""
    methods = _rows_by_method(rows)
    lengths = sorted({row["n"] for row in rows})
    if n not in lengths:
        raise ValueError(f"n must be one of the measured lengths {lengths}, got {n!r}")
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    at_n = []
    for method, points in methods.items():
        color = METHOD_COLORS.get(method)
        ns = [p["n"] for p in points]
        time_ax.plot(ns, [p["seconds"] * 1e3 for p in points], "o-", color=color, label=method)
        measured = [p for p in points if p["peak_bytes"] is not None]
        memory_ax.plot([p["n"] for p in measured], [max(p["peak_bytes"], 1) / 2**20 for p in measured], "o-",
                       color=color, label=method)
        here = next((p for p in points if p["n"] == n), None)
        if here is not None:
            memory = "n/a" if here["peak_bytes"] is None else f"{here['peak_bytes'] / 2**20:.2f} MiB"
            at_n.append(f"{method} {here['seconds'] * 1e3:.2f} ms, {memory}")
    for ax, label in ((time_ax, "milliseconds per call"), (memory_ax, "peak MiB added by the call")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.axvline(n, color="0.5", linestyle="--", linewidth=1)
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"n = {n}: " + "; ".join(at_n), fontsize=9)
    fig.tight_layout()
    return fig


def attention_cost_explorer(rows) -> FigureWidget:
    """A slider over the measured lengths n, showing each method's time and peak memory there."""
    lengths = sorted({row["n"] for row in rows}) if rows else []
    if not lengths:
        raise ValueError("expected the rows of attention_cost, got none")
    return interactive_figure(lambda n: attention_cost_figure(rows, n),
                              n=W.SelectionSlider(options=lengths, value=lengths[0], description="n"))


# --------------------------------------------------------------------------- the KV cache, step by step


def _check_trace(trace) -> int:
    if not isinstance(trace, dict) or not {"ids", "prompt_length", "length", "bytes", "weights"} <= set(trace):
        raise ValueError("expected the dict of experiments.scale.cache_trace")
    return len(trace["length"])


def kv_cache_figure(trace: dict, step: int, layer: int = 0) -> plt.Figure:
    """Forward pass ``step`` of greedy decoding with the KV cache (7.9), from a
    :func:`~attn_course.experiments.scale.cache_trace`: the text with the cached characters shaded and the one read
    at this step outlined; what that character's query reads from the cache in ``layer`` (the heads' mean); and the
    cache's bytes (7.10) so far, beside the characters each step runs through the model with and without it."""
    steps = _check_trace(trace)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < steps:
        raise ValueError(f"step must be an int in [0, {steps - 1}], got {step!r}")
    weights = trace["weights"]
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(weights):
        raise ValueError(f"layer must be an int in [0, {len(weights) - 1}], got {layer!r}")
    text = TOKENIZER.decode(trace["ids"])
    T_0, t = trace["prompt_length"], trace["length"][step]
    reader = t - 1  # the last character read at this step (the last of the prompt at step 0)
    row = weights[layer][:, reader, :t].mean(0).numpy()  # (t,)
    fig = plt.figure(figsize=(10, 5.6))
    grid = fig.add_gridspec(3, 2, height_ratios=[0.8, 1.4, 1.6])
    strip, bars, growth, work = (fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, :]),
                                 fig.add_subplot(grid[2, 0]), fig.add_subplot(grid[2, 1]))
    shade = np.zeros((1, len(text)))
    shade[0, :T_0] = 0.55
    shade[0, T_0:t] = 0.3
    strip.imshow(shade, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    strip.add_patch(plt.Rectangle((reader - 0.5, -0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2))
    if len(text) <= 80:
        for i, ch in enumerate(text):
            strip.text(i, 0, shown(ch), ha="center", va="center", fontsize=7, family="monospace")
    strip.set_yticks([])
    strip.set_xticks([0, T_0 - 1, len(text) - 1])
    strip.set_title(f"step {step}: the cache holds {t} of {len(text)} characters (dark: the prompt, light: "
                    f"written so far); outlined: the one read now", fontsize=9)
    bars.bar(range(t), row, color="#1f77b4")
    bars.set_xlim(-0.5, len(text) - 0.5)
    bars.set_ylim(0, max(float(row.max()), 1e-3) * 1.1)
    bars.set_ylabel("weight")
    bars.set_title(f"what the outlined character reads from the cache, layer {layer + 1} (mean of the heads)",
                   fontsize=9)
    so_far = range(step + 1)
    growth.plot(list(so_far), [trace["bytes"][s] / 1024 for s in so_far], "o-", color="#2ca02c", markersize=3)
    growth.set_xlim(-0.5, steps - 0.5)
    growth.set_ylim(0, trace["bytes"][-1] / 1024 * 1.1)
    growth.set_xlabel("step")
    growth.set_ylabel("cache KiB")
    cached = [trace["length"][0]] + [1] * (steps - 1)  # the prompt once, then one character a step
    uncached = trace["length"]  # every step re-reads everything so far
    work.plot(list(so_far), np.cumsum(cached)[:step + 1], "o-", color="#2ca02c", markersize=3, label="with the cache")
    work.plot(list(so_far), np.cumsum(uncached)[:step + 1], "o-", color="#d62728", markersize=3,
              label="without: the whole text again")
    work.set_xlim(-0.5, steps - 0.5)
    work.set_ylim(0, float(np.sum(uncached)) * 1.05)
    work.set_xlabel("step")
    work.set_ylabel("characters run through the model")
    work.legend(fontsize=8)
    fig.tight_layout()
    return fig


def kv_cache_explorer(trace: dict) -> FigureWidget:
    """A slider over the decoding steps of a :func:`~attn_course.experiments.scale.cache_trace`, and the layer."""
    steps = _check_trace(trace)
    return interactive_figure(lambda step, layer: kv_cache_figure(trace, step, layer),
                              step=W.IntSlider(value=0, min=0, max=steps - 1, description="step"),
                              layer=W.Dropdown(options=[(str(l + 1), l) for l in range(len(trace["weights"]))],
                                               value=0, description="layer"))
