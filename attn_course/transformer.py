"""The Transformer (Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser and Polosukhin 2017), in the paper's notation.

An encoder maps the source x_1..x_n to memories z_1..z_n; a decoder produces the output
y_1..y_m one token at a time, attending to the memories and to what it has produced so
far. Nothing is recurrent; every interaction is attention:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V                        (5.1)
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
        head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)                       (5.2)
    FFN(x) = max(0, x W_1 + b_1) W_2 + b_2                                   (5.3)
    PE(pos, 2i) = sin(pos / 10000^(2i/d_model)),
    PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))                            (5.4)
    sublayer: LayerNorm(x + Sublayer(x))  (post-norm, the paper's; pre-norm: x + Sublayer(LayerNorm(x)))
    lrate = d_model^-0.5 min(step^-0.5, step warmup^-1.5)                    (5.5)
        (our short runs add a linear cooldown to zero over their last 30%; the paper averaged checkpoints)
    label smoothing: q'(k) = (1 - eps) [k = y] + eps / K                     (5.6)
    beam search score: log P(Y | X) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^alpha   (5.7)

Equation numbers are those of chapter 5. Masks are boolean and True where attention is
allowed, as in ``torch.nn.functional.scaled_dot_product_attention``; shapes broadcast to
(B, h, T_q, T_k). Greedy decoding and the beam search of (5.7) are the shared ones of
:mod:`attn_course.decoding` (chapters 3 and 4 decode with them too), through
:meth:`Transformer.annotate` and :meth:`Transformer.step`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import decoding
from .data.sequences import BOS, EOS, PAD
from .runtime import evaluating


@dataclass(frozen=True)
class TransformerConfig:
    """The model's sizes. The defaults are the paper's base model (Table 3), for a 37,000-token vocabulary."""

    vocab_size: int = 37000
    d_model: int = 512
    heads: int = 8  # h; d_k = d_v = d_model / h
    d_ff: int = 2048
    encoder_layers: int = 6  # N
    decoder_layers: int = 6
    dropout: float = 0.1  # P_drop
    norm: str = "post"  # "post" (LayerNorm(x + Sublayer(x)), the paper's) or "pre"
    max_len: int = 256  # rows of the positional-encoding table

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "heads", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("encoder_layers", "decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TransformerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by the number of heads ({self.heads})")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for the sinusoidal encoding, got {self.d_model}")
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre', got {self.norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def d_k(self) -> int:
        return self.d_model // self.heads



PAPER_CONFIGS = {  # Table 3 of the paper
    "base": TransformerConfig(),
    "big": TransformerConfig(d_model=1024, heads=16, d_ff=4096, dropout=0.3),
}


# --------------------------------------------------------------------------- A. scaled dot-product attention


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) boolean, True on and below the diagonal: position t may attend to 1..t only."""
    if T < 1:
        raise ValueError(f"T must be positive, got {T!r}")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(tokens: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """(B, 1, 1, T) boolean, True for real tokens: every query may attend to every non-padding key."""
    if tokens.dim() != 2:
        raise ValueError(f"expected token ids of shape (B, T), got {tuple(tokens.shape)}")
    return (tokens != pad)[:, None, None, :]


def _check_mask(mask: torch.Tensor | None, target: tuple[int, ...]) -> torch.Tensor | None:
    """A boolean mask that broadcasts to ``target`` = (B, h, T_q, T_k), with a head axis added to (B, T_q, T_k)."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"expected a boolean mask (True = may attend), got dtype {mask.dtype}")
    if mask.dim() == 3:
        mask = mask[:, None]  # (B, T_q, T_k) -> (B, 1, T_q, T_k)
    shape = tuple(mask.shape)
    if mask.dim() not in (2, 4) or any(m not in (1, t) for m, t in zip(reversed(shape), reversed(target))):
        raise ValueError(f"expected a mask of shape (T_q, T_k), (B, T_q, T_k) or (B, 1 or h, T_q, T_k) broadcastable "
                         f"to (B, h, T_q, T_k) = {target}, got {shape}")
    return mask


def scaled_dot_product_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor,
                                 mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d_k)) V, equation (5.1), written out; returns (output, weights).

    ``Q`` (..., T_q, d_k), ``K`` (..., T_k, d_k), ``V`` (..., T_k, d_v); ``mask`` boolean,
    broadcastable to (..., T_q, T_k), True where a query may look. Masked scores are set
    to -inf before the softmax, so their weights are exactly 0; every query must be
    allowed at least one key. The weights are returned before dropout.
    """
    if Q.dim() < 2 or K.dim() != Q.dim() or V.dim() != Q.dim():
        raise ValueError(f"expected Q, K, V with the same number of dims >= 2, got {tuple(Q.shape)}, "
                         f"{tuple(K.shape)}, {tuple(V.shape)}")
    if Q.shape[-1] != K.shape[-1]:
        raise ValueError(f"queries and keys need the same d_k, got Q {tuple(Q.shape)} and K {tuple(K.shape)}")
    if K.shape[-2] != V.shape[-2]:
        raise ValueError(f"keys and values need the same length T_k, got K {tuple(K.shape)} and V {tuple(V.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must lie in [0, 1), got {dropout_p}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive and finite (or None: 1/sqrt(d_k)), got {scale}")
    d_k = Q.shape[-1]
    scores = Q @ K.transpose(-2, -1) * (1.0 / math.sqrt(d_k) if scale is None else scale)  # (..., T_q, T_k)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"expected a boolean mask (True = may attend), got dtype {mask.dtype}")
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores "
                             f"(..., T_q, T_k) = {tuple(scores.shape)}") from None
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return dropped @ V, weights


def softmax_statistics(d_k: int, scaled: bool = True, temperature: float = 1.0, num_keys: int = 16,
                       samples: int = 256, seed: int = 0) -> dict[str, float]:
    """Why (5.1) divides by sqrt(d_k), measured: for q, k with independent unit-variance entries,
    Var(q . k) = d_k, so unscaled scores spread as sqrt(d_k) and the softmax saturates.

    Returns the variance of the scores, the mean entropy of the weights (nats), the mean
    largest weight, and the mean Frobenius norm of the softmax Jacobian diag(p) - p p^T
    (how much gradient flows back through the weights), over ``samples`` draws of one query
    and ``num_keys`` keys, with scores q . k / (sqrt(d_k) if ``scaled``) / ``temperature``.
    """
    for name, value in (("d_k", d_k), ("num_keys", num_keys), ("samples", samples)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(samples, 1, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(samples, num_keys, d_k, generator=g, dtype=torch.float64)
    scores = (q * k).sum(-1) / (math.sqrt(d_k) if scaled else 1.0) / temperature  # (samples, keys)
    p = scores.softmax(-1)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
    jacobian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return {"score_variance": float(((q * k).sum(-1)).var()), "entropy": float(entropy.mean()),
            "max_weight": float(p.max(-1).values.mean()), "gradient_norm": float(jacobian.norm(dim=(1, 2)).mean())}


# --------------------------------------------------------------------------- B. multi-head attention


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V), (5.2).

    The h projections W_i^Q (d_model x d_k) are stored side by side as one d_model x d_model
    matrix (likewise K, V), so all heads cost one matrix product. With ``fused`` (the default)
    and no weights asked for, the attention itself runs in
    ``torch.nn.functional.scaled_dot_product_attention`` (a fused kernel); otherwise in
    :func:`scaled_dot_product_attention`, which returns the weights.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model < 1 or heads < 1:
            raise ValueError(f"d_model and heads must be positive, got {d_model} and {heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by the number of heads ({heads})")
        self.d_model, self.heads, self.d_k = d_model, heads, d_model // heads
        self.W_Q = nn.Linear(d_model, d_model)
        self.W_K = nn.Linear(d_model, d_model)
        self.W_V = nn.Linear(d_model, d_model)
        self.W_O = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.fused = True

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d_model) -> (B, h, T, d_k)
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_k).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``query`` (B, T_q, d_model), ``key_value`` (B, T_k, d_model) -> (B, T_q, d_model), weights (B, h, T_q, T_k).

        ``mask``: see :func:`_check_mask`; ``causal`` adds :func:`causal_mask` (self-attention only).
        """
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"expected queries of shape (B, T_q, {self.d_model}), got {tuple(query.shape)}")
        if key_value.dim() != 3 or key_value.shape[-1] != self.d_model or key_value.shape[0] != query.shape[0]:
            raise ValueError(f"expected keys of shape ({query.shape[0]}, T_k, {self.d_model}), "
                             f"got {tuple(key_value.shape)}")
        B, T_q, T_k = query.shape[0], query.shape[1], key_value.shape[1]
        if causal and T_q != T_k:
            raise ValueError(f"a causal mask needs T_q == T_k, got {T_q} and {T_k}")
        mask = _check_mask(mask, (B, self.heads, T_q, T_k))
        Q, K, V = self._split(self.W_Q(query)), self._split(self.W_K(key_value)), self._split(self.W_V(key_value))
        p = self.dropout if self.training else 0.0
        if self.fused and not need_weights:
            if causal and mask is None:
                out = F.scaled_dot_product_attention(Q, K, V, dropout_p=p, is_causal=True)
            else:
                if causal:
                    mask = mask & causal_mask(T_q, query.device)
                out = F.scaled_dot_product_attention(Q, K, V, attn_mask=mask, dropout_p=p)
            weights = None
        else:
            if causal:
                mask = causal_mask(T_q, query.device) if mask is None else mask & causal_mask(T_q, query.device)
            out, weights = scaled_dot_product_attention(Q, K, V, mask, dropout_p=p)
        out = out.transpose(1, 2).reshape(B, T_q, self.d_model)  # Concat(head_1, ..., head_h)
        return self.W_O(out), weights


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, equation (5.3), the same at every position."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        if d_model < 1 or d_ff < 1:
            raise ValueError(f"d_model and d_ff must be positive, got {d_model} and {d_ff}")
        self.W_1 = nn.Linear(d_model, d_ff)
        self.W_2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_2(F.relu(self.W_1(x)))


# --------------------------------------------------------------------------- C. positions and embeddings


def positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """PE (max_len, d_model), equation (5.4): PE(pos, 2i) = sin(pos w_i), PE(pos, 2i+1) = cos(pos w_i),
    with frequencies w_i = 10000^(-2i/d_model)."""
    if d_model < 2 or d_model % 2:
        raise ValueError(f"d_model must be a positive even number for the sinusoidal encoding, got {d_model}")
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    w = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * w)
    pe[:, 1::2] = torch.cos(pos * w)
    return pe.float()


def pe_shift_matrix(k: int, d_model: int) -> torch.Tensor:
    """The (d_model, d_model) matrix M_k with PE(pos + k) = M_k PE(pos) for every pos: one 2 x 2 rotation
    by the angle k w_i per frequency pair (sin(a + b) = sin a cos b + cos a sin b, and likewise cos)."""
    if d_model < 2 or d_model % 2:
        raise ValueError(f"d_model must be a positive even number for the sinusoidal encoding, got {d_model}")
    w = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    c, s = torch.cos(k * w), torch.sin(k * w)
    M = torch.zeros(d_model, d_model, dtype=torch.float64)
    i = torch.arange(0, d_model, 2)
    M[i, i], M[i, i + 1] = c, s  # sin((pos + k) w) = cos(k w) sin(pos w) + sin(k w) cos(pos w)
    M[i + 1, i], M[i + 1, i + 1] = -s, c  # cos((pos + k) w) = -sin(k w) sin(pos w) + cos(k w) cos(pos w)
    return M.float()


# --------------------------------------------------------------------------- D. the layers and the model


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward network, each wrapped in a residual and LayerNorm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(config.d_model, config.heads, config.dropout)
        self.ffn = PositionwiseFeedForward(config.d_model, config.d_ff)
        self.norm1, self.norm2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm = config.norm == "pre"

    def forward(self, x, mask=None, need_weights=False):
        if self.pre_norm:  # x + Sublayer(LayerNorm(x))
            h = self.norm1(x)
            a, w = self.self_attn(h, h, mask, need_weights=need_weights)
            x = x + self.dropout(a)
            return x + self.dropout(self.ffn(self.norm2(x))), w
        a, w = self.self_attn(x, x, mask, need_weights=need_weights)  # LayerNorm(x + Sublayer(x))
        x = self.norm1(x + self.dropout(a))
        return self.norm2(x + self.dropout(self.ffn(x))), w


class DecoderLayer(nn.Module):
    """Causal self-attention, attention over the encoder's memories (cross-attention), then the FFN."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(config.d_model, config.heads, config.dropout)
        self.cross_attn = MultiHeadAttention(config.d_model, config.heads, config.dropout)
        self.ffn = PositionwiseFeedForward(config.d_model, config.d_ff)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(config.d_model) for _ in range(3))
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm = config.norm == "pre"

    def forward(self, y, memory, memory_mask=None, need_weights=False):
        if self.pre_norm:
            h = self.norm1(y)
            a, w_self = self.self_attn(h, h, causal=True, need_weights=need_weights)
            y = y + self.dropout(a)
            a, w_cross = self.cross_attn(self.norm2(y), memory, memory_mask, need_weights=need_weights)
            y = y + self.dropout(a)
            return y + self.dropout(self.ffn(self.norm3(y))), w_self, w_cross
        a, w_self = self.self_attn(y, y, causal=True, need_weights=need_weights)
        y = self.norm1(y + self.dropout(a))
        a, w_cross = self.cross_attn(y, memory, memory_mask, need_weights=need_weights)
        y = self.norm2(y + self.dropout(a))
        return self.norm3(y + self.dropout(self.ffn(y))), w_self, w_cross


class Transformer(nn.Module):
    """The encoder-decoder of figure 1, with one embedding matrix E shared by the source, the target and
    the pre-softmax projection (section 3.4): logits = decoder output E^T, inputs E[x] sqrt(d_model) + PE."""

    def __init__(self, config: TransformerConfig = TransformerConfig()):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.register_buffer("pe", positional_encoding(config.max_len, config.d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        pre = config.norm == "pre"  # a pre-norm stack ends with a LayerNorm of its own
        self.encoder_norm = nn.LayerNorm(config.d_model) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(config.d_model) if pre else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.use_positions = True
        self._reset_parameters()

    def _reset_parameters(self):
        for name, p in self.named_parameters():
            if p.dim() > 1 and name != "embedding.weight":
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias") and "norm" not in name:
                nn.init.zeros_(p)
        # E[x] sqrt(d_model) then has unit variance entries, the scale of PE
        nn.init.normal_(self.embedding.weight, std=self.config.d_model ** -0.5)

    def use_fused_attention(self, fused: bool = True) -> "Transformer":
        """Switch every attention between the fused kernel and the written-out (5.1)."""
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.fused = fused
        return self

    def _check_tokens(self, tokens: torch.Tensor, name: str) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise ValueError(f"expected {name} as integer ids of shape (B, T), got {tuple(tokens.shape)} "
                             f"of {tokens.dtype}")
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"{name} has {tokens.shape[1]} positions; the encoding table has {self.config.max_len}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(f"{name} ids must lie in [0, {self.config.vocab_size - 1}]")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """E[x] sqrt(d_model) + PE(pos), then dropout (section 3.4 and 3.5)."""
        x = self.embedding(tokens) * math.sqrt(self.config.d_model)
        if self.use_positions:
            x = x + self.pe[:tokens.shape[1]]
        return self.dropout(x)

    def encode(self, src: torch.Tensor, need_weights: bool = False):
        """``src`` (B, S) ids -> memories z (B, S, d_model), the padding mask (B, 1, 1, S), and the
        self-attention weights of every layer (B, h, S, S) (``None`` unless ``need_weights``)."""
        self._check_tokens(src, "src")
        return self._encode(src, need_weights)

    def _encode(self, src: torch.Tensor, need_weights: bool = False):
        """:meth:`encode` without the check of the ids' values (what exports to ONNX)."""
        mask = padding_mask(src)
        x, weights = self.embed(src), []
        for layer in self.encoder:
            x, w = layer(x, mask, need_weights)
            weights.append(w)
        return self.encoder_norm(x), mask, weights

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
               need_weights: bool = False):
        """``tgt`` (B, T) ids (BOS first) -> logits (B, T, vocab) for the next token at every position,
        and per layer the causal self-attention (B, h, T, T) and cross-attention (B, h, T, S) weights."""
        self._check_tokens(tgt, "tgt")
        return self._decode(tgt, memory, memory_mask, need_weights)

    def _decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                need_weights: bool = False):
        """:meth:`decode` without the check of the ids' values (what exports to ONNX)."""
        y, self_weights, cross_weights = self.embed(tgt), [], []
        for layer in self.decoder:
            y, w_self, w_cross = layer(y, memory, memory_mask, need_weights)
            self_weights.append(w_self)
            cross_weights.append(w_cross)
        logits = self.decoder_norm(y) @ self.embedding.weight.T
        return logits, self_weights, cross_weights

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``src`` (B, S), ``tgt`` (B, T) = BOS y_1 .. y_{T-1} -> logits (B, T, vocab)."""
        self._check_tokens(src, "src")
        self._check_tokens(tgt, "tgt")
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"src and tgt need the same batch size, got {tuple(src.shape)} and {tuple(tgt.shape)}")
        memory, mask, _ = self.encode(src)
        return self.decode(tgt, memory, mask)[0]

    def annotate(self, src: torch.Tensor) -> dict[str, torch.Tensor]:
        """The :class:`~attn_course.decoding.Decoder` state of ``src`` (B, S): the memories (B, S, d_model), their
        padding mask (B, 1, 1, S) and the output so far, ``prefix`` (B, 0), to which :meth:`step` appends."""
        memory, mask, _ = self.encode(src)
        return {"memory": memory, "memory_mask": mask, "prefix": src.new_zeros((src.shape[0], 0), dtype=torch.long)}

    def step(self, tokens: torch.Tensor, state: Mapping[str, torch.Tensor]):
        """One output token for the shared decoders: append ``tokens`` (B,) (BOS first) to the prefix, run the
        decoder over the whole prefix (no cache of keys and values) and return the last position's logits
        (B, vocab), the state with the longer prefix, and no extras."""
        prefix = torch.cat([state["prefix"], tokens[:, None]], 1)
        logits = self.decode(prefix, state["memory"], state["memory_mask"])[0][:, -1]
        return logits, {**state, "prefix": prefix}, {}

    @torch.no_grad()
    def attention(self, src: torch.Tensor, tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every attention weight on one teacher-forced pass (written-out path):
        ``encoder`` (L_enc, B, h, S, S), ``decoder`` (L_dec, B, h, T, T), ``cross`` (L_dec, B, h, T, S)."""
        memory, mask, enc = self.encode(src, need_weights=True)
        logits, dec, cross = self.decode(tgt, memory, mask, need_weights=True)
        stack = lambda ws: torch.stack(ws) if ws else torch.zeros(0)  # noqa: E731
        return {"encoder": stack(enc), "decoder": stack(dec), "cross": stack(cross), "logits": logits}


def parameter_count(config: TransformerConfig) -> dict[str, int]:
    """Parameters by formula: an attention block 4 (d^2 + d), the FFN 2 d d_ff + d_ff + d, a LayerNorm 2 d."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    d, d_ff = config.d_model, config.d_ff
    attention, ffn, norm = 4 * (d * d + d), 2 * d * d_ff + d_ff + d, 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    final = 2 * norm if config.norm == "pre" else 0
    embedding = config.vocab_size * d
    total = config.encoder_layers * encoder_layer + config.decoder_layers * decoder_layer + final + embedding
    return {"encoder_layer": encoder_layer, "decoder_layer": decoder_layer, "embedding": embedding, "total": total}


# --------------------------------------------------------------------------- E. label smoothing and the schedule


def smoothed_targets(target: torch.Tensor, num_classes: int, epsilon: float) -> torch.Tensor:
    """q'(k) = (1 - eps) [k = y] + eps / K, equation (5.6): (..., K) from integer targets (...)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class ids, got {target.dtype}")
    return F.one_hot(target, num_classes).float() * (1 - epsilon) + epsilon / num_classes


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, epsilon: float = 0.1,
                        ignore_index: int = PAD) -> torch.Tensor:
    """Cross-entropy H(q', p) = -sum_k q'(k) log p(k) against the smoothed targets (5.6), averaged over
    the non-padding positions. Equal to ``F.cross_entropy(..., label_smoothing=eps)``."""
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"expected logits (..., K) over targets (...), got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    log_p = logits.float().log_softmax(-1)
    keep = target != ignore_index
    nll = -log_p.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    uniform = -log_p.mean(-1)  # sum_k (1/K) (-log p(k))
    loss = (1 - epsilon) * nll + epsilon * uniform
    return (loss * keep).sum() / keep.sum().clamp(min=1)


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """lrate = factor d_model^-0.5 min(step^-0.5, step warmup^-1.5), equation (5.5); ``step`` counts from 1."""
    if d_model < 1 or warmup < 1:
        raise ValueError(f"d_model and warmup must be positive, got {d_model} and {warmup}")
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    step = max(step, 1)
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def noam_optimizer(model: nn.Module, d_model: int, warmup: int, factor: float = 1.0, total_steps: int | None = None,
                   cooldown: float = 0.0):
    """Adam with beta_1 = 0.9, beta_2 = 0.98, eps = 1e-9 and the schedule (5.5) (section 5.3).

    ``cooldown`` > 0 (with ``total_steps``) multiplies (5.5) by a linear ramp down to zero over
    that last share of the run. The paper instead averaged its last 5 checkpoints; both take
    out the step-to-step noise that a rate still at its (5.5) value leaves in a short run.
    """
    noam_lr(1, d_model, warmup, factor)  # checks d_model, warmup and factor
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be positive (or None), got {total_steps}")
    if cooldown and (total_steps is None or not 0.0 < cooldown <= 1.0):
        raise ValueError(f"cooldown must be in (0, 1] and needs total_steps, got {cooldown} and {total_steps}")
    start = total_steps * (1.0 - cooldown) if cooldown else None

    def rate(s: int) -> float:
        lr = noam_lr(s + 1, d_model, warmup, factor)
        if start is not None and s >= start:
            lr *= max(0.0, (total_steps - s) / (total_steps - start))
        return lr

    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rate)


# --------------------------------------------------------------------------- F. decoding


LENGTH_PENALTY = 0.6  # alpha of lp(Y) in (5.7), the paper's


def beam_search(model: Transformer, src: torch.Tensor, max_len: int, beam_size: int = 4,
                alpha: float = LENGTH_PENALTY) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search ranked by log P(Y | X) / lp(Y), equation (5.7); the paper: beam 4, alpha 0.6.

    Chapter 5's name for :func:`attn_course.decoding.beam_search` (which see): the best
    sequences (B, <= max_len), without BOS, PAD after EOS, and their scores (B,).
    """
    out = decoding.beam_search(model, src, beam_size, max_len, length_penalty=alpha, bos=BOS, eos=EOS, pad=PAD)
    return out["tokens"], out["score"]


# --------------------------------------------------------------------------- G. the loss and decoding for use


LABEL_SMOOTHING = 0.1
COOLDOWN = 0.3  # the last 30% of a run ramps the rate of (5.5) down to zero


def transformer_loss(model: Transformer, batch: Mapping[str, torch.Tensor], epsilon: float = LABEL_SMOOTHING):
    """Teacher forcing: predict tgt[1:] from tgt[:-1]; label-smoothed loss (5.6), token accuracy and the
    share of sequences with every token right."""
    tgt = batch["tgt"]
    logits = model(batch["src"], tgt[:, :-1])
    labels = tgt[:, 1:]
    loss = label_smoothed_loss(logits, labels, epsilon)
    keep = labels != PAD
    right = (logits.argmax(-1) == labels) | ~keep
    return loss, {"token_accuracy": (right & keep).sum() / keep.sum(), "sequence_accuracy": right.all(1).float().mean()}


def predict(model: Transformer, src: torch.Tensor, max_len: int, beam_size: int = 1) -> torch.Tensor:
    """Greedy decoding (``beam_size`` 1) or beam search (length penalty 0.6), in eval mode; (B, T) ids without BOS."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be positive, got {beam_size}")
    with evaluating(model):
        if beam_size == 1:
            return decoding.greedy_decode(model, src, max_len, bos=BOS, eos=EOS, pad=PAD)["tokens"]
        return beam_search(model, src, max_len, beam_size)[0]


def attention_maps(model: Transformer, src: torch.Tensor, max_len: int) -> dict[str, torch.Tensor]:
    """Decode ``src`` (B, S) greedily, then return every attention weight of the pass that produced the
    output (see :meth:`Transformer.attention`) with ``output`` (B, T) ids; decoder row t is the query
    that predicted ``output[:, t]``."""
    with evaluating(model):
        output = predict(model, src, max_len)
        tgt = torch.cat([torch.full_like(output[:, :1], BOS), output], 1)[:, :-1]
        maps = model.attention(src, tgt)
    return {**maps, "output": output}
