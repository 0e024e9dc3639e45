"""DRAW: the filterbank and its gradients, read and write, the bound, shapes and errors, learning."""

import math

import pytest
import torch

from attn_course.draw import (CPU_CONFIG, DRAW, PAPER_CONFIG, DRAWConfig, Window, attention_window, draw_loss,
                              filterbank, gaussian_kl, grid_centres, grid_points, importance_sampled_log_likelihood,
                              negative_elbo, read, read_loop, read_no_attention, window_box, write)
from attn_course.experiments.draw import config_for, evaluate_bound
from mnist_files import needs_mnist

TINY = DRAWConfig(A=12, B=9, T=4, read_N=3, write_N=4, enc_size=32, dec_size=32, z_size=5)


def params(batch, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    g_X = torch.rand(batch, generator=gen, dtype=dtype) * 20 + 4
    g_Y = torch.rand(batch, generator=gen, dtype=dtype) * 10 + 3
    delta = torch.rand(batch, generator=gen, dtype=dtype) * 2 + 0.5
    sigma2 = torch.rand(batch, generator=gen, dtype=dtype) * 2 + 0.3
    return g_X, g_Y, delta, sigma2


def test_filterbank_rows_sum_to_one_and_centres_follow_the_formula():
    g_X, g_Y, delta, sigma2 = params(6)
    F_X, F_Y = filterbank(g_X, g_Y, delta, sigma2, N=5, A=28, B=16)
    assert F_X.shape == (6, 5, 28) and F_Y.shape == (6, 5, 16)  # F_X is N x A, F_Y is N x B
    assert torch.allclose(F_X.sum(-1), torch.ones(6, 5), atol=1e-5)
    assert torch.allclose(F_Y.sum(-1), torch.ones(6, 5), atol=1e-5)
    mu = grid_centres(g_X, delta, 5)
    for i in range(1, 6):
        assert torch.allclose(mu[:, i - 1], g_X + (i - 5 / 2 - 0.5) * delta)
    # the rows peak at the grid centres (pixels counted from 1)
    a = torch.arange(1, 29, dtype=torch.float32)
    centre_of_mass = (F_X * a).sum(-1)
    inside = (mu > 4) & (mu < 25)
    assert torch.allclose(centre_of_mass[inside], mu[inside], atol=0.05)


def test_far_off_rows_are_zero_not_nan():
    F_X, _ = filterbank(torch.tensor([500.0]), torch.tensor([5.0]), torch.tensor([1.0]), torch.tensor([0.01]),
                        N=2, A=28, B=28)
    assert torch.isfinite(F_X).all() and F_X.abs().max() == 0


def test_attention_window_formulas_with_a_non_square_image():
    p = torch.tensor([[0.0, 0.0, math.log(0.5), 0.0, math.log(2.0)], [-1.0, 1.0, 0.0, math.log(0.5), 0.0]])
    w = attention_window(p, N=5, A=20, B=12)
    assert torch.allclose(w.g_X, torch.tensor([10.5, 0.0])) and torch.allclose(w.g_Y, torch.tensor([6.5, 13.0]))
    assert torch.allclose(w.delta, torch.tensor([19 / 4, 19 / 8]))  # (max(A, B) - 1) / (N - 1) delta~
    assert torch.allclose(w.sigma2, torch.tensor([0.5, 1.0])) and torch.allclose(w.gamma, torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        attention_window(torch.zeros(2, 4), N=5, A=20, B=12)


@pytest.mark.parametrize("A,B", [(12, 12), (15, 9)])
def test_identity_filterbank_reads_and_writes_back_the_image(A, B):
    N = max(A, B)
    g_X, g_Y = torch.full((3,), (A + 1) / 2), torch.full((3,), (B + 1) / 2)
    # with N = A = B the grid points land on the pixels; for A != B use the larger side and crop
    F_X, F_Y = filterbank(g_X, g_Y, torch.ones(3), torch.full((3,), 0.01), N=N, A=A, B=B)
    if A == B:
        assert torch.allclose(F_X, torch.eye(N).expand(3, N, N), atol=1e-6)
    x = torch.rand(3, B, A)
    gamma = torch.tensor([1.0, 2.0, 0.5])
    patches = read(x, 1 - x, F_X, F_Y, gamma)
    assert patches.shape == (3, 2, N, N)
    back = write(patches[:, 0], F_X, F_Y, gamma)
    assert back.shape == (3, B, A) and torch.allclose(back, x, atol=1e-5)


def test_batched_read_matches_a_loop():
    g_X, g_Y, delta, sigma2 = params(4, seed=3)
    gamma = torch.rand(4) + 0.5
    x, x_hat = torch.rand(4, 16, 28), torch.randn(4, 16, 28)
    F_X, F_Y = filterbank(g_X, g_Y, delta, sigma2, N=3, A=28, B=16)
    fast = read(x, x_hat, F_X, F_Y, gamma)
    slow = read_loop(x, x_hat, Window(g_X, g_Y, delta, sigma2, gamma), N=3)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_read_and_write_are_differentiable_in_the_window():
    """Finite differences against autograd, in float64, for g_X, g_Y, delta and sigma^2 (and gamma)."""
    x = torch.rand(2, 5, 7, dtype=torch.float64)
    w = torch.randn(2, 3, 3, dtype=torch.float64)
    g_X, g_Y, delta, sigma2 = params(2, seed=1, dtype=torch.float64)
    gamma = torch.tensor([1.3, 0.7], dtype=torch.float64)
    inputs = [v.detach().requires_grad_() for v in (g_X / 3, g_Y / 2, delta, sigma2, gamma)]  # inside a 7 x 5 image

    def through(g_X, g_Y, delta, sigma2, gamma):
        F_X, F_Y = filterbank(g_X, g_Y, delta, sigma2, N=3, A=7, B=5)
        return read(x, x, F_X, F_Y, gamma), write(w, F_X, F_Y, gamma)

    assert torch.autograd.gradcheck(through, inputs)
    out = through(*inputs)
    grads = torch.autograd.grad(out[0].sum() + out[1].sum(), inputs)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_closed_form_kl_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    mu, log_sigma = torch.tensor([0.0, 1.5, -0.7]), torch.tensor([0.0, -0.5, 0.4])
    z = mu + log_sigma.exp() * torch.randn(400_000, 3, generator=gen)
    log_q = -0.5 * ((z - mu) / log_sigma.exp()) ** 2 - log_sigma
    log_p = -0.5 * z ** 2
    assert torch.allclose((log_q - log_p).mean(0), gaussian_kl(mu, log_sigma), atol=0.01)
    assert gaussian_kl(torch.zeros(1), torch.zeros(1)).item() == 0


def test_shapes_on_a_non_square_image_with_and_without_attention():
    for attention in (True, False):
        config = DRAWConfig(**{**TINY.__dict__, "attention": attention})
        model = DRAW(config)
        images = (torch.rand(5, 1, 9, 12) > 0.5).float()
        out = model(images, record=True)
        assert out["logits"].shape == (5, 1, 9, 12) and out["mu"].shape == (4, 5, 5) and out["z"].shape == (4, 5, 5)
        assert out["canvases"].shape == (4, 5, 9, 12)
        assert ("read_windows" in out) == attention
        if attention:
            assert out["read_windows"].shape == (4, 5, 5) and out["write_windows"].shape == (4, 5, 5)
        sample = model.generate(3, generator=torch.Generator().manual_seed(0))
        assert sample["canvases"].shape == (4, 3, 9, 12) and sample["canvases"].min() >= 0
        assert ("write_windows" in sample) == attention
        L_x, L_z = negative_elbo(out, images)
        assert L_x.shape == (5,) and (L_z >= 0).all()


def test_generation_and_posterior_samples_follow_the_generator():
    model = DRAW(TINY)
    a = model.generate(2, generator=torch.Generator().manual_seed(7))["canvases"]
    b = model.generate(2, generator=torch.Generator().manual_seed(7))["canvases"]
    assert torch.equal(a, b)
    images = (torch.rand(3, 1, 9, 12) > 0.5).float()
    one = model(images, generator=torch.Generator().manual_seed(1))["logits"]
    two = model(images, generator=torch.Generator().manual_seed(1))["logits"]
    assert torch.equal(one, two)


def test_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match="at least 2"):
        DRAWConfig(read_N=1)
    with pytest.raises(ValueError, match="N >= 2"):
        filterbank(*params(2), N=1, A=28, B=28)
    with pytest.raises(ValueError, match=r"\(batch,\)"):
        g_X, g_Y, delta, sigma2 = params(2)
        filterbank(g_X, g_Y[:1], delta, sigma2, N=2, A=28, B=28)
    model = DRAW(TINY)
    with pytest.raises(ValueError, match=r"\(batch, 1, 9, 12\)"):
        model(torch.rand(2, 1, 12, 9))  # A and B swapped
    F_X, F_Y = filterbank(*params(2), N=3, A=28, B=16)
    with pytest.raises(ValueError, match=r"F_X of shape \(2, N, 16\)"):
        read(torch.rand(2, 28, 16), torch.rand(2, 28, 16), F_X, F_Y, torch.ones(2))
    with pytest.raises(ValueError, match=r"\(batch, B, A\)"):
        read_no_attention(torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(batch, N, N\)"):
        write(torch.rand(2, 3, 4), F_X, F_Y, torch.ones(2))


def test_the_bound_lies_below_the_importance_sampled_log_likelihood():
    torch.manual_seed(0)
    model = DRAW(TINY)
    images = (torch.rand(4, 1, 9, 12) > 0.5).float()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bound = -sum(negative_elbo(model(images.repeat(50, 1, 1, 1), generator=gen), images.repeat(50, 1, 1, 1)))
    elbo = bound.view(50, 4).mean(0)
    log_px = importance_sampled_log_likelihood(model, images, K=200, generator=gen)
    assert log_px.shape == (4,) and (elbo < log_px).all()


@pytest.mark.slow
def test_loss_decreases_on_a_tiny_training_run():
    torch.manual_seed(0)
    model = DRAW(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    patterns = torch.zeros(4, 1, 9, 12)
    patterns[0, 0, 2:7, 3] = patterns[1, 0, 4, 2:10] = patterns[2, 0, 1:8, 8] = patterns[3, 0, 2:6, 3:7] = 1.0
    losses = []
    for step in range(80):
        loss, metrics = draw_loss(model, {"images": patterns[torch.randint(0, 4, (16,))]})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(metrics) == {"L_x", "L_z"}
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5


def test_windows_as_boxes_and_grid_points():
    window = torch.tensor([14.5, 14.5, 2.0, 1.0, 1.0])  # centre of a 28 x 28 image, stride 2
    assert torch.allclose(window_box(window, 5), torch.tensor([9.0, 9.0, 19.0, 19.0]))
    xs, ys = grid_points(window, 5)
    assert torch.allclose(xs, torch.tensor([9.5, 11.5, 13.5, 15.5, 17.5])) and torch.allclose(xs, ys)


def test_registered_models_and_their_configs():
    from attn_course.registry import get_spec

    spec = get_spec("draw")
    assert spec.check_task(None) == "mnist" and {"mnist_paper", "mnist-noattn", "mnist_paper-noattn"} <= set(spec.tasks)
    assert spec.model_config("mnist")["T"] == CPU_CONFIG.T and spec.model_config("mnist")["attention"]
    assert spec.model_config("mnist_paper")["T"] == 64 == PAPER_CONFIG.T
    assert (PAPER_CONFIG.read_N, PAPER_CONFIG.write_N, PAPER_CONFIG.enc_size, PAPER_CONFIG.z_size) == (2, 5, 256, 100)
    without = spec.model_config("mnist-noattn")
    assert not without["attention"] and {**without, "attention": True} == spec.model_config("mnist")
    assert isinstance(spec.build(without), DRAW) and spec.model_config("mnist_paper-noattn")["T"] == 64
    # T = 32: the paper's network at half its steps, with and without attention
    assert spec.model_config("mnist32") == {**spec.model_config("mnist_paper"), "T": 32}
    assert spec.model_config("mnist32-noattn") == {**spec.model_config("mnist32"), "attention": False}
    with pytest.raises(ValueError, match="not 'draw'"):
        spec.build({"kind": "ram"})


def test_test_bound_on_a_small_fixed_set():
    class Data:
        def test_batches(self, batch_size):
            gen = torch.Generator().manual_seed(0)
            for _ in range(2):
                yield {"images": (torch.rand(5, 1, 9, 12, generator=gen) > 0.5).float()}

    model = DRAW(TINY)
    first, second = evaluate_bound(model, Data(), batch_size=5), evaluate_bound(model, Data(), batch_size=5)
    assert first == second and first["count"] == 10
    assert first["nll_bound"] == pytest.approx(first["L_x"] + first["L_z"])
    assert 108 * math.log(2) * 0.5 < first["nll_bound"] < 108 * 5  # 108 pixels: near log 2 each when untrained


@needs_mnist
def test_binarized_mnist_is_dynamic_for_training_and_fixed_for_testing():
    from attn_course.data import BinarizedMNIST

    data = BinarizedMNIST(test_size=500)
    a = data.sample(torch.Generator().manual_seed(0), 32)["images"]
    b = data.sample(torch.Generator().manual_seed(0), 32)["images"]
    c = data.sample(torch.Generator().manual_seed(1), 32)["images"]
    assert a.shape == (32, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0} and 0.05 < a.mean() < 0.25
    test = torch.cat([batch["images"] for batch in data.test_batches(200)])
    again = torch.cat([batch["images"] for batch in BinarizedMNIST().test_batches(200)])[:500]
    assert test.shape == (500, 1, 28, 28) and torch.equal(test, again)


def test_shipped_draw_is_trained_like_its_comparison():
    from attn_course.checkpoints import PRETRAINED_DIR, available_pretrained, read_card

    shipped = {name for name in available_pretrained() if name.startswith("draw")}
    assert {"draw-mnist", "draw-mnist-noattn"} <= shipped, "ship DRAW with the DRAW without attention it is compared with"
    cards = {task: read_card(PRETRAINED_DIR / f"draw-{task}.pt") for task in ("mnist", "mnist-noattn")}
    assert not cards["mnist-noattn"]["model_config"]["attention"] and cards["mnist"]["model_config"]["attention"]
    # trained the same way: the same configuration but for attention, the same batch size
    same = lambda key: cards["mnist"]["model_config"][key] == cards["mnist-noattn"]["model_config"][key]  # noqa: E731
    assert all(same(key) for key in ("T", "enc_size", "dec_size", "z_size"))
    batch = [card["command"].split("--batch-size ")[1].split()[0] for card in cards.values()]
    assert batch[0] == batch[1]


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_draw_calls():
    from attn_course import draw

    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    fb = lambda **kw: filterbank(**{"g_X": one(14), "g_Y": one(14), "delta": one(2), "sigma2": one(1), "N": 5,  # noqa: E731
                                    "A": 28, "B": 28, **kw})
    F_X, F_Y = fb()
    x = torch.rand(1, 28, 28)
    tiny = DRAW(DRAWConfig(T=2, enc_size=8, dec_size=8, z_size=4))
    return [
        (ValueError, "sigma2 must be positive", lambda: fb(sigma2=one(0))),
        (ValueError, "delta must be positive", lambda: fb(delta=one(-1))),
        (ValueError, "g_X must be finite", lambda: fb(g_X=one(float("nan")))),
        (ValueError, "sigma2 must be finite", lambda: fb(sigma2=one(float("inf")))),
        (ValueError, "N >= 2", lambda: fb(N=1)),
        (ValueError, r"A \(image width", lambda: fb(A=0)),
        (ValueError, r"B \(image height", lambda: fb(B=2.5)),
        (ValueError, "g_Y", lambda: fb(g_Y=torch.zeros(2))),
        (ValueError, "delta", lambda: fb(delta=2.0)),
        (ValueError, "N >= 2", lambda: grid_centres(one(1), one(1), 0)),
        (ValueError, "g and delta", lambda: grid_centres(one(1), torch.ones(2), 3)),
        (ValueError, "attention parameters", lambda: attention_window(torch.zeros(2, 4), 5, 28, 28)),
        (ValueError, r"A \(image width", lambda: attention_window(torch.zeros(2, 5), 5, 0, 28)),
        (ValueError, "gamma must be positive", lambda: draw.read(x, x, F_X, F_Y, one(0))),
        (ValueError, "gamma", lambda: draw.read(x, x, F_X, F_Y, torch.ones(3))),
        (ValueError, "x_hat", lambda: draw.read(x, x[:, :20], F_X, F_Y, one(1))),
        (ValueError, "F_X", lambda: draw.read(x, x, F_X[:, :, :20], F_Y, one(1))),
        (ValueError, "gamma must be positive", lambda: draw.write(torch.rand(1, 5, 5), F_X, F_Y, one(0))),
        (ValueError, "w of shape", lambda: draw.write(torch.rand(1, 5, 4), F_X, F_Y, one(1))),
        (ValueError, "x_hat", lambda: draw.read_no_attention(x, x[0])),
        (ValueError, "N >= 2", lambda: draw.read_loop(x, x, Window(one(14), one(14), one(2), one(1), one(1)), 1)),
        (TypeError, "config", lambda: DRAW({"T": 2})),
        (ValueError, "images", lambda: tiny(torch.rand(2, 28, 28))),
        (ValueError, "n >= 1", lambda: tiny.generate(0)),
        (ValueError, "mu and log_sigma", lambda: gaussian_kl(torch.zeros(2, 3), torch.zeros(3, 2))),
        (ValueError, "images", lambda: draw.negative_elbo(tiny(torch.rand(2, 1, 28, 28)), torch.rand(3, 1, 28, 28))),
        (ValueError, "K", lambda: importance_sampled_log_likelihood(tiny, torch.rand(2, 1, 28, 28), 0)),
        (ValueError, "task 'cifar'.*mnist", lambda: config_for("cifar")),
        (ValueError, "batch_size", lambda: evaluate_bound(tiny, None, batch_size=0)),
        (ValueError, "N must", lambda: draw.window_box(torch.tensor([14.0, 14.0, 2.0, 1.0, 1.0]), 0)),
        (ValueError, "window", lambda: draw.window_box(torch.tensor([14.0, 14.0, 2.0]), 5)),
        (ValueError, "window", lambda: grid_points(torch.zeros(2, 5), 5)),
    ]


BAD_DRAW_CALLS = _bad_draw_calls()


@pytest.mark.parametrize("error, match, call", BAD_DRAW_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_DRAW_CALLS)])
def test_bad_draw_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()
