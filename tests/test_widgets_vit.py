"""Chapter 6's widgets: the class token's attention by layer and head, the ViT beside RAM, the layer animation, and
the distractor explorer; every share a figure prints is attention_on_digit's."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from attn_course.experiments.ram import inside_boxes  # noqa: E402
from attn_course.experiments.vit import attention_on_digit  # noqa: E402
from attn_course.ram import PAPER_CONFIGS, RAMConfig, RecurrentAttentionModel, glimpse_paths  # noqa: E402
from attn_course.vit import ViT, ViTConfig, attention_maps, attention_rollout  # noqa: E402
from attn_course.widgets.vit import (DISTRACTOR_COLOR, class_token_figure, distractor_figure,  # noqa: E402
                                     distractor_from, layer_animation, layer_figure, paste, vit_beside_ram_figure,
                                     vit_explorer)
from mnist_files import needs_mnist  # noqa: E402

CONFIG = ViTConfig(image_size=60, patch=12, d_model=128, depth=4, heads=4, mlp_ratio=2)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return ViT(CONFIG).eval(), RecurrentAttentionModel(PAPER_CONFIGS["cluttered60"]).eval()


def canvases(n: int = 3):
    """``n`` 60 x 60 canvases, each a textured 28 x 28 square (the "digit") at its own place, and the boxes."""
    generator = torch.Generator().manual_seed(1)
    images, boxes = torch.zeros(n, 1, 60, 60), []
    for i, (x, y) in enumerate([(20, 10), (3, 30), (30, 25)][:n]):
        images[i, 0, y:y + 28, x:x + 28] = torch.rand(28, 28, generator=generator)
        boxes.append([x, y, x + 28, y + 28])
    return images, torch.tensor(boxes, dtype=torch.float32)


def share(title: str, what: str = "digit") -> str:
    """The "41.2%" before " on the <what>" in a title."""
    return title.split(f" on the {what}")[0].split()[-1]


def red(ax):
    return [p for p in ax.patches if p.get_edgecolor() == to_rgba(DISTRACTOR_COLOR)]


def test_class_token_figure_shows_every_layer_and_head_with_attention_on_digits_shares(models):
    vit, _ = models
    images, boxes = canvases(1)
    fig = class_token_figure(vit, images[0], boxes[0], label=4)
    L, h, G = CONFIG.depth, CONFIG.heads, CONFIG.grid
    assert len(fig.axes) == L * (h + 1)
    shares = attention_on_digit(vit, images, boxes)
    A = attention_maps(vit, images)
    for l in range(L):
        for j in range(h + 1):
            ax = fig.axes[l * (h + 1) + j]
            expected = shares["per_head"][0, l, j] if j < h else shares["per_layer"][0, l]
            assert share(ax.get_title()) == f"{float(expected):.1%}"
            weights = A[l][0, j, 0, 1:] if j < h else A[l][0, :, 0, 1:].mean(0)
            assert np.allclose(ax.images[1].get_array(), weights.reshape(G, G).numpy(), atol=1e-6)  # row by row
    predicted = int(vit(images).argmax())
    assert f"said {predicted} (p = " in fig._suptitle.get_text() and "label 4" in fig._suptitle.get_text()
    plt.close(fig)
    fig = class_token_figure(vit, images[0, 0])  # (H, W), no box: no shares
    assert len(fig.axes) == L * (h + 1) and "on the digit" not in fig.axes[0].get_title()
    plt.close(fig)


def test_vit_beside_ram_shows_the_rollout_and_rams_numbered_glimpses(models):
    vit, ram = models
    images, boxes = canvases(1)
    fig = vit_beside_ram_figure(vit, ram, images[0], boxes[0])
    assert len(fig.axes) == 2
    left, right = fig.axes
    assert share(left.get_title()) == f"{float(attention_on_digit(vit, images, boxes)['rollout'][0]):.1%}"
    rollout = attention_rollout(attention_maps(vit, images))[0, 0, 1:]
    assert np.allclose(left.images[1].get_array(), rollout.reshape(CONFIG.grid, CONFIG.grid).numpy(), atol=1e-6)
    paths = glimpse_paths(ram, images)
    T = PAPER_CONFIGS["cluttered60"].num_glimpses
    assert [t.get_text() for t in right.texts] == [str(t + 1) for t in range(T)]
    assert np.allclose(right.lines[0].get_xdata(), paths["pixels"][0, :, 0].numpy())
    hits = int(inside_boxes(paths["locations"], boxes, 60).sum())
    predicted = int(paths["predicted"][0])
    assert f"{hits} on the digit" in right.get_title()
    assert f"said {predicted} (p = {float(paths['probabilities'][0, -1, predicted]):.2f})" in right.get_title()
    side = sorted(right.patches, key=lambda p: p.get_width())[0].get_width()
    assert side == PAPER_CONFIGS["cluttered60"].glimpse_size  # the finest scale's patch
    plt.close(fig)


def test_paste_puts_the_patch_where_asked_and_leaves_the_image_alone():
    image = torch.full((1, 10, 12), 0.5)
    patch = torch.tensor([[0.0, 1.0, 0.25], [0.75, 0.5, 1.0]])
    out = paste(image, patch, x=4, y=7)
    assert out.shape == (1, 10, 12) and torch.equal(image, torch.full((1, 10, 12), 0.5))
    expected = image.clone()
    expected[0, 7:9, 4:7] = torch.tensor([[0.5, 1.0, 0.5], [0.75, 0.5, 1.0]])  # the maximum, pixel by pixel
    assert torch.equal(out, expected)
    flat = paste(torch.zeros(10, 12), patch, 9, 0)  # (H, W) stays (H, W); the last column that fits
    assert flat.shape == (10, 12) and torch.equal(flat[0:2, 9:12], patch) and flat.sum() == patch.sum()
    assert torch.equal(paste(torch.zeros(10, 12, dtype=torch.uint8), (patch * 255).byte(), 0, 0)[:2, :3],
                       (patch * 255).byte().float() / 255)


@pytest.mark.parametrize("patch, x, y, error, says", [
    (torch.ones(2, 3), 10, 0, ValueError, r"does not fit the image \(10 x 12\): x must lie in \[0, 9\]"),
    (torch.ones(2, 3), 0, 9, ValueError, r"y in \[0, 8\]"),
    (torch.ones(2, 3), -1, 0, ValueError, "does not fit"),
    (torch.ones(11, 3), 0, 0, ValueError, r"larger than the image \(10 x 12\)"),
    (torch.ones(1, 2, 3), 0, 0, ValueError, r"patch of shape \(h, w\)"),
    (torch.ones(0, 3), 0, 0, ValueError, r"patch of shape \(h, w\)"),
    (torch.ones(2, 3), 1.5, 0, TypeError, "x must be an int"),
    (torch.ones(2, 3), 0, True, TypeError, "y must be an int"),
])
def test_paste_rejects_what_does_not_fit(patch, x, y, error, says):
    with pytest.raises(error, match=says):
        paste(torch.zeros(10, 12), patch, x, y)


def test_distractor_from_crops_whole_pixels():
    image = torch.arange(60 * 60, dtype=torch.float32).reshape(1, 60, 60) / 3600
    crop = distractor_from(image, torch.tensor([10.0, 20.0, 22.0, 28.0]))
    assert torch.equal(crop, image[0, 20:28, 10:22])
    with pytest.raises(ValueError, match="whole pixels"):
        distractor_from(image, (10.5, 20, 22, 28))
    with pytest.raises(ValueError, match="outside the image"):
        distractor_from(image, (50, 50, 61, 60))
    with pytest.raises(ValueError, match="one-channel"):
        distractor_from(torch.zeros(3, 60, 60), (0, 0, 8, 8))
    with pytest.raises(ValueError, match="x0 < x1"):
        distractor_from(image, (8, 0, 8, 8))


def test_layer_animation_has_a_frame_per_layer_and_its_frames_agree_with_the_statistics(models):
    vit, _ = models
    images, boxes = canvases(1)
    open_before = plt.get_fignums()
    html = layer_animation(vit, images[0], boxes[0], interval=200)
    assert html.count("data:image/png;base64") == CONFIG.depth and "http" not in html
    assert plt.get_fignums() == open_before
    shares = attention_on_digit(vit, images, boxes)
    last = layer_figure(vit, images[0], CONFIG.depth - 1, boxes[0])
    first = layer_figure(vit, images[0], 0, boxes[0])
    assert len(last.axes) == 2
    assert share(last.axes[1].get_title()) == f"{float(shares['rollout'][0]):.1%}"  # all the layers: (6.7)
    assert share(first.axes[0].get_title()) == f"{float(shares['per_layer'][0, 0]):.1%}"
    assert not np.allclose(first.axes[1].images[1].get_array(), last.axes[1].images[1].get_array())
    plt.close("all")
    with pytest.raises(ValueError, match=r"layer must be in \[0, 3\]"):
        layer_figure(vit, images[0], CONFIG.depth, boxes[0])


def test_distractor_figure_measures_the_modified_canvas(models):
    vit, ram = models
    images, boxes = canvases(1)
    distractor = torch.ones(12, 12)
    fig = distractor_figure(vit, ram, images[0], boxes[0], distractor, 30, 4, layer=2, head=1)
    assert len(fig.axes) == 2
    left, right = fig.axes
    modified = paste(images[0], distractor, 30, 4)[None]
    assert np.allclose(left.images[0].get_array(), modified[0, 0].numpy())
    both = attention_on_digit(vit, modified.expand(2, -1, -1, -1),
                              torch.stack([boxes[0], torch.tensor([30.0, 4, 42, 16])]))  # the digit, the distractor
    assert share(left.get_title()) == f"{float(both['per_head'][0, 2, 1]):.1%}"
    assert share(left.get_title(), "distractor") == f"{float(both['per_head'][1, 2, 1]):.1%}"
    assert "ViT: layer 3, head 2" in left.get_title() and "on the distractor" in right.get_title()
    assert red(left)[0].get_xy() == (29.5, 3.5) and red(right)[0].get_width() == 12
    plt.close(fig)
    fig = distractor_figure(vit, ram, images[0], boxes[0], distractor, 30, 4)  # the last layer, heads averaged
    assert "layer 4, mean of heads" in fig.axes[0].get_title()
    assert share(fig.axes[0].get_title()) == f"{float(both['per_layer'][0, 3]):.1%}"
    plt.close(fig)


def test_explorer_redraws_and_its_figure_follows_the_distractor(models):
    vit, ram = models
    images, boxes = canvases(3)
    widget = vit_explorer(vit, ram, images, boxes, torch.ones(12, 12), labels=torch.tensor([1, 2, 3]))
    assert widget.update_count == 1 and "label 1" in widget.figure.axes[0].get_title()
    before = widget.figure.axes[0].images[0].get_array().copy()
    box_before = red(widget.figure.axes[0])[0].get_xy()
    widget.controls["dx"].value = 24
    assert widget.update_count == 2
    assert red(widget.figure.axes[0])[0].get_xy() == (23.5, box_before[1])
    assert not np.allclose(before, widget.figure.axes[0].images[0].get_array())  # the distractor moved on the canvas
    widget.controls["dy"].value = 48  # the last row that fits: 60 - 12
    assert red(widget.figure.axes[1])[0].get_xy() == (23.5, 47.5)
    widget.controls["head"].value = 2
    assert "head 3" in widget.figure.axes[0].get_title()
    widget.controls["index"].value = 2
    assert widget.update_count == 5 and "label 3" in widget.figure.axes[1].get_title()
    assert widget.controls["dx"].max == 48 and widget.controls["layer"].value == CONFIG.depth - 1
    assert widget.last_update_seconds < 5.0  # typically about 0.1 s on one CPU thread
    plt.close("all")


def test_bad_input_gets_clear_errors(models):
    vit, ram = models
    images, boxes = canvases(2)
    with pytest.raises(ValueError, match=r"expected an image of shape \(60, 60\) or \(1, 60, 60\), got \(1, 28, 28\)"):
        class_token_figure(vit, torch.zeros(28, 28))
    with pytest.raises(ValueError, match="x0 < x1"):
        class_token_figure(vit, images[0], (30, 10, 20, 38))
    with pytest.raises(TypeError, match="expected a ViT"):
        class_token_figure(ram, images[0])
    with pytest.raises(ValueError, match="same canvases"):
        vit_beside_ram_figure(vit, RecurrentAttentionModel(RAMConfig()), images[0])
    with pytest.raises(TypeError, match="RecurrentAttentionModel"):
        vit_beside_ram_figure(vit, vit, images[0])
    with pytest.raises(ValueError, match=r"head must be -1 \(the mean over heads\) or in \[0, 3\]"):
        distractor_figure(vit, ram, images[0], boxes[0], torch.ones(4, 4), 0, 0, head=4)
    with pytest.raises(ValueError, match=r"label must be a class in \[0, 9\]"):
        vit_beside_ram_figure(vit, ram, images[0], boxes[0], label=10)
    with pytest.raises(ValueError, match=r"boxes of shape \(2, 4\)"):
        vit_explorer(vit, ram, images, boxes[:1], torch.ones(4, 4))
    with pytest.raises(ValueError, match="larger than the image"):
        vit_explorer(vit, ram, images, boxes, torch.ones(61, 4))
    with pytest.raises(ValueError, match="non-empty batch"):
        vit_explorer(vit, ram, images[:0], boxes[:0], torch.ones(4, 4))


@needs_mnist
def test_a_crop_of_a_cluttered_canvas_slides_over_a_digit(models):
    from attn_course.data import load_mnist, make_variant

    vit, ram = models
    digits, labels = load_mnist("test")
    batch = make_variant("cluttered60", digits[:4], labels[:4], seed=0)
    x0, y0 = (int(v) for v in batch["boxes"][1, :2])
    distractor = distractor_from(batch["images"][1], (x0 + 8, y0 + 8, x0 + 20, y0 + 20))  # the middle of a digit
    assert distractor.shape == (12, 12) and distractor.max() > 0.5
    widget = vit_explorer(vit, ram, batch["images"][[0]], batch["boxes"][[0]], distractor, batch["labels"][[0]])
    x, y = (int(v) for v in batch["boxes"][0, :2])
    widget.controls["dx"].value, widget.controls["dy"].value = x + 8, y + 8  # onto the digit
    shown = widget.figure.axes[0].images[0].get_array()
    expected = torch.maximum(batch["images"][0, 0, y + 8:y + 20, x + 8:x + 20], distractor)
    assert np.allclose(shown[y + 8:y + 20, x + 8:x + 20], expected.numpy())
    assert widget.update_count == 3
    plt.close("all")
