"""The Recurrent Attention Model (Mnih, Heess, Graves and Kavukcuoglu 2014), in the paper's notation.

At step t the model sees only a glimpse of the image x around the location l_{t-1}:

    rho(x, l_{t-1})                    glimpse sensor: k patches, sizes g, 2g, 4g, ..., each resized to g x g
    g_t = f_g(rho, l_{t-1})            glimpse network
    h_t = f_h(h_{t-1}, g_t)            core network (rectifier RNN as in the paper, or LSTM)
    l_t ~ N(f_l(h_t), sigma^2 I)       location network: a Gaussian policy with fixed sigma
    a_T = f_a(h_T)                     action network: class probabilities after the last glimpse
    b_t = f_b(h_t)                     baseline, trained by regression on the reward

Training maximises J(theta) = E[R], with reward R = 1 when the final classification is right,
by the hybrid loss: the log-likelihood of the class (backprop) plus REINFORCE for the
locations with the baseline subtracted (equations (1.3)-(1.5) of chapter 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import evaluating


@dataclass(frozen=True)
class RAMConfig:
    """The model's sizes. The defaults are the paper's 28x28 MNIST configuration."""

    image_size: int = 28
    glimpse_size: int = 8  # g: side of each patch after resizing
    num_scales: int = 1  # k: patches of side g, 2g, ..., 2^(k-1) g
    num_glimpses: int = 6  # T
    glimpse_hidden: int = 128  # sizes of h_g and h_l
    glimpse_features: int = 256  # size of g_t
    hidden: int = 256  # size of h_t
    core: str = "rnn"  # "rnn" (rectifier, as in the paper) or "lstm"
    std: float = 0.15  # sigma of the location policy, in [-1, 1] image coordinates
    num_classes: int = 10

    def __post_init__(self):
        if self.core not in ("rnn", "lstm"):
            raise ValueError(f"core must be 'rnn' or 'lstm', got {self.core!r}")
        for name in ("image_size", "glimpse_size", "num_scales", "num_glimpses", "hidden", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"RAMConfig.{name} must be positive, got {getattr(self, name)}")
        if self.glimpse_size > self.image_size:
            raise ValueError(f"glimpse_size {self.glimpse_size} is larger than the image ({self.image_size})")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")


# The paper's configurations (Mnih et al. 2014, section 4.1): image, glimpse size g, scales k and
# glimpses T. On the 60 x 60 canvases the core is an LSTM, not the paper's rectifier RNN: chapter 1's
# "what differs" section gives the measurements behind that choice.
PAPER_CONFIGS = {
    "mnist28": RAMConfig(image_size=28, glimpse_size=8, num_scales=1, num_glimpses=6),
    "translated60": RAMConfig(image_size=60, glimpse_size=12, num_scales=3, num_glimpses=8, core="lstm"),
    "cluttered60": RAMConfig(image_size=60, glimpse_size=12, num_scales=3, num_glimpses=8, core="lstm"),
    "cluttered100": RAMConfig(image_size=100, glimpse_size=12, num_scales=4, num_glimpses=8, core="lstm"),
}


# --------------------------------------------------------------------------- A. the glimpse sensor


def _check_sensor(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int) -> None:
    """The checks of :func:`glimpse_sensor`'s arguments (the model checks its own, once per forward pass)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {_shape(images)}")
    if not isinstance(l, torch.Tensor) or l.dim() != 2 or l.shape != (images.shape[0], 2):
        raise ValueError(f"expected locations l of shape ({images.shape[0]}, 2), got {_shape(l)}")
    _check_locations(l, "locations l")
    for name, value in (("glimpse_size", glimpse_size), ("num_scales", num_scales)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    height, width = images.shape[2:]
    if glimpse_size * 2 ** (num_scales - 1) > 4 * max(height, width):
        raise ValueError(f"the largest patch (glimpse_size {glimpse_size} x 2^(num_scales - 1) = "
                         f"{glimpse_size * 2 ** (num_scales - 1)} pixels) is far larger than the image "
                         f"({height} x {width})")


def _check_locations(l: torch.Tensor, name: str) -> None:
    if not torch.isfinite(l).all() or l.abs().max() > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [-1, 1]^2 (the image spans [-1, 1] in both axes)")


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def box_filterbank(centre: torch.Tensor, glimpse_size: int, num_scales: int, length: int) -> torch.Tensor:
    """F[b, i, j, a]: how much of pixel a (spanning [a, a + 1)) lies in box j of scale i, along one axis.

    ``centre`` (B,) in pixel-edge coordinates (the image spans [0, length)). Box j of
    scale i has side s = 2^i and spans [centre + (j - g/2) s, centre + (j - g/2 + 1) s).
    Returns (B, k, g, length); a row sums to the part of its box inside the image, so
    outside the image reads as zero, and fractional box edges weight the edge pixels
    by their overlap.
    """
    if centre.dim() != 1:
        raise ValueError(f"expected centre of shape (B,), got {tuple(centre.shape)}")
    for name, value in (("glimpse_size", glimpse_size), ("num_scales", num_scales), ("length", length)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    return _box_filterbank(centre, glimpse_size, num_scales, length)


def _box_filterbank(centre: torch.Tensor, glimpse_size: int, num_scales: int, length: int) -> torch.Tensor:
    g, k = glimpse_size, num_scales
    dtype, device = centre.dtype, centre.device
    sides = 2.0 ** torch.arange(k, device=device, dtype=dtype)  # (k,)
    offsets = torch.arange(g, device=device, dtype=dtype) - g / 2  # (g,)
    low = centre[:, None, None] + offsets * sides[:, None]  # (B, k, g): left (or top) edge of each box
    high = low + sides[:, None]
    pixel = torch.arange(length, device=device, dtype=dtype)
    return (torch.minimum(high[..., None], pixel + 1) - torch.maximum(low[..., None], pixel)).clamp_(min=0)


def glimpse_sensor(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int) -> torch.Tensor:
    """rho(x, l): k patches centred at l, of sides g, 2g, ..., 2^(k-1) g, each averaged down to g x g.

    ``images`` (B, C, H, W); ``l`` (B, 2) as (x, y) in [-1, 1]. Returns (B, k, C, g, g).
    Pixel (j, j') of patch i is the mean of the image over a box of side 2^i. Averaging
    over boxes is separable, so every patch is a filterbank read
    ``F_Y x F_X^T / 4^i`` with box filters F_Y (g, H) and F_X (g, W) from
    :func:`box_filterbank` (the same form as DRAW's Gaussian read in chapter 2): two
    batched matrix products for every sample and scale at once. Outside the image reads
    as zero; between pixels the read is bilinear.
    """
    _check_sensor(images, l, glimpse_size, num_scales)
    return _glimpse_sensor(images, l, glimpse_size, num_scales)


def _glimpse_sensor(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int) -> torch.Tensor:
    """:func:`glimpse_sensor` without the checks: what the model calls at every glimpse (and what exports)."""
    batch, channels, height, width = images.shape
    g, k = glimpse_size, num_scales
    x = images if images.is_floating_point() else images.float()
    centre = (l.to(x.dtype) + 1) / 2  # in [0, 1]; pixel-edge coordinates below
    F_X = _box_filterbank(centre[:, 0] * width, g, k, width)  # (B, k, g, W)
    F_Y = _box_filterbank(centre[:, 1] * height, g, k, height)  # (B, k, g, H)
    # rows: (B, 1, k g, H) @ (B, C, H, W) -> (B, C, k, g, W); columns: ... @ (B, 1, k, W, g) -> (B, C, k, g, g)
    rows = (F_Y.reshape(batch, 1, k * g, height) @ x).view(batch, channels, k, g, width)
    patches = rows @ F_X[:, None].transpose(-1, -2)
    area = 4.0 ** torch.arange(k, device=x.device, dtype=x.dtype)
    return (patches / area.view(1, 1, k, 1, 1)).transpose(1, 2)


def glimpse_sensor_loop(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int) -> torch.Tensor:
    """The same as :func:`glimpse_sensor` for locations on the pixel grid, written as a plain loop.

    A reference for tests and for the benchmark: for every sample and scale, crop the
    patch from the zero-padded image and average it down by ``avg_pool2d``.
    """
    _check_sensor(images, l, glimpse_size, num_scales)
    batch, channels, height, width = images.shape
    g = glimpse_size
    out = images.new_zeros(batch, num_scales, channels, g, g)
    for b in range(batch):
        cx = (float(l[b, 0]) + 1) * width / 2
        cy = (float(l[b, 1]) + 1) * height / 2
        for i in range(num_scales):
            side = g * 2 ** i
            pad = side
            padded = F.pad(images[b], (pad, pad, pad, pad))
            x0, y0 = round(cx - side / 2) + pad, round(cy - side / 2) + pad
            crop = padded[:, y0:y0 + side, x0:x0 + side]
            out[b, i] = F.avg_pool2d(crop[None], 2 ** i)[0]
    return out


# --------------------------------------------------------------------------- B. the networks


class GlimpseNetwork(nn.Module):
    """g_t = ReLU(Linear(h_g) + Linear(h_l)), h_g = ReLU(Linear(rho)), h_l = ReLU(Linear(l))."""

    def __init__(self, config: RAMConfig, channels: int = 1):
        super().__init__()
        rho_size = config.num_scales * channels * config.glimpse_size ** 2
        self.what = nn.Linear(rho_size, config.glimpse_hidden)  # theta_g^0
        self.where = nn.Linear(2, config.glimpse_hidden)  # theta_g^1
        self.what_out = nn.Linear(config.glimpse_hidden, config.glimpse_features)  # theta_g^2
        self.where_out = nn.Linear(config.glimpse_hidden, config.glimpse_features)

    def forward(self, rho: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        h_g = F.relu(self.what(rho.flatten(1)))
        h_l = F.relu(self.where(l))
        return F.relu(self.what_out(h_g) + self.where_out(h_l))


class CoreNetwork(nn.Module):
    """h_t = f_h(h_{t-1}, g_t): a rectifier RNN, ReLU(Linear(h_{t-1}) + Linear(g_t)), or an LSTM."""

    def __init__(self, config: RAMConfig):
        super().__init__()
        self.kind = config.core
        if self.kind == "lstm":
            self.cell = nn.LSTMCell(config.glimpse_features, config.hidden)
        else:
            self.input = nn.Linear(config.glimpse_features, config.hidden)
            self.recurrent = nn.Linear(config.hidden, config.hidden)

    def forward(self, g_t: torch.Tensor, state):
        if self.kind == "lstm":
            h, c = self.cell(g_t, state)
            return h, (h, c)
        h = F.relu(self.input(g_t) + self.recurrent(state))
        return h, h


class RecurrentAttentionModel(nn.Module):
    """RAM: glimpse sensor, glimpse network, core network, location, action and baseline networks."""

    def __init__(self, config: RAMConfig = RAMConfig(), channels: int = 1):
        super().__init__()
        if not isinstance(config, RAMConfig):
            raise TypeError(f"config must be a RAMConfig, got {type(config).__name__}")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.config = config
        self.channels = channels
        self.glimpse_network = GlimpseNetwork(config, channels)
        self.core_network = CoreNetwork(config)
        self.location_network = nn.Linear(config.hidden, 2)  # mean of the policy, f_l(h_t; theta_l)
        self.action_network = nn.Linear(config.hidden, config.num_classes)  # f_a(h_t; theta_a)
        self.baseline_network = nn.Linear(config.hidden, 1)  # b_t = f_b(h_t)

    # Where the REINFORCE term's gradient goes. (1.3) takes it with respect to all of theta; by default
    # (False) the location network reads a detached h_t, so REINFORCE trains the location network only
    # and the core and glimpse networks learn from the classification loss alone. True follows (1.3):
    # the gradient of log pi also reaches the core and glimpse networks. Chapter 1 measures both.
    reinforce_core: bool = False

    def initial_state(self, batch: int, device):
        zeros = torch.zeros(batch, self.config.hidden, device=device)
        return (zeros, zeros.clone()) if self.config.core == "lstm" else zeros

    def forward(self, images: torch.Tensor, l_0: torch.Tensor | None = None, sample: bool = True,
                generator: torch.Generator | None = None, num_glimpses: int | None = None,
                locations: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run T glimpses over ``images`` (B, C, H, W).

        ``l_0``: the first location (B, 2); by default uniform in [-1, 1]^2 (drawn with
        ``generator``). ``sample``: draw l_t ~ N(mu_t, sigma^2) (training) or take
        l_t = mu_t (evaluation). ``locations`` (T, B, 2): look at these places instead of
        following the policy (a fixed or random path; ``log_pi`` is then their likelihood
        under the policy). Returns a dict with ``log_probs`` (B, classes) of the
        last step, ``logits_per_step`` (T, B, classes), ``locations`` (T, B, 2) (where
        each glimpse was taken), ``means`` (T-1, B, 2), ``log_pi`` (B, T-1) the
        log-likelihood of every sampled location, and ``baselines`` (B, T).
        """
        config = self.config
        expected = (self.channels, config.image_size, config.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(images.shape)}")
        batch, device = images.shape[0], images.device
        steps = config.num_glimpses if num_glimpses is None else num_glimpses
        if steps < 1:
            raise ValueError(f"num_glimpses must be positive (or None: the config's {config.num_glimpses}), "
                             f"got {num_glimpses}")
        if locations is not None:
            if locations.shape != (steps, batch, 2):
                raise ValueError(f"expected locations of shape ({steps}, {batch}, 2), got {tuple(locations.shape)}")
            _check_locations(locations, "locations")
            l_0 = locations[0]
        elif l_0 is not None:
            if l_0.shape != (batch, 2):
                raise ValueError(f"expected l_0 of shape ({batch}, 2), got {tuple(l_0.shape)}")
            _check_locations(l_0, "l_0")
        if l_0 is None:
            l_0 = torch.rand(batch, 2, device=device, generator=generator) * 2 - 1
        state = self.initial_state(batch, device)
        l_t = l_0
        visited, means, log_pi, baselines, logits = [], [], [], [], []
        for t in range(steps):
            visited.append(l_t)
            rho = _glimpse_sensor(images, l_t, config.glimpse_size, config.num_scales)
            g_t = self.glimpse_network(rho, l_t)
            h_t, state = self.core_network(g_t, state)
            baselines.append(self.baseline_network(h_t.detach()).squeeze(-1))
            logits.append(self.action_network(h_t))
            if t < steps - 1:
                mu = torch.tanh(self.location_network(h_t if self.reinforce_core else h_t.detach()))
                if locations is not None:
                    l_next = locations[t + 1]
                elif sample:
                    noise = torch.randn(mu.shape, device=device, generator=generator)
                    l_next = (mu + config.std * noise).detach()
                else:
                    l_next = mu.detach()
                log_pi.append(gaussian_log_likelihood(l_next, mu, config.std))
                means.append(mu)
                l_t = l_next.clamp(-1.0, 1.0)
        logits = torch.stack(logits)
        return {
            "log_probs": F.log_softmax(logits[-1], dim=-1),
            "logits_per_step": logits,
            "locations": torch.stack(visited),
            "means": torch.stack(means) if means else torch.zeros(0, batch, 2, device=device),
            "log_pi": torch.stack(log_pi, dim=1) if log_pi else torch.zeros(batch, 0, device=device),
            "baselines": torch.stack(baselines, dim=1),
        }


def gaussian_log_likelihood(l: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(l; mu, std^2 I), summed over the two coordinates; its gradient in mu is (l - mu) / std^2."""
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    return (-0.5 * ((l - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


# --------------------------------------------------------------------------- C. the hybrid loss


def hybrid_loss(out: Mapping[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's hybrid loss, averaged over the batch (chapter 1, equations (1.3)-(1.5)).

    * classification: -log p(y | x), trained by backprop through the whole model;
    * REINFORCE: -sum_t log pi(l_t | s_{1:t}) (R - b_t), with R = 1 if the final class is right;
    * baseline: sum_t (R - b_t)^2, so that b_t approximates E[R].
    """
    log_probs, log_pi, baselines = out["log_probs"], out["log_pi"], out["baselines"]
    if labels.shape != log_probs.shape[:1]:
        raise ValueError(f"expected labels of shape ({log_probs.shape[0]},), one per image, got {tuple(labels.shape)}")
    correct = (log_probs.argmax(-1) == labels).float()
    R = correct[:, None].expand_as(baselines)  # reward, the same at every step
    classification = F.nll_loss(log_probs, labels)
    advantage = (R[:, : log_pi.shape[1]] - baselines[:, : log_pi.shape[1]]).detach()
    reinforce = -(log_pi * advantage).sum(1).mean()
    baseline = F.mse_loss(baselines, R)
    loss = classification + reinforce + baseline
    return loss, {"accuracy": correct.mean(), "reward_baseline_gap": (R - baselines).abs().mean().detach()}


# --------------------------------------------------------------------------- D. where the first glimpse goes


# Where the first glimpse l_0 goes, per task. On the centred 28 x 28 digits it is drawn
# uniformly (as the shipped mnist28 model was trained); on the larger canvases it is the
# centre, where the outer patch (48 or 96 pixels) sees most of the image, so that the
# policy can aim its second glimpse from a view of the whole scene.
FIRST_GLIMPSE_AT_CENTRE = {"mnist28": False, "translated60": True, "cluttered60": True, "cluttered100": True}


def first_location(task: str, batch: int, device) -> torch.Tensor | None:
    """l_0 for ``task``: the centre (B, 2) of zeros, or None (uniform, drawn by the model)."""
    if task not in FIRST_GLIMPSE_AT_CENTRE:
        raise ValueError(f"unknown RAM task {task!r}; choose one of: {', '.join(FIRST_GLIMPSE_AT_CENTRE)}")
    return torch.zeros(batch, 2, device=device) if FIRST_GLIMPSE_AT_CENTRE[task] else None


def ram_loss(model: RecurrentAttentionModel, batch: Mapping[str, torch.Tensor], l_0: torch.Tensor | None = None):
    return hybrid_loss(model(batch["images"], l_0=l_0), batch["labels"])


# --------------------------------------------------------------------------- E. following the policy


def to_pixels(l: torch.Tensor, size: int) -> torch.Tensor:
    """Locations l in [-1, 1] as (column, row) coordinates of an image of side ``size``, pixel centres at integers."""
    if size < 1:
        raise ValueError(f"size (the image side in pixels) must be positive, got {size}")
    return (l + 1) * size / 2 - 0.5


def glimpse_paths(model: RecurrentAttentionModel, images: torch.Tensor, l_0: torch.Tensor | None = None,
                  locations: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Run the deterministic policy (l_t = mu_t) on ``images`` and report every step.

    ``l_0`` defaults to the image centre. Returns ``locations`` (B, T, 2) in [-1, 1],
    ``pixels`` (B, T, 2) as (column, row), ``probabilities`` (B, T, classes) (a_t after
    each glimpse) and ``predicted`` (B,), the class after the last glimpse.
    """
    if l_0 is None and locations is None:
        l_0 = images.new_zeros(len(images), 2)
    with evaluating(model):
        out = model(images, l_0=l_0, sample=False, locations=locations)
    where = out["locations"].transpose(0, 1)
    probabilities = out["logits_per_step"].softmax(-1).transpose(0, 1)
    return {"locations": where, "pixels": to_pixels(where, images.shape[-1]), "probabilities": probabilities,
            "predicted": probabilities[:, -1].argmax(-1)}
