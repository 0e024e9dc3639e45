"""Attention OCR with recursive and recurrent CNNs (Lee & Osindero 2016, R2AM; Liang & Hu 2015, RCNN).

A grayscale text line x (1 x 32 x 100) goes through a CNN whose last feature map is cut
into W' = 25 columns a_1..a_L (each a vector in R^D); an LSTM spells the line one character
at a time, attending over the columns as Show, Attend and Tell attends over image regions.
Equation numbers are those of chapter 4 of the course book.

The CNN's two blocks are one of three kinds of equal depth (``T + 1`` convolutions each):

* **recursive** (4.1): a feed-forward convolution w^f of the input at t = 0, then one
  3 x 3 convolution w^hh applied T times, the input entering only at t = 0 (the paper's
  form; ``first_kernel="shared"`` is the seed's, where w^hh reads the input too)::

      h(0) = sigma(w^f * x + b^f),   h(t) = sigma(w^hh * h(t-1) + b),  t = 1..T

* **recurrent** (4.2): a feed-forward convolution w^f of the input at every step plus a
  recurrent one w^r of the state, tied across steps (or untied)::

      h(0) = sigma(w^f * x + b),    h(t) = sigma(w^r * h(t-1) + w^f * x + b)

* **plain**: T + 1 convolutions with their own weights.

Each step has its own batch normalisation inside sigma (Liang & Hu normalise every step
too, with LRN); the convolution weights are what is tied.

The parameter counts of the three blocks are (4.3) (:func:`block_parameters`), their
receptive field (4.4)-(4.5) (:func:`receptive_field`). The decoder (4.6), with the
previous state h_{t-1}, the embedding E y_{t-1} and the context z_t::

    e_ti = w^T tanh(W_a a_i + W_h h_{t-1}),  alpha_ti = softmax_i(e_ti)
    z_t = sum_i alpha_ti a_i
    h_t, c_t = LSTM([E y_{t-1}, z_t], h_{t-1}, c_{t-1})
    p(y_t | y_<t, x) = softmax(L_o(E y_{t-1} + L_h h_t + L_z z_t))

and the loss is -sum_t log p(y_t | y_<t, x) (4.7). The attention network f_att, the soft
context and the decoding functions (greedy and beam search) are chapter 3's, shared in
:mod:`attn_course.decoding`; this model offers the ``annotate``/``step`` interface they
decode. Without attention, z_t is one learned linear summary of all the columns in order,
the same at every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.text_lines import ALPHABET, BOS, EOS, HEIGHT, MAX_LENGTH, PAD, VOCAB_SIZE, WIDTH, decode
from .decoding import SoftAttention, beam_search, greedy_decode, soft_context
from .runtime import evaluating

BLOCKS = ("recursive", "recurrent", "plain")
FIRST_KERNELS = ("separate", "shared")  # the recursive block's t = 0 kernel: its own w^f, or w^hh


@dataclass(frozen=True)
class R2AMConfig:
    """Sizes of the model. The defaults are the course's model for 32 x 100 text lines."""

    block: str = "recursive"  # "recursive" (4.1), "recurrent" (4.2) or "plain"
    T: int = 2  # recursion / recurrence steps after t = 0: each block has T + 1 convolutions
    tied: bool = True  # recurrent block: one w^r for every step (False: one per step)
    first_kernel: str = "separate"  # recursive block: own w^f at t = 0 (the paper) or "shared" w^hh (the seed)
    attention: str = "soft"  # "soft" or "none"
    c1: int = 16  # channels of the first block
    c2: int = 48  # channels of the second block
    D: int = 128  # size of a column vector a_i
    m: int = 32  # character embedding size
    n: int = 128  # LSTM units
    att_hidden: int = 64  # hidden units of f_att
    vocab_size: int = VOCAB_SIZE  # PAD, BOS, EOS and 36 characters
    max_length: int = MAX_LENGTH

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f"R2AMConfig.block must be one of {BLOCKS}, got {self.block!r}")
        if self.first_kernel not in FIRST_KERNELS:
            raise ValueError(f"R2AMConfig.first_kernel must be one of {FIRST_KERNELS}, got {self.first_kernel!r}")
        if self.attention not in ("soft", "none"):
            raise ValueError(f"R2AMConfig.attention must be 'soft' or 'none', got {self.attention!r}")
        for name in ("c1", "c2", "D", "m", "n", "att_hidden", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"R2AMConfig.{name} must be positive, got {getattr(self, name)}")
        if self.T < 0:
            raise ValueError(f"R2AMConfig.T must be >= 0, got {self.T}")

    @property
    def columns(self) -> int:
        return WIDTH // 4  # two 2 x 2 poolings across the width


# --------------------------------------------------------------------------- A. the three blocks


def _norms(channels: int, steps: int) -> nn.ModuleList:
    return nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(steps))


def _check_block(kind: str, channels: int, T: int) -> None:
    if kind not in BLOCKS:
        raise ValueError(f"unknown block {kind!r}; choose one of {BLOCKS}")
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    if T < 0:
        raise ValueError(f"T (steps after t = 0) must be >= 0, got {T}")


class RecursiveBlock(nn.Module):
    """(4.1): h(0) = sigma(w^f * x + b^f), then one convolution w^hh applied T times; the input enters at t = 0 only.

    ``first_kernel="shared"`` drops w^f and lets w^hh read the input too (the seed's form of (4.1)).
    """

    def __init__(self, channels: int, T: int, first_kernel: str = "separate"):
        super().__init__()
        _check_block("recursive", channels, T)
        if first_kernel not in FIRST_KERNELS:
            raise ValueError(f"first_kernel must be one of {FIRST_KERNELS}, got {first_kernel!r}")
        self.T, self.first_kernel = T, first_kernel
        self.w_hh = nn.Conv2d(channels, channels, 3, padding=1) if T >= 1 or first_kernel == "shared" else None
        self.w_f = nn.Conv2d(channels, channels, 3, padding=1) if first_kernel == "separate" else None
        self.norms = _norms(channels, T + 1)

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        first = self.w_f if self.w_f is not None else self.w_hh
        h = F.relu(self.norms[0](first(x)))
        steps = [h]
        for t in range(1, self.T + 1):
            h = F.relu(self.norms[t](self.w_hh(h)))
            steps.append(h)
        return steps if return_steps else h


class RecurrentBlock(nn.Module):
    """(4.2): h(t) = sigma(w^r * h(t-1) + w^f * x + b); the input enters at every step; w^r tied or untied."""

    def __init__(self, channels: int, T: int, tied: bool = True):
        super().__init__()
        _check_block("recurrent", channels, T)
        self.T, self.tied = T, tied
        self.w_f = nn.Conv2d(channels, channels, 3, padding=1)
        count = min(T, 1) if tied else T
        self.w_r = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(count))
        self.norms = _norms(channels, T + 1)

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        feed = self.w_f(x)  # w^f * x + b, computed once
        h = F.relu(self.norms[0](feed))
        steps = [h]
        for t in range(1, self.T + 1):
            w_r = self.w_r[0 if self.tied else t - 1]
            h = F.relu(self.norms[t](w_r(h) + feed))
            steps.append(h)
        return steps if return_steps else h


class PlainBlock(nn.Module):
    """T + 1 convolutions, each with its own weights: the untied network a recursive block unrolls to."""

    def __init__(self, channels: int, T: int):
        super().__init__()
        _check_block("plain", channels, T)
        self.T = T
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(T + 1))
        self.norms = _norms(channels, T + 1)

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        steps, h = [], x
        for conv, norm in zip(self.convs, self.norms):
            h = F.relu(norm(conv(h)))
            steps.append(h)
        return steps if return_steps else h


def make_block(kind: str, channels: int, T: int, tied: bool = True, first_kernel: str = "separate") -> nn.Module:
    """A block of ``kind`` (one of :data:`BLOCKS`) with ``channels`` channels and T + 1 convolutions."""
    if kind == "recursive":
        return RecursiveBlock(channels, T, first_kernel)
    if kind == "recurrent":
        return RecurrentBlock(channels, T, tied)
    if kind == "plain":
        return PlainBlock(channels, T)
    raise ValueError(f"unknown block {kind!r}; choose one of {BLOCKS}")


def block_parameters(kind: str, channels: int, T: int, tied: bool = True, kernel: int = 3,
                     first_kernel: str = "separate") -> int:
    """The parameter count of a block, by formula (4.3): k^2 C^2 per convolution, C per bias, 2C per batch norm."""
    _check_block(kind, channels, T)
    if kernel < 1:
        raise ValueError(f"kernel must be positive, got {kernel}")
    conv = kernel * kernel * channels * channels
    norms = 2 * channels * (T + 1)
    if kind == "recursive":
        kernels = 2 if first_kernel == "separate" and T >= 1 else 1  # w^f and w^hh, or one of them
        return kernels * (conv + channels) + norms
    if kind == "recurrent":
        recurrent = (min(T, 1) if tied else T) * conv
        return conv + channels + recurrent + norms
    if kind == "plain":
        return (T + 1) * (conv + channels) + norms
    raise ValueError(f"unknown block {kind!r}; choose one of {BLOCKS}")


# --------------------------------------------------------------------------- B. the encoder: columns a_i


class Encoder(nn.Module):
    """Text line (B, 1, 32, 100) -> columns a (B, 25, D).

    stem 3 x 3 conv with stride 2 (1 -> c1) | block (c1) | pool 2 x 2 | 3 x 3 conv (c1 -> c2) |
    block (c2) | pool 2 x 1 | a 4 x 1 convolution over the remaining height (c2 -> D), plus a
    learned embedding of each column's position. Every convolution is followed by batch
    normalisation and a ReLU.
    """

    def __init__(self, config: R2AMConfig):
        super().__init__()
        c = config
        conv = lambda i, o, k, p, s=1: nn.Sequential(nn.Conv2d(i, o, k, s, padding=p, bias=False),  # noqa: E731
                                                     nn.BatchNorm2d(o), nn.ReLU())
        self.stem = conv(1, c.c1, 3, 1, 2)
        self.block1 = make_block(c.block, c.c1, c.T, c.tied, c.first_kernel)
        self.transition = conv(c.c1, c.c2, 3, 1)
        self.block2 = make_block(c.block, c.c2, c.T, c.tied, c.first_kernel)
        self.to_columns = conv(c.c2, c.D, (HEIGHT // 8, 1), 0)
        self.position = nn.Parameter(torch.zeros(c.columns, c.D))
        nn.init.normal_(self.position, std=0.1)

    def features(self, x: torch.Tensor) -> dict[str, Any]:
        """Every intermediate map (for figures): the stem, each step of both blocks, and the columns."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, HEIGHT, WIDTH):
            raise ValueError(f"expected text lines of shape (B, 1, {HEIGHT}, {WIDTH}), got {tuple(x.shape)}")
        stem = self.stem(x - 0.5)
        steps1 = self.block1(stem, return_steps=True)
        steps2 = self.block2(self.transition(F.max_pool2d(steps1[-1], 2)), return_steps=True)
        columns = self.to_columns(F.max_pool2d(steps2[-1], (2, 1)))[:, :, 0].transpose(1, 2)  # (B, 25, D)
        return {"stem": stem, "block1": steps1, "block2": steps2, "a": columns + self.position}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["a"]


def receptive_field(T: int) -> int:
    """Width in input pixels that one column a_i sees (4.5), by (4.4): r <- r + (k - 1) j, j <- j s, layer by layer.

    Stem 3 x 3 with stride 2; T + 1 3 x 3 convolutions (jump 2); 2 x 2 pooling; a 3 x 3
    convolution and T + 1 more (jump 4); the last pooling and the column convolution span
    the height only. In closed form r = 3 + 4 (T + 1) + 2 + 8 + 8 (T + 1) = 25 + 12 T. A
    recurrent block reaches as far, through its chain of w^r's; so the formula holds for all
    three blocks.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 0:
        raise ValueError(f"T (steps after t = 0) must be an int >= 0, got {T!r}")
    r, j = 1, 1
    for kernel, stride in [(3, 2)] + [(3, 1)] * (T + 1) + [(2, 2), (3, 1)] + [(3, 1)] * (T + 1):
        r += (kernel - 1) * j
        j *= stride
    return r


# --------------------------------------------------------------------------- C. the model


class R2AM(nn.Module):
    """The encoder and the attention decoder (4.6). :meth:`annotate` and :meth:`step` are the
    :class:`~attn_course.decoding.Decoder` interface (as in Show, Attend and Tell), which :func:`read` decodes
    through."""

    def __init__(self, config: R2AMConfig = R2AMConfig()):
        super().__init__()
        if not isinstance(config, R2AMConfig):
            raise TypeError(f"config must be an R2AMConfig, got {type(config).__name__}")
        self.config = c = config
        self.encoder = Encoder(c)
        self.f_init_h = nn.Linear(c.D, c.n)
        self.f_init_c = nn.Linear(c.D, c.n)
        self.f_att = SoftAttention(c.D, c.n, c.att_hidden) if c.attention == "soft" else None
        self.summary = nn.Linear(c.columns * c.D, c.D) if c.attention == "none" else None
        self.E = nn.Embedding(c.vocab_size, c.m)
        self.lstm = nn.LSTMCell(c.m + c.D, c.n)
        self.L_h = nn.Linear(c.n, c.m)
        self.L_z = nn.Linear(c.D, c.m)
        self.L_o = nn.Linear(c.m, c.vocab_size)

    def annotate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """a (B, L, D), W_a a, the initial h_0, c_0 (from the mean column) and, without attention, the summary."""
        a = self.encoder(images)
        a_mean = a.mean(1)
        state = {"a": a, "h": torch.tanh(self.f_init_h(a_mean)), "c": self.f_init_c(a_mean)}
        if self.f_att is not None:
            state["Wa_a"] = self.f_att.project(a)
        state["a_mean"] = self.summary(a.flatten(1)) if self.summary is not None else a_mean
        return state

    def step(self, y_prev: torch.Tensor, state: Mapping[str, torch.Tensor], context: str = "expected"):
        """One character of (4.6): alpha_t, z_t, the LSTM and the logits of the deep output layer.

        ``context`` "expected" (soft attention) or "mean" (no attention: the fixed summary).
        Returns the logits (B, K), the new state (h_t, c_t) and the extras: alpha (B, L).
        """
        a, h_prev = state["a"], state["h"]
        if context == "mean":
            alpha = torch.full(a.shape[:2], 1.0 / a.shape[1], device=a.device, dtype=a.dtype)
            z = state["a_mean"]
        elif context == "expected":
            if self.f_att is None:
                raise ValueError("this R2AM was built without attention (attention='none'); use context='mean'")
            alpha = self.f_att(state["Wa_a"], h_prev)
            z = soft_context(a, alpha)
        else:
            raise ValueError(f"unknown context {context!r}; expected 'expected' or 'mean'")
        Ey = self.E(y_prev)
        h, c = self.lstm(torch.cat([Ey, z], 1), (h_prev, state["c"]))
        logits = self.L_o(Ey + self.L_h(h) + self.L_z(z))
        return logits, {**state, "h": h, "c": c}, {"alpha": alpha}

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher forcing: logits (B, T, K) for tokens[:, 1:] from tokens[:, :-1], and alpha (B, T, L)."""
        if tokens.dim() != 2 or tokens.shape[0] != images.shape[0] or tokens.shape[1] < 3:
            raise ValueError(f"expected tokens (B, T >= 3) = ({images.shape[0]}, ...) with BOS first, got "
                             f"{tuple(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {int(tokens.min())} to "
                             f"{int(tokens.max())}")
        state = self.annotate(images)
        context = _context(self)
        steps = int((tokens != PAD).sum(1).max()) - 1  # up to the longest line's EOS
        logits, alphas = [], []
        for t in range(steps):
            step_logits, state, extras = self.step(tokens[:, t], state, context)
            logits.append(step_logits)
            alphas.append(extras["alpha"])
        return {"logits": torch.stack(logits, 1), "alpha": torch.stack(alphas, 1)}


def _context(model: R2AM) -> str:
    """The ``context`` of :meth:`R2AM.step` for ``model``: "expected" with attention, "mean" without."""
    return "expected" if model.config.attention == "soft" else "mean"


def r2am_loss(model: R2AM, batch: Mapping[str, Any]):
    """(4.7), averaged over characters (EOS included); metrics: per-character and whole-line accuracy."""
    tokens = batch["tokens"]
    out = model(batch["images"], tokens)
    targets = tokens[:, 1:1 + out["logits"].shape[1]]
    real = targets != PAD
    nll = F.cross_entropy(out["logits"].transpose(1, 2), targets, reduction="none")
    loss = (nll * real).sum() / real.sum()
    with torch.no_grad():
        right = (out["logits"].argmax(-1) == targets) | ~real
        metrics = {"char_accuracy": ((right & real).sum() / real.sum()).detach(),
                   "word_accuracy": right.all(1).float().mean()}
    return loss, metrics


# --------------------------------------------------------------------------- D. reading


POLARITIES = ("auto", "light_on_dark", "dark_on_light")


def to_light_on_dark(images: torch.Tensor, polarity: str = "auto") -> torch.Tensor:
    """Text lines as the readers were trained on them: light text on a dark background.

    ``images`` (B, 1, H, W) in [0, 1]. ``polarity`` says what they show: "light_on_dark" (returned as
    they are), "dark_on_light" (inverted, 1 - x: ordinary print), or "auto": each line is inverted when
    its median pixel is above 1/2, i.e. when its background (most of a line's pixels) is light.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if polarity == "light_on_dark":
        return images
    if polarity == "dark_on_light":
        return 1 - images
    light = images.flatten(1).median(1).values > 0.5  # (B,): a light background
    return torch.where(light[:, None, None, None], 1 - images, images)


def _check_lines(images) -> torch.Tensor:
    """``images`` as float text lines (B, 1, 32, 100) in [0, 1] (uint8 0..255 is scaled), or a clear error."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, 1, {HEIGHT}, {WIDTH}), got "
                        f"{type(images).__name__}")
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, HEIGHT, WIDTH) or len(images) == 0:
        raise ValueError(f"images must be text lines of shape (B, 1, {HEIGHT}, {WIDTH}), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise TypeError(f"images must be floats in [0, 1] (or uint8 0..255), got {images.dtype}")
    low, high = torch.aminmax(images)
    if not (float(low) >= 0.0 and float(high) <= 1.0):  # also catches NaN
        raise ValueError(f"images must lie in [0, 1], got values in [{float(low):g}, {float(high):g}]")
    return images


def read(model: R2AM, images: torch.Tensor, beam_size: int = 1, polarity: str = "auto") -> dict[str, Any]:
    """Decode text lines in eval mode: ``texts``, ``tokens`` (B, steps) and ``alpha`` (B, steps, L), greedily
    (``beam_size`` 1) or by beam search (then also ``score`` and ``finished``; see :mod:`attn_course.decoding`).

    ``images`` (B, 1, 32, 100) in [0, 1]. The readers were trained on light text on a dark background;
    ``polarity`` (see :func:`to_light_on_dark`) makes them read ordinary dark-on-light print too:
    "auto" (the default) inverts each line whose background is light, "light_on_dark" and
    "dark_on_light" say which the lines are.
    """
    if not isinstance(model, R2AM):
        raise TypeError(f"model must be an R2AM, got {type(model).__name__}")
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    images = to_light_on_dark(_check_lines(images), polarity)
    max_len = model.config.max_length + 1
    options = dict(bos=BOS, eos=EOS, pad=PAD, context=_context(model))
    with evaluating(model):
        if beam_size == 1:
            out = greedy_decode(model, images, max_len, **options)
        else:
            out = beam_search(model, images, beam_size, max_len, **options)
    out["texts"] = [decode(row) for row in out["tokens"].tolist()]
    return out


def _text_line(image) -> torch.Tensor:
    """One text line, (32, 100), (1, 32, 100) or (1, 1, 32, 100), as (1, 1, 32, 100); a clear error otherwise."""
    line = torch.as_tensor(image)
    if line.shape not in ((HEIGHT, WIDTH), (1, HEIGHT, WIDTH), (1, 1, HEIGHT, WIDTH)):
        raise ValueError(f"image must be one text line of shape ({HEIGHT}, {WIDTH}) or (1, {HEIGHT}, {WIDTH}), got "
                         f"{tuple(line.shape)} (resize or crop the line to {HEIGHT} x {WIDTH} first)")
    return line.reshape(1, 1, HEIGHT, WIDTH)


def read_line(model, image, polarity: str = "auto") -> dict:
    """The model's reading of one line (1, 32, 100) in [0, 1]: ``text``, ``alpha`` (steps, L) and ``labels``, one per
    step up to and including EOS (a special token other than EOS shows as "?").

    ``polarity``: "auto" (default) reads light text on dark and ordinary dark text on light alike (a line
    whose median pixel is above 1/2 is inverted first); "light_on_dark" or "dark_on_light" say which it is.
    """
    if not isinstance(model, R2AM):
        raise TypeError(f"model must be an R2AM reader, got {type(model).__name__}")
    device = next(model.parameters()).device
    out = read(model, _text_line(image).to(device), polarity=polarity)
    labels = []
    for token in out["tokens"][0].tolist():
        labels.append("EOS" if token == EOS else ALPHABET[token - 3] if token >= 3 else "?")
        if token == EOS:
            break
    return {"text": out["texts"][0], "alpha": out["alpha"][0, :len(labels)].cpu(), "labels": labels}
