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

Two options, off by default (the paper's model), add the choices the paper mentions and
chapter 1's exercise 3 asks about (equations (1.7)-(1.10), derived in section F):

    z_t ~ N(mu^z_t, sigma_z^2)         zoom: the log-scale of the next glimpse, patches exp(z_t) times as wide
    d_t ~ Bernoulli(p_t)               stop: p_t = sigmoid(w^T h_t); the answer is a_tau at the first d_tau = 1,
                                       and the reward R = 1[correct] - c tau charges for the glimpses used
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
    # The extension of section F, off by default: zoom and its policy, stop and its reward (1.7).
    zoom: bool = False  # the policy also picks z_t, the log-scale of the next glimpse's patches
    scale_std: float = 0.2  # sigma_z of the log-scale policy
    max_zoom: float = 2.0  # m: the patches' scale exp(z_t) is clamped to [1/m, m], the mean mu^z_t to (-log m, log m)
    stop: bool = False  # after each glimpse the policy may stop, with probability p_t = sigmoid(w^T h_t)
    glimpse_cost: float = 0.01  # c in the reward R = 1[correct] - c tau, tau the number of glimpses used

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
        if not (self.scale_std > 0 and math.isfinite(self.scale_std)):
            raise ValueError(f"scale_std must be a positive number, got {self.scale_std}")
        if not (self.max_zoom > 1 and math.isfinite(self.max_zoom)):
            raise ValueError(f"max_zoom must be a number above 1 (scales lie in [1/max_zoom, max_zoom]), "
                             f"got {self.max_zoom}")
        if not (self.glimpse_cost >= 0 and math.isfinite(self.glimpse_cost)):
            raise ValueError(f"glimpse_cost must be a number >= 0, got {self.glimpse_cost}")
        largest = self.glimpse_size * 2 ** (self.num_scales - 1) * self.max_zoom
        if self.zoom and largest > 4 * self.image_size:
            raise ValueError(f"the largest patch (glimpse_size x 2^(num_scales - 1) x max_zoom = {largest:g} pixels) "
                             f"is far larger than the image ({self.image_size} x {self.image_size})")


# The fields of each option of section F. A config is stored without the fields of an option it
# leaves off (experiments.ram), so the stored configs of the models trained before the options
# existed still match theirs.
OPTION_FIELDS = {"zoom": ("zoom", "scale_std", "max_zoom"), "stop": ("stop", "glimpse_cost")}


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


def _check_sensor(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int,
                  scale: torch.Tensor | None = None) -> None:
    """The checks of :func:`glimpse_sensor`'s arguments (the model checks its own, once per forward pass)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {_shape(images)}")
    if not isinstance(l, torch.Tensor) or l.dim() != 2 or l.shape != (images.shape[0], 2):
        raise ValueError(f"expected locations l of shape ({images.shape[0]}, 2), got {_shape(l)}")
    _check_locations(l, "locations l")
    for name, value in (("glimpse_size", glimpse_size), ("num_scales", num_scales)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if scale is not None:
        if not isinstance(scale, torch.Tensor) or scale.shape != (images.shape[0],):
            raise ValueError(f"expected scale of shape ({images.shape[0]},), one per image, got {_shape(scale)}")
        if not (torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scale must be positive and finite (it multiplies every patch's side)")
    height, width = images.shape[2:]
    largest = glimpse_size * 2 ** (num_scales - 1) * (1.0 if scale is None else float(scale.max()))
    if largest > 4 * max(height, width):
        raise ValueError(f"the largest patch (glimpse_size {glimpse_size} x 2^(num_scales - 1)"
                         f"{'' if scale is None else ' x scale'} = {largest:g} pixels) is far larger than the image "
                         f"({height} x {width})")


def _check_locations(l: torch.Tensor, name: str) -> None:
    if not torch.isfinite(l).all() or l.abs().max() > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [-1, 1]^2 (the image spans [-1, 1] in both axes)")


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def box_filterbank(centre: torch.Tensor, glimpse_size: int, num_scales: int, length: int,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
    """F[b, i, j, a]: how much of pixel a (spanning [a, a + 1)) lies in box j of scale i, along one axis.

    ``centre`` (B,) in pixel-edge coordinates (the image spans [0, length)). Box j of
    scale i has side s = 2^i (times ``scale[b]``, (B,), when the model zooms) and spans
    [centre + (j - g/2) s, centre + (j - g/2 + 1) s).
    Returns (B, k, g, length); a row sums to the part of its box inside the image, so
    outside the image reads as zero, and fractional box edges weight the edge pixels
    by their overlap.
    """
    if centre.dim() != 1:
        raise ValueError(f"expected centre of shape (B,), got {tuple(centre.shape)}")
    for name, value in (("glimpse_size", glimpse_size), ("num_scales", num_scales), ("length", length)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if scale is not None and (scale.shape != centre.shape or not (scale > 0).all()):
        raise ValueError(f"expected a positive scale of shape {tuple(centre.shape)}, one per centre, "
                         f"got {_shape(scale)}")
    return _box_filterbank(centre, glimpse_size, num_scales, length, scale)


def _box_filterbank(centre: torch.Tensor, glimpse_size: int, num_scales: int, length: int,
                    scale: torch.Tensor | None = None) -> torch.Tensor:
    g, k = glimpse_size, num_scales
    dtype, device = centre.dtype, centre.device
    sides = 2.0 ** torch.arange(k, device=device, dtype=dtype)  # (k,)
    if scale is not None:  # zoom: every box of sample b is scale[b] times as wide
        sides = scale[:, None].to(dtype) * sides  # (B, k)
    offsets = torch.arange(g, device=device, dtype=dtype) - g / 2  # (g,)
    low = centre[:, None, None] + offsets * sides[..., None]  # (B, k, g): left (or top) edge of each box
    high = low + sides[..., None]
    pixel = torch.arange(length, device=device, dtype=dtype)
    return (torch.minimum(high[..., None], pixel + 1) - torch.maximum(low[..., None], pixel)).clamp_(min=0)


def glimpse_sensor(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
    """rho(x, l): k patches centred at l, of sides g, 2g, ..., 2^(k-1) g, each averaged down to g x g.

    ``images`` (B, C, H, W); ``l`` (B, 2) as (x, y) in [-1, 1]. Returns (B, k, C, g, g).
    Pixel (j, j') of patch i is the mean of the image over a box of side 2^i. Averaging
    over boxes is separable, so every patch is a filterbank read
    ``F_Y x F_X^T / 4^i`` with box filters F_Y (g, H) and F_X (g, W) from
    :func:`box_filterbank` (the same form as DRAW's Gaussian read in chapter 2): two
    batched matrix products for every sample and scale at once. Outside the image reads
    as zero; between pixels the read is bilinear.

    ``scale`` (B,), optional: multiply every patch's side by it (the zoom exp(z_t) of
    section F), so patch i of image b spans g 2^i scale[b] pixels, still read as g x g.
    """
    _check_sensor(images, l, glimpse_size, num_scales, scale)
    return _glimpse_sensor(images, l, glimpse_size, num_scales, scale)


def _glimpse_sensor(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int,
                    scale: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`glimpse_sensor` without the checks: what the model calls at every glimpse (and what exports)."""
    batch, channels, height, width = images.shape
    g, k = glimpse_size, num_scales
    x = images if images.is_floating_point() else images.float()
    centre = (l.to(x.dtype) + 1) / 2  # in [0, 1]; pixel-edge coordinates below
    F_X = _box_filterbank(centre[:, 0] * width, g, k, width, scale)  # (B, k, g, W)
    F_Y = _box_filterbank(centre[:, 1] * height, g, k, height, scale)  # (B, k, g, H)
    # rows: (B, 1, k g, H) @ (B, C, H, W) -> (B, C, k, g, W); columns: ... @ (B, 1, k, W, g) -> (B, C, k, g, g)
    rows = (F_Y.reshape(batch, 1, k * g, height) @ x).view(batch, channels, k, g, width)
    patches = rows @ F_X[:, None].transpose(-1, -2)
    area = 4.0 ** torch.arange(k, device=x.device, dtype=x.dtype)  # of each box, in pixels
    if scale is None:
        return (patches / area.view(1, 1, k, 1, 1)).transpose(1, 2)
    area = scale[:, None].to(x.dtype) ** 2 * area  # (B, k): the boxes of a zoomed glimpse are scale^2 as large
    return (patches / area.view(batch, 1, k, 1, 1)).transpose(1, 2)


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
    """g_t = ReLU(Linear(h_g) + Linear(h_l)), h_g = ReLU(Linear(rho)), h_l = ReLU(Linear(l)).

    With ``config.zoom`` the *where* input is (l, z): the location and the log-scale of the glimpse.
    """

    def __init__(self, config: RAMConfig, channels: int = 1):
        super().__init__()
        rho_size = config.num_scales * channels * config.glimpse_size ** 2
        self.what = nn.Linear(rho_size, config.glimpse_hidden)  # theta_g^0
        self.where = nn.Linear(3 if config.zoom else 2, config.glimpse_hidden)  # theta_g^1
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


# The stop network's bias at initialisation: p_t = sigmoid(-3) = 4.7%, so that at first most episodes
# run to T (for T = 8, 0.953^7 = 71% of them) and the location policy and the classifier learn at
# every step before the stop policy learns to cut episodes short.
STOP_LOGIT_AT_INIT = -3.0


class RecurrentAttentionModel(nn.Module):
    """RAM: glimpse sensor, glimpse network, core network, location, action and baseline networks.

    With ``config.zoom`` a scale network (the mean mu^z_t of the log-scale policy), with
    ``config.stop`` a stop network (the logit w^T h_t of p_t): section F, (1.7).
    """

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
        if config.zoom:
            self.scale_network = nn.Linear(config.hidden, 1)  # mu^z_t = log(m) tanh(Linear(h_t))
        if config.stop:
            self.stop_network = nn.Linear(config.hidden, 1)  # p_t = sigmoid(w^T h_t)
            nn.init.constant_(self.stop_network.bias, STOP_LOGIT_AT_INIT)

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

        With ``config.zoom``, also ``scales`` (T, B), the scale exp(z) of each glimpse (the
        first at 1), and ``scale_means`` (T-1, B), mu^z_t; ``log_pi`` adds log N(z_t).
        With ``config.stop``, also ``stop_logits`` (B, T-1), w^T h_t; ``stops`` (B, T-1),
        the decisions d_t (drawn, or p_t > 1/2 when not ``sample``); ``glimpses_used``
        (B,), tau; ``log_probs`` is then a_tau's, and ``log_pi`` the whole step's
        log pi(u_t | s_{1:t}) of (1.8), zero after the stop.
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
        z_t = torch.zeros(batch, 1, device=device) if config.zoom else None  # the first glimpse at scale 1
        visited, means, log_pi, baselines, logits = [], [], [], [], []
        log_scales, scale_means, stop_logits = [], [], []  # the extension's, (1.7)
        for t in range(steps):
            visited.append(l_t)
            if z_t is None:
                rho = _glimpse_sensor(images, l_t, config.glimpse_size, config.num_scales)
                g_t = self.glimpse_network(rho, l_t)
            else:
                log_scales.append(z_t[:, 0])
                rho = _glimpse_sensor(images, l_t, config.glimpse_size, config.num_scales, z_t[:, 0].exp())
                g_t = self.glimpse_network(rho, torch.cat([l_t, z_t], dim=-1))
            h_t, state = self.core_network(g_t, state)
            baselines.append(self.baseline_network(h_t.detach()).squeeze(-1))
            logits.append(self.action_network(h_t))
            if t < steps - 1:
                h_policy = h_t if self.reinforce_core else h_t.detach()
                mu = torch.tanh(self.location_network(h_policy))
                if locations is not None:
                    l_next = locations[t + 1]
                elif sample:
                    noise = torch.randn(mu.shape, device=device, generator=generator)
                    l_next = (mu + config.std * noise).detach()
                else:
                    l_next = mu.detach()
                log_pi_t = gaussian_log_likelihood(l_next, mu, config.std)
                means.append(mu)
                l_t = l_next.clamp(-1.0, 1.0)
                if config.zoom:  # z_t ~ N(mu^z_t, sigma_z^2), drawn like l_t; clamped to [-log m, log m]
                    log_m = math.log(config.max_zoom)
                    mu_z = log_m * torch.tanh(self.scale_network(h_policy))
                    if sample:
                        noise = torch.randn(mu_z.shape, device=device, generator=generator)
                        z_next = (mu_z + config.scale_std * noise).detach()
                    else:
                        z_next = mu_z.detach()
                    log_pi_t = log_pi_t + gaussian_log_likelihood(z_next, mu_z, config.scale_std)
                    scale_means.append(mu_z[:, 0])
                    z_t = z_next.clamp(-log_m, log_m)
                if config.stop:
                    stop_logits.append(self.stop_network(h_policy)[:, 0])
                log_pi.append(log_pi_t)
        logits = torch.stack(logits)
        out = {
            "log_probs": F.log_softmax(logits[-1], dim=-1),
            "logits_per_step": logits,
            "locations": torch.stack(visited),
            "means": torch.stack(means) if means else torch.zeros(0, batch, 2, device=device),
            "log_pi": torch.stack(log_pi, dim=1) if log_pi else torch.zeros(batch, 0, device=device),
            "baselines": torch.stack(baselines, dim=1),
        }
        if config.zoom:
            out["scales"] = torch.stack(log_scales).exp()
            out["scale_means"] = torch.stack(scale_means) if scale_means else torch.zeros(0, batch, device=device)
        if config.stop:
            out.update(_stop_decisions(out, stop_logits, sample, generator))
        return out


def gaussian_log_likelihood(l: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(l; mu, std^2 I), summed over the last axis (the two coordinates of l, or the one of z); (1.5), (1.9).

    Its gradient in mu is (l - mu) / std^2.
    """
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    return (-0.5 * ((l - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def _stop_decisions(out: Mapping[str, torch.Tensor], stop_logits: list[torch.Tensor], sample: bool,
                     generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """The stop decisions d_1..d_{T-1} from the logits w^T h_t, tau, a_tau and the steps' log pi of (1.8)."""
    logits_per_step, log_pi_move = out["logits_per_step"], out["log_pi"]
    batch = logits_per_step.shape[1]
    if stop_logits:
        stop_logits = torch.stack(stop_logits, dim=1)  # (B, T-1)
    else:
        stop_logits = logits_per_step.new_zeros(batch, 0)
    if sample:
        stops = torch.bernoulli(torch.sigmoid(stop_logits.detach()), generator=generator)
    else:
        stops = (stop_logits.detach() > 0).to(stop_logits.dtype)  # p_t > 1/2
    tau = first_stop(stops)
    a_tau = logits_per_step[tau - 1, torch.arange(batch, device=tau.device)]
    return {"log_probs": F.log_softmax(a_tau, dim=-1), "log_pi": log_pi_with_stop(log_pi_move, stop_logits, tau),
            "stop_logits": stop_logits, "stops": stops, "glimpses_used": tau}


# --------------------------------------------------------------------------- C. the hybrid loss


def hybrid_loss(out: Mapping[str, torch.Tensor], labels: torch.Tensor,
                glimpse_cost: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's hybrid loss, averaged over the batch (chapter 1, equations (1.3)-(1.5)).

    * classification: -log p(y | x), trained by backprop through the whole model;
    * REINFORCE: -sum_t log pi(l_t | s_{1:t}) (R - b_t), with R = 1 if the final class is right;
    * baseline: sum_t (R - b_t)^2, so that b_t approximates E[R].

    For a model that stops (its ``out`` has ``glimpses_used``) it is (1.10) of
    :func:`stopping_hybrid_loss`, with the cost ``glimpse_cost`` per glimpse.
    """
    log_probs, log_pi, baselines = out["log_probs"], out["log_pi"], out["baselines"]
    if labels.shape != log_probs.shape[:1]:
        raise ValueError(f"expected labels of shape ({log_probs.shape[0]},), one per image, got {tuple(labels.shape)}")
    if "glimpses_used" in out:
        return stopping_hybrid_loss(out, labels, glimpse_cost)
    if glimpse_cost != 0:
        raise ValueError(f"glimpse_cost {glimpse_cost} needs a model that stops (RAMConfig.stop=True): "
                         "this one always takes all its glimpses")
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
    glimpse_cost = model.config.glimpse_cost if model.config.stop else 0.0
    return hybrid_loss(model(batch["images"], l_0=l_0), batch["labels"], glimpse_cost)


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
    each glimpse) and ``predicted`` (B,), the class after the last glimpse. A model that
    zooms adds ``scales`` (B, T); one that stops adds ``glimpses_used`` (B,), and its
    ``predicted`` is the class at the stop.
    """
    if l_0 is None and locations is None:
        l_0 = images.new_zeros(len(images), 2)
    with evaluating(model):
        out = model(images, l_0=l_0, sample=False, locations=locations)
    where = out["locations"].transpose(0, 1)
    probabilities = out["logits_per_step"].softmax(-1).transpose(0, 1)
    paths = {"locations": where, "pixels": to_pixels(where, images.shape[-1]), "probabilities": probabilities,
             "predicted": probabilities[:, -1].argmax(-1)}
    if "scales" in out:  # zoom: the scale of every glimpse (B, T)
        paths["scales"] = out["scales"].transpose(0, 1)
    if "glimpses_used" in out:  # stop: tau (B,), and the answer a_tau
        paths["glimpses_used"] = out["glimpses_used"]
        paths["predicted"] = out["log_probs"].argmax(-1)
    return paths


# --------------------------------------------------------------------------- F. zoom and stop


def first_stop(stops: torch.Tensor) -> torch.Tensor:
    """tau (B,), the number of glimpses used: the first t with d_t = 1, or T if none of d_1..d_{T-1} is.

    ``stops`` (B, T-1) holds the decisions d_t in {0, 1}; d_T = 1 is implied (the model
    must stop at its last allowed glimpse). tau = 1 + the number of leading zeros.
    """
    if stops.dim() != 2:
        raise ValueError(f"expected stops of shape (B, T-1), got {_shape(stops)}")
    if not ((stops == 0) | (stops == 1)).all():
        raise ValueError("stops must hold the decisions d_t, each 0 (go on) or 1 (stop)")
    went_on = (1 - stops.long()).cumprod(dim=1)  # 1 while every decision so far was "go on"
    return 1 + went_on.sum(dim=1)


def log_pi_with_stop(log_pi_move: torch.Tensor, stop_logits: torch.Tensor, glimpses_used: torch.Tensor) -> torch.Tensor:
    """log pi(u_t | s_{1:t}) of each step t = 1..T-1 of episodes that stop after tau glimpses (1.8), (B, T-1).

    ``log_pi_move`` (B, T-1): log N(l_t) (+ log N(z_t)), the move drawn after glimpse t;
    ``stop_logits`` (B, T-1): w^T h_t; ``glimpses_used`` (B,): tau in 1..T. Before the
    stop (t < tau) the model went on and moved: log(1 - p_t) + log pi(move_t). At the stop
    (t = tau < T) it stopped: log p_tau, and drew no move. After it nothing happened: 0.
    The sum over t is log p(u_{1:tau}) of (1.7).
    """
    if log_pi_move.shape != stop_logits.shape or log_pi_move.dim() != 2:
        raise ValueError(f"expected log_pi_move and stop_logits of one shape (B, T-1), got "
                         f"{_shape(log_pi_move)} and {_shape(stop_logits)}")
    batch, moves = stop_logits.shape
    if glimpses_used.shape != (batch,) or glimpses_used.min() < 1 or glimpses_used.max() > moves + 1:
        raise ValueError(f"expected glimpses_used of shape ({batch},) with values in 1..{moves + 1}, "
                         f"got {_shape(glimpses_used)}")
    t = torch.arange(1, moves + 1, device=stop_logits.device)
    before, at = t < glimpses_used[:, None], t == glimpses_used[:, None]
    go_on = F.logsigmoid(-stop_logits) + log_pi_move  # log(1 - p_t) + log pi(move_t)
    stop = F.logsigmoid(stop_logits)  # log p_t
    return torch.where(before, go_on, torch.where(at, stop, torch.zeros_like(stop)))


def episode_reward(correct: torch.Tensor, glimpses_used: torch.Tensor, glimpse_cost: float) -> torch.Tensor:
    """R = 1[a_tau is right] - c tau (1.7): what a stopping model earns for an episode."""
    if not (glimpse_cost >= 0 and math.isfinite(glimpse_cost)):
        raise ValueError(f"glimpse_cost must be a number >= 0, got {glimpse_cost}")
    return correct.float() - glimpse_cost * glimpses_used.float()


def stopping_hybrid_loss(out: Mapping[str, torch.Tensor], labels: torch.Tensor,
                         glimpse_cost: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The hybrid loss (1.10) of a model that zooms and stops, averaged over the batch.

    The derivation, continuing chapter 1's (1.2)-(1.6). After glimpse t < T the policy
    reads h_t and makes up to three choices:

        d_t ~ Bernoulli(p_t),  p_t = sigmoid(w^T h_t)        stop (1) or go on (0); d_T = 1
        l_t ~ N(mu_t, sigma^2 I)                              if it goes on: where (1.5)
        z_t ~ N(mu^z_t, sigma_z^2),  mu^z_t = log(m) tanh(.)  if it goes on: the log-scale

    Glimpse t + 1 reads patches exp(z_t) times as wide. The episode ends after
    tau = min{t : d_t = 1} glimpses, answers with a_tau and earns R = 1[a_tau right] - c tau.
    Its probability, the world's responses left out as in (1.3), is

        p(u_{1:tau}; theta) = prod_{t<tau} (1 - p_t) N(l_t; mu_t, sigma^2 I) N(z_t; mu^z_t, sigma_z^2)
                              * p_tau^{1[tau < T]}                                                (1.7)

    Steps 1 to 3 of (1.3)-(1.4) use nothing but p = prod pi, so they hold for (1.7):

        grad J = E[ sum_{t=1}^{min(tau, T-1)} grad log pi(u_t | s_{1:t}) (R - b_t) ],
        log pi(u_t | s_{1:t}) = log(1 - p_t) + log N(l_t) + log N(z_t)  (t < tau),
                              = log p_tau                               (t = tau < T)            (1.8)

    (:func:`log_pi_with_stop`). The two new scores, beside (1.5)'s for l_t:

        d log N(z; mu^z, sigma_z^2) / d mu^z = (z - mu^z) / sigma_z^2,
        d log pi(d_t) / d (w^T h_t) = d_t - p_t                                                   (1.9)

    so a stop that was followed by a high R - b_t raises p_t, a "go on" lowers it. The loss:

        L = -(1/T) sum_{t=1}^{T} log a_t[y] - sum_{t <= min(tau, T-1)} log pi(u_t | s_{1:t}) (R - b_t)
            + sum_{t <= tau} (R - b_t)^2 / tau                                                    (1.10)

    The classifier is trained at every step, not only at tau: the policy may stop at any
    step, so a_t must be ready wherever it does (the glimpses after tau follow the same
    policy). R - b_t is held constant; the baseline regresses on R only at the glimpses
    the episode took.
    """
    log_probs, log_pi, baselines = out["log_probs"], out["log_pi"], out["baselines"]
    tau, logits_per_step = out["glimpses_used"], out["logits_per_step"]
    T = logits_per_step.shape[0]
    correct = (log_probs.argmax(-1) == labels).float()  # log_probs is a_tau's
    R = episode_reward(correct, tau, glimpse_cost)
    classification = F.cross_entropy(logits_per_step.flatten(0, 1), labels.repeat(T))
    advantage = (R[:, None] - baselines[:, : log_pi.shape[1]]).detach()
    reinforce = -(log_pi * advantage).sum(1).mean()  # log_pi is zero after the stop
    taken = (torch.arange(1, T + 1, device=tau.device) <= tau[:, None]).to(baselines.dtype)  # (B, T)
    baseline = (((R[:, None] - baselines) ** 2 * taken).sum(1) / tau).mean()
    loss = classification + reinforce + baseline
    gap = (((R[:, None] - baselines).abs() * taken).sum(1) / tau).mean().detach()
    return loss, {"accuracy": correct.mean(), "glimpses": tau.float().mean(), "reward_baseline_gap": gap}
