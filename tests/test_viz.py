"""The shared drawing primitives draw what they are given."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attn_course import viz  # noqa: E402
from attn_course.history import History  # noqa: E402


def test_image_grid_layout_and_titles():
    fig, axes = viz.image_grid([torch.rand(28, 28)] * 5, nrow=3, titles=list("abcde"))
    assert axes.shape == (2, 3)
    assert [ax.get_title() for ax in axes.flat][:5] == list("abcde")
    assert not axes.flat[5].axison
    plt.close(fig)
    with pytest.raises(ValueError, match="2 titles for 5 images"):
        viz.image_grid([torch.rand(4, 4)] * 5, titles=["a", "b"])


def test_boxes_and_trajectories():
    fig, ax = plt.subplots()
    rect = viz.draw_box(ax, (2, 3, 12, 8))
    assert rect.get_xy() == (1.5, 2.5) and rect.get_width() == 10 and rect.get_height() == 5
    poly = viz.draw_box(ax, torch.tensor([[0.0, 0], [4, 0], [4, 4], [0, 4]]))
    assert np.allclose(poly.get_xy()[:4], [[0, 0], [4, 0], [4, 4], [0, 4]])
    viz.draw_trajectory(ax, [(1, 1), (5, 2), (9, 9)])
    first, last = ax.lines[1], ax.lines[2]
    assert first.get_markerfacecolor() != "none" and last.get_markerfacecolor() == "none"
    with pytest.raises(ValueError, match="4 corners"):
        viz.draw_box(ax, (1, 2, 3))
    plt.close(fig)


def test_heatmap_alignment_and_history():
    fig, ax = plt.subplots()
    viz.attention_heatmap(ax, torch.rand(28, 28), torch.rand(7, 7))
    assert len(ax.images) == 2 and ax.images[1].get_extent() == [-0.5, 27.5, 27.5, -0.5]
    image = viz.alignment_matrix(ax, torch.rand(3, 4), ["a", "b", "c"], list("wxyz"))
    assert image.get_array().shape == (3, 4)
    plt.close(fig)
    history = History()
    for step in range(1, 4):
        history.log(step * 10, loss=1.0 / step, accuracy=0.3 * step)
    history.log(30, eval_accuracy=0.85)
    fig, axes = viz.plot_history(history)
    assert [ax.get_title() for ax in axes.flat] == ["loss", "accuracy"]
    assert len(axes.flat[1].lines) == 2  # training curve and held-out points
    plt.close(fig)


def test_animation_is_self_contained_html():
    drawn = []

    def frame(ax, t):
        drawn.append(t)
        ax.imshow(np.full((4, 4), t / 3.0), vmin=0, vmax=1)

    html = viz.animation_html(frame, num_frames=3, figsize=(2, 2))
    assert "_anim_img" in html and html.count("data:image/png;base64") >= 3
    assert set(drawn) == {0, 1, 2}
    assert "http://" not in html and "https://" not in html
