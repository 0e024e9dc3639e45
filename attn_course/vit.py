"""The Vision Transformer (Dosovitskiy, Beyer, Kolesnikov, Weissenborn, Zhai, Unterthiner, Dehghani,
Minderer, Heigold, Gelly, Uszkoreit and Houlsby 2021), in the paper's notation.

Chapter 5's encoder, fed an image: the image x (C, H, W) is cut into N = HW / P^2 patches
of side P, each flattened to a vector x_p^i of P^2 C pixels and mapped linearly to d_model
= D; a learned class token x_class goes in front, and the position embeddings are added:

    z_0 = [x_class; x_p^1 E; x_p^2 E; ...; x_p^N E] + E_pos,
        E in R^{(P^2 C) x D}, E_pos in R^{(N + 1) x D}                        (6.1)
    x_p^i E = (W * x)[:, row(i), col(i)] with W[d, c, u, v] = E[(c P + u) P + v, d],
        a convolution of stride P: the same map as a strided Conv2d             (6.2)
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                        l = 1..L        (6.3)
    z_l = MLP(LN(z'_l)) + z'_l,   MLP(x) = GELU(x W_1 + b_1) W_2 + b_2         (6.4)
    y = LN(z_L^0),  logits = y W_head + b_head                                  (6.5)

MSA is chapter 5's multi-head attention (5.2) over the N + 1 tokens, each head
softmax(Q K^T / sqrt(d_k)) V (5.1); the blocks are pre-norm (chapter 5's ``norm="pre"``).
What is new here besides the patches:

    E_pos[1 + i] = [PE_{D/2}(row(i)), PE_{D/2}(col(i))]                       (6.6)
        the sinusoidal alternative to a learned E_pos: chapter 5's (5.4) of half the width
        for the patch's row, the other half for its column; the class token gets zeros
    A~_l = rownorm(mean_h A_l^h + I),   R = A~_L A~_{L-1} ... A~_1                (6.7)
        attention rollout (Abnar & Zuidema 2020): the identity stands for the residual
        path; R[0, 1:] says how much each patch reaches the class token through all layers
    MACs = N C P^2 D + L (4 T D^2 + 2 T^2 D + 2 r T D^2) + D K,   T = N + 1   (6.8)
        multiply-adds per image of the matrix products (patch embedding; per block the
        Q, K, V, O projections, Q K^T and A V, the MLP of width r D; the head on y)
    lr(s) = lr_0 s / S_w for s < S_w, then a cosine from lr_0 to lr_min at step S  (6.9)

Equation numbers are those of chapter 6. Patches are numbered row by row (i = row(i) G_w
+ col(i), G_w = W / P patches per row) and each is flattened channel first, then row by
row, (C, P, P): the order of ``Conv2d``'s weight, so (6.2) is a reshape of E.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    """The model's sizes. The defaults are a small ViT for 28 x 28 MNIST (the paper's ViT-Base: P = 16, D = 768,
    L = 12, 12 heads, MLP 3072, on 224 x 224 images)."""

    image_size: int = 28
    patch: int = 7  # P
    d_model: int = 64  # D
    depth: int = 4  # L
    heads: int = 4  # d_k = D / heads
    mlp_ratio: int = 2  # r: the MLP's hidden width is r D
    dropout: float = 0.0
    position: str = "learned"  # E_pos: "learned" (the paper's) or "sinusoidal" (6.6)
    classes: int = 10  # K
    channels: int = 1  # C

    def __post_init__(self):
        for name in ("image_size", "patch", "d_model", "depth", "heads", "mlp_ratio", "classes", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch:
            raise ValueError(f"the patch side ({self.patch}) must divide the image side ({self.image_size}): "
                             f"choose one of {[p for p in range(1, self.image_size + 1) if self.image_size % p == 0]}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by the number of heads ({self.heads})")
        if self.position not in ("learned", "sinusoidal"):
            raise ValueError(f"position must be 'learned' or 'sinusoidal', got {self.position!r}")
        if self.position == "sinusoidal" and self.d_model % 4:
            raise ValueError(f"the 2-D sinusoidal embedding (6.6) needs d_model divisible by 4, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def grid(self) -> int:
        """G: patches along each side of the image."""
        return self.image_size // self.patch

    @property
    def num_patches(self) -> int:
        """N = H W / P^2."""
        return self.grid ** 2

    @property
    def tokens(self) -> int:
        """T = N + 1: the patches and the class token."""
        return self.num_patches + 1

    @property
    def d_k(self) -> int:
        return self.d_model // self.heads


# --------------------------------------------------------------------------- A. patches: (6.1) and (6.2)


def patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """x_p of (6.1): ``images`` (B, C, H, W) -> (B, N, C P^2), patches numbered row by row, each flattened
    channel first, then row by row (the order of a Conv2d weight (D, C, P, P))."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {_shape(images)}")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"patch must be a positive int, got {patch!r}")
    B, C, H, W = images.shape
    if H % patch or W % patch:
        raise ValueError(f"the patch side {patch} must divide the image's height and width, got {H} x {W}")
    grid = images.reshape(B, C, H // patch, patch, W // patch, patch)  # (B, C, G_h, P, G_w, P)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // patch) * (W // patch), C * patch * patch)


def conv_weight_from_E(E: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """(6.2): the Conv2d kernel W (D, C, P, P) that computes x_p E, from E (C P^2, D)."""
    if E.dim() != 2 or E.shape[0] != channels * patch * patch:
        raise ValueError(f"expected E of shape (C P^2, D) = ({channels * patch * patch}, D), got {_shape(E)}")
    return E.T.reshape(E.shape[1], channels, patch, patch)


def E_from_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """(6.2) backwards: E (C P^2, D) from a Conv2d kernel (D, C, P, P)."""
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"expected a square Conv2d kernel of shape (D, C, P, P), got {_shape(weight)}")
    return weight.reshape(weight.shape[0], -1).T


class PatchEmbedding(nn.Module):
    """x -> [x_p^1 E + b; ...; x_p^N E + b] (B, N, D), in one of two equal forms (6.2).

    ``form="linear"``: cut the patches (:func:`patches`) and multiply by E, stored as an
    ``nn.Linear`` (``self.E``; its weight is E^T). ``form="conv"``: one ``nn.Conv2d``
    (``self.conv``) of kernel and stride P. :meth:`converted` gives the other form with the
    same map, through :func:`conv_weight_from_E` and :func:`E_from_conv_weight`.
    """

    def __init__(self, channels: int, patch: int, d_model: int, form: str = "linear"):
        super().__init__()
        for name, value in (("channels", channels), ("patch", patch), ("d_model", d_model)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if form not in ("linear", "conv"):
            raise ValueError(f"form must be 'linear' or 'conv', got {form!r}")
        self.channels, self.patch, self.d_model, self.form = channels, patch, d_model, form
        if form == "linear":
            self.E = nn.Linear(channels * patch * patch, d_model)
        else:
            self.conv = nn.Conv2d(channels, d_model, patch, stride=patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected images of shape (B, {self.channels}, H, W), got {_shape(images)}")
        if self.form == "linear":
            return self.E(patches(images, self.patch))
        if images.shape[2] % self.patch or images.shape[3] % self.patch:
            raise ValueError(f"the patch side {self.patch} must divide the image's height and width, "
                             f"got {images.shape[2]} x {images.shape[3]}")
        return self.conv(images).flatten(2).transpose(1, 2)  # (B, D, G_h, G_w) -> (B, N, D), row by row

    @torch.no_grad()
    def converted(self) -> PatchEmbedding:
        """The same map in the other form (a new module; this one is unchanged)."""
        other = PatchEmbedding(self.channels, self.patch, self.d_model, "conv" if self.form == "linear" else "linear")
        other = other.to(device=self.weight_E.device, dtype=self.weight_E.dtype)
        if self.form == "linear":
            other.conv.weight.copy_(conv_weight_from_E(self.weight_E, self.channels, self.patch))
            other.conv.bias.copy_(self.E.bias)
        else:
            other.E.weight.copy_(self.weight_E.T)
            other.E.bias.copy_(self.conv.bias)
        return other

    @property
    def weight_E(self) -> torch.Tensor:
        """E (C P^2, D) of (6.1), whichever the form."""
        return self.E.weight.T if self.form == "linear" else E_from_conv_weight(self.conv.weight)


def sinusoidal_2d(grid_h: int, grid_w: int, d_model: int) -> torch.Tensor:
    """(6.6): (grid_h grid_w, d_model), row i for the patch at (i // grid_w, i % grid_w): the first half
    chapter 5's (5.4) of width d_model / 2 for the patch's row, the second half for its column."""
    for name, value in (("grid_h", grid_h), ("grid_w", grid_w), ("d_model", d_model)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if d_model % 4:
        raise ValueError(f"d_model must be divisible by 4 (a sine and a cosine per frequency, per axis), got {d_model}")
    half = d_model // 2
    w = 10000.0 ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)  # (half / 2,) frequencies

    def encode(positions: torch.Tensor) -> torch.Tensor:  # (5.4) for integer positions, width ``half``
        angles = positions[:, None].double() * w
        return torch.stack([angles.sin(), angles.cos()], -1).reshape(len(positions), half)  # sin, cos interleaved

    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    return torch.cat([encode(rows), encode(cols)], 1).float()


# --------------------------------------------------------------------------- B. the encoder block: (6.3), (6.4)


class SelfAttention(nn.Module):
    """MSA of (6.3): chapter 5's multi-head self-attention (5.2), heads side by side in W_Q, W_K, W_V (D x D).

    The model path runs ``torch.nn.functional.scaled_dot_product_attention`` (a fused kernel);
    with ``return_attention=True`` the attention is written out, softmax(Q K^T / sqrt(d_k)) V
    (5.1), and its weights (B, h, T, T) come back.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model < 1 or heads < 1 or d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of heads ({heads})")
        self.heads, self.d_k = heads, d_model // heads
        self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Linear(d_model, d_model) for _ in range(4))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """``x`` (B, T, D) -> (B, T, D), and the weights (B, h, T, T) when asked (else None)."""
        B, T, D = x.shape
        Q, K, V = (W(x).view(B, T, self.heads, self.d_k).transpose(1, 2) for W in (self.W_Q, self.W_K, self.W_V))
        p = self.dropout if self.training else 0.0
        if return_attention:
            A = (Q @ K.transpose(-2, -1) / math.sqrt(self.d_k)).softmax(-1)  # (5.1)
            out = F.dropout(A, p) @ V if p > 0 else A @ V
        else:
            A = None
            out = F.scaled_dot_product_attention(Q, K, V, dropout_p=p)
        return self.W_O(out.transpose(1, 2).reshape(B, T, D)), A


class Block(nn.Module):
    """One pre-norm encoder block: z' = MSA(LN(z)) + z (6.3), then MLP(LN(z')) + z' (6.4)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        D = config.d_model
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attention = SelfAttention(D, config.heads, config.dropout)
        self.mlp = nn.Sequential(nn.Linear(D, config.mlp_ratio * D), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.mlp_ratio * D, D))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, z: torch.Tensor, return_attention: bool = False):
        a, A = self.attention(self.norm1(z), return_attention)
        z = z + self.dropout(a)
        return z + self.dropout(self.mlp(self.norm2(z))), A


# --------------------------------------------------------------------------- C. the model: (6.1)-(6.5)


class ViT(nn.Module):
    """The Vision Transformer: patch embedding and class token (6.1), L pre-norm blocks, LN and a linear head (6.5)."""

    def __init__(self, config: ViTConfig = ViTConfig()):
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = config
        D = config.d_model
        self.patch_embedding = PatchEmbedding(config.channels, config.patch, D)
        self.class_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)  # x_class
        if config.position == "learned":
            self.E_pos = nn.Parameter(torch.randn(1, config.tokens, D) * 0.02)
        else:  # (6.6) for the patches; the class token, learned itself, gets no position
            table = torch.cat([torch.zeros(1, D), sinusoidal_2d(config.grid, config.grid, D)])
            self.register_buffer("E_pos", table[None], persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, config.classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """z_0 (B, T, D) of (6.1)."""
        c = self.config
        expected = (c.channels, c.image_size, c.image_size)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, expected))}), got {_shape(images)}")
        x = self.patch_embedding(images)
        return self.dropout(torch.cat([self.class_token.expand(len(x), -1, -1), x], 1) + self.E_pos)

    def forward(self, images: torch.Tensor, return_attention: bool = False):
        """``images`` (B, C, H, W) -> logits (B, K); with ``return_attention``, (logits, [A_1, ..., A_L]),
        each A_l (B, h, T, T) the attention weights of block l (token 0 is the class token)."""
        z = self.embed(images)
        attentions = []
        for block in self.blocks:
            z, A = block(z, return_attention)
            attentions.append(A)
        logits = self.head(self.norm(z[:, 0]))  # y = LN(z_L^0) (6.5)
        return (logits, attentions) if return_attention else logits


@torch.no_grad()
def attention_maps(model: ViT, images: torch.Tensor) -> list[torch.Tensor]:
    """The attention weights A_l (B, h, T, T) of every block, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return model(images, return_attention=True)[1]
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- D. where the class token looks


def _check_attentions(attentions: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(attentions, torch.Tensor):
        if attentions.dim() != 5:
            raise ValueError(f"expected attentions (L, B, h, T, T) or a list of L tensors (B, h, T, T), "
                             f"got a tensor of shape {tuple(attentions.shape)}")
        attentions = list(attentions)
    if not isinstance(attentions, (list, tuple)) or not attentions:
        raise ValueError(f"expected a non-empty list of attention weights (B, h, T, T), one per layer, "
                         f"got {type(attentions).__name__}")
    first = attentions[0]
    for l, A in enumerate(attentions):
        if not isinstance(A, torch.Tensor) or A.dim() != 4 or A.shape[-1] != A.shape[-2] or A.shape != first.shape:
            raise ValueError(f"expected every layer's weights of shape (B, h, T, T) like layer 0's "
                             f"{_shape(first)}, layer {l} has {_shape(A)}")
    return list(attentions)


def attention_rollout(attentions: Sequence[torch.Tensor] | torch.Tensor, residual: bool = True) -> torch.Tensor:
    """R = A~_L ... A~_1 (6.7), (B, T, T): A~_l = rownorm(mean_h A_l + I) with ``residual``, else mean_h A_l.

    Row t of R spreads token t of the last layer over the input tokens (row 0: the class
    token's, what the head reads); every row sums to 1.
    """
    attentions = _check_attentions(attentions)
    T = attentions[0].shape[-1]
    eye = torch.eye(T, dtype=attentions[0].dtype, device=attentions[0].device)
    R = None
    for A in attentions:  # layer 1 first: R_l = A~_l R_{l-1}
        A = A.mean(1)
        if residual:
            A = A + eye
            A = A / A.sum(-1, keepdim=True)
        R = A if R is None else A @ R
    return R


def class_token_attention(attentions: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """How the class token's query spreads over the patches: (B, L, h, N), A_l^h[0, 1:] of every layer and head.

    The rest of each row, A_l^h[0, 0], is the class token's attention to itself.
    """
    return torch.stack([A[:, :, 0, 1:] for A in _check_attentions(attentions)], 1)


# --------------------------------------------------------------------------- E. what a model costs


def multiply_adds(config: ViTConfig) -> dict[str, int]:
    """Multiply-adds per image of every matrix product of the forward pass, counted from the shapes (6.8).

    Biases, LayerNorm, softmax, GELU and the 1/sqrt(d_k) scale are not counted (they cost
    O(T D) or O(h T^2) additions and multiplications, no matrix product).
    """
    N, T, D, L = config.num_patches, config.tokens, config.d_model, config.depth
    patch_embedding = N * (config.channels * config.patch ** 2) * D  # x_p E
    projections = L * 4 * T * D * D  # Q, K, V and the output W_O, on every token
    scores = L * config.heads * T * T * config.d_k  # Q K^T, per head (T, d_k) x (d_k, T)
    weighted_values = L * config.heads * T * T * config.d_k  # A V, per head (T, T) x (T, d_k)
    mlp = L * 2 * T * D * config.mlp_ratio * D  # W_1 and W_2
    head = D * config.classes  # on y = LN(z_L^0) only
    counts = {"patch_embedding": patch_embedding, "projections": projections, "scores": scores,
              "weighted_values": weighted_values, "mlp": mlp, "head": head}
    return {**counts, "total": sum(counts.values())}


def parameter_count(config: ViTConfig) -> dict[str, int]:
    """Parameters, counted from the shapes (E_pos counted when learned)."""
    D, L, r = config.d_model, config.depth, config.mlp_ratio
    counts = {
        "patch_embedding": config.channels * config.patch ** 2 * D + D,
        "class_token": D,
        "position": config.tokens * D if config.position == "learned" else 0,
        "blocks": L * (4 * (D * D + D) + (D * r * D + r * D) + (r * D * D + D) + 2 * 2 * D),
        "head": 2 * D + D * config.classes + config.classes,
    }
    return {**counts, "total": sum(counts.values())}


# --------------------------------------------------------------------------- F. training: (6.9)


def warmup_cosine(step: int, total_steps: int, warmup: int, final_fraction: float) -> float:
    """The factor of lr_0 at ``step`` (counting from 0) in (6.9): linear warm-up over ``warmup`` steps, then
    a cosine down to ``final_fraction`` of lr_0 at ``total_steps``."""
    if total_steps < 1 or warmup < 0:
        raise ValueError(f"total_steps must be positive and warmup >= 0, got {total_steps} and {warmup}")
    if not 0.0 <= final_fraction <= 1.0:
        raise ValueError(f"final_fraction must be in [0, 1], got {final_fraction}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def vit_optimizer(model: nn.Module, lr: float, total_steps: int, warmup: int, weight_decay: float = 0.05,
                  final_fraction: float = 0.01, betas: tuple[float, float] = (0.9, 0.999)):
    """AdamW with the rate (6.9). Weight decay applies to the matrices (E, the projections, the MLP, the head),
    not to biases, LayerNorm gains, the class token or E_pos (the paper's Adam, beta_2 = 0.999, with decoupled
    decay)."""
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be positive, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    warmup_cosine(0, total_steps, warmup, final_fraction)  # checks the schedule's arguments
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n not in ("class_token", "E_pos")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n not in ("class_token", "E_pos"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup, final_fraction))
    return optimizer, schedule


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
