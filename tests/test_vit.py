"""Chapter 6: the Vision Transformer's patches (6.1)-(6.2), blocks, positions (6.6), rollout (6.7), counted cost (6.8),
the schedule (6.9), the chapter's analysis and RAM's counted cost, training and the command line."""

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attn_course.baselines import classification_loss
from attn_course.experiments.vit import (COURSE_CONFIGS, RECIPES, SEARCH_CANDIDATES, SEARCH_STEPS,
                                         TARGETS, attention_on_digit, attention_statistics, counted_multiply_adds,
                                         digit_overlap, error_rate, multiply_adds_ram, read_search, search_row)
from attn_course.ram import PAPER_CONFIGS, RAMConfig, RecurrentAttentionModel
from attn_course.transformer import positional_encoding
from attn_course.vit import (E_from_conv_weight, PatchEmbedding, ViT, ViTConfig, attention_maps, attention_rollout,
                             class_token_attention, conv_weight_from_E, multiply_adds, parameter_count, patches,
                             sinusoidal_2d, vit_optimizer, warmup_cosine)
from mnist_files import needs_mnist

SMALL = ViTConfig(image_size=12, patch=3, d_model=16, depth=2, heads=2, mlp_ratio=2)


# --------------------------------------------------------------------------- (6.1), (6.2) patches


def test_patches_are_numbered_row_by_row_and_flattened_channel_first():
    images = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 2, 4, 6)
    x_p = patches(images, 2)
    assert x_p.shape == (2, 6, 8)  # N = 2 rows x 3 columns of 2 x 2 patches, C P^2 = 8
    # patch 1 is row 0, column 1: pixels (0..1, 2..3); entry (c P + u) P + v is pixel (u, 2 + v) of channel c
    for c in range(2):
        for u in range(2):
            for v in range(2):
                assert x_p[1, 1, (c * 2 + u) * 2 + v] == images[1, c, u, 2 + v]
    assert torch.equal(x_p[0, 3], images[0, :, 2:4, 0:2].reshape(-1))  # patch 3: row 1, column 0


def test_linear_and_conv_forms_compute_the_same_map():
    torch.manual_seed(0)
    images = torch.randn(3, 2, 12, 18)
    linear = PatchEmbedding(2, 6, 10, form="linear")
    conv = linear.converted()
    assert conv.form == "conv" and hasattr(conv, "conv") and not hasattr(conv, "E")
    out = linear(images)
    assert out.shape == (3, 6, 10)
    assert torch.allclose(conv(images), out, atol=1e-5), "(6.2): the strided convolution is x_p E"
    back = conv.converted()
    assert torch.equal(back.E.weight, linear.E.weight) and torch.equal(back.E.bias, linear.E.bias)
    # the conversion functions are each other's inverse, and the conv kernel is E reshaped
    E = linear.weight_E
    assert torch.equal(E_from_conv_weight(conv_weight_from_E(E, 2, 6)), E)
    assert torch.allclose(F.conv2d(images, conv_weight_from_E(E, 2, 6), stride=6).flatten(2).transpose(1, 2),
                          patches(images, 6) @ E, atol=1e-5)


def test_patch_embedding_refuses_what_it_cannot_cut():
    with pytest.raises(ValueError, match="must divide"):
        patches(torch.zeros(1, 1, 10, 10), 3)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        PatchEmbedding(2, 2, 4)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="'linear' or 'conv'"):
        PatchEmbedding(1, 2, 4, form="unfold")
    with pytest.raises(ValueError, match="must divide the image side"):
        ViTConfig(image_size=60, patch=7)
    with pytest.raises(ValueError, match="divisible by 4"):
        ViTConfig(d_model=18, heads=2, position="sinusoidal")


# --------------------------------------------------------------------------- (6.6) positions


def test_sinusoidal_2d_is_chapter_5s_encoding_per_axis():
    table = sinusoidal_2d(3, 5, 16)
    assert table.shape == (15, 16)
    pe = positional_encoding(5, 8)  # (5.4) of half the width
    for i in range(15):
        row, col = divmod(i, 5)
        assert torch.allclose(table[i, :8], pe[row], atol=1e-6) and torch.allclose(table[i, 8:], pe[col], atol=1e-6)
    assert len(set(map(tuple, table.tolist()))) == 15, "every patch gets its own position"


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_positions_are_learned_or_fixed(position):
    model = ViT(ViTConfig(**{**SMALL.__dict__, "position": position}))
    names = {name for name, _ in model.named_parameters()}
    assert ("E_pos" in names) == (position == "learned")
    assert model.E_pos.shape == (1, SMALL.tokens, SMALL.d_model)
    if position == "sinusoidal":
        assert torch.equal(model.E_pos[0, 0], torch.zeros(SMALL.d_model))  # the class token gets no position
        assert "E_pos" not in model.state_dict()


# --------------------------------------------------------------------------- the model


def test_shapes_and_the_two_attention_paths_agree():
    torch.manual_seed(0)
    model = ViT(SMALL).eval()
    images = torch.rand(4, 1, 12, 12)
    logits = model(images)
    assert logits.shape == (4, 10)
    written_out, attentions = model(images, return_attention=True)
    assert torch.allclose(written_out, logits, atol=1e-5), "the fused kernel and (5.1) written out must agree"
    assert len(attentions) == SMALL.depth
    assert all(A.shape == (4, SMALL.heads, SMALL.tokens, SMALL.tokens) for A in attentions)
    assert all(torch.allclose(A.sum(-1), torch.ones(())) for A in attentions)
    with pytest.raises(ValueError, match=r"\(B, 1, 12, 12\)"):
        model(torch.rand(4, 1, 28, 28))


def test_blocks_are_pre_norm_with_residuals():
    """(6.3)-(6.4): with the attention's and the MLP's output layers zeroed, every block is the identity."""
    torch.manual_seed(0)
    model = ViT(SMALL).eval()
    for block in model.blocks:
        for layer in (block.attention.W_O, block.mlp[-1]):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    images = torch.rand(2, 1, 12, 12)
    z_0 = model.embed(images)
    expected = model.head(model.norm(z_0[:, 0]))
    assert torch.allclose(model(images), expected, atol=1e-6)


def test_the_class_token_alone_feeds_the_head():
    torch.manual_seed(0)
    model = ViT(SMALL).eval()
    images = torch.rand(2, 1, 12, 12)
    seen = {}
    model.norm.register_forward_hook(lambda module, inputs, output: seen.update(shape=inputs[0].shape))
    model(images)
    assert seen["shape"] == (2, SMALL.d_model)


# --------------------------------------------------------------------------- (6.7) rollout and the class token


def softmax_layers(L, B, h, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(torch.randn(B, h, T, T, generator=g) * 3, -1) for _ in range(L)]


def test_rollout_rows_sum_to_one_and_follow_the_definition():
    layers = softmax_layers(3, 2, 4, 6)
    R = attention_rollout(layers)
    assert R.shape == (2, 6, 6)
    assert torch.allclose(R.sum(-1), torch.ones(2, 6), atol=1e-6)
    eye = torch.eye(6)
    A = [(0.5 * layer.mean(1) + 0.5 * eye) for layer in layers]  # rows of mean + I sum to 2
    assert torch.allclose(R, A[2] @ A[1] @ A[0], atol=1e-6)
    without = attention_rollout(layers, residual=False)
    assert torch.allclose(without, layers[2].mean(1) @ layers[1].mean(1) @ layers[0].mean(1), atol=1e-6)
    assert torch.allclose(attention_rollout(torch.stack(layers)), R)


def test_rollout_of_uniform_attention_is_uniform_and_of_no_attention_the_identity():
    T = 5
    uniform = [torch.full((1, 2, T, T), 1 / T) for _ in range(3)]
    assert torch.allclose(attention_rollout(uniform, residual=False), torch.full((1, T, T), 1 / T))
    to_self = [torch.eye(T).expand(1, 2, T, T) for _ in range(3)]
    assert torch.allclose(attention_rollout(to_self), torch.eye(T)[None])


def test_rollout_refuses_layers_of_different_shapes():
    layers = softmax_layers(2, 2, 4, 6)
    with pytest.raises(ValueError, match="layer 1"):
        attention_rollout([layers[0], layers[1][:, :2]])
    with pytest.raises(ValueError, match="non-empty list"):
        attention_rollout([])


def test_class_token_attention_reads_row_zero_without_itself():
    layers = softmax_layers(3, 2, 4, 6)
    cls = class_token_attention(layers)
    assert cls.shape == (2, 3, 4, 5)
    assert torch.equal(cls[:, 1], layers[1][:, :, 0, 1:])
    assert torch.allclose(cls.sum(-1) + torch.stack([A[:, :, 0, 0] for A in layers], 1), torch.ones(2, 3, 4))


# --------------------------------------------------------------------------- (6.8) the counted cost


@pytest.mark.parametrize("config", [SMALL, ViTConfig(), COURSE_CONFIGS["translated60"],
                                    ViTConfig(image_size=20, patch=4, d_model=24, depth=3, heads=3, mlp_ratio=3,
                                              channels=3, classes=7, position="sinusoidal")],
                         ids=["small", "default", "translated60", "three_channels"])
def test_multiply_adds_equal_the_flop_counter(config):
    """FlopCounterMode counts 2 flops per multiply-add of every matrix product. It counts the written-out
    attention (return_attention=True: Q K^T and A V as matmuls); the fused kernel has no formula on the CPU."""
    torch.manual_seed(0)
    model = ViT(config).eval()
    images = torch.rand(3, config.channels, config.image_size, config.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images, return_attention=True)
    counted = counter.get_total_flops() / 2 / len(images)
    assert counted == pytest.approx(multiply_adds(config)["total"], rel=1e-9)


def test_multiply_adds_grow_as_the_paper_says():
    base = ViTConfig(image_size=60, patch=6, d_model=64, depth=6)
    counts = multiply_adds(base)
    T, D = base.tokens, base.d_model
    assert counts["scores"] == counts["weighted_values"] == base.depth * T * T * D
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    halved = multiply_adds(ViTConfig(image_size=60, patch=12, d_model=64, depth=6))  # N / 4
    assert halved["scores"] < counts["scores"] / 14  # all-pairs: (26 / 101)^2 of the products
    assert multiply_adds(ViTConfig(image_size=60, patch=6, d_model=64, depth=3))["mlp"] == counts["mlp"] // 2


@pytest.mark.parametrize("config", [ViTConfig(), COURSE_CONFIGS["translated60"],
                                    ViTConfig(d_model=24, heads=3, mlp_ratio=3, channels=3, position="sinusoidal")])
def test_parameter_count_equals_the_models(config):
    assert parameter_count(config)["total"] == sum(p.numel() for p in ViT(config).parameters())


@pytest.mark.parametrize("task", ["mnist28", "translated60", "cluttered100"])
@pytest.mark.parametrize("core", ["lstm", "rnn"])
def test_multiply_adds_ram_equal_the_flop_counter(task, core):
    config = RAMConfig(**{**PAPER_CONFIGS[task].__dict__, "core": core})
    torch.manual_seed(0)
    model = RecurrentAttentionModel(config).eval()
    images = torch.rand(2, 1, config.image_size, config.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images, l_0=torch.zeros(2, 2), sample=False)
    counts = multiply_adds_ram(config)
    assert counter.get_total_flops() / 2 / len(images) == pytest.approx(counts["total"], rel=1e-9)
    assert counts["sensor_crop"] < counts["sensor"]
    with pytest.raises(ValueError, match="zoom and stop"):
        multiply_adds_ram(RAMConfig(zoom=True))


# --------------------------------------------------------------------------- (6.9) the schedule


def test_warmup_then_cosine():
    factors = [warmup_cosine(s, 100, 10, 0.01) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[55] == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-9)
    assert warmup_cosine(100, 100, 10, 0.01) == pytest.approx(0.01)


def test_vit_optimizer_decays_only_the_matrices():
    model = ViT(SMALL)
    optimizer, _ = vit_optimizer(model, 1e-3, 100, warmup=10)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] > 0 and plain["weight_decay"] == 0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert any(p is model.class_token for p in plain["params"]) and any(p is model.E_pos for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # the first step of the warm-up
    with pytest.raises(ValueError, match="final_fraction"):
        vit_optimizer(model, 1e-3, 100, warmup=10, final_fraction=2.0)


# --------------------------------------------------------------------------- where the class token looks


def test_digit_overlap_counts_the_share_of_each_patch_in_the_box():
    boxes = torch.tensor([[0.0, 0.0, 6.0, 6.0], [3.0, 0.0, 9.0, 12.0]])
    overlap = digit_overlap(boxes, 12, 6)  # 2 x 2 patches of 6 x 6
    assert torch.allclose(overlap[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(overlap[1], torch.tensor([0.5, 0.5, 0.5, 0.5]))
    assert torch.allclose(overlap.mean(1) * 144, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def test_attention_on_digit_against_a_hand_computed_share():
    torch.manual_seed(0)
    model = ViT(SMALL)
    images = torch.rand(3, 1, 12, 12)
    boxes = torch.tensor([[0.0, 0.0, 3.0, 3.0], [3.0, 3.0, 9.0, 9.0], [0.0, 0.0, 12.0, 12.0]])
    shares = attention_on_digit(model, images, boxes)
    attentions = attention_maps(model, images)
    overlap = digit_overlap(boxes, 12, 3)
    cls = attentions[1].mean(1)[:, 0, 1:]
    assert torch.allclose(shares["per_layer"][:, 1], (cls * overlap).sum(-1) / cls.sum(-1))
    assert shares["per_head"].shape == (3, SMALL.depth, SMALL.heads) and shares["rollout"].shape == (3,)
    assert torch.allclose(shares["chance"], torch.tensor([9 / 144, 36 / 144, 1.0]))
    assert torch.allclose(shares["per_layer"][2], torch.ones(SMALL.depth))  # the box is the whole image
    assert torch.allclose(shares["to_class_token"][:, 0], attentions[0].mean(1)[:, 0, 0])
    assert model.training, "the analysis leaves the model's mode as it found it"


# --------------------------------------------------------------------------- recipes, targets, training, the CLI


def test_recipes_and_intended_targets():
    assert set(RECIPES) == set(COURSE_CONFIGS) == {"mnist28", "translated60", "cluttered60"}
    assert TARGETS["translated60"].at_most == 0.0125 and TARGETS["cluttered60"].at_most == 0.041
    for task, config in COURSE_CONFIGS.items():
        assert config.image_size == (28 if task == "mnist28" else 60)


@needs_mnist
def test_error_rate_on_the_ram_chapters_test_canvases():
    from attn_course.data.tasks import MNISTVariantTask

    task = MNISTVariantTask("translated60", test_size=200)
    torch.manual_seed(0)
    error, total = error_rate(ViT(COURSE_CONFIGS["translated60"]), task, batch_size=64)
    assert total == 200 and 0.6 <= error <= 1.0  # untrained: near chance
    stats = attention_statistics(ViT(COURSE_CONFIGS["translated60"]), task, batch_size=64, limit=70)
    assert stats["images"] == 70 and stats["per_layer"].shape == (COURSE_CONFIGS["translated60"].depth,)
    assert stats["chance"] == pytest.approx(28 * 28 / 3600, abs=1e-6)  # every box is 28 x 28 of 60 x 60


@needs_mnist
def test_a_short_training_run_lowers_the_loss_on_mnist28():
    from attn_course.data.tasks import MNISTVariantTask

    start = time.perf_counter()
    torch.manual_seed(0)
    model = ViT(COURSE_CONFIGS["mnist28"])
    task = MNISTVariantTask("mnist28")
    optimizer, schedule = vit_optimizer(model, 1e-3, 40, warmup=4)
    generator = torch.Generator().manual_seed(0)
    fixed = task.sample(generator, 256)
    with torch.no_grad():
        before = float(classification_loss(model, fixed)[0])
    for _ in range(40):
        loss, _ = classification_loss(model, task.sample(generator, 32))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        after = float(classification_loss(model, fixed)[0])
    assert before > 2.0 and after < 0.8 * before, (before, after)
    assert time.perf_counter() - start < 60


@needs_mnist
@pytest.mark.slow
def test_cli_trains_and_evaluates_vit(tmp_path, capsys):
    from attn_course.__main__ import main

    out = tmp_path / "vit-mnist28.pt"
    assert main(["train", "vit", "--task", "mnist28", "--steps", "2", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["model"] == "vit" and trained["steps"] == 2 and trained["test_examples"] == 10_000
    assert trained["metrics"]["error"] == pytest.approx(1 - trained["metrics"]["accuracy"])
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["model_config"]["kind"] == "vit" and card["model_config"]["patch"] == COURSE_CONFIGS["mnist28"].patch
    assert main(["evaluate", "vit", "--task", "mnist28", "--checkpoint", str(out), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["metrics"] == trained["metrics"]
    too_small = 2 * COURSE_CONFIGS["translated60"].patch  # a valid config, but not the task's image side
    assert main(["train", "vit", "--task", "translated60", "--set", f"image_size={too_small}", "--steps", "1",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "translated60 images are 60 x 60" in capsys.readouterr().err
    assert main(["evaluate", "vit", "--task", "cluttered100"]) == 2
    assert "choose one of: mnist28, translated60, cluttered60" in capsys.readouterr().err


# --------------------------------------------------------------------------- counted cost, the patch and depth search


@pytest.mark.parametrize("config", [COURSE_CONFIGS["mnist28"], COURSE_CONFIGS["translated60"],
                                    ViTConfig(image_size=100, patch=10, d_model=64, depth=2)])
def test_counted_multiply_adds_equal_the_formula_for_vit(config):
    image = torch.rand(1, 1, config.image_size, config.image_size)
    assert counted_multiply_adds(ViT(config), image) == multiply_adds(config)["total"]


def test_counted_multiply_adds_equal_the_formula_for_ram_and_check_their_input():
    config = PAPER_CONFIGS["cluttered60"]
    model = RecurrentAttentionModel(config)
    assert counted_multiply_adds(model, torch.rand(1, 1, 60, 60), sample=False) == multiply_adds_ram(config)["total"]
    assert model.training, "counting leaves the model's mode as it found it"
    with pytest.raises(ValueError, match=r"one image of shape \(1, C, H, W\)"):
        counted_multiply_adds(model, torch.rand(2, 1, 60, 60))


def test_search_candidates_vary_one_choice_at_a_time():
    base = COURSE_CONFIGS["translated60"]
    assert SEARCH_CANDIDATES["P=12"] == base
    for name, config in SEARCH_CANDIDATES.items():
        changed = {k for k, v in config.__dict__.items() if v != base.__dict__[k]}
        assert len(changed) <= 1, f"{name} changes {changed}"
        assert 60 % config.patch == 0
    with pytest.raises(ValueError, match="unknown candidate 'P=7'"):
        search_row("P=7")


def test_the_shipped_search_holds_every_candidate_measured():
    rows = read_search()
    assert [row["name"] for row in rows] == list(SEARCH_CANDIDATES)
    for row in rows:
        config = ViTConfig(**row["config"])
        assert config == SEARCH_CANDIDATES[row["name"]]
        assert row["steps"] == SEARCH_STEPS and row["test_examples"] == 10_000 and 0 < row["error"] < 0.9
        assert row["parameters"] == parameter_count(config)["total"]
        assert row["multiply_adds"] == multiply_adds(config)["total"]


@needs_mnist
@pytest.mark.slow
def test_search_row_trains_and_measures_a_candidate():
    row = search_row("L=2", steps=5)
    assert row["steps"] == 5 and row["test_examples"] == 10_000 and 0 < row["error"] <= 1
    assert row["parameters"] == parameter_count(SEARCH_CANDIDATES["L=2"])["total"]
    json.dumps(row)  # the tool writes it as JSON
