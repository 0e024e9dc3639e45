"""Show, Attend and Tell (Xu, Ba, Kiros, Cho, Courville, Salakhutdinov, Zemel and Bengio 2015), in the paper's notation.

A convolutional encoder turns an image into L annotation vectors a = {a_1, ..., a_L},
a_i in R^D, one per location of a grid; an LSTM writes the caption y_1..y_C one word at
a time, and before each word it decides where to look:

    e_ti = f_att(a_i, h_{t-1})                                   (3.1)
    alpha_ti = exp(e_ti) / sum_k exp(e_tk)                        (3.2)
    z^_t = phi({a_i}, {alpha_ti})                                 (3.3)
    c_0 = f_init,c((1/L) sum_i a_i),  h_0 = f_init,h((1/L) sum_i a_i)   (3.4)
    h_t, c_t = LSTM(E y_{t-1}, h_{t-1}, z^_t)                     (3.5)
    p(y_t | a, y_{t-1}) proportional to exp(L_o(E y_{t-1} + L_h h_t + L_z z^_t))   (3.6), the deep output layer

with E in R^{m x K} (K words), L_o in R^{K x m}, L_h in R^{m x n}, L_z in R^{m x D}.

Hard (stochastic) attention looks at one location: s_t ~ Multinoulli_L({alpha_ti}),
z^_t = sum_i s_ti a_i (3.7). It maximises the lower bound
L_s = sum_s p(s | a) log p(y | s, a) <= log p(y | a) (3.8), whose gradient
sum_s p(s | a) [d log p(y | s, a)/dW + log p(y | s, a) d log p(s | a)/dW] (3.9)
is estimated with samples s~ ~ Multinoulli(alpha) (3.10) and made usable with the
moving-average baseline b_k = 0.9 b_{k-1} + 0.1 log p(y | s~_k, a) (3.11), the weights
lambda_r and lambda_e and the entropy H[s~] of the Multinoulli (3.12). Note that in (3.10),
(3.12) the samples already come from p(s | a): the average over them carries no extra
factor p(s~ | a) (some write-ups of the paper have one; it would be wrong).

Soft (deterministic) attention takes the expected context instead,
E_{p(s_t | a)}[z^_t] = sum_i alpha_ti a_i (3.13), scaled by a gate
beta_t = sigmoid(f_beta(h_{t-1})) (3.14), and minimises
L_d = -log p(y | a) + lambda sum_i (1 - sum_t alpha_ti)^2 (3.15), the doubly stochastic
penalty asking that every location receive, over the caption, about one unit of attention.

Equation numbers are those of chapter 3. Differences from the paper: the encoder is a
small CNN trained end to end on 64 x 64 images (a 16 x 16 grid, L = 256, D = 64) instead of
the 14 x 14 x 512 conv5_4 features of a VGG network pretrained on ImageNet (which cannot be
downloaded here, and which would not know our shapes); two entries of each annotation
vector are the coordinates of its cell, so that a glimpse knows where it is (VGG's
features carry position only through their receptive fields and padding); the gate beta_t is used by the hard
model too (so that its expected context is exactly the soft one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.captions import BOS, EOS, PAD
from .registry import ModelSpec, config_from_dict, register
from .runtime import get_profile, pick
from .train import TrainConfig, TrainResult, fit

ATTENTION = ("soft", "hard", "none")
# TUNING. The paper gives no values for lambda_r and lambda_e; lambda = 1 is the usual choice for the penalty.
# Measured on the shape scenes (one CPU core, batch 32; test split; hit = strongest location on the named object):
#   soft, 800 steps (an earlier encoder, with learned position embeddings instead of coordinates):
#     lambda = 1 -> BLEU-4 42, hit 0.25; lambda = 0 -> BLEU-4 68, hit 0.43 (8 x 8 grid). With L = 64
#     locations and at most 16 words, sum_t alpha_ti cannot approach 1 everywhere: the penalty can only
#     push attention off the objects that a caption looks at several times, so it is off by default.
#   hard, 400 steps: lambda_r = 1, lambda_e = 0.01 -> attention stays uniform (max alpha 0.02), BLEU-4 25;
#     lambda_r = 0.1, lambda_e = 0.001 -> BLEU-4 38, hit 0.68. log p(y | s~, a) sums about 12 words, so
#     its spread around b is several nats, and at weight 1 the REINFORCE noise drowns the signal.
POSITION_SCALE = 2.0  # the coordinates in a_i span about the range of the (batch-normalised) features


@dataclass(frozen=True)
class SATConfig:
    """The model's sizes and the losses' weights. The defaults are the course's model for the shape scenes."""

    vocab_size: int = 23  # K, with PAD, BOS and EOS (the shape scenes' vocabulary)
    image_size: int = 64  # S: images are (3, S, S); the grid is S/cell x S/cell
    cell: int = 4  # pixels per grid cell: 4 (the third convolution with stride 1; 16 x 16) or 8 (all stride 2)
    channels: int = 16  # channels of the first convolution (then 2x, then D)
    D: int = 64  # size of an annotation vector a_i
    m: int = 64  # word embedding size (E is m x K)
    n: int = 128  # LSTM units
    att_hidden: int = 64  # hidden units of the MLP f_att
    attention: str = "soft"  # "soft", "hard" or "none" (the mean annotation vector, a baseline)
    gate: bool = True  # beta_t of (3.14)
    init_from_image: bool = True  # h_0, c_0 from f_init of the mean annotation (3.4); False: learned constants
    lambda_: float = 0.0  # weight of the doubly stochastic penalty (3.15), soft attention (see TUNING)
    lambda_r: float = 0.1  # weight of the REINFORCE term (3.12), hard attention (see TUNING)
    lambda_e: float = 0.001  # weight of the entropy term (3.12), hard attention
    expected_value_prob: float = 0.5  # hard: share of images trained with s~ replaced by alpha (section 4.1)
    baseline_decay: float = 0.9  # b_k = 0.9 b_{k-1} + 0.1 log p(y | s~_k, a) (3.11)

    def __post_init__(self):
        for name in ("vocab_size", "channels", "D", "m", "n", "att_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"SATConfig.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size <= EOS:
            raise ValueError(f"SATConfig.vocab_size must exceed the three special tokens, got {self.vocab_size}")
        if self.image_size < 16 or self.image_size % 8:
            raise ValueError(f"SATConfig.image_size must be a multiple of 8 and at least 16, got {self.image_size}")
        if self.cell not in (4, 8):
            raise ValueError(f"SATConfig.cell (pixels per grid cell) must be 4 or 8, got {self.cell}")
        if self.attention not in ATTENTION:
            raise ValueError(f"SATConfig.attention must be one of {ATTENTION}, got {self.attention!r}")
        if not 0.0 <= self.expected_value_prob <= 1.0 or not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError("expected_value_prob must lie in [0, 1] and baseline_decay in [0, 1)")

    @property
    def grid(self) -> int:
        return self.image_size // self.cell

    @property
    def L(self) -> int:
        return self.grid ** 2


# --------------------------------------------------------------------------- A. the encoder: annotation vectors


class Encoder(nn.Module):
    """Image (B, 3, S, S) -> annotation vectors a (B, L, D), L = (S/cell)^2, in row-major grid order.

    Three 3 x 3 convolutions (strides 2, 2 and cell/4) and a 1 x 1 one, each followed by batch normalisation
    and a ReLU, give D - 2 features; the last two entries of a_i are the
    column and row of the cell's centre (scaled to +-POSITION_SCALE), so that a glimpse
    knows where it was taken, and the soft context carries the expected location. The
    receptive field is 15 pixels, a cell and its surroundings, about one small object: an
    annotation vector describes what lies at its location rather than how two objects are
    arranged. (With a wider field, e.g. four 3 x 3 convolutions, 31 pixels, the CNN can
    compute "red above blue" itself, and the mean-pooled baseline gets nearly as far as
    attention; with a narrower one, 9 pixels, the shapes of large objects are learned slowly.) (Without batch normalisation the decoder first learns the captions'
    grammar alone and waits for hundreds of steps at about 0.9 nats per word before the
    image features become useful.) The paper used VGG's conv5_4
    (14 x 14 x 512) from ImageNet pretraining; this one learns from the captions alone.
    """

    def __init__(self, config: SATConfig):
        super().__init__()
        c, D = config.channels, config.D
        self.config = config
        layers, width = [], 3
        for out, size, stride in ((c, 3, 2), (2 * c, 3, 2), (D, 3, config.cell // 4), (D - 2, 1, 1)):
            layers += [nn.Conv2d(width, out, size, stride=stride, padding=size // 2, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU()]
            width = out
        self.cnn = nn.Sequential(*layers)
        G = config.grid
        centres = (torch.arange(G, dtype=torch.float32) + 0.5) / G * 2 - 1  # cell centres in (-1, 1)
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("where", torch.stack([x.flatten(), y.flatten()], 1) * POSITION_SCALE, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        S = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"expected images of shape (B, 3, S, S) = (B, 3, {S}, {S}), got {tuple(images.shape)}")
        features = self.cnn(images.to(self.where.dtype) - 0.5).flatten(2).transpose(1, 2)  # (B, L, D - 2)
        return torch.cat([features, self.where.expand(len(features), -1, -1)], 2)  # (B, L, D)


# --------------------------------------------------------------------------- B. attention: f_att, the gate, phi


class SoftAttention(nn.Module):
    """f_att (3.1) as a one-hidden-layer MLP, e_ti = w^T tanh(W_a a_i + W_h h_{t-1}), and alpha (3.2).

    W_a a_i does not depend on t: :meth:`project` computes it once per image.
    """

    def __init__(self, D: int, n: int, hidden: int):
        super().__init__()
        self.W_a = nn.Linear(D, hidden)
        self.W_h = nn.Linear(n, hidden, bias=False)
        self.w = nn.Linear(hidden, 1)

    def project(self, a: torch.Tensor) -> torch.Tensor:
        return self.W_a(a)  # (B, L, hidden)

    def forward(self, Wa_a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """alpha_t (B, L) from the projected annotations (B, L, hidden) and h_{t-1} (B, n)."""
        e = self.w(torch.tanh(Wa_a + self.W_h(h)[:, None, :]))[..., 0]  # e_ti, (3.1)
        return e.softmax(-1)  # alpha_ti, (3.2)


def soft_context(a: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """z^_t = beta_t sum_i alpha_ti a_i, the expected context (3.13)-(3.14); ``a`` (B, L, D), ``alpha`` (B, L),
    ``beta`` (B, 1) or None -> (B, D)."""
    if a.dim() != 3 or alpha.shape != a.shape[:2]:
        raise ValueError(f"expected a (B, L, D) and alpha (B, L), got {tuple(a.shape)} and {tuple(alpha.shape)}")
    if beta is not None and beta.shape != (a.shape[0], 1):
        raise ValueError(f"expected beta of shape ({a.shape[0]}, 1), got {tuple(beta.shape)}")
    z = (alpha[:, None, :] @ a)[:, 0]
    return z if beta is None else beta * z


def hard_context(a: torch.Tensor, s: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """z^_t = beta_t sum_i s_ti a_i = beta_t a_{s_t} (3.7) for sampled locations ``s`` (B,) -> (B, D)."""
    if a.dim() != 3 or s.shape != a.shape[:1]:
        raise ValueError(f"expected a (B, L, D) and locations s (B,), got {tuple(a.shape)} and {tuple(s.shape)}")
    if s.is_floating_point() or s.dtype == torch.bool:
        raise TypeError(f"locations s must be integer indices into the L = {a.shape[1]} locations, got {s.dtype}")
    z = a[torch.arange(a.shape[0], device=a.device), s]
    return z if beta is None else beta * z


# --------------------------------------------------------------------------- C. the decoder and the whole model


class ShowAttendTell(nn.Module):
    """Encoder, f_init, f_att, f_beta, the LSTM and the deep output layer, named as in the paper.

    :meth:`forward` runs the decoder with teacher forcing over captions (B, T) (BOS, words,
    EOS, PAD); :meth:`step` is one step of (3.1)-(3.6), used by the decoding functions.
    """

    def __init__(self, config: SATConfig = SATConfig()):
        super().__init__()
        if not isinstance(config, SATConfig):
            raise TypeError(f"config must be a SATConfig, got {type(config).__name__}")
        self.config = c = config
        self.encoder = Encoder(c)
        if c.init_from_image:
            self.f_init_h = nn.Sequential(nn.Linear(c.D, c.n), nn.Tanh(), nn.Linear(c.n, c.n))
            self.f_init_c = nn.Sequential(nn.Linear(c.D, c.n), nn.Tanh(), nn.Linear(c.n, c.n))
        else:  # the same start for every image: what the decoder learns of the image, it learns by looking
            self.h_0 = nn.Parameter(torch.zeros(c.n))
            self.c_0 = nn.Parameter(torch.zeros(c.n))
        self.f_att = SoftAttention(c.D, c.n, c.att_hidden)
        self.f_beta = nn.Linear(c.n, 1)
        self.E = nn.Embedding(c.vocab_size, c.m)
        self.lstm = nn.LSTMCell(c.m + c.D, c.n)
        self.L_h = nn.Linear(c.n, c.m)
        self.L_z = nn.Linear(c.D, c.m)
        self.L_o = nn.Linear(c.m, c.vocab_size)
        self.register_buffer("b", torch.zeros(()))  # the moving-average baseline of (3.11)
        self.register_buffer("b_started", torch.zeros((), dtype=torch.bool))

    # the pieces ---------------------------------------------------------------------------------------

    def annotate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """a (B, L, D), W_a a (B, L, hidden), and h_0, c_0 (B, n) from the mean annotation vector (3.4)."""
        a = self.encoder(images)
        a_mean = a.mean(1)
        if self.config.init_from_image:
            h, c = self.f_init_h(a_mean), self.f_init_c(a_mean)
        else:
            h, c = self.h_0.expand(len(a), -1), self.c_0.expand(len(a), -1)
        return {"a": a, "Wa_a": self.f_att.project(a), "a_mean": a_mean, "h": h, "c": c}

    def step(self, y_prev: torch.Tensor, state: Mapping[str, torch.Tensor], context: str = "expected",
             s: torch.Tensor | None = None, use_expectation: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One word: alpha_t (3.1)-(3.2), beta_t (3.14), z^_t (3.7 or 3.13), the LSTM (3.5) and the logits of (3.6).

        ``state`` holds a, Wa_a, a_mean (from :meth:`annotate`) and h, c (h_{t-1}, c_{t-1}).
        ``context``: "expected" (soft attention), "sample" (hard: s_t ~ Multinoulli(alpha_t),
        or the given ``s``), "argmax" (hard, the likeliest location), "mean" (no attention:
        the mean annotation vector). With "sample", ``use_expectation`` (B,) bool marks images
        that take the expected context instead (section 4.1). Returns logits (B, K), h, c,
        alpha (B, L), beta (B, 1), z_hat (B, D) and s (B,) (the location looked at; for
        "expected" and "mean" the argmax of alpha).
        """
        c = self.config
        a, h_prev = state["a"], state["h"]
        alpha = self.f_att(state["Wa_a"], h_prev)
        beta = torch.sigmoid(self.f_beta(h_prev)) if c.gate else torch.ones_like(h_prev[:, :1])
        if context == "mean":
            alpha = torch.full_like(alpha, 1.0 / alpha.shape[1])
            z_hat = beta * state["a_mean"]
        elif context == "expected":
            z_hat = soft_context(a, alpha, beta)
        elif context in ("sample", "argmax"):
            if s is None:
                s = torch.multinomial(alpha.detach().float(), 1)[:, 0] if context == "sample" else alpha.argmax(-1)
            z_hat = hard_context(a, s, beta)
            if use_expectation is not None:
                z_hat = torch.where(use_expectation[:, None], soft_context(a, alpha, beta), z_hat)
        else:
            raise ValueError(f"unknown context {context!r}; expected 'expected', 'sample', 'argmax' or 'mean'")
        Ey = self.E(y_prev)
        h, c_t = self.lstm(torch.cat([Ey, z_hat], 1), (h_prev, state["c"]))
        logits = self.L_o(Ey + self.L_h(h) + self.L_z(z_hat))  # the deep output layer (3.6)
        return {"logits": logits, "h": h, "c": c_t, "alpha": alpha, "beta": beta, "z_hat": z_hat,
                "s": s if s is not None else alpha.argmax(-1)}

    def check_captions(self, captions: torch.Tensor, batch: int) -> None:
        if captions.dim() != 2 or captions.shape[0] != batch or captions.shape[1] < 2:
            raise ValueError(f"expected captions of shape (B, T) = ({batch}, T >= 2), BOS first, got "
                             f"{tuple(captions.shape)}")
        if captions.min() < 0 or captions.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}) (unknown token?), got ids from "
                             f"{int(captions.min())} to {int(captions.max())}")
        if not bool((captions[:, 0] == BOS).all()):
            raise ValueError("every caption must start with BOS (id 1)")
        if bool((captions[:, 1] == PAD).any()) or bool((captions[:, 1] == EOS).any()):
            raise ValueError("empty caption: every caption needs at least one word between BOS and EOS")

    def forward(self, images: torch.Tensor, captions: torch.Tensor, context: str | None = None) -> dict[str, torch.Tensor]:
        """Teacher forcing: predict captions[:, 1:] from captions[:, :-1].

        ``context`` defaults to the model's attention ("soft": expected, "hard": sample, "none":
        mean). Returns ``logits`` (B, T-1, K), ``alpha`` (B, T-1, L), ``beta`` (B, T-1), ``s``
        (B, T-1) and, for sampling, ``use_expectation`` (B,): the images whose sample was
        replaced by its expected value.
        """
        c = self.config
        state = self.annotate(images)
        self.check_captions(captions, images.shape[0])
        context = context or {"soft": "expected", "hard": "sample", "none": "mean"}[c.attention]
        use_expectation = None
        if context == "sample" and c.expected_value_prob > 0:
            use_expectation = torch.rand(images.shape[0], device=images.device) < c.expected_value_prob
        out = {"logits": [], "alpha": [], "beta": [], "s": []}
        for t in range(captions.shape[1] - 1):
            result = self.step(captions[:, t], state, context, use_expectation=use_expectation)
            state = {**state, "h": result["h"], "c": result["c"]}
            for key in out:
                out[key].append(result[key])
        out = {"logits": torch.stack(out["logits"], 1), "alpha": torch.stack(out["alpha"], 1),
               "beta": torch.stack(out["beta"], 1)[..., 0], "s": torch.stack(out["s"], 1)}
        if use_expectation is not None:
            out["use_expectation"] = use_expectation
        return out


# --------------------------------------------------------------------------- D. the losses


def doubly_stochastic_penalty(alpha: torch.Tensor, mask: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """lambda sum_i (1 - sum_t alpha_ti)^2 per caption (3.15), (B,); ``alpha`` (B, T, L), ``mask`` (B, T) the real
    steps (the words and EOS)."""
    if alpha.dim() != 3 or mask.shape != alpha.shape[:2]:
        raise ValueError(f"expected alpha (B, T, L) and mask (B, T), got {tuple(alpha.shape)} and {tuple(mask.shape)}")
    total = (alpha * mask[..., None]).sum(1)  # sum_t alpha_ti, (B, L)
    return lambda_ * ((1 - total) ** 2).sum(-1)


def doubly_stochastic_gradient(alpha: torch.Tensor, mask: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """d/d alpha_ti of (3.15), by hand: -2 lambda (1 - sum_t' alpha_t'i) on real steps, 0 on padding; (B, T, L)."""
    if alpha.dim() != 3 or mask.shape != alpha.shape[:2]:
        raise ValueError(f"expected alpha (B, T, L) and mask (B, T), got {tuple(alpha.shape)} and {tuple(mask.shape)}")
    total = (alpha * mask[..., None]).sum(1, keepdim=True)
    return -2 * lambda_ * (1 - total) * mask[..., None]


def caption_log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(y | a) = sum_t log p(y_t | ...) per caption, (B,), over the non-PAD targets (B, T)."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (B, T, K) and targets (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    log_p = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    return (log_p * (targets != PAD)).sum(1)


def _word_metrics(out, targets):
    keep = targets != PAD
    right = (out["logits"].argmax(-1) == targets) & keep
    return keep, {"word_accuracy": right.sum() / keep.sum()}


def soft_loss(model: ShowAttendTell, batch: Mapping[str, torch.Tensor]):
    """L_d (3.15) averaged over the batch: -log p(y | a) + lambda sum_i (1 - sum_t alpha_ti)^2.

    Also the loss of the "none" baseline (its alpha is uniform and the penalty a constant).
    """
    captions = batch["captions"]
    out = model(batch["images"], captions)
    targets = captions[:, 1:]
    keep, metrics = _word_metrics(out, targets)
    log_p = caption_log_likelihood(out["logits"], targets)
    penalty = doubly_stochastic_penalty(out["alpha"], keep.float(), model.config.lambda_) \
        if model.config.attention == "soft" else torch.zeros_like(log_p)
    loss = (-log_p + penalty).mean()
    return loss, {**metrics, "nll_per_word": -log_p.sum().detach() / keep.sum(), "penalty": penalty.mean().detach()}


def hard_loss(model: ShowAttendTell, batch: Mapping[str, torch.Tensor]):
    """A surrogate whose gradient is minus the estimate (3.12) of dL_s/dW, one sample s~ per image:

        -[ log p(y | s~, a) + lambda_r (log p(y | s~, a) - b) log p(s~ | a) + lambda_e H[s~] ]

    averaged over the batch, with (log p(y | s~, a) - b) held constant. For the images whose
    sample was replaced by its expected value (probability 0.5, section 4.1 of the paper)
    the REINFORCE term is dropped: their context is deterministic and the first term's
    gradient reaches alpha directly, as in soft attention. After the step's forward pass
    the baseline moves, b_k = 0.9 b_{k-1} + 0.1 log p(y | s~_k, a) (3.11), averaged over the
    sampled images (the first batch sets b_1 to its value, so the run does not start from 0).
    """
    c = model.config
    captions = batch["captions"]
    out = model(batch["images"], captions)
    targets = captions[:, 1:]
    keep, metrics = _word_metrics(out, targets)
    log_p_y = caption_log_likelihood(out["logits"], targets)  # log p(y | s~, a), (B,)
    alpha = out["alpha"].float()
    log_alpha = alpha.clamp_min(1e-12).log()
    log_p_s = (log_alpha.gather(-1, out["s"][..., None])[..., 0] * keep).sum(1)  # log p(s~ | a), (B,)
    entropy = (-(alpha * log_alpha).sum(-1) * keep).sum(1)  # H[s~] = sum_t H(Multinoulli(alpha_t)), (B,)
    sampled = ~out.get("use_expectation", torch.zeros_like(log_p_y, dtype=torch.bool))
    reward = (log_p_y.detach() - model.b) * sampled
    surrogate = log_p_y + c.lambda_r * reward * log_p_s + c.lambda_e * entropy
    if model.training and bool(sampled.any()):
        with torch.no_grad():
            mean = log_p_y[sampled].mean()
            model.b.copy_(torch.where(model.b_started, c.baseline_decay * model.b + (1 - c.baseline_decay) * mean, mean))
            model.b_started.fill_(True)
    return -surrogate.mean(), {**metrics, "nll_per_word": -log_p_y.sum().detach() / keep.sum(),
                               "baseline": model.b.clone(), "entropy": entropy.mean().detach()}


def sat_loss(model: ShowAttendTell, batch: Mapping[str, torch.Tensor]):
    """The model's loss: :func:`hard_loss` for hard attention, :func:`soft_loss` otherwise."""
    return (hard_loss if model.config.attention == "hard" else soft_loss)(model, batch)


# --------------------------------------------------------------------------- E. decoding


def _inference_context(model: ShowAttendTell, hard: str) -> str:
    if hard not in ("argmax", "expected", "sample"):
        raise ValueError(f"hard must be 'argmax', 'expected' or 'sample', got {hard!r}")
    return {"soft": "expected", "hard": hard, "none": "mean"}[model.config.attention]


def _finish(tokens: torch.Tensor) -> torch.Tensor:
    """PAD after the first EOS of every row."""
    eos = (tokens == EOS).long()
    return tokens.masked_fill(eos.cumsum(1) - eos > 0, PAD)


@torch.no_grad()
def greedy_decode(model: ShowAttendTell, images: torch.Tensor, max_len: int = 20,
                  hard: str = "argmax") -> dict[str, torch.Tensor]:
    """y_t = argmax p(y_t | a, y_{t-1}, h_t, z^_t), up to ``max_len`` words or EOS.

    Hard attention looks at the likeliest location (``hard="argmax"``), at a sampled one
    ("sample") or takes the expectation ("expected"). Returns ``tokens`` (B, T) without BOS,
    EOS included, PAD after it; ``alpha`` (B, T, L), ``beta`` (B, T) and ``s`` (B, T), the
    location looked at for each word.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    context = _inference_context(model, hard)
    state = model.annotate(images)  # checks the images' shape
    B = images.shape[0]
    y = torch.full((B,), BOS, dtype=torch.long, device=images.device)
    done = torch.zeros(B, dtype=torch.bool, device=images.device)
    tokens, alphas, betas, locations = [], [], [], []
    for _ in range(max_len):
        result = model.step(y, state, context)
        state = {**state, "h": result["h"], "c": result["c"]}
        y = result["logits"].argmax(-1).masked_fill(done, PAD)
        tokens.append(y)
        alphas.append(result["alpha"])
        betas.append(result["beta"][:, 0])
        locations.append(result["s"])
        done |= y == EOS
        if bool(done.all()):
            break
    return {"tokens": _finish(torch.stack(tokens, 1)), "alpha": torch.stack(alphas, 1), "beta": torch.stack(betas, 1),
            "s": torch.stack(locations, 1)}


@torch.no_grad()
def beam_search(model: ShowAttendTell, images: torch.Tensor, beam_size: int = 3, max_len: int = 20,
                hard: str = "argmax") -> dict[str, torch.Tensor]:
    """Beam search by log p(y | a) (the paper decodes with a beam; no length penalty).

    Keeps ``beam_size`` hypotheses per image; a finished one (it emitted EOS) keeps its score
    and only continues with PAD at no cost. With ``beam_size`` 1 this is :func:`greedy_decode`.
    Returns ``tokens``, ``alpha``, ``beta``, ``s`` of the best hypothesis (as in
    :func:`greedy_decode`) and its ``score`` (B,).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be positive, got {beam_size}")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    context = _inference_context(model, hard)
    B, k, device = images.shape[0], beam_size, images.device
    state = {key: value.repeat_interleave(k, 0) for key, value in model.annotate(images).items()}
    K = model.config.vocab_size
    log_p = torch.zeros(B, k, device=device)
    log_p[:, 1:] = float("-inf")  # all beams start equal: expand only the first
    done = torch.zeros(B, k, dtype=torch.bool, device=device)
    y = torch.full((B * k,), BOS, dtype=torch.long, device=device)
    history = {"tokens": [], "alpha": [], "beta": [], "s": []}
    for _ in range(max_len):
        result = model.step(y, state, context)
        step = result["logits"].float().log_softmax(-1).view(B, k, K)
        frozen = torch.full_like(step, float("-inf"))
        frozen[..., PAD] = 0.0
        step = torch.where(done[..., None], frozen, step)
        log_p, best = (log_p[..., None] + step).view(B, k * K).topk(k, dim=1)
        beam, token = best // K, best % K
        rows = (torch.arange(B, device=device)[:, None] * k + beam).flatten()
        state = {**state, "h": result["h"][rows], "c": result["c"][rows]}
        for key, value in (("alpha", result["alpha"]), ("beta", result["beta"][:, 0]), ("s", result["s"])):
            history[key] = [h[rows] for h in history[key]] + [value[rows]]
        history["tokens"] = [h[rows] for h in history["tokens"]] + [token.flatten()]
        done = done.gather(1, beam) | (token == EOS)
        y = token.flatten()
        if bool(done.all()):
            break
    top = torch.where(done, log_p, log_p - 1e9).argmax(1)  # prefer finished hypotheses
    chosen = torch.arange(B, device=device) * k + top
    out = {key: torch.stack(values, 1)[chosen] for key, values in history.items()}
    out["tokens"] = _finish(out["tokens"])
    out["score"] = log_p.gather(1, top[:, None])[:, 0]
    return out


@torch.no_grad()
def caption(model: ShowAttendTell, images: torch.Tensor, beam_size: int = 1, max_len: int = 20,
            hard: str = "argmax") -> dict[str, torch.Tensor]:
    """Greedy decoding (``beam_size`` 1) or beam search, in eval mode; see :func:`greedy_decode`."""
    was_training = model.training
    model.eval()
    try:
        if beam_size == 1:
            return greedy_decode(model, images, max_len, hard)
        return beam_search(model, images, beam_size, max_len, hard)
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- F. metrics: BLEU and attention correctness


def corpus_bleu(hypotheses: list[str], references: list[list[str]], max_order: int = 4) -> dict[str, float]:
    """Corpus BLEU-1 .. BLEU-``max_order`` (in percent, as the paper reports them) with sacrebleu.

    ``hypotheses`` N strings of space-separated words; ``references`` N lists of reference
    strings (any number each; shorter lists are padded by repeating their own references,
    which changes no count). BLEU-n is the brevity penalty times the geometric mean of the
    clipped 1..n-gram precisions with equal weights 1/n (sacrebleu's ``max_ngram_order=n``),
    over the whole corpus, with no smoothing and no tokenisation (the captions are words
    already), as in the COCO caption evaluation used by the paper.
    """
    from sacrebleu.metrics import BLEU

    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    if isinstance(hypotheses, str) or any(not isinstance(h, str) for h in hypotheses):
        raise TypeError("hypotheses must be a list of strings (one caption each)")
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"expected one non-empty list of references per hypothesis, got {len(hypotheses)} hypotheses "
                         f"and {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every hypothesis needs at least one reference")
    R = max(len(refs) for refs in references)
    streams = [[refs[r % len(refs)] for refs in references] for r in range(R)]
    out = {}
    for n in range(1, max_order + 1):
        bleu = BLEU(tokenize="none", smooth_method="none", max_ngram_order=n, force=True)
        out[f"bleu{n}"] = float(bleu.corpus_score(list(hypotheses), streams).score)
    return out


def location_cover(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, objects, L): the share of each grid cell that an object's mask (B, objects, S, S) covers."""
    if grid < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    if masks.dim() != 4 or masks.shape[-1] % grid:
        raise ValueError(f"expected masks (B, objects, S, S) with S a multiple of {grid}, got {tuple(masks.shape)}")
    return F.avg_pool2d(masks.float(), masks.shape[-1] // grid).flatten(2)


INSIDE_COVER = 0.25  # a cell counts as on an object when a quarter of it is covered (or it is the object's best cell)


def attention_correctness(alpha: torch.Tensor, referents: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """For every word with a referent object: the attention mass inside its mask and whether the strongest location
    lies on it.

    ``alpha`` (B, T, L) on a square grid; ``referents`` (B, T) object indices (-1: skip);
    ``masks`` (B, objects, S, S). Cell i's mass is spread evenly over its pixels, so the mass
    inside a mask is sum_i alpha_ti cover_i. The strongest cell is "on" the object when at
    least :data:`INSIDE_COVER` of it is covered, or when it is the object's best-covered
    cell (so that a small object that straddles cells still has one). Returns per-word
    tensors ``mass``, ``hit``, and ``chance`` (the mass of uniform attention: the mask's area).
    """
    grid = math.isqrt(alpha.shape[-1])
    if alpha.dim() != 3 or grid * grid != alpha.shape[-1] or referents.shape != alpha.shape[:2]:
        raise ValueError(f"expected alpha (B, T, L) with L a square and referents (B, T), got {tuple(alpha.shape)} "
                         f"and {tuple(referents.shape)}")
    if masks.dim() != 4 or masks.shape[0] != alpha.shape[0]:
        raise ValueError(f"expected masks (B, objects, S, S) with B = {alpha.shape[0]}, got {tuple(masks.shape)}")
    cover = location_cover(masks, grid)  # (B, objects, L)
    words = referents >= 0
    obj = cover.gather(1, referents.clamp(min=0)[..., None].expand(-1, -1, cover.shape[-1]))  # (B, T, L)
    mass = (alpha * obj).sum(-1)
    strongest = obj.gather(-1, alpha.argmax(-1, keepdim=True))[..., 0]
    hit = (strongest >= torch.minimum(obj.max(-1).values, torch.tensor(INSIDE_COVER))) & (strongest > 0)
    return {"mass": mass[words], "hit": hit[words].float(), "chance": obj.mean(-1)[words]}


@torch.no_grad()
def evaluate_captions(model: ShowAttendTell, data, split: str = "test", beam_size: int = 1, batch_size: int = 250,
                      hard: str = "argmax") -> dict[str, float]:
    """BLEU-1..4 of the decoded captions against all references, and attention correctness, on a split of
    :class:`~attn_course.data.scenes.ShapeScenes`.

    Also BLEU-4 on the relational scenes (two or three objects) and on the novel ones (a
    composition held out of training), the share of exactly right captions (equal to one of
    the references), ``relation_accuracy`` (the share of generated relation words that are
    true of the objects named around them) and ``count``. Attention correctness is measured on every generated
    content word whose noun phrase names exactly one object in the scene.
    """
    from .data.scenes import caption_referents, relation_words_correct

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    vocabulary = data.vocabulary
    hypotheses, references, relational, novel, exact = [], [], [], [], []
    mass, hit, chance, relation = [], [], [], []
    for batch in data.batches(split, batch_size):
        out = caption(model, batch["images"], beam_size, batch["references"].shape[-1] - 1, hard)
        tokens = out["tokens"]
        hypotheses += vocabulary.decode_batch(tokens)
        refs = batch["references"]
        for row, count in zip(refs.tolist(), batch["num_references"].tolist()):
            references.append([vocabulary.decode(r) for r in row[:count]])
        relational.append(batch["layout"].count >= 2)
        novel.append(batch["novel"])
        referents = caption_referents(tokens, batch["layout"])
        correct = relation_words_correct(tokens, batch["layout"])
        relation.append(correct[correct >= 0])
        scores = attention_correctness(out["alpha"], referents, batch["masks"])
        mass.append(scores["mass"])
        hit.append(scores["hit"])
        chance.append(scores["chance"])
    relational, novel = torch.cat(relational).tolist(), torch.cat(novel).tolist()
    result = corpus_bleu(hypotheses, references)
    for name, keep in (("relational", relational), ("novel", novel)):
        chosen = [i for i, k in enumerate(keep) if k]
        if chosen:
            result[f"bleu4_{name}"] = corpus_bleu([hypotheses[i] for i in chosen], [references[i] for i in chosen],
                                                  4)["bleu4"]
    result["exact_match"] = sum(h in refs for h, refs in zip(hypotheses, references)) / len(hypotheses)
    mass, hit, chance = torch.cat(mass), torch.cat(hit), torch.cat(chance)
    result["attention_mass"] = float(mass.mean()) if len(mass) else float("nan")
    result["attention_hit"] = float(hit.mean()) if len(hit) else float("nan")
    result["attention_chance"] = float(chance.mean()) if len(chance) else float("nan")
    result["words_checked"] = len(mass)
    relation = torch.cat(relation)
    result["relation_accuracy"] = float(relation.float().mean()) if len(relation) else float("nan")
    result["count"] = len(hypotheses)
    return result


# --------------------------------------------------------------------------- G. training recipe and CLI


TRAINING = {  # steps in the quick and full profiles; batch size; Adam's learning rate
    # The recipe uses the 16 x 16 grid (SATConfig's default cell of 4 pixels) for all three variants, so that
    # the no-attention baseline differs from the others only in its decoder: about 86 ms a soft or hard step
    # and 57 ms a none step on one idle CPU core, against 36 and 27 ms on the 8 x 8 grid. Each training scene
    # comes with its left-to-right reference (TRAINING_ORDER).
    # Shipped (one CPU thread each, three runs sharing two cores; test split; hit = strongest location on
    # the named object): soft 995 s, BLEU-4 99.2, hit 95.2%, mass 72.2%; hard 1,219 s, BLEU-4 99.1, hit 96.6%,
    # mass 82.1%; none 839 s, BLEU-4 77.5 (76.7 on scenes of 2-3 objects).
    # Trained on a reference drawn at random instead (training_order="any"): soft 16,000 steps, BLEU-4 97.8,
    # hit 71.7% (72.2% after 8,000); hard 12,000 steps, BLEU-4 97.0, hit 65.9%; none 8,000 steps, BLEU-4 80.5.
    # The misses were the first noun phrase of scenes with two or three objects (59% and 36% on target,
    # against 94% and 92% for the last; attention_hit_by_phrase), the strongest cell on another object: with
    # every order a valid reference, the first phrase hedges over the objects. Learned h_0, c_0 instead of
    # f_init (init_from_image=False) did not change that (val hit 63.8% after 4,000 steps).
    # On the 8 x 8 grid (any order): soft 8,000 steps, BLEU-4 97.0, hit 50.0%; hard 10,000 steps, BLEU-4 92.9,
    # hit 47.3%; none BLEU-4 79.8; background clutter and one-cell receptive fields: 47%.
    "soft": (400, 8000, 32, 2e-3),
    "hard": (400, 10000, 32, 2e-3),
    "none": (400, 8000, 32, 2e-3),
}
DATA_SEED = 0
TRAINING_ORDER = "left_to_right"  # each training scene's caption names its objects from left to right (see above)


def course_scenes(device=None):
    """The chapter's data: the shape scenes of seed :data:`DATA_SEED`, trained in :data:`TRAINING_ORDER`.

    Validation and test use every reference of a scene, in every order."""
    from .data.scenes import ShapeScenes

    return ShapeScenes(seed=DATA_SEED, device=device or "cpu", training_order=TRAINING_ORDER)


def _model_config(task: str) -> dict[str, Any]:
    if task not in TRAINING:
        raise ValueError(f"unknown Show, Attend and Tell variant {task!r}; choose one of: {', '.join(TRAINING)}")
    from .data.scenes import VOCAB

    return {"kind": "sat", **asdict(SATConfig(vocab_size=len(VOCAB), attention=task))}


def _build(config: Mapping[str, Any]) -> ShowAttendTell:
    if config.get("kind", "sat") != "sat":
        raise ValueError(f"config is for model {config.get('kind')!r}, not 'sat'")
    return ShowAttendTell(config_from_dict(SATConfig, config))


def train_sat(task: str = "soft", profile: str | None = None, device=None, seed: int = 0, checkpoint_path=None,
              progress: bool = True, steps: int | None = None, batch_size: int | None = None, data=None,
              lr: float | None = None, extra_state=None) -> tuple[ShowAttendTell, TrainResult, str]:
    """Train Show, Attend and Tell with ``task`` = "soft", "hard" or "none" attention on the shape scenes.

    Adam, learning rate decayed on a cosine to 1/20 of its start, gradients clipped at
    norm 5. ``data`` overrides the scenes (a :class:`~attn_course.data.scenes.ShapeScenes`).
    At the end, the validation split's BLEU-4 and attention hit rate are logged.
    """
    from .runtime import get_device

    model_config = _model_config(task)  # checks the task
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive int (or None for the recipe's default), got {value}")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be positive (or None for the recipe's default), got {lr}")
    device = torch.device(device) if device is not None else get_device()
    profile = get_profile(profile)
    torch.manual_seed(seed)
    model = _build(model_config).to(device)
    data = course_scenes(device) if data is None else data
    quick, full, default_batch, default_lr = TRAINING[task]
    total = pick(quick, full, profile) if steps is None else steps
    batch_size = default_batch if batch_size is None else batch_size
    lr = default_lr if lr is None else lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=lr / 20)
    config = TrainConfig(steps=total, batch_size=batch_size, lr=lr, seed=seed, log_every=25,
                         clip_grad_norm=5.0, amp=False, eval_every=0, checkpoint_every=500 if total > 1000 else 0)

    def validate(m):
        scores = evaluate_captions(m, data, "val")
        return {"bleu4": scores["bleu4"], "attention_hit": scores["attention_hit"]}

    result = fit(model, data.sample, sat_loss, config, optimizer=optimizer, scheduler=scheduler, device=device,
                 evaluate=validate, checkpoint_path=checkpoint_path, progress=progress,
                 desc=f"Show, Attend and Tell ({task})", extra_state={"model_config": model_config, **(extra_state or {})})
    return model, result, data.describe()


def _evaluate(model: nn.Module, task: str, device) -> tuple[dict[str, float], int]:
    scores = evaluate_captions(model, course_scenes(device), "test")
    count = scores.pop("count")
    return scores, count


SAT_SPEC = register(ModelSpec(
    name="sat", description="Show, Attend and Tell (Xu et al. 2015) on shape scenes: soft, hard or no attention; "
                            "BLEU in percent and attention correctness on the test split",
    tasks=ATTENTION, model_config=_model_config, build=_build, train=train_sat, evaluate=_evaluate,
    default_task="soft"))


# --------------------------------------------------------------------------- H. looking inside a trained model


def noun_phrase_index(tokens: torch.Tensor, article: int) -> torch.Tensor:
    """(B, T) -> (B, T): which noun phrase of the caption each token is in, 1, 2, ...; a phrase starts at each "a"."""
    return (tokens == article).cumsum(-1)


@torch.no_grad()
def attention_hit_by_phrase(model: ShowAttendTell, data, split: str = "test",
                            batch_size: int = 250) -> dict[tuple[int, int], tuple[float, int]]:
    """Where the strongest-location misses are: the hit rate of :func:`attention_correctness`, by place in the scene.

    Returns {(objects in the scene, noun phrase 1, 2 or 3 of the greedy caption): (hit rate,
    content words checked)}.
    """
    from .data.scenes import caption_referents

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    hits, keys = [], []
    for batch in data.batches(split, batch_size):
        out = caption(model, batch["images"], 1, batch["references"].shape[-1] - 1)
        referents = caption_referents(out["tokens"], batch["layout"])
        hits.append(attention_correctness(out["alpha"], referents, batch["masks"])["hit"])
        phrase = noun_phrase_index(out["tokens"], data.vocabulary.stoi["a"])
        objects = batch["layout"].count.to(phrase.device)[:, None].expand_as(phrase)
        words = referents >= 0
        keys.append(torch.stack([objects[words], phrase[words]], 1))
    return _mean_by_key(torch.cat(hits), torch.cat(keys))


def _mean_by_key(values: torch.Tensor, keys: torch.Tensor) -> dict[tuple[int, ...], tuple[float, int]]:
    """{key: (mean of the values with that key, how many)} for values (N,) and integer keys (N, k)."""
    unique, inverse = keys.unique(dim=0, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(unique))
    sums = torch.zeros(len(unique), dtype=torch.float64, device=values.device).index_add_(0, inverse, values.double())
    return {tuple(key): (float(total / count), int(count))
            for key, total, count in zip(unique.tolist(), sums, counts)}


def attention_maps(alpha: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """alpha (..., L) as grid maps (..., G, G); with ``image_size``, upsampled (bilinear) to (..., S, S) for overlays.

    The paper overlays alpha upsampled by 16 and smoothed with a Gaussian; bilinear
    upsampling keeps the total mass per cell and is enough for grids of 8 x 8 or 16 x 16.
    """
    G = math.isqrt(alpha.shape[-1]) if alpha.dim() else 0
    if G == 0 or G * G != alpha.shape[-1]:
        raise ValueError(f"expected alpha (..., L) with L a square number, got {tuple(alpha.shape)}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive (or None), got {image_size}")
    maps = alpha.reshape(*alpha.shape[:-1], G, G)
    if image_size is None:
        return maps
    flat = maps.reshape(-1, 1, G, G)
    up = F.interpolate(flat, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return up.reshape(*alpha.shape[:-1], image_size, image_size) * (G * G) / image_size ** 2
