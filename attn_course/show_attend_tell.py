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

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .data.captions import BOS, EOS, PAD
from .data.scenes import VOCAB
from .decoding import SoftAttention, beam_search, greedy_decode, soft_context
from .runtime import evaluating

ATTENTION = ("soft", "hard", "none")
# The weights lambda (the penalty, off by default), lambda_r and lambda_e (hard attention) were chosen by
# measurement on the shape scenes: chapter 3's "what differs" section gives the numbers.
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
    lambda_: float = 0.0  # weight of the doubly stochastic penalty (3.15), soft attention (see above)
    lambda_r: float = 0.1  # weight of the REINFORCE term (3.12), hard attention (see above)
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


# --------------------------------------------------------------------------- B. attention: the hard context


# f_att (3.1)-(3.2) is the additive attention :class:`~attn_course.decoding.SoftAttention`, and the soft context
# (3.13)-(3.14) :func:`~attn_course.decoding.soft_context`, shared with chapter 4.


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
    EOS, PAD); :meth:`annotate` and :meth:`step` (one step of (3.1)-(3.6)) are the
    :class:`~attn_course.decoding.Decoder` interface, which :func:`caption` decodes through.
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
             s: torch.Tensor | None = None, use_expectation: torch.Tensor | None = None):
        """One word: alpha_t (3.1)-(3.2), beta_t (3.14), z^_t (3.7 or 3.13), the LSTM (3.5) and the logits of (3.6).

        The ``step`` of the :class:`~attn_course.decoding.Decoder` interface. ``state`` holds
        a, Wa_a, a_mean (from :meth:`annotate`) and h, c (h_{t-1}, c_{t-1}). ``context``:
        "expected" (soft attention), "sample" (hard: s_t ~ Multinoulli(alpha_t), or the given
        ``s``), "argmax" (hard, the likeliest location), "mean" (no attention: the mean
        annotation vector). With "sample", ``use_expectation`` (B,) bool marks images that
        take the expected context instead (section 4.1). Returns the logits (B, K), the new
        state (h_t, c_t) and the extras alpha (B, L), beta (B,) and s (B,) (the location
        looked at; for "expected" and "mean" the argmax of alpha).
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
        extras = {"alpha": alpha, "beta": beta[:, 0], "s": s if s is not None else alpha.argmax(-1)}
        return logits, {**state, "h": h, "c": c_t}, extras

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
            logits, state, extras = self.step(captions[:, t], state, context, use_expectation=use_expectation)
            out["logits"].append(logits)
            for key in ("alpha", "beta", "s"):
                out[key].append(extras[key])
        out = {key: torch.stack(values, 1) for key, values in out.items()}
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


def caption(model: ShowAttendTell, images: torch.Tensor, beam_size: int = 1, max_len: int = 20,
            hard: str = "argmax") -> dict[str, torch.Tensor]:
    """Caption ``images`` in eval mode: greedily (``beam_size`` 1) or by beam search over log p(y | a).

    The paper decodes with a beam and no length penalty; both searches are those of
    :mod:`attn_course.decoding`. Hard attention looks at the likeliest location
    (``hard="argmax"``), at a sampled one ("sample") or takes the expectation ("expected").
    Returns ``tokens`` (B, T) without BOS, EOS included, PAD after it; ``alpha`` (B, T, L),
    ``beta`` (B, T) and ``s`` (B, T), the location looked at for each word; and, from the
    beam, the caption's ``score`` log p(y | a) (B,) and whether it ``finished``.
    """
    context = _inference_context(model, hard)
    with evaluating(model):
        if beam_size == 1:
            return greedy_decode(model, images, max_len, bos=BOS, eos=EOS, pad=PAD, context=context)
        return beam_search(model, images, beam_size, max_len, bos=BOS, eos=EOS, pad=PAD, context=context)


# --------------------------------------------------------------------------- F. what each word looked at


def caption_with_attention(model, images, beam_size: int = 1, hard: str = "argmax") -> list[dict]:
    """Caption ``images`` (B, 3, S, S) and keep, per image, what each emitted word looked at.

    Returns one dict per image: ``words`` (the caption's words, then "<eos>"), ``alpha``
    (len(words), L), ``beta`` (len(words),) and ``s`` (len(words),), the location the hard
    model read (for soft attention, the strongest one).
    """
    if not isinstance(model, ShowAttendTell):
        raise TypeError(f"model must be a ShowAttendTell captioner, got {type(model).__name__}")
    images = torch.as_tensor(images)
    if images.dim() not in (3, 4) or len(images) == 0:
        raise ValueError(f"expected a non-empty batch of images (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    device = next(model.parameters()).device
    out = caption(model, images.to(device), beam_size=beam_size, hard=hard)
    results = []
    for b, row in enumerate(out["tokens"].tolist()):
        n = next((t + 1 for t, token in enumerate(row) if token in (EOS, PAD)), len(row))
        words = [VOCAB.itos[token] if token != EOS else "<eos>" for token in row[:n] if token != PAD]
        n = len(words)
        results.append({"words": words, "alpha": out["alpha"][b, :n].cpu(), "beta": out["beta"][b, :n].cpu(),
                        "s": out["s"][b, :n].cpu()})
    return results
