"""Widgets: the pure figure function, and the sliders that redraw it."""

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attn_course.attention import glimpse  # noqa: E402
from attn_course.widgets import interactive_figure  # noqa: E402
from attn_course.widgets.glimpse import glimpse_explorer, glimpse_figure  # noqa: E402


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
    from attn_course.widgets.ram import sensor_explorer, sensor_figure

    image = torch.rand(60, 60)
    fig = sensor_figure(image, 0.0, 0.0, glimpse_size=12, num_scales=3)
    assert len(fig.axes) == 4 and len(fig.axes[0].patches) == 3
    widths = sorted(p.get_width() for p in fig.axes[0].patches)
    assert widths == [12, 24, 48]
    widget = sensor_explorer(torch.rand(3, 60, 60))
    widget.controls["num_scales"].value = 2
    assert len(widget.figure.axes) == 3


def test_policy_figure_spread_follows_sigma():
    from attn_course.widgets.ram import policy_explorer, policy_figure

    narrow = policy_figure(0.05).axes[0].collections[0].get_offsets()
    wide = policy_figure(0.4).axes[0].collections[0].get_offsets()
    assert np.std(narrow, axis=0).max() < 0.07 < np.std(wide, axis=0).min()
    widget = policy_explorer()
    widget.controls["std"].value = 0.3
    assert "0.30" in widget.figure.axes[0].get_title()
    with pytest.raises(ValueError, match="std must be positive"):
        policy_figure(0.0)


def test_trajectory_figure_and_explorer():
    from attn_course.widgets.ram import trajectory_explorer, trajectory_figure

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


def test_filterbank_figure_reads_and_writes_back():
    from attn_course.widgets.draw import filterbank_explorer, filterbank_figure

    image = torch.zeros(20, 28)  # non-square: B = 20 rows, A = 28 columns
    image[5:15, 10:14] = 1.0
    fig = filterbank_figure(image, g_X=14.5, g_Y=10.5, delta=1.0, sigma2=0.01, gamma=1.0, N=12)
    grid, F_X, F_Y, patch, back = fig.axes
    assert F_X.images[0].get_array().shape == (12, 28) and F_Y.images[0].get_array().shape == (12, 20)
    assert patch.images[0].get_array().shape == (12, 12)
    assert len(grid.lines) == 1 and len(grid.lines[0].get_xdata()) == 144  # the N x N grid centres
    # a 12 x 12 grid of stride 1 centred on the image, sharp Gaussians: the middle is read and written back exactly
    assert np.allclose(back.images[0].get_array()[4:16, 8:20], image[4:16, 8:20].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="must be positive"):
        filterbank_figure(image, 14.5, 10.5, delta=0.0, sigma2=1.0)
    widget = filterbank_explorer(torch.rand(2, 28, 28))
    widget.controls["N"].value = 3
    assert widget.figure.axes[3].images[0].get_array().shape == (3, 3)


def test_generation_figure_and_stepper():
    from attn_course.draw import DRAW, DRAWConfig
    from attn_course.widgets.draw import generation_figure, generation_stepper

    canvases = torch.rand(4, 28, 28)
    windows = torch.tensor([[14.5, 14.5, 2.0, 1.0, 1.0]]).repeat(4, 1)
    fig = generation_figure(canvases, 2, windows, N=5)
    assert "t = 3 of 4" in fig.axes[0].get_title() and len(fig.axes[0].patches) == 1
    assert np.allclose(fig.axes[1].images[0].get_array(), (canvases[2] - canvases[1]).numpy())
    with pytest.raises(ValueError, match="step must be in"):
        generation_figure(canvases, 4, windows)
    model = DRAW(DRAWConfig(T=3, enc_size=16, dec_size=16, z_size=4))
    widget = generation_stepper(model, num_seeds=3)
    assert "t = 3 of 3" in widget.figure.axes[0].get_title()
    widget.controls["step"].value = 1
    assert "t = 1 of 3" in widget.figure.axes[0].get_title()
    widget.controls["seed"].value = 2
    assert widget.update_count == 3


# --------------------------------------------------------------------------- chapter 5: the Transformer


def _small_transformer():
    from attn_course.data.sequences import VOCAB_SIZE
    from attn_course.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=VOCAB_SIZE, d_model=16, heads=2, d_ff=32, encoder_layers=2,
                                         decoder_layers=1, dropout=0.0, max_len=40)).eval()


def test_transformer_attention_figure_shows_the_chosen_matrix():
    from attn_course.widgets.transformer import attention_grid_figure, transformer_attention_figure

    maps = {"encoder": torch.softmax(torch.randn(2, 3, 5, 5), -1), "decoder": torch.softmax(torch.randn(1, 3, 4, 4), -1),
            "cross": torch.softmax(torch.randn(1, 3, 4, 5), -1)}
    fig = transformer_attention_figure(maps, "abcde", "xyz", "cross", layer=0, head=1)
    assert np.allclose(fig.axes[0].images[0].get_array(), maps["cross"][0, 1])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["x", "y", "z", "</s>"]
    mean = transformer_attention_figure(maps, "abcde", "xyz", "encoder", layer=1, head=-1)
    assert np.allclose(mean.axes[0].images[0].get_array(), maps["encoder"][1].mean(0))
    assert len(attention_grid_figure(maps, "abcde", "xyz", "encoder").axes) == 6
    with pytest.raises(ValueError, match="layer must be in"):
        transformer_attention_figure(maps, "abcde", "xyz", "decoder", layer=1)
    with pytest.raises(ValueError, match="kind must be"):
        transformer_attention_figure(maps, "abcde", "xyz", "self")


@pytest.mark.slow
def test_date_explorer_follows_the_text_and_the_controls():
    from attn_course.widgets.transformer import date_attention_figure, date_explorer

    model = _small_transformer()
    fig = date_attention_figure(model, "3 May 1999", "encoder", 1, 0)
    assert fig.axes[0].images[0].get_array().shape == (10, 10)
    widget = date_explorer(model, text="1.2.2003")
    assert widget.figure.axes[0].images[0].get_array().shape[1] == len("1.2.2003")  # cross: source across
    widget.controls["text"].value = "24 November 2026"
    assert widget.figure.axes[0].images[0].get_array().shape[1] == len("24 November 2026")
    widget.controls["kind"].value = "decoder"
    shape = widget.figure.axes[0].images[0].get_array().shape
    assert shape[0] == shape[1]
    widget.controls["layer"].value = 1  # the decoder has one layer: the figure shows its last
    widget.controls["text"].value = "24 Nov ½"  # not in the vocabulary: a message, not an exception
    assert "not in the vocabulary" in widget.figure.axes[0].texts[0].get_text()
    assert widget.last_update_seconds < 2.0


def test_positional_encoding_figure_and_explorer():
    from attn_course.widgets.transformer import positional_encoding_explorer, positional_encoding_figure

    fig = positional_encoding_figure(d_model=32, position=4, offset=3, max_len=40)
    assert fig.axes[0].images[0].get_array().shape == (40, 32)
    assert float(fig.axes[1].get_title().split("= ")[-1]) < 1e-4  # M_k PE(pos) = PE(pos + k)
    with pytest.raises(ValueError, match="must lie in"):
        positional_encoding_figure(position=60, offset=10, max_len=64)
    widget = positional_encoding_explorer()
    widget.controls["d_model"].value = 16
    assert widget.figure.axes[0].images[0].get_array().shape == (64, 16)


@pytest.mark.slow
def test_softmax_scaling_figure_and_explorer():
    from attn_course.transformer import softmax_statistics
    from attn_course.widgets.transformer import softmax_scaling_explorer, softmax_scaling_figure

    fig = softmax_scaling_figure(d_k=256)
    scaled = [p.get_height() for p in fig.axes[0].patches[:16]]
    unscaled = [p.get_height() for p in fig.axes[0].patches[16:]]
    assert max(unscaled) > max(scaled)  # without 1/sqrt(d_k) the weights pile onto one key
    big, small = softmax_statistics(512, scaled=False), softmax_statistics(512, scaled=True)
    assert big["gradient_norm"] < small["gradient_norm"] / 2 and big["entropy"] < small["entropy"]
    widget = softmax_scaling_explorer()
    widget.controls["d_k"].value = 4
    assert "d_k = 4" in widget.figure.axes[0].get_title()


@pytest.mark.slow
def test_caption_widgets_follow_the_model_and_the_controls():
    from attn_course.data.scenes import ShapeScenes, compose_scene
    from attn_course.show_attend_tell import SATConfig, ShowAttendTell, caption_with_attention
    from attn_course.widgets.show_attend_tell import caption_attention_figure, scene_explorer

    torch.manual_seed(0)
    models = {"soft": ShowAttendTell(SATConfig(attention="soft")).eval(),
              "hard": ShowAttendTell(SATConfig(attention="hard")).eval()}
    images = ShapeScenes(seed=0, train_size=8, val_size=4, test_size=4).batch("test", slice(0, 4))["images"]
    result = caption_with_attention(models["soft"], images[:2])
    assert len(result) == 2
    for one in result:
        n = len(one["words"])
        assert one["alpha"].shape == (n, models["soft"].config.L) and one["beta"].shape == (n,) and one["s"].shape == (n,)
        assert torch.allclose(one["alpha"].sum(-1), torch.ones(n), atol=1e-5)
    fig = caption_attention_figure(images[0], result[0], "soft")
    assert sum(ax.get_title() != "" for ax in fig.axes) == len(result[0]["words"]) + 1  # the image, then each word
    hard = caption_attention_figure(images[0], caption_with_attention(models["hard"], images[:1])[0], "hard")
    assert len(hard.axes[1].patches) == 1  # the cell the hard model read

    composed = compose_scene([("large", "red", "circle", 20, 20), ("small", "blue", "square", 44, 44)])
    assert composed.shape == (3, 64, 64)
    assert torch.allclose(composed[:, 20, 20], torch.tensor([0.90, 0.15, 0.15]))  # red at the circle's centre
    with pytest.raises(ValueError, match="unknown colour"):
        compose_scene([("large", "purple", "circle", 20, 20)])
    with pytest.raises(ValueError, match="inside"):
        compose_scene([("large", "red", "circle", 80, 20)])

    widget = scene_explorer(models, images)
    first = widget.figure
    widget.controls["scene"].value = 2
    widget.controls["compose"].value = True
    widget.controls["model"].value = "hard"
    assert widget.update_count == 4 and widget.figure is not first
    assert widget.last_update_seconds < 5


def test_text_line_explorer_reads_and_reports_bad_strings():
    from attn_course.data.text_lines import render_line
    from attn_course.r2am import R2AM, R2AMConfig
    from attn_course.widgets.r2am import receptive_field_figure, text_line_explorer

    torch.manual_seed(0)
    model = R2AM(R2AMConfig(c1=8, c2=8, D=16, m=8, n=16, att_hidden=8)).eval()
    widget = text_line_explorer({"tiny": model}, text="abc")
    assert widget.update_count == 1 and widget.figure is not None
    widget.controls["text"].value = "caf\u00e9"
    texts = [t.get_text() for ax in widget.figure.axes for t in ax.texts]
    assert any("outside the alphabet" in t for t in texts)
    widget.controls["text"].value = "hello"
    widget.controls["rotation"].value = -5.0
    assert widget.update_count == 4
    upright, turned = render_line("hello")["images"], render_line("hello", rotation=-5.0)["images"]
    assert not torch.allclose(upright, turned)
    figure = receptive_field_figure(T=1, column=12)
    assert "37 pixels" in figure.axes[0].get_title()
    with pytest.raises(ValueError, match="T must"):
        receptive_field_figure(T=9)


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _tiny_reader():
    from attn_course.r2am import R2AM, R2AMConfig

    torch.manual_seed(0)
    return R2AM(R2AMConfig(c1=4, c2=4, D=8, m=4, n=8, att_hidden=4)).eval()


def _bad_widget_calls():
    import matplotlib.pyplot as plt

    from attn_course import r2am, show_attend_tell, widgets
    from attn_course.data import scenes, text_lines
    from attn_course.widgets import draw as draw_w
    from attn_course.widgets import glimpse as glimpse_w
    from attn_course.widgets import r2am as r2am_w
    from attn_course.widgets import ram as ram_w
    from attn_course.widgets import show_attend_tell as sat_w
    from attn_course.widgets import transformer as transformer_w

    image, images = torch.rand(28, 28), torch.rand(2, 28, 28)
    maps = {"cross": torch.rand(1, 2, 3, 4)}
    result = {"words": ["a", "<eos>"], "alpha": torch.rand(2, 16), "beta": torch.rand(2), "s": torch.zeros(2)}
    run = {"images": images, "labels": torch.tensor([1, 2]), "pixels": torch.rand(2, 3, 2),
           "probabilities": torch.rand(2, 3, 10), "glimpse_size": 8, "num_scales": 1}
    ax = lambda: plt.subplots()[1]  # noqa: E731
    return [
        (TypeError, "fn", lambda: widgets.interactive_figure(None, x=None)),
        (ValueError, "size", lambda: glimpse_w.glimpse_explorer(images, size=0)),
        (ValueError, "num_scales", lambda: ram_w.sensor_figure(image, 0.0, 0.0, 8, num_scales=0)),
        (ValueError, "glimpse_size", lambda: ram_w.sensor_figure(image, 0.0, 0.0, glimpse_size=0)),
        (ValueError, "x must", lambda: ram_w.sensor_figure(image, 1.5, 0.0)),
        (ValueError, "glimpse_size", lambda: ram_w.sensor_explorer(images, glimpse_size=40)),
        (ValueError, "num_scales", lambda: ram_w.sensor_explorer(images, num_scales=0)),
        (ValueError, "std", lambda: ram_w.policy_figure(float("inf"))),
        (ValueError, "mu", lambda: ram_w.policy_figure(0.1, mu=(0.1,))),
        (ValueError, "num_samples", lambda: ram_w.policy_figure(0.1, num_samples=0)),
        (ValueError, "label", lambda: ram_w.trajectory_figure(image, torch.rand(3, 2), torch.rand(3, 10), 0, 8, 1, 10)),
        (ValueError, "num_scales", lambda: ram_w.trajectory_figure(image, torch.rand(3, 2), torch.rand(3, 10), 0, 8,
                                                                   0)),
        (ValueError, "run 'a'", lambda: ram_w.trajectory_explorer({"a": {**run, "labels": torch.tensor([1])}})),
        (ValueError, "N must", lambda: draw_w.draw_window(ax(), [14.0, 14.0, 2.0, 1.0, 1.0], 0)),
        (ValueError, "window", lambda: draw_w.draw_window(ax(), [14.0, 14.0, 2.0, -1.0, 1.0], 5)),
        (ValueError, "sigma2", lambda: draw_w.filterbank_figure(image, 14.0, 14.0, 2.0, 0.0)),
        (ValueError, "delta", lambda: draw_w.filterbank_figure(image, 14.0, 14.0, float("nan"), 1.0)),
        (ValueError, "g_X", lambda: draw_w.filterbank_figure(image, float("inf"), 14.0, 2.0, 1.0)),
        (ValueError, "N must", lambda: draw_w.filterbank_figure(image, 14.0, 14.0, 2.0, 1.0, N=1)),
        (ValueError, "N must", lambda: draw_w.filterbank_explorer(images, N=20)),
        (ValueError, "windows", lambda: draw_w.generation_figure(torch.rand(4, 28, 28), 0, windows=torch.rand(3, 5))),
        (ValueError, "initial", lambda: draw_w.generation_figure(torch.rand(4, 28, 28), 0, initial=torch.rand(5, 5))),
        (TypeError, "model", lambda: draw_w.generation_stepper(object())),
        (ValueError, "kind", lambda: transformer_w.attention_grid_figure(maps, "ab", "abc", kind="self")),
        (ValueError, "maps", lambda: transformer_w.attention_grid_figure(maps, "ab", "abc", kind="encoder")),
        (ValueError, "layer", lambda: transformer_w.transformer_attention_figure(maps, "ab", "abc", layer=5)),
        (ValueError, "head", lambda: transformer_w.transformer_attention_figure(maps, "ab", "abc", head=2)),
        (TypeError, "model", lambda: transformer_w.date_explorer(object())),
        (ValueError, "d_model", lambda: transformer_w.positional_encoding_figure(d_model=7)),
        (ValueError, "max_len", lambda: transformer_w.positional_encoding_figure(max_len=0)),
        (ValueError, "position", lambda: transformer_w.positional_encoding_figure(position=64)),
        (ValueError, "max_len", lambda: transformer_w.positional_encoding_explorer(max_len=1)),
        (ValueError, "d_k", lambda: transformer_w.softmax_scaling_figure(d_k=0)),
        (ValueError, "temperature", lambda: transformer_w.softmax_scaling_figure(temperature=0.0)),
        (ValueError, "num_keys", lambda: transformer_w.softmax_scaling_figure(num_keys=0)),
        (TypeError, "model", lambda: show_attend_tell.caption_with_attention(object(), torch.rand(1, 3, 64, 64))),
        (ValueError, "alpha", lambda: sat_w.draw_word_attention(ax(), torch.rand(3, 64, 64), "a", torch.rand(5))),
        (ValueError, "mode", lambda: sat_w.draw_word_attention(ax(), torch.rand(3, 64, 64), "a", torch.rand(4),
                                                               mode="x")),
        (ValueError, "s must", lambda: sat_w.draw_word_attention(ax(), torch.rand(3, 64, 64), "a", torch.rand(4), s=4,
                                                                 mode="hard")),
        (ValueError, "mode", lambda: sat_w.caption_attention_figure(torch.rand(3, 64, 64), result, mode="medium")),
        (ValueError, "ncols", lambda: sat_w.caption_attention_figure(torch.rand(3, 64, 64), result, ncols=0)),
        (ValueError, "result", lambda: sat_w.caption_attention_figure(torch.rand(3, 64, 64), {"words": ["a"]})),
        (ValueError, r"objects\[0\]", lambda: scenes.compose_scene([("small", "red", "circle", 10)])),
        (ValueError, "colour 'purple'.*red", lambda: scenes.compose_scene([("small", "purple", "circle", 10, 10)])),
        (ValueError, "image_size", lambda: scenes.compose_scene([("small", "red", "circle", 5, 5)], image_size=8)),
        (ValueError, "models", lambda: sat_w.scene_explorer({}, torch.rand(2, 3, 64, 64))),
        (ValueError, "font 'Comic'.*DejaVu Sans", lambda: text_lines.render_line("abc", font="Comic")),
        (ValueError, "noise", lambda: text_lines.render_line("abc", noise=-0.1)),
        (ValueError, "blur", lambda: text_lines.render_line("abc", blur=float("nan"))),
        (ValueError, "rotation", lambda: text_lines.render_line("abc", rotation=float("inf"))),
        (ValueError, r"image must be one text line .*\(1, 64, 50\)", lambda: r2am.read_line(_tiny_reader(),
                                                                                            torch.zeros(1, 64, 50))),
        (ValueError, "polarity", lambda: r2am.read_line(_tiny_reader(), torch.zeros(32, 100), polarity="inverted")),
        (ValueError, "images must lie in", lambda: r2am.read_line(_tiny_reader(), torch.full((32, 100), 255.0))),
        (TypeError, "model", lambda: r2am.read_line(object(), torch.zeros(32, 100))),
        (ValueError, "image must be one text line",
         lambda: r2am_w.reading_figure(torch.zeros(64, 50), {"text": "", "alpha": torch.rand(1, 25)})),
        (ValueError, "result", lambda: r2am_w.reading_figure(torch.zeros(32, 100), {"text": ""})),
        (ValueError, "models", lambda: r2am_w.text_line_explorer({})),
        (ValueError, "column", lambda: r2am_w.receptive_field_figure(column=99)),
        (ValueError, "column", lambda: r2am_w.receptive_field_figure(column=-1)),
        (ValueError, "T must", lambda: r2am_w.receptive_field_figure(T=-1)),
    ]


BAD_WIDGET_CALLS = _bad_widget_calls()


@pytest.mark.parametrize("error, match, call", BAD_WIDGET_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_WIDGET_CALLS)])
def test_bad_widget_input_gets_a_clear_error_naming_the_argument(error, match, call):
    import matplotlib.pyplot as plt

    try:
        with pytest.raises(error, match=match):
            call()
    finally:
        plt.close("all")
