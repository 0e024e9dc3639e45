"""The Recurrent Attention Model (Mnih, Heess, Graves and Kavukcuoglu 2014), in the paper's notation.

At step t the model sees only a glimpse of the image x around the location l_{t-1}:

    rho(x, l_{t-1})                    glimpse sensor: k patches, sizes g, 2g, 4g, ..., each resized to g x g
    g_t = f_g(rho, l_{t-1})            glimpse network
    h_t = f_h(h_{t-1}, g_t)            core network (rectifier RNN, or LSTM)
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
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelSpec, register
from .runtime import get_profile, pick
from .train import TrainConfig, TrainResult, fit


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

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RAMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known - {"kind"}
        if unknown:
            raise ValueError(f"unknown RAM config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in known})


# The paper's configurations (Mnih et al. 2014, section 4.1).
PAPER_CONFIGS = {
    "mnist28": RAMConfig(image_size=28, glimpse_size=8, num_scales=1, num_glimpses=6),
    "translated60": RAMConfig(image_size=60, glimpse_size=12, num_scales=3, num_glimpses=8),
    "cluttered60": RAMConfig(image_size=60, glimpse_size=12, num_scales=3, num_glimpses=8),
    "cluttered100": RAMConfig(image_size=100, glimpse_size=12, num_scales=4, num_glimpses=8),
}


# --------------------------------------------------------------------------- A. the glimpse sensor


def _check_images_and_locations(images: torch.Tensor, l: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if l.dim() != 2 or l.shape != (images.shape[0], 2):
        raise ValueError(f"expected locations l of shape ({images.shape[0]}, 2), got {tuple(l.shape)}")
    if not torch.isfinite(l).all() or l.abs().max() > 1 + 1e-6:
        raise ValueError("locations l must lie in [-1, 1]^2 (the image spans [-1, 1] in both axes)")


def summed_area_table(images: torch.Tensor) -> torch.Tensor:
    """S[r, c] = sum of images[..., :r, :c], shape (B, C, H + 1, W + 1), in float64 for exact differences.

    The sum over any box of pixels is four look-ups: S(y1, x1) - S(y0, x1) - S(y1, x0) + S(y0, x0).
    Read between its entries by bilinear interpolation, it gives the area integral of the
    image over boxes with fractional edges; clamped at its border, it treats the outside
    of the image as zero.
    """
    table = images.to(torch.float64).cumsum(-1).cumsum(-2)
    return F.pad(table, (1, 0, 1, 0))


def glimpse_sensor(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int,
                   table: torch.Tensor | None = None) -> torch.Tensor:
    """rho(x, l): k patches centred at l, of sides g, 2g, ..., 2^(k-1) g, each averaged down to g x g.

    ``images`` (B, C, H, W); ``l`` (B, 2) as (x, y) in [-1, 1]. Returns (B, k, C, g, g).
    Pixel j of patch i is the mean of the image over a box of side 2^i: four look-ups in
    the summed-area table (pass ``table`` to reuse it across the glimpses of one image),
    for every sample, scale and pixel in a single ``grid_sample`` call. Outside the image
    reads as zero.
    """
    _check_images_and_locations(images, l)
    batch, channels, height, width = images.shape
    g, k = glimpse_size, num_scales
    if g * 2 ** (k - 1) > 4 * max(height, width):
        raise ValueError(f"the largest patch ({g * 2 ** (k - 1)} pixels) is far larger than the image")
    if table is None:
        table = summed_area_table(images)
    sides = 2.0 ** torch.arange(k, device=images.device, dtype=torch.float64)  # (k,)
    steps = torch.arange(g, device=images.device, dtype=torch.float64) - g / 2  # (g,)
    # box edges in pixel-edge coordinates (pixel j spans [j, j + 1)); the image spans [0, W) x [0, H)
    centre = (l.to(torch.float64) + 1) / 2 * torch.tensor([width, height], device=l.device, dtype=torch.float64)
    x0 = centre[:, 0, None, None] + steps[None, None, :] * sides[None, :, None]  # (B, k, g)
    y0 = centre[:, 1, None, None] + steps[None, None, :] * sides[None, :, None]
    x1, y1 = x0 + sides[None, :, None], y0 + sides[None, :, None]
    # table index -> grid_sample coordinate (align_corners=True over W + 1 entries)
    gx0, gx1 = 2 * x0 / width - 1, 2 * x1 / width - 1
    gy0, gy1 = 2 * y0 / height - 1, 2 * y1 / height - 1

    def points(gy, gx):  # (B, k, g rows, g cols, 2)
        return torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)

    corners = torch.stack([points(gy1, gx1), points(gy0, gx1), points(gy1, gx0), points(gy0, gx0)], dim=1)
    grid = corners.reshape(batch, 4 * k * g, g, 2)
    look = F.grid_sample(table, grid, mode="bilinear", padding_mode="border", align_corners=True)
    look = look.view(batch, channels, 4, k, g, g)
    box_sum = look[:, :, 0] - look[:, :, 1] - look[:, :, 2] + look[:, :, 3]  # (B, C, k, g, g)
    patches = box_sum / (sides ** 2).view(1, 1, k, 1, 1)
    return patches.permute(0, 2, 1, 3, 4).to(images.dtype)  # (B, k, C, g, g)


def glimpse_sensor_loop(images: torch.Tensor, l: torch.Tensor, glimpse_size: int, num_scales: int) -> torch.Tensor:
    """The same as :func:`glimpse_sensor` for locations on the pixel grid, written as a plain loop.

    A reference for tests and for the benchmark: for every sample and scale, crop the
    patch from the zero-padded image and average it down by ``avg_pool2d``.
    """
    _check_images_and_locations(images, l)
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
        self.config = config
        self.channels = channels
        self.glimpse_network = GlimpseNetwork(config, channels)
        self.core_network = CoreNetwork(config)
        self.location_network = nn.Linear(config.hidden, 2)  # mean of the policy, f_l(h_t; theta_l)
        self.action_network = nn.Linear(config.hidden, config.num_classes)  # f_a(h_t; theta_a)
        self.baseline_network = nn.Linear(config.hidden, 1)  # b_t = f_b(h_t)

    def initial_state(self, batch: int, device):
        zeros = torch.zeros(batch, self.config.hidden, device=device)
        return (zeros, zeros.clone()) if self.config.core == "lstm" else zeros

    def forward(self, images: torch.Tensor, l_0: torch.Tensor | None = None, sample: bool = True,
                generator: torch.Generator | None = None, num_glimpses: int | None = None) -> dict[str, torch.Tensor]:
        """Run T glimpses over ``images`` (B, C, H, W).

        ``l_0``: the first location (B, 2); by default uniform in [-1, 1]^2 (drawn with
        ``generator``). ``sample``: draw l_t ~ N(mu_t, sigma^2) (training) or take
        l_t = mu_t (evaluation). Returns a dict with ``log_probs`` (B, classes) of the
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
        steps = num_glimpses or config.num_glimpses
        if l_0 is None:
            l_0 = torch.rand(batch, 2, device=device, generator=generator) * 2 - 1
        table = summed_area_table(images)  # computed once, read by every glimpse
        state = self.initial_state(batch, device)
        l_t = l_0
        locations, means, log_pi, baselines, logits = [], [], [], [], []
        for t in range(steps):
            locations.append(l_t)
            rho = glimpse_sensor(images, l_t, config.glimpse_size, config.num_scales, table)
            g_t = self.glimpse_network(rho, l_t)
            h_t, state = self.core_network(g_t, state)
            baselines.append(self.baseline_network(h_t.detach()).squeeze(-1))
            logits.append(self.action_network(h_t))
            if t < steps - 1:
                mu = torch.tanh(self.location_network(h_t.detach()))
                if sample:
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
            "locations": torch.stack(locations),
            "means": torch.stack(means) if means else torch.zeros(0, batch, 2, device=device),
            "log_pi": torch.stack(log_pi, dim=1) if log_pi else torch.zeros(batch, 0, device=device),
            "baselines": torch.stack(baselines, dim=1),
        }


def gaussian_log_likelihood(l: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(l; mu, std^2 I), summed over the two coordinates; its gradient in mu is (l - mu) / std^2."""
    return (-0.5 * ((l - mu) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


# --------------------------------------------------------------------------- C. the hybrid loss


def hybrid_loss(out: Mapping[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's hybrid loss, averaged over the batch (chapter 1, equations (1.3)-(1.5)).

    * classification: -log p(y | x), trained by backprop through the whole model;
    * REINFORCE: -sum_t log pi(l_t | s_{1:t}) (R - b_t), with R = 1 if the final class is right;
    * baseline: sum_t (R - b_t)^2, so that b_t approximates E[R].
    """
    log_probs, log_pi, baselines = out["log_probs"], out["log_pi"], out["baselines"]
    correct = (log_probs.argmax(-1) == labels).float()
    R = correct[:, None].expand_as(baselines)  # reward, the same at every step
    classification = F.nll_loss(log_probs, labels)
    advantage = (R[:, : log_pi.shape[1]] - baselines[:, : log_pi.shape[1]]).detach()
    reinforce = -(log_pi * advantage).sum(1).mean()
    baseline = F.mse_loss(baselines, R)
    loss = classification + reinforce + baseline
    return loss, {"accuracy": correct.mean(), "reward_baseline_gap": (R - baselines).abs().mean().detach()}


# --------------------------------------------------------------------------- D. training recipe and CLI


def ram_loss(model: RecurrentAttentionModel, batch: Mapping[str, torch.Tensor]):
    return hybrid_loss(model(batch["images"]), batch["labels"])


@torch.no_grad()
def test_error(model: RecurrentAttentionModel, task, sample: bool = False, seed: int = 0) -> tuple[float, int]:
    """Error on the task's test set; the first location and any sampling come from ``seed``."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=task.device).manual_seed(seed)
    wrong = torch.zeros((), device=task.device)
    total = 0
    for batch in task.test_batches():
        out = model(batch["images"], sample=sample, generator=generator)
        wrong += (out["log_probs"].argmax(-1) != batch["labels"]).sum()
        total += len(batch["labels"])
    model.train(was_training)
    return float(wrong.item()) / total, total


TRAINING = {  # steps in the quick and full profiles, batch size, learning rate
    "mnist28": (1500, 60_000),
    "translated60": (1500, 80_000),
    "cluttered60": (1500, 120_000),
    "cluttered100": (1500, 120_000),
}


def _model_config(task: str) -> dict[str, Any]:
    return {"kind": "ram", **asdict(PAPER_CONFIGS[task])}


def _build(config: Mapping[str, Any]) -> RecurrentAttentionModel:
    if config.get("kind", "ram") != "ram":
        raise ValueError(f"config is for model {config.get('kind')!r}, not 'ram'")
    return RecurrentAttentionModel(RAMConfig.from_dict(config))


def train_ram(task: str, profile: str | None = None, device=None, seed: int = 0, checkpoint_path=None,
              progress: bool = True, steps: int | None = None) -> tuple[RecurrentAttentionModel, TrainResult, str]:
    """Train RAM from scratch on ``task`` with the hybrid loss and Adam."""
    from .data.tasks import MNISTVariantTask
    from .runtime import get_device

    device = torch.device(device) if device is not None else get_device()
    profile = get_profile(profile)
    torch.manual_seed(seed)
    model = _build(_model_config(task)).to(device)
    data = MNISTVariantTask(task, device=device)
    quick, full = TRAINING[task]
    total = steps or pick(quick, full, profile)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=1e-5)
    config = TrainConfig(steps=total, batch_size=128, lr=1e-3, seed=seed, log_every=50, clip_grad_norm=5.0,
                         eval_every=max(total // 5, 1000) if total > 5000 else 0,
                         checkpoint_every=2000 if total > 5000 else 0)
    result = fit(model, data.sample, ram_loss, config, optimizer=optimizer, scheduler=scheduler, device=device,
                 evaluate=lambda m: {"error": test_error(m, data)[0]}, checkpoint_path=checkpoint_path,
                 progress=progress, desc=f"RAM on {task}")
    description = (f"MNIST train split, variant {task} generated per batch; test: the 10,000 MNIST test digits, "
                   f"variant generated from fixed seeds")
    return model, result, description


def _evaluate(model: nn.Module, task: str, device) -> tuple[dict[str, float], int]:
    from .data.tasks import MNISTVariantTask

    data = MNISTVariantTask(task, device=device)
    error, total = test_error(model, data)
    return {"error": error, "accuracy": 1.0 - error}, total


RAM_SPEC = register(ModelSpec(
    name="ram", description="Recurrent Attention Model (Mnih et al. 2014), paper configuration per task",
    tasks=tuple(PAPER_CONFIGS), model_config=_model_config, build=_build, train=train_ram, evaluate=_evaluate,
    default_task="mnist28"))
