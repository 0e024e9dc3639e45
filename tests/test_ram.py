"""RAM: the glimpse sensor against a plain loop, shapes and errors, the policy gradient, learning."""

import pytest
import torch

from attn_course.attention import glimpse
from attn_course.ram import (PAPER_CONFIGS, RAMConfig, RecurrentAttentionModel, gaussian_log_likelihood,
                             glimpse_sensor, glimpse_sensor_loop, hybrid_loss)
from attn_course.registry import get_spec, train_model
from mnist_files import needs_mnist


@pytest.mark.parametrize("size,g,k", [(28, 8, 1), (28, 8, 3), (60, 12, 3), (100, 12, 4)])
def test_sensor_matches_crop_and_average_loop(size, g, k):
    gen = torch.Generator().manual_seed(size + k)
    images = torch.rand(16, 1, size, size, generator=gen)
    # locations on the pixel grid, including the corners, where patches hang over the edge
    l = torch.randint(0, size + 1, (16, 2), generator=gen).float() / (size / 2) - 1
    l[0] = torch.tensor([-1.0, -1.0])
    l[1] = torch.tensor([1.0, 1.0])
    fast = glimpse_sensor(images, l, g, k)
    assert fast.shape == (16, k, 1, g, g)
    assert torch.allclose(fast, glimpse_sensor_loop(images, l, g, k), atol=1e-5)


def test_sensor_is_bilinear_between_pixels_and_zero_outside():
    images = torch.rand(4, 1, 28, 28)
    l = torch.tensor([[0.13, -0.41], [0.5, 0.27], [-0.77, 0.01], [0.0, 0.9]])
    patch = glimpse_sensor(images, l, 8, 1)[:, 0]
    assert torch.allclose(patch, glimpse(images, l[:, 0], l[:, 1], 8 / 28, 0.0, 8), atol=1e-5)
    corner = glimpse_sensor(torch.ones(1, 1, 28, 28), torch.tensor([[-1.0, -1.0]]), 8, 1)[0, 0, 0]
    assert corner[:4, :4].eq(0).all() and corner[4:, 4:].eq(1).all()  # three quarters outside the image


def test_sensor_errors():
    images = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        glimpse_sensor(images[0], torch.zeros(2, 2), 8, 1)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        glimpse_sensor(images, torch.zeros(3, 2), 8, 1)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        glimpse_sensor(images, torch.full((2, 2), 1.5), 8, 1)
    with pytest.raises(ValueError, match="larger than the image"):
        RAMConfig(image_size=28, glimpse_size=32)
    model = RecurrentAttentionModel(PAPER_CONFIGS["mnist28"])
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.rand(2, 1, 60, 60))


def test_forward_shapes_and_deterministic_evaluation():
    config = PAPER_CONFIGS["translated60"]
    model = RecurrentAttentionModel(config)
    images = torch.rand(5, 1, 60, 60)
    out = model(images, generator=torch.Generator().manual_seed(0))
    T = config.num_glimpses
    assert out["log_probs"].shape == (5, 10) and out["locations"].shape == (T, 5, 2)
    assert out["log_pi"].shape == (5, T - 1) and out["baselines"].shape == (5, T)
    assert out["locations"].abs().max() <= 1
    l_0 = torch.zeros(5, 2)
    a, b = model(images, l_0=l_0, sample=False), model(images, l_0=l_0, sample=False)
    assert torch.equal(a["locations"], b["locations"]) and torch.equal(a["log_probs"], b["log_probs"])


def test_gaussian_policy_gradient_is_l_minus_mu_over_sigma_squared():
    mu = torch.randn(7, 2, requires_grad=True)
    l = torch.randn(7, 2)
    gaussian_log_likelihood(l, mu, 0.3).sum().backward()
    assert torch.allclose(mu.grad, (l - mu.detach()) / 0.3 ** 2, atol=1e-5)


def test_hybrid_loss_trains_each_part_by_its_own_rule():
    model = RecurrentAttentionModel(PAPER_CONFIGS["mnist28"])
    images, labels = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss, metrics = hybrid_loss(model(images), labels)
    loss.backward()
    for name, part in (("location", model.location_network), ("baseline", model.baseline_network),
                       ("action", model.action_network), ("core", model.core_network)):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), name
    assert 0 <= float(metrics["accuracy"]) <= 1


def test_core_can_be_an_lstm_and_bad_core_is_refused():
    model = RecurrentAttentionModel(RAMConfig(core="lstm"))
    assert model(torch.rand(3, 1, 28, 28))["log_probs"].shape == (3, 10)
    with pytest.raises(ValueError, match="core must be"):
        RAMConfig(core="gru")


@pytest.mark.slow
def test_ram_learns_a_location_dependent_task():
    """Class = which quadrant holds the bright square: only learnable by looking around."""
    torch.manual_seed(0)
    config = RAMConfig(image_size=28, glimpse_size=8, num_scales=2, num_glimpses=3, hidden=64,
                       glimpse_hidden=32, glimpse_features=64, num_classes=4, std=0.2)
    model = RecurrentAttentionModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    corners = [(2, 2), (2, 18), (18, 2), (18, 18)]

    def batch(n):
        labels = torch.randint(0, 4, (n,))
        images = torch.zeros(n, 1, 28, 28)
        for i, c in enumerate(labels.tolist()):
            y, x = corners[c]
            images[i, 0, y:y + 8, x:x + 8] = 1.0
        return images, labels

    for _ in range(150):
        images, labels = batch(64)
        loss, _ = hybrid_loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = batch(500)
    with torch.no_grad():
        accuracy = (model(images, sample=False)["log_probs"].argmax(-1) == labels).float().mean()
    assert accuracy > 0.9


def test_box_filterbank_rows_cover_their_boxes():
    from attn_course.ram import box_filterbank

    F = box_filterbank(torch.tensor([30.0, 0.0, 7.25]), glimpse_size=4, num_scales=2, length=60)
    assert F.shape == (3, 2, 4, 60)
    assert torch.allclose(F[0].sum(-1), torch.tensor([[1.0] * 4, [2.0] * 4]))  # inside: each box fully covered
    assert torch.allclose(F[1, 0].sum(-1), torch.tensor([0.0, 0.0, 1.0, 1.0]))  # half the glimpse hangs outside
    assert torch.allclose(F[2, 0, 0, 5:7], torch.tensor([0.75, 0.25]))  # fractional edges weight by overlap


def test_fixed_locations_replace_the_policy():
    model = RecurrentAttentionModel(PAPER_CONFIGS["mnist28"])
    images = torch.rand(3, 1, 28, 28)
    path = torch.rand(6, 3, 2) * 2 - 1
    out = model(images, locations=path)
    assert torch.equal(out["locations"], path) and out["log_pi"].shape == (3, 5)
    with pytest.raises(ValueError, match=r"locations of shape \(6, 3, 2\)"):
        model(images, locations=path[:4])


def test_glimpse_paths_and_statistics_on_a_small_task():
    from attn_course.experiments.ram import glimpse_statistics, inside_boxes
    from attn_course.ram import glimpse_paths

    torch.manual_seed(0)
    config = RAMConfig(image_size=60, glimpse_size=12, num_scales=3, num_glimpses=4, hidden=32, glimpse_hidden=16,
                       glimpse_features=32)
    model = RecurrentAttentionModel(config)
    images = torch.rand(5, 1, 60, 60)
    paths = glimpse_paths(model, images)
    assert paths["pixels"].shape == (5, 4, 2) and torch.allclose(paths["pixels"][:, 0], torch.full((5, 2), 29.5))
    assert torch.allclose(paths["probabilities"].sum(-1), torch.ones(5, 4))
    assert model.training  # left as it was found

    # the centre of a 60x60 image (pixel edge 30) is in [16, 44) but not in [0, 28) or [31, 59)
    boxes = torch.tensor([[16, 16, 44, 44], [0, 0, 28, 28], [31, 31, 59, 59]])
    centre = torch.zeros(3, 1, 2)
    assert inside_boxes(centre, boxes, 60)[:, 0].tolist() == [True, False, False]

    class Task:  # the interface glimpse_statistics reads: device and test_batches()
        device = torch.device("cpu")

        def test_batches(self):
            for seed in range(2):
                g = torch.Generator().manual_seed(seed)
                yield {"images": torch.rand(8, 1, 60, 60, generator=g), "labels": torch.randint(0, 10, (8,), generator=g),
                       "boxes": torch.tensor([[16, 16, 44, 44]] * 8)}

    stats = glimpse_statistics(model, Task())
    assert stats["error_per_step"].shape == (4,) and stats["hits_per_step"][0] == 1.0  # first glimpse: the centre
    assert 0.1 < stats["random_hits"] < 0.4  # a 28x28 box covers 22% of a 60x60 image
    assert 0.0 <= stats["random_error"] <= 1.0


def test_stored_configs_with_unknown_keys_are_refused():
    from attn_course.spec import config_from_dict

    assert config_from_dict(RAMConfig, {"kind": "ram", "num_glimpses": 4}) == RAMConfig(num_glimpses=4)
    with pytest.raises(ValueError, match=r"unknown RAMConfig keys: \['bogus'\]"):
        config_from_dict(RAMConfig, {"kind": "ram", "bogus": 1})


def test_train_ram_refuses_a_config_for_another_image_size():
    with pytest.raises(ValueError, match="config.image_size is 28, but translated60 images are 60 x 60"):
        train_model("ram", "translated60", device="cpu", steps=1, config=RAMConfig(image_size=28), progress=False)
    with pytest.raises(ValueError, match="model 'ram' has no task 'mnist64'"):
        train_model("ram", "mnist64", device="cpu", steps=1, progress=False)


@needs_mnist
def test_train_ram_trains_the_config_it_is_given():
    config = RAMConfig(num_glimpses=2, hidden=32, glimpse_hidden=16, glimpse_features=32, core="lstm")
    model, result, _ = train_model("ram", "mnist28", device="cpu", steps=3, config=config, progress=False)
    assert model.config == config and model.core_network.kind == "lstm" and result.step == 3


def test_every_ram_target_has_its_checkpoint_trained_with_the_package_config():
    from attn_course.checkpoints import PRETRAINED_DIR, available_pretrained, read_card

    spec = get_spec("ram")
    shipped = {name for name in available_pretrained() if name.startswith("ram-")}
    assert shipped == {f"ram-{task}" for task in spec.targets}, "ship one RAM checkpoint per target"
    for task in spec.targets:
        card = read_card(PRETRAINED_DIR / f"ram-{task}.pt")
        assert card["test_examples"] == 10_000
        # the recipe in the package is the one that trained it, so the card's command reproduces it
        assert card["model_config"] == spec.model_config(task), f"ram-{task} was trained with another configuration"


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_ram_calls():
    from attn_course import ram
    from attn_course.baselines import Convolutional, FullyConnected, classification_loss
    from attn_course.experiments.ram import inside_boxes

    images = torch.rand(2, 1, 28, 28)
    model = RecurrentAttentionModel(RAMConfig(num_glimpses=2, hidden=8, glimpse_hidden=8, glimpse_features=8))
    return [
        (ValueError, "glimpse_size", lambda: glimpse_sensor(images, torch.zeros(2, 2), 0, 1)),
        (ValueError, "num_scales", lambda: glimpse_sensor(images, torch.zeros(2, 2), 8, 0)),
        (ValueError, "glimpse_size", lambda: glimpse_sensor(images, torch.zeros(2, 2), 2.5, 1)),
        (ValueError, "largest patch", lambda: glimpse_sensor(images, torch.zeros(2, 2), 8, 6)),
        (ValueError, "locations l", lambda: glimpse_sensor(images, torch.full((2, 2), float("nan")), 8, 1)),
        (ValueError, "locations l", lambda: glimpse_sensor(images, [[0.0, 0.0]] * 2, 8, 1)),
        (ValueError, "glimpse_size", lambda: ram.glimpse_sensor_loop(images, torch.zeros(2, 2), 0, 1)),
        (ValueError, "centre", lambda: ram.box_filterbank(torch.zeros(2, 1), 8, 1, 28)),
        (ValueError, "length", lambda: ram.box_filterbank(torch.zeros(2), 8, 1, 0)),
        (TypeError, "config", lambda: RecurrentAttentionModel({"image_size": 28})),
        (ValueError, "channels", lambda: RecurrentAttentionModel(RAMConfig(), channels=0)),
        (ValueError, "num_glimpses", lambda: model(images, num_glimpses=0)),
        (ValueError, "l_0", lambda: model(images, l_0=torch.zeros(3, 2))),
        (ValueError, r"l_0 must lie in \[-1, 1\]", lambda: model(images, l_0=torch.full((2, 2), 2.0))),
        (ValueError, r"locations must lie in \[-1, 1\]", lambda: model(images, locations=torch.full((2, 2, 2), -3.0))),
        (ValueError, "std", lambda: ram.gaussian_log_likelihood(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)),
        (ValueError, "labels", lambda: ram.hybrid_loss(model(images), torch.zeros(3, dtype=torch.long))),
        (ValueError, "task 'mnist64'.*mnist28", lambda: ram.first_location("mnist64", 2, "cpu")),
        (ValueError, "size", lambda: ram.to_pixels(torch.zeros(2), 0)),
        (ValueError, "boxes", lambda: inside_boxes(torch.zeros(2, 3, 2), torch.zeros(2, 5), 28)),
        (ValueError, "image_size", lambda: FullyConnected(0)),
        (ValueError, "hidden", lambda: FullyConnected(28, hidden=0)),
        (ValueError, "stride", lambda: Convolutional(28, stride=0)),
        (ValueError, "kernel", lambda: Convolutional(8)),
        (ValueError, "labels", lambda: classification_loss(FullyConnected(28), {"images": images,
                                                                               "labels": torch.zeros(5).long()})),
        (ValueError, "task 'mnist64'", lambda: get_spec("conv").model_config("mnist64")),
    ]


BAD_RAM_CALLS = _bad_ram_calls()


@pytest.mark.parametrize("error, match, call", BAD_RAM_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_RAM_CALLS)])
def test_bad_ram_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()


def test_the_reinforce_term_reaches_the_core_only_when_asked():
    model = RecurrentAttentionModel(RAMConfig(num_glimpses=3, hidden=16, glimpse_hidden=8, glimpse_features=16))
    images = torch.rand(4, 1, 28, 28)
    reached = {}
    for flag in (False, True):  # the course's default, and (1.3)'s gradient with respect to all of theta
        model.reinforce_core = flag
        model.zero_grad()
        out = model(images, generator=torch.Generator().manual_seed(1))
        (-out["log_pi"].sum()).backward()  # the REINFORCE term alone, for a constant advantage of 1
        reached[flag] = {name: p.grad is not None and bool(p.grad.abs().sum() > 0)
                         for name, p in model.named_parameters()}
    assert reached[False]["location_network.weight"] and reached[True]["location_network.weight"]
    core = [name for name in reached[True] if name.startswith(("core_network", "glimpse_network"))]
    assert core and not any(reached[False][name] for name in core)
    assert all(reached[True][name] for name in core if name.startswith("core_network"))
