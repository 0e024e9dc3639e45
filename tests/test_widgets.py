"""Widgets: the pure figure function, and the sliders that redraw it."""

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attn_course.attention import glimpse  # noqa: E402
from attn_course.widgets import glimpse_explorer, glimpse_figure, interactive_figure  # noqa: E402


def digit():
    image = torch.zeros(28, 28)
    image[6:22, 12:16] = 1.0  # a bar, like a "1"
    return image


def test_glimpse_figure_draws_the_box_and_the_glimpse():
    fig = glimpse_figure(digit(), x=0.0, y=0.0, scale=0.5, angle=90.0, size=14)
    left, right = fig.axes
    box = left.patches[0].get_xy()[:4]
    assert np.allclose(sorted(map(tuple, box)), sorted([(6.5, 6.5), (20.5, 6.5), (20.5, 20.5), (6.5, 20.5)]),
                       atol=1e-4)
    shown = right.images[0].get_array()
    expected = glimpse(digit()[None, None], 0.0, 0.0, 0.5, math.pi / 2, 14)[0, 0].numpy()
    assert np.allclose(shown, expected)
    assert shown.sum(1).max() > shown.sum(0).max()  # the vertical bar became horizontal


def test_explorer_redraws_when_a_slider_moves():
    images = torch.stack([digit(), digit().T])
    widget = glimpse_explorer(images, size=14)
    before = widget.figure.axes[1].images[0].get_array().copy()
    widget.controls["index"].value = 1
    after = widget.figure.axes[1].images[0].get_array()
    assert not np.allclose(before, after)
    widget.controls["x"].value = 0.5
    corners = widget.figure.axes[0].patches[0].get_xy()[:4]
    assert np.isclose(np.mean(corners[:, 0]), (0.5 + 1) * 14 - 0.5)
    assert widget.update_count == 3  # the first drawing and one per slider move
    widget.controls["angle"].value = 90.0
    assert widget.update_count == 4 and len(widget.figure.axes[0].patches) == 1
    assert widget.last_update_seconds < 2.0  # typically under 0.1 s; generous for a loaded CI machine


def test_interactive_figure_needs_controls_and_checks_images():
    with pytest.raises(ValueError, match="at least one control"):
        interactive_figure(lambda: None)
    with pytest.raises(ValueError, match="non-empty batch"):
        glimpse_explorer(torch.zeros(0, 28, 28))


def test_sensor_figure_and_explorer():
    from attn_course.widgets import sensor_explorer, sensor_figure

    image = torch.rand(60, 60)
    fig = sensor_figure(image, 0.0, 0.0, glimpse_size=12, num_scales=3)
    assert len(fig.axes) == 4 and len(fig.axes[0].patches) == 3
    widths = sorted(p.get_width() for p in fig.axes[0].patches)
    assert widths == [12, 24, 48]
    widget = sensor_explorer(torch.rand(3, 60, 60))
    widget.controls["num_scales"].value = 2
    assert len(widget.figure.axes) == 3


def test_policy_figure_spread_follows_sigma():
    from attn_course.widgets import policy_explorer, policy_figure

    narrow = policy_figure(0.05).axes[0].collections[0].get_offsets()
    wide = policy_figure(0.4).axes[0].collections[0].get_offsets()
    assert np.std(narrow, axis=0).max() < 0.07 < np.std(wide, axis=0).min()
    widget = policy_explorer()
    widget.controls["std"].value = 0.3
    assert "0.30" in widget.figure.axes[0].get_title()
    with pytest.raises(ValueError, match="std must be positive"):
        policy_figure(0.0)


def test_trajectory_figure_and_explorer():
    from attn_course.widgets import trajectory_explorer, trajectory_figure

    pixels = torch.tensor([[29.5, 29.5], [10.0, 12.0], [15.0, 14.0]])
    probabilities = torch.softmax(torch.randn(3, 10), -1)
    fig = trajectory_figure(torch.rand(60, 60), pixels, probabilities, step=1, glimpse_size=12, num_scales=3, label=4)
    left, right = fig.axes
    assert sorted(p.get_width() for p in left.patches) == [12, 24, 48]  # the three scales of glimpse 2
    assert np.allclose([bar.get_height() for bar in right.patches], probabilities[1])
    assert right.patches[4].get_facecolor() != right.patches[3].get_facecolor()  # the true class stands out
    with pytest.raises(ValueError, match="step must be in"):
        trajectory_figure(torch.rand(60, 60), pixels, probabilities, step=3, glimpse_size=12, num_scales=3)

    runs = {"a": {"images": torch.rand(2, 60, 60), "labels": torch.tensor([1, 2]), "pixels": pixels[None].repeat(2, 1, 1),
                  "probabilities": probabilities[None].repeat(2, 1, 1), "glimpse_size": 12, "num_scales": 3},
            "b": {"images": torch.rand(4, 28, 28), "labels": torch.arange(4), "pixels": pixels[None, :2].repeat(4, 1, 1),
                  "probabilities": probabilities[None, :2].repeat(4, 1, 1), "glimpse_size": 8, "num_scales": 1}}
    widget = trajectory_explorer(runs)
    assert "glimpse 3 of 3" in widget.figure.axes[0].get_title()
    widget.controls["dataset"].value = "b"
    assert "glimpse 2 of 2" in widget.figure.axes[0].get_title() and len(widget.figure.axes[0].patches) == 1
    widget.controls["glimpse"].value = 1
    assert "glimpse 1 of 2" in widget.figure.axes[0].get_title()
    with pytest.raises(ValueError, match="lacks"):
        trajectory_explorer({"a": {"images": torch.rand(1, 28, 28)}})
