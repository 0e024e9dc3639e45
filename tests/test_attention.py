"""Chapter 0's mechanisms: the glimpse (hard) and the weighted read (soft)."""

import math

import pytest
import torch

from attn_course.attention import glimpse, glimpse_corners, hard_attention_sample, soft_attention


def ramp(h=28, w=28):
    return torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)


def test_glimpse_equals_an_integer_crop():
    image = ramp()
    out = glimpse(image, 0.0, 0.0, 0.5, 0.0, 14)
    assert torch.allclose(out[0, 0], image[0, 0, 7:21, 7:21], atol=1e-3)
    # centred on pixel column 17.5 / row 10.5: x = (17.5+0.5)/14 - 1, y = (10.5+0.5)/14 - 1
    out = glimpse(image, 18 / 14 - 1, 11 / 14 - 1, 0.5, 0.0, 14)
    assert torch.allclose(out[0, 0], image[0, 0, 4:18, 11:25], atol=1e-3)


def test_quarter_turn_is_rot90_and_corners_follow():
    image = ramp()
    crop = image[0, 0, 7:21, 7:21]
    turned = glimpse(image, 0.0, 0.0, 0.5, math.pi / 2, 14)[0, 0]
    assert torch.allclose(turned, torch.rot90(crop, 1, (0, 1)), atol=1e-2)
    corners = glimpse_corners(0.0, 0.0, 0.5, 0.0, 28, 28)[0]
    assert torch.allclose(corners, torch.tensor([[6.5, 6.5], [20.5, 6.5], [20.5, 20.5], [6.5, 20.5]]))
    turned_corners = glimpse_corners(0.0, 0.0, 0.5, math.pi / 2, 28, 28)[0]
    assert torch.allclose(turned_corners, corners.roll(-1, 0), atol=1e-5)  # same square, corners moved on


def test_glimpse_is_batched_zero_outside_and_differentiable():
    images = torch.rand(3, 2, 20, 30, requires_grad=True)
    x = torch.tensor([-1.0, 0.0, 0.9])
    out = glimpse(images, x, torch.zeros(3), 0.3, torch.tensor([0.0, 0.5, 1.0]), 8)
    assert out.shape == (3, 2, 8, 8)
    out.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    far = glimpse(torch.ones(1, 1, 10, 10), 5.0, 5.0, 0.2, 0.0, 4)  # entirely outside the image
    assert far.abs().sum() == 0


def test_glimpse_errors():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        glimpse(torch.rand(28, 28), 0, 0, 0.5)
    with pytest.raises(ValueError, match="scale must be positive"):
        glimpse(torch.rand(1, 1, 28, 28), 0, 0, 0.0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        glimpse(torch.rand(2, 1, 28, 28), torch.zeros(3), 0, 0.5)
    with pytest.raises(ValueError, match="floating"):
        glimpse(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), 0, 0, 0.5)


def test_soft_attention_is_the_mean_of_hard_attention():
    g = torch.Generator().manual_seed(0)
    scores, values = torch.randn(4, 6, generator=g), torch.randn(4, 6, 3, generator=g)
    soft, alpha = soft_attention(scores, values)
    assert torch.allclose(alpha.sum(-1), torch.ones(4))
    exact = (alpha.unsqueeze(-1) * values).sum(1)
    assert torch.allclose(soft, exact, atol=1e-6)
    errors = []
    for m in (100, 100_000):
        read, positions = hard_attention_sample(scores, values, m, generator=g)
        assert read.shape == (m, 4, 3) and positions.shape == (m, 4)
        errors.append((read.mean(0) - soft).abs().max().item())
    assert errors[1] < 0.02 and errors[1] < errors[0] / 5
    with pytest.raises(ValueError, match="must match"):
        soft_attention(torch.randn(4, 5), values)


def test_glimpse_pixels_lie_where_the_corners_say_even_rotated_on_a_wide_image():
    # On a ramp image(row, col) = col, bilinear sampling returns the column it samples at,
    # so each glimpse pixel must equal the column of its centre inside the drawn box.
    height, width, size = 20, 30, 6
    columns = torch.arange(width, dtype=torch.float32).expand(height, width)[None, None]
    x, y, scale, angle = 0.1, -0.05, 0.4, 0.7
    out = glimpse(columns, x, y, scale, angle, size)[0, 0]
    c = glimpse_corners(x, y, scale, angle, height, width)[0]  # top-left, top-right, bottom-right, bottom-left
    frac = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    centres = c[0] + frac.view(1, -1, 1) * (c[1] - c[0]) + frac.view(-1, 1, 1) * (c[3] - c[0])
    assert torch.allclose(out, centres[..., 0], atol=1e-4)
    # the box is the image's shape scaled by s, then turned: sides s*W and s*H, right angles
    top, left = c[1] - c[0], c[3] - c[0]
    assert math.isclose(top.norm().item(), scale * width, rel_tol=1e-5)
    assert math.isclose(left.norm().item(), scale * height, rel_tol=1e-5)
    assert abs(torch.dot(top, left).item()) < 1e-3
    assert math.isclose(math.atan2(top[1].item(), top[0].item()), angle, rel_tol=1e-5)


def test_glimpse_rejects_non_finite_parameters_and_bad_sizes():
    with pytest.raises(ValueError, match="angle must be finite"):
        glimpse(torch.rand(1, 1, 8, 8), 0.0, 0.0, 0.5, float("nan"))
    with pytest.raises(ValueError, match="size must be a positive int"):
        glimpse(torch.rand(1, 1, 8, 8), 0.0, 0.0, 0.5, 0.0, size=0)


def test_soft_attention_mask_and_hard_sampling_frequencies():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    values = torch.eye(4)[None]  # one-hot values: the read is the weight vector itself
    z, alpha = soft_attention(scores, values, mask=torch.tensor([[True, True, False, True]]))
    assert alpha[0, 2] == 0 and torch.allclose(alpha.sum(-1), torch.ones(1))
    assert torch.allclose(z, alpha)
    with pytest.raises(ValueError, match="at least one True"):
        soft_attention(scores, values, mask=torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        soft_attention(scores, values, mask=torch.ones(1, 3, dtype=torch.bool))
    g = torch.Generator().manual_seed(3)
    _, positions = hard_attention_sample(scores, values, 40_000, generator=g)
    frequencies = torch.bincount(positions[:, 0], minlength=4).float() / 40_000
    assert torch.allclose(frequencies, torch.softmax(scores[0], -1), atol=0.01)
    with pytest.raises(ValueError, match="num_samples"):
        hard_attention_sample(scores, values, 0)


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


@pytest.mark.parametrize("match, call", [
    ("size", lambda: glimpse(torch.rand(1, 1, 8, 8), 0.0, 0.0, 0.5, size=0)),
    ("size", lambda: glimpse(torch.rand(1, 1, 8, 8), 0.0, 0.0, 0.5, size=2.5)),
    ("scale", lambda: glimpse(torch.rand(1, 1, 8, 8), 0.0, 0.0, 0.0)),
    ("x must be finite", lambda: glimpse(torch.rand(1, 1, 8, 8), float("nan"), 0.0, 0.5)),
    ("y must be a float or a tensor of shape", lambda: glimpse(torch.rand(2, 1, 8, 8), 0.0, torch.zeros(3), 0.5)),
    ("images", lambda: glimpse(torch.rand(1, 8, 8), 0.0, 0.0, 0.5)),
    ("images", lambda: glimpse(torch.ones(1, 1, 8, 8, dtype=torch.long), 0.0, 0.0, 0.5)),
    ("height", lambda: glimpse_corners(0.0, 0.0, 0.5, 0.0, 0, 8)),
    ("width", lambda: glimpse_corners(0.0, 0.0, 0.5, 0.0, 8, -1)),
    ("x, y, scale and angle", lambda: glimpse_corners(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0),
                                                      8, 8)),
    ("scores", lambda: soft_attention(torch.rand(2, 3), torch.rand(2, 4, 5))),
    ("mask", lambda: soft_attention(torch.rand(2, 3), torch.rand(2, 3, 5), mask=torch.ones(2, 3))),
    ("num_samples", lambda: hard_attention_sample(torch.rand(2, 3), torch.rand(2, 3, 5), 0)),
    ("scores", lambda: hard_attention_sample(torch.rand(2, 3, 1), torch.rand(2, 3, 5), 1)),
], ids=lambda value: value if isinstance(value, str) else "")
def test_bad_attention_input_gets_a_clear_error_naming_the_argument(match, call):
    with pytest.raises(ValueError, match=match):
        call()
