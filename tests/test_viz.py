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


def test_plot_history_draws_a_shipped_cards_curves():
    """A model card keeps its history downsampled, as a History's state dict: plot_history takes it as it is."""
    from attn_course.checkpoints import PRETRAINED_DIR, read_card

    card = read_card(PRETRAINED_DIR / "ram-cluttered60.pt")
    fig, axes = viz.plot_history(card["history"])
    assert [ax.get_title() for ax in axes.flat] == ["loss", "accuracy", "reward_baseline_gap"]
    steps, values = card["history"]["accuracy"]["step"], card["history"]["accuracy"]["value"]
    line = axes.flat[1].lines[0]
    assert list(line.get_xdata()) == steps and list(line.get_ydata()) == values and steps[-1] == card["steps"]
    plt.close(fig)
    card = read_card(PRETRAINED_DIR / "conv-mnist28.pt")
    fig, axes = viz.plot_history(card["history"], ["accuracy"])
    assert len(axes.flat[0].lines) == 2  # training curve and the held-out evaluation
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


def test_image_grid_on_given_axes_is_one_mosaic():
    fig, ax = plt.subplots()
    images = [torch.full((3, 4), float(i) / 5) for i in range(5)]
    out_fig, out_ax = viz.image_grid(images, nrow=3, titles=list("abcde"), ax=ax, pad=1)
    assert out_ax is ax and out_fig is fig and len(fig.axes) == 1
    array = ax.images[0].get_array()
    assert array.shape == (2 * 3 + 1, 3 * 4 + 2)
    assert np.allclose(array[4:7, 5:9], 4 / 5) and np.allclose(array[4:7, 10:14], 0.0)  # 5th image, empty slot
    assert ax.get_title() == "a b c d e"
    with pytest.raises(ValueError, match="one shape"):
        viz.image_grid([torch.rand(3, 3), torch.rand(4, 4)], ax=ax)
    plt.close(fig)


def test_animate_takes_a_list_of_drawers_and_closes_its_figure():
    open_before = plt.get_fignums()
    seen = []
    drawers = [lambda ax, k=k: (seen.append(k), ax.plot([0, k], [0, 1])) for k in range(4)]
    html = viz.animate(drawers, interval=100, figsize=(2, 2))
    assert html.count("data:image/png;base64") >= 4 and set(seen) == {0, 1, 2, 3}
    assert "font-awesome" not in html and "anim-glyph" in html
    assert plt.get_fignums() == open_before
    with pytest.raises(ValueError, match="number of frames"):
        viz.animate(lambda ax, t: None)
    with pytest.raises(ValueError, match="num_frames=2 but 4"):
        viz.animate(drawers, num_frames=2)


def test_a_box_poking_out_of_the_image_keeps_the_image_frame():
    fig, ax = plt.subplots()
    viz.show_image(ax, torch.rand(10, 10))
    viz.draw_box(ax, torch.tensor([[-5.0, -5.0], [20, -5], [20, 20], [-5, 20]]))
    viz.draw_trajectory(ax, [(2, 2), (7, 7)])  # a later plot must not widen the view to the box either
    fig.canvas.draw()
    assert ax.get_xlim() == (-0.5, 9.5) and ax.get_ylim() == (9.5, -0.5)
    plt.close(fig)
    fig, ax = plt.subplots()
    viz.show_image(ax, torch.rand(10, 10))
    viz.draw_box(ax, (0, 0, 30, 30), keep_limits=False)
    ax.plot([1], [1])  # matplotlib's own behaviour: the next plot widens the view to the box
    fig.canvas.draw()
    assert ax.get_xlim()[1] > 9.5
    plt.close(fig)


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_viz_calls():
    ax = lambda: plt.subplots()[1]  # noqa: E731
    return [
        (ValueError, "ncol", lambda: viz.mosaic([torch.rand(4, 4)], 0)),
        (ValueError, "pad", lambda: viz.mosaic([torch.rand(4, 4)], 1, pad=-1)),
        (ValueError, "images must hold", lambda: viz.mosaic([], 2)),
        (ValueError, "nrow", lambda: viz.image_grid([torch.rand(4, 4)], nrow=0)),
        (ValueError, "size", lambda: viz.image_grid([torch.rand(4, 4)], size=0)),
        (ValueError, "image", lambda: viz.show_image(ax(), np.zeros((0, 4)))),
        (ValueError, r"\(H, W\)", lambda: viz.to_numpy(torch.rand(2, 2, 2, 2))),
        (ValueError, "alpha", lambda: viz.attention_heatmap(ax(), torch.rand(8, 8), torch.rand(2, 2), alpha=2.0)),
        (ValueError, "weights", lambda: viz.attention_heatmap(ax(), torch.rand(8, 8), torch.rand(2, 2, 2))),
        (ValueError, "row labels", lambda: viz.alignment_matrix(ax(), torch.rand(2, 3), ["a"])),
        (ValueError, "points", lambda: viz.draw_trajectory(ax(), [1, 2, 3])),
        (ValueError, r"names \['accuracy'\]", lambda: viz.plot_history(_history(), ["accuracy"])),
        (ValueError, "ncols", lambda: viz.animation_html(lambda axes, t: None, 2, ncols=0)),
        (ValueError, "interval", lambda: viz.animation_html(lambda axes, t: None, 2, interval=0)),
        (ValueError, "num_frames", lambda: viz.animation_html(lambda axes, t: None, 0)),
        (TypeError, "html", lambda: viz.offline_jshtml(None)),
    ]


def _history():
    history = History()
    history.log(1, loss=1.0)
    return history


BAD_VIZ_CALLS = _bad_viz_calls()


@pytest.mark.parametrize("error, match, call", BAD_VIZ_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_VIZ_CALLS)])
def test_bad_viz_input_gets_a_clear_error_naming_the_argument(error, match, call):
    try:
        with pytest.raises(error, match=match):
            call()
    finally:
        plt.close("all")
