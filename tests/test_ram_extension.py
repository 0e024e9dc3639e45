"""RAM's zoom and stop options (attn_course.ram, section F): off they change nothing; the sensor zooms;
the extended policy gradient (1.7)-(1.9) is exact on an enumerable case and unbiased for the log-scale;
the loss (1.10); the statistics of where a model zooms and when it stops; learning to stop and to zoom."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from attn_course.ram import (PAPER_CONFIGS, RAMConfig, RecurrentAttentionModel, episode_reward, first_stop,
                             glimpse_paths, glimpse_sensor, hybrid_loss, log_pi_with_stop, stopping_hybrid_loss)
from attn_course.registry import get_spec, train_model
from attn_course.spec import config_from_dict
from mnist_files import needs_mnist

TINY = RAMConfig(image_size=28, glimpse_size=8, num_scales=2, num_glimpses=4, hidden=16, glimpse_hidden=8,
                 glimpse_features=16)


def tiny(**options) -> RecurrentAttentionModel:
    torch.manual_seed(0)
    return RecurrentAttentionModel(dataclasses.replace(TINY, **options))


# --------------------------------------------------------------------------- off: the paper's model, stored as before


def test_the_options_are_off_by_default_and_stored_only_when_on():
    from attn_course.checkpoints import PRETRAINED_DIR, read_card

    assert not RAMConfig().zoom and not RAMConfig().stop
    spec = get_spec("ram")
    for task in ("mnist28", "translated60", "cluttered60"):  # the shipped cards' configs, key for key
        assert spec.model_config(task) == read_card(PRETRAINED_DIR / f"ram-{task}.pt")["model_config"]
    both = dataclasses.replace(PAPER_CONFIGS["cluttered60"], zoom=True, stop=True, glimpse_cost=0.02)
    stored = spec.config_dict(both)
    assert stored["zoom"] and stored["stop"] and stored["glimpse_cost"] == 0.02 and "max_zoom" in stored
    assert config_from_dict(RAMConfig, stored) == both
    zoom_only = spec.config_dict(dataclasses.replace(both, stop=False))
    assert "zoom" in zoom_only and "stop" not in zoom_only and "glimpse_cost" not in zoom_only


def test_the_default_model_has_no_new_parts_or_outputs():
    model = tiny()
    assert not hasattr(model, "scale_network") and not hasattr(model, "stop_network")
    assert model.glimpse_network.where.in_features == 2
    out = model(torch.rand(3, 1, 28, 28))
    assert set(out) == {"log_probs", "logits_per_step", "locations", "means", "log_pi", "baselines"}


def test_the_command_line_sets_the_options():
    from attn_course.__main__ import _config_with

    config = _config_with(get_spec("ram"), "cluttered60", ["zoom=true", "stop=True", "glimpse_cost=0.02"])
    assert config.zoom and config.stop and config.glimpse_cost == 0.02
    with pytest.raises(ValueError, match="expected true or false"):
        _config_with(get_spec("ram"), "cluttered60", ["zoom=yes"])


# --------------------------------------------------------------------------- the zooming sensor


def test_a_zoomed_patch_is_the_next_octave_and_scale_one_changes_nothing():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 60, 60, generator=gen)
    l = torch.rand(6, 2, generator=gen) * 1.6 - 0.8
    ones, twos, halves = torch.ones(6), torch.full((6,), 2.0), torch.full((6,), 0.5)
    assert torch.allclose(glimpse_sensor(images, l, 12, 3, ones), glimpse_sensor(images, l, 12, 3), atol=1e-6)
    wide = glimpse_sensor(images, l, 12, 4)  # patches of 12, 24, 48 and 96 pixels
    assert torch.allclose(glimpse_sensor(images, l, 12, 3, twos), wide[:, 1:], atol=1e-5)
    assert torch.allclose(glimpse_sensor(images, l, 12, 3, halves)[:, 1:], wide[:, :2], atol=1e-5)
    # one scale per image: image 0 zoomed out, image 1 as it is
    mixed = glimpse_sensor(images[:2], l[:2], 12, 3, torch.tensor([2.0, 1.0]))
    assert torch.allclose(mixed[0], wide[0, 1:], atol=1e-5) and torch.allclose(mixed[1], wide[1, :3], atol=1e-5)


def test_a_zoomed_patch_averages_over_its_larger_boxes():
    image = torch.ones(1, 1, 60, 60)
    patch = glimpse_sensor(image, torch.zeros(1, 2), 12, 1, torch.tensor([1.5]))[0, 0, 0]
    assert torch.allclose(patch, torch.ones(12, 12), atol=1e-6)  # 18 x 18 pixels of ones, averaged: still ones


# --------------------------------------------------------------------------- the model with zoom and stop


def test_forward_with_zoom_and_stop():
    model = tiny(zoom=True, stop=True, max_zoom=2.0)
    T = TINY.num_glimpses
    out = model(torch.rand(64, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert out["scales"].shape == (T, 64) and out["scale_means"].shape == (T - 1, 64)
    assert torch.equal(out["scales"][0], torch.ones(64))  # the first glimpse at the paper's sizes
    assert out["scales"].min() >= 0.5 - 1e-6 and out["scales"].max() <= 2.0 + 1e-6
    tau = out["glimpses_used"]
    assert out["stop_logits"].shape == out["stops"].shape == (64, T - 1) and tau.shape == (64,)
    assert torch.equal(tau, first_stop(out["stops"])) and 1 <= tau.min() and tau.max() <= T
    a_tau = out["logits_per_step"][tau - 1, torch.arange(64)]
    assert torch.allclose(out["log_probs"], F.log_softmax(a_tau, -1))
    after = torch.arange(1, T) > tau[:, None]
    assert out["log_pi"][after].eq(0).all() and out["log_pi"][~after].ne(0).all()
    with torch.no_grad():  # the mean of the policy: stop at the first p_t > 1/2
        det = model(torch.rand(8, 1, 28, 28), l_0=torch.zeros(8, 2), sample=False)
    assert torch.equal(det["stops"], (det["stop_logits"] > 0).float())


def test_the_model_must_stop_at_its_last_glimpse_and_may_stop_at_its_first():
    model = tiny(stop=True)
    images = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        model.stop_network.bias.fill_(-50.0)  # never stops on its own
        assert model(images)["glimpses_used"].eq(TINY.num_glimpses).all()
        model.stop_network.bias.fill_(50.0)  # always stops
        out = model(images)
    assert out["glimpses_used"].eq(1).all()
    assert torch.allclose(out["log_probs"], out["logits_per_step"][0].log_softmax(-1))
    assert out["log_pi"][:, 0].abs().max() < 1e-6 and out["log_pi"][:, 1:].eq(0).all()  # log p_1 = log 1


def test_first_stop_counts_the_glimpses_up_to_the_first_stop():
    stops = torch.tensor([[0, 0, 0], [1, 0, 1], [0, 1, 1], [0, 0, 1]])
    assert first_stop(stops).tolist() == [4, 1, 2, 3]
    assert first_stop(torch.zeros(2, 0)).tolist() == [1, 1]  # T = 1: the only glimpse is the last


# --------------------------------------------------------------------------- the extended policy gradient


def test_the_extended_policy_gradient_is_exact_on_an_enumerable_case():
    """T = 3 glimpses. After glimpses 1 and 2 the policy stops or goes on (d_3 = 1); going on, it moves to
    one of two places, m_1 then m_2 (discrete stand-ins for l_t and z_t). Seven episodes, each with a fixed
    right-or-wrong answer and the reward R = 1[right] - c tau of (1.7). The exact gradient of J (1.2) by
    enumeration must equal the expected estimator sum_seq p(seq) R(seq) grad log p(seq), with log p(seq) the
    sum over t of the package's log pi(u_t | s_{1:t}) (1.8), and stay so with per-step baselines (1.4)."""
    g = torch.Generator().manual_seed(0)
    theta_d1 = torch.randn((), generator=g, dtype=torch.float64, requires_grad=True)  # w^T h_1
    theta_d2 = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)  # w^T h_2, given m_1
    theta_m1 = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)  # the move after glimpse 1
    theta_m2 = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)  # after glimpse 2, given m_1
    parameters = [theta_d1, theta_d2, theta_m1, theta_m2]
    right = {(1,): 0.0, (2, 0): 1.0, (2, 1): 0.0, (3, 0, 0): 1.0, (3, 0, 1): 0.0, (3, 1, 0): 1.0, (3, 1, 1): 1.0}
    c = 0.1

    def probability(episode):  # written out from the policy's definition, (1.7)
        tau, moves = episode[0], episode[1:]
        p_1 = torch.sigmoid(theta_d1)
        if tau == 1:
            return p_1
        m_1 = moves[0]
        went_on = (1 - p_1) * torch.softmax(theta_m1, 0)[m_1]
        p_2 = torch.sigmoid(theta_d2[m_1])
        if tau == 2:
            return went_on * p_2
        return went_on * (1 - p_2) * torch.softmax(theta_m2[m_1], 0)[moves[1]]

    def log_pi_steps(episode, stopped_after=None):  # the package's (1.8): (1, T - 1)
        tau = episode[0] if stopped_after is None else stopped_after
        m_1, m_2 = (episode[1:] + (0, 0))[:2]  # moves that were never drawn: arbitrary, the stop masks them
        log_pi_move = torch.stack([torch.log_softmax(theta_m1, 0)[m_1], torch.log_softmax(theta_m2[m_1], 0)[m_2]])
        stop_logits = torch.stack([theta_d1, theta_d2[m_1]])
        return log_pi_with_stop(log_pi_move[None], stop_logits[None], torch.tensor([tau]))

    def reward(episode):
        return episode_reward(torch.tensor(right[episode]), torch.tensor(episode[0]), c).double()

    episodes = list(right)
    p = torch.stack([probability(e) for e in episodes])
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
    for e, p_e in zip(episodes, p):
        assert torch.isclose(log_pi_steps(e).sum().exp(), p_e, atol=1e-12), e

    J = sum(p_e * reward(e) for e, p_e in zip(episodes, p))
    exact = torch.cat([x.flatten() for x in torch.autograd.grad(J, parameters)])

    def expected_estimate(baselines=(0.0, 0.0), stopped_after=None):
        surrogate = sum(p_e.detach() * (log_pi_steps(e, stopped_after)[0]
                                        * (reward(e) - torch.tensor(baselines, dtype=torch.float64))).sum()
                        for e, p_e in zip(episodes, p))
        return torch.cat([x.flatten() for x in torch.autograd.grad(surrogate, parameters, allow_unused=True)])

    assert (expected_estimate() - exact).abs().max() < 1e-6
    assert (expected_estimate(baselines=(0.3, -0.2)) - exact).abs().max() < 1e-6  # (1.4): still unbiased
    # the estimator is only right with the stop's mask: scoring every episode as if it ran to T is not
    assert (expected_estimate(stopped_after=3) - exact).abs().max() > 1e-2


def test_the_log_scale_term_is_unbiased_by_monte_carlo():
    """Through the model: z_1 ~ N(mu^z_1, sigma_z^2) with a reward 1[z_1 > a] that has no pathwise gradient.
    d E[R] / d(scale bias) = phi((mu - a) / sigma_z) / sigma_z * d mu / d bias, against the mean of
    R * d log_pi / d(scale bias) over 40,000 draws (1.9)."""
    torch.manual_seed(0)
    config = RAMConfig(image_size=16, glimpse_size=4, num_scales=1, num_glimpses=2, hidden=8, glimpse_hidden=8,
                       glimpse_features=8, zoom=True, max_zoom=4.0, scale_std=0.2)
    model = RecurrentAttentionModel(config)
    M = 40_000
    images = torch.rand(1, 1, 16, 16).expand(M, -1, -1, -1)
    out = model(images, l_0=torch.zeros(M, 2), generator=torch.Generator().manual_seed(1))
    mu = out["scale_means"][0, 0]  # the same for every copy: the first glimpse is deterministic
    z_1 = out["scales"][1].log()
    mu_value = float(mu.detach())
    assert abs(float((z_1 - mu_value).mean())) < 0.01 and abs(float((z_1 - mu_value).std()) - 0.2) < 0.01
    a = mu_value + 0.1
    R = (z_1 > a).double()
    bias = model.scale_network.bias
    (estimates,) = torch.autograd.grad((out["log_pi"][:, 0] * R.float()).sum() / M, [bias], retain_graph=True)
    (dmu_dbias,) = torch.autograd.grad(mu, [bias])
    x = (mu_value - a) / 0.2
    exact = math.exp(-x * x / 2) / math.sqrt(2 * math.pi) / 0.2 * float(dmu_dbias)
    per_draw = R * ((z_1 - mu_value) / 0.2 ** 2).double().detach() * float(dmu_dbias)
    standard_error = float(per_draw.std()) / math.sqrt(M)
    assert abs(float(estimates) - exact) < 4 * standard_error, (float(estimates), exact, standard_error)
    assert abs(float(estimates) - exact) < 0.05 * abs(exact)


# --------------------------------------------------------------------------- the loss (1.10)


def test_the_stopping_loss_charges_for_glimpses_and_trains_each_part():
    model = tiny(zoom=True, stop=True)
    images, labels = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    out = model(images, generator=torch.Generator().manual_seed(2))
    loss, metrics = hybrid_loss(out, labels, glimpse_cost=0.05)
    tau, T = out["glimpses_used"], TINY.num_glimpses
    R = (out["log_probs"].argmax(-1) == labels).float() - 0.05 * tau
    classification = -torch.stack([F.log_softmax(out["logits_per_step"][t], -1)[torch.arange(32), labels]
                                   for t in range(T)]).mean()
    reinforce = -(out["log_pi"] * (R[:, None] - out["baselines"][:, :-1]).detach()).sum(1).mean()
    taken = torch.arange(1, T + 1) <= tau[:, None]
    regression = torch.stack([((R[i] - out["baselines"][i][taken[i]]) ** 2).mean() for i in range(32)]).mean()
    assert torch.allclose(loss, classification + reinforce + regression, atol=1e-5)
    assert float(metrics["glimpses"]) == float(tau.float().mean())
    loss.backward()
    for part in ("scale_network", "stop_network", "location_network", "action_network", "core_network"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    # the policy heads read a detached h_t: the REINFORCE term alone does not reach the core
    model.zero_grad()
    out = model(images, generator=torch.Generator().manual_seed(2))
    (-out["log_pi"].sum()).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.core_network.parameters())
    assert model.stop_network.weight.grad.abs().sum() > 0 and model.scale_network.weight.grad.abs().sum() > 0


def test_baselines_after_the_stop_do_not_count():
    model = tiny(stop=True)
    labels = torch.randint(0, 10, (16,))
    out = model(torch.rand(16, 1, 28, 28), generator=torch.Generator().manual_seed(3))
    tau = out["glimpses_used"]
    assert tau.min() < TINY.num_glimpses  # some episodes stopped early
    changed = dict(out, baselines=torch.where(torch.arange(1, 5) > tau[:, None], 9.0, out["baselines"]))
    assert torch.equal(stopping_hybrid_loss(out, labels, 0.01)[0], stopping_hybrid_loss(changed, labels, 0.01)[0])


# --------------------------------------------------------------------------- statistics for the figures


class _Task:  # what the statistics read: device, variant (for the first glimpse) and test_batches()
    device = torch.device("cpu")
    variant = "cluttered60"

    def test_batches(self):
        for seed in range(2):
            g = torch.Generator().manual_seed(seed)
            yield {"images": torch.rand(16, 1, 60, 60, generator=g), "labels": torch.randint(0, 10, (16,), generator=g)}


def _small60(**options) -> RecurrentAttentionModel:
    torch.manual_seed(0)
    return RecurrentAttentionModel(RAMConfig(image_size=60, glimpse_size=12, num_scales=3, num_glimpses=4, hidden=16,
                                             glimpse_hidden=8, glimpse_features=16, core="lstm", **options))


def test_zoom_and_stop_statistics():
    from attn_course.experiments.ram import zoom_and_stop_statistics

    model = _small60(zoom=True, stop=True)
    with torch.no_grad():
        model.stop_network.bias.fill_(0.0)  # stop about half the time, so the histogram has several bars
        model.stop_network.weight.normal_(0, 1)
    stats = zoom_and_stop_statistics(model, _Task())
    hist = stats["stop_histogram"]
    assert stats["test_examples"] == 32 and hist.shape == (4,) and torch.isclose(hist.sum(), torch.tensor(1.0))
    assert stats["mean_glimpses"] == pytest.approx(float((hist * torch.arange(1, 5)).sum()), abs=1e-6)
    assert stats["scale_per_step"][0] == 1.0 and 0.5 <= stats["mean_scale"] <= 2.0
    overall = torch.nansum(stats["error_by_stop"] * hist)
    assert stats["error"] == pytest.approx(float(overall), abs=1e-6)
    curve = stats["threshold_curve"]
    assert curve["mean_glimpses"].shape == (5,) and (curve["mean_glimpses"].diff() >= 0).all()  # a higher bar, later
    assert curve["error"][2] == pytest.approx(stats["error"]) and curve["mean_glimpses"][2] == pytest.approx(
        stats["mean_glimpses"])  # q = 1/2 is the model's own rule
    paths = glimpse_paths(model, next(_Task().test_batches())["images"])
    assert paths["scales"].shape == (16, 4) and paths["glimpses_used"].shape == (16,)

    fixed = zoom_and_stop_statistics(_small60(), _Task())  # the paper's model: all T glimpses at scale 1
    assert fixed["mean_glimpses"] == 4.0 and fixed["stop_histogram"].tolist() == [0, 0, 0, 1]
    assert fixed["scale_per_step"].eq(1).all() and (fixed["threshold_curve"]["mean_glimpses"] == 4).all()
    with pytest.raises(ValueError, match=r"thresholds must lie in \(0, 1\)"):
        zoom_and_stop_statistics(model, _Task(), thresholds=(0.5, 1.0))


def test_the_card_of_a_zooming_stopping_model_reports_glimpses_and_scale(monkeypatch):
    from attn_course.experiments import ram as experiments

    monkeypatch.setattr(experiments, "MNISTVariantTask", lambda task, device: _Task())
    metrics, count = get_spec("ram").evaluate(_small60(zoom=True, stop=True), "cluttered60", torch.device("cpu"))
    assert count == 32 and set(metrics) == {"error", "accuracy", "mean_glimpses", "mean_scale"}
    assert 1 <= metrics["mean_glimpses"] <= 4
    metrics, _ = get_spec("ram").evaluate(_small60(), "cluttered60", torch.device("cpu"))
    assert set(metrics) == {"error", "accuracy"}  # the paper's model's card is as before


@needs_mnist
def test_train_ram_with_zoom_and_stop():
    config = dataclasses.replace(TINY, num_scales=1, zoom=True, stop=True)
    model, result, _ = train_model("ram", "mnist28", device="cpu", steps=3, config=config, progress=False)
    assert model.config.zoom and model.config.stop and result.step == 3
    assert "glimpses" in result.history.state_dict()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, match", [
    (lambda: RAMConfig(zoom=True, max_zoom=1.0), "max_zoom"),
    (lambda: RAMConfig(scale_std=0.0), "scale_std"),
    (lambda: RAMConfig(glimpse_cost=-0.1), "glimpse_cost"),
    (lambda: RAMConfig(image_size=28, glimpse_size=8, num_scales=4, zoom=True, max_zoom=4.0), "largest patch"),
    (lambda: glimpse_sensor(torch.rand(2, 1, 28, 28), torch.zeros(2, 2), 8, 1, torch.ones(3)), "scale of shape"),
    (lambda: glimpse_sensor(torch.rand(2, 1, 28, 28), torch.zeros(2, 2), 8, 1, torch.zeros(2)), "scale must be"),
    (lambda: first_stop(torch.full((2, 3), 0.5)), "each 0"),
    (lambda: log_pi_with_stop(torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2).long()), "one shape"),
    (lambda: log_pi_with_stop(torch.zeros(2, 3), torch.zeros(2, 3), torch.full((2,), 5)), "values in 1..4"),
    (lambda: episode_reward(torch.ones(2), torch.ones(2), -1.0), "glimpse_cost"),
    (lambda: hybrid_loss(tiny()(torch.rand(2, 1, 28, 28)), torch.zeros(2).long(), glimpse_cost=0.01),
     "needs a model that stops"),
])
def test_bad_input_gets_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- learning to stop, learning to zoom


def _corner_squares(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = which corner of a 28 x 28 image holds a bright 8 x 8 square."""
    corners = [(2, 2), (2, 18), (18, 2), (18, 18)]
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.zeros(n, 1, 28, 28)
    for i, c in enumerate(labels.tolist()):
        y, x = corners[c]
        images[i, 0, y:y + 8, x:x + 8] = 1.0
    return images, labels


@pytest.mark.slow
def test_ram_learns_to_stop_when_the_first_glimpse_suffices():
    """From the centre the 32-pixel patch sees every corner: one glimpse suffices, and each more costs c."""
    torch.manual_seed(0)
    config = RAMConfig(image_size=28, glimpse_size=8, num_scales=3, num_glimpses=3, hidden=32, glimpse_hidden=16,
                       glimpse_features=32, num_classes=4, stop=True, glimpse_cost=0.1)
    model = RecurrentAttentionModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        images, labels = _corner_squares(64, gen)
        loss, _ = hybrid_loss(model(images, l_0=torch.zeros(64, 2), generator=gen), labels, config.glimpse_cost)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = _corner_squares(500, gen)
    with torch.no_grad():
        out = model(images, l_0=torch.zeros(500, 2), sample=False)
    assert (out["log_probs"].argmax(-1) == labels).float().mean() > 0.9
    assert out["glimpses_used"].float().mean() < 1.5


@pytest.mark.slow
def test_ram_learns_to_zoom_out_when_the_path_is_fixed_at_the_centre():
    """Glimpses fixed at the centre, one 8-pixel patch: only a wider patch (scale up to 4) reaches the corners."""
    torch.manual_seed(0)
    config = RAMConfig(image_size=28, glimpse_size=8, num_scales=1, num_glimpses=2, hidden=32, glimpse_hidden=16,
                       glimpse_features=32, num_classes=4, zoom=True, max_zoom=4.0, scale_std=0.3)
    model = RecurrentAttentionModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    centre = torch.zeros(2, 64, 2)
    for _ in range(200):
        images, labels = _corner_squares(64, gen)
        loss, _ = hybrid_loss(model(images, locations=centre, generator=gen), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = _corner_squares(500, gen)
    with torch.no_grad():
        out = model(images, locations=torch.zeros(2, 500, 2), sample=False)
    assert out["scales"][1].mean() > 2.5  # at scale 2.5 the 20-pixel patch covers x in [4, 24): part of each square
    assert (out["log_probs"].argmax(-1) == labels).float().mean() > 0.9
