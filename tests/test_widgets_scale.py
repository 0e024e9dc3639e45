"""Chapter 7's widgets: the attention per layer and head on a typed text, the cost of attention against n from
measured rows, and the KV cache growing step by step."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attn_course.experiments.scale import TOKENIZER, VOCAB_SIZE, attention_weights, cache_trace  # noqa: E402
from attn_course.scale import GPT, GPTConfig  # noqa: E402
from attn_course.widgets.scale import (attention_cost_explorer, attention_cost_figure,  # noqa: E402
                                       attention_explorer, attention_pattern_figure, kv_cache_explorer,
                                       kv_cache_figure, shown)

CONFIG = GPTConfig(vocab_size=VOCAB_SIZE, context=32, d_model=16, layers=2, heads=2, kv_heads=1, position="rotary")
TEXT = "for i in x:\n\tf(i)"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def rows():
    """Rows shaped like attention_cost's: explicit grows as n^2, fused as n, one reading missing."""
    out = []
    for n in (128, 256, 512):
        out.append({"method": "explicit", "n": n, "seconds": 1e-6 * n * n, "peak_bytes": 8 * n * n, "kernel": ""})
        out.append({"method": "fused", "n": n, "seconds": 1e-5 * n, "peak_bytes": None if n == 256 else 64 * n,
                    "kernel": "MATH"})
    return out


def images(fig):
    return [a.get_images()[0].get_array() for a in fig.axes if a.get_images()]


def test_whitespace_is_made_visible_in_labels():
    assert [shown(c) for c in "a \n\t"] == ["a", "\u00b7", "\\n", "\\t"]


def test_one_panel_per_layer_and_head_shows_the_models_weights(model):
    fig = attention_pattern_figure(model, TEXT)
    assert len(fig.axes) == CONFIG.layers * CONFIG.heads
    weights = attention_weights(model, TOKENIZER.encode(TEXT))
    drawn = images(fig)
    assert np.allclose(drawn[3], weights[1][0, 1].numpy()), "panels go row by row: layer 2, head 2 is the last"
    plt.close(fig)
    one = attention_pattern_figure(model, TEXT, layer=1, head=0)
    (ax,) = one.axes
    assert np.allclose(images(one)[0], weights[1][0, 0].numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == [shown(c) for c in TEXT]
    assert np.allclose(np.triu(images(one)[0], 1), 0), "causal: nothing right of the diagonal"
    plt.close(one)
    row = attention_pattern_figure(model, TEXT, layer=0)
    assert len(row.axes) == CONFIG.heads
    plt.close(row)


def test_the_pattern_figure_refuses_what_it_cannot_draw(model):
    with pytest.raises(ValueError, match="non-empty"):
        attention_pattern_figure(model, "")
    with pytest.raises(ValueError, match="at most 32 characters"):
        attention_pattern_figure(model, "x" * 33)
    with pytest.raises(ValueError, match=r"layer must be None \(all\) or an int in \[0, 1\]"):
        attention_pattern_figure(model, TEXT, layer=2)
    with pytest.raises(TypeError, match="expected a GPT"):
        attention_pattern_figure(torch.nn.Linear(2, 2), TEXT)


def test_the_attention_explorer_redraws_and_shows_a_message_for_bad_text(model):
    widget = attention_explorer(model, TEXT)
    assert widget.update_count == 1 and len(widget.figure.axes) == CONFIG.heads  # layer 1, all heads
    widget.controls["head"].value = 1
    assert widget.update_count == 2 and len(widget.figure.axes) == 1
    widget.controls["text"].value = "x" * 40
    assert "at most 32" in widget.figure.axes[0].texts[0].get_text()
    widget.controls["text"].value = ""
    assert "type a text" in widget.figure.axes[0].texts[0].get_text()


def test_the_cost_figure_plots_the_measured_rows_and_marks_n():
    fig = attention_cost_figure(rows(), 256)
    time_ax, memory_ax = fig.axes
    explicit = time_ax.get_lines()[0]
    assert list(explicit.get_xdata()) == [128, 256, 512]
    assert np.allclose(explicit.get_ydata(), [1e-3 * n * n for n in (128, 256, 512)])
    assert list(memory_ax.get_lines()[1].get_xdata()) == [128, 512], "a missing reading is left out"
    title = fig._suptitle.get_text()
    assert "explicit 65.54 ms, 0.50 MiB" in title and "fused 2.56 ms, n/a" in title
    assert any(list(line.get_xdata()) == [256, 256] for line in time_ax.get_lines()), "n is marked"
    plt.close(fig)
    with pytest.raises(ValueError, match=r"one of the measured lengths \[128, 256, 512\]"):
        attention_cost_figure(rows(), 300)
    with pytest.raises(ValueError, match="got none"):
        attention_cost_figure([], 128)
    widget = attention_cost_explorer(rows())
    widget.controls["n"].value = 512
    assert widget.update_count == 2 and "n = 512" in widget.figure._suptitle.get_text()


def test_the_cache_figure_follows_the_trace(model):
    trace = cache_trace(model, TOKENIZER.encode("def "), 10)
    fig = kv_cache_figure(trace, 3, layer=1)
    strip, bars, growth, work = fig.axes
    t = trace["length"][3]
    assert t == 7 and len(bars.patches) == t
    expected = trace["weights"][1][:, t - 1, :t].mean(0).numpy()
    assert np.allclose([p.get_height() for p in bars.patches], expected)
    assert np.isclose(sum(p.get_height() for p in bars.patches), 1.0), "the newest query's weights sum to one"
    assert np.allclose(growth.get_lines()[0].get_ydata(), [b / 1024 for b in trace["bytes"][:4]])
    cached, uncached = (line.get_ydata() for line in work.get_lines())
    assert list(cached) == [4, 5, 6, 7] and list(uncached) == [4, 9, 15, 22]
    plt.close(fig)
    with pytest.raises(ValueError, match=r"step must be an int in \[0, 9\]"):
        kv_cache_figure(trace, 10)
    with pytest.raises(ValueError, match="cache_trace"):
        kv_cache_figure({"ids": []}, 0)
    widget = kv_cache_explorer(trace)
    widget.controls["step"].value = 9
    assert widget.update_count == 2 and "step 9" in widget.figure.axes[0].get_title()
