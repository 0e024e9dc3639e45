"""Attention at scale: the online softmax (Milakov & Gimelshein 2018), FlashAttention's tiling (Dao, Fu, Ermon,
Rudra and Ré 2022), rotary positions (Su, Lu, Pan, Murtadha, Wen and Liu 2021), multi-query and grouped-query
attention (Shazeer 2019; Ainslie, Lee-Thorp, de Jong, Zemlyanskiy, Lebrón and Sanghai 2023) and the KV cache of a
small GPT-style decoder (Radford, Narasimhan, Salimans and Sutskever 2018), in the papers' notation.

Attention over n tokens writes an n x n matrix per head. The chapter measures that cost, computes the same
attention without the matrix, then builds a small decoder-only model and makes its generation cheap:

    S = Q K^T / sqrt(d),  P = softmax(S),  O = P V:  O(n^2 d) time, n^2 numbers per head            (7.1)
    m = max_j x_j,  l = sum_j e^{x_j - m},  softmax(x)_j = e^{x_j - m} / l   (the safe softmax)     (7.2)
    m^(b) = max(m^(b-1), max_j x_j^(b)),  l^(b) = l^(b-1) e^{m^(b-1) - m^(b)} + sum_j e^{x_j^(b) - m^(b)}
        the online normaliser over blocks b = 1, 2, ... (m^(0) = -inf, l^(0) = 0)                   (7.3)
    S_ij = Q_i K_j^T / sqrt(d),  m_new = max(m, rowmax S_ij),  P~_ij = e^{S_ij - m_new},
    l_new = e^{m - m_new} l + rowsum P~_ij,  O_new = e^{m - m_new} O + P~_ij V_j,  at the end O_i = O / l
        FlashAttention's tiling: query block Q_i against key/value blocks K_j, V_j                  (7.4)
    causal: query i sees key j iff j <= i + n_k - n_q; key blocks wholly in the future are skipped  (7.5)
    f(x, m)_{2i,2i+1} = [[cos m theta_i, -sin m theta_i], [sin m theta_i, cos m theta_i]] (x_2i, x_2i+1),
        theta_i = 10000^{-2i/d},  i = 0 .. d/2 - 1   (RoPE: interleaved pairs, the paper's)         (7.6)
    f(x, m)_i = (x_2i + i x_2i+1) e^{i m theta_i}  (complex form),
        <f(q, m), f(k, n)> = Re sum_i q_i conj(k_i) e^{i (m - n) theta_i}: a function of m - n      (7.7)
    query head j (of h) reads key/value head floor(j g / h) (of g): g = h multi-head, g = 1 multi-query,
        1 < g < h grouped-query attention                                                           (7.8)
    K_1..t = [K_1..t-1; k_t],  V_1..t = [V_1..t-1; v_t],  o_t = softmax(q_t K_1..t^T / sqrt(d_k)) V_1..t
        the KV cache: one decoding step costs O(t d) instead of re-running the prefix               (7.9)
    bytes = 2 L B t g d_k s   (keys and values, L layers, batch B, t tokens, s bytes a number)      (7.10)
    h_0 = E[x_t] + P[t]  (learned positions; no P with rotary ones, which turn q and k instead;
        h_0 = E[x_t] sqrt(d_model) + PE(t) with sinusoidal ones, chapter 5's (5.4) and its scale),
    h'_l = h_{l-1} + Attn(LN(h_{l-1})),  h_l = h'_l + MLP(LN(h'_l)),  logits = LN(h_L) E^T          (7.11)
    L = -(1/T) sum_t log p(x_{t+1} | x_1..x_t),   bits per character = L / ln 2                     (7.12)
    x_{t+1} = argmax logits (temperature 0), else a draw from softmax(logits / temperature)         (7.13)

Attn is causal multi-head attention (chapter 5's (5.1)-(5.2)) with the mask (7.5) and g key/value
heads (7.8), run in torch's fused kernel; the blocks are pre-norm, MLP(x) = GELU(x W_1 + b_1) W_2 + b_2,
and E is tied between the input and the output, as in GPT-2.

Equation numbers are those of chapter 7. The text is character-level: :func:`stdlib_corpus` reads
the Python standard library's own source (on every machine, under the PSF licence), or
:func:`text_corpus` a file of the reader's; :class:`CharTokenizer` numbers its characters.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import random
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


POSITIONS = ("learned", "sinusoidal", "rotary")


@dataclass(frozen=True)
class GPTConfig:
    """The decoder's sizes (7.11). The defaults are a small character-level model (GPT-1: 12 layers, d_model 768,
    12 heads, a context of 512 tokens)."""

    vocab_size: int = 100
    context: int = 256  # T_max: the longest sequence the model reads (learned positions: rows of P)
    d_model: int = 128
    layers: int = 4  # L
    heads: int = 4  # h; d_k = d_model / h
    kv_heads: int | None = None  # g of (7.8): None = heads (multi-head), 1 (multi-query), a divisor of h (grouped)
    mlp_ratio: int = 4  # the MLP's hidden width is mlp_ratio d_model
    dropout: float = 0.0
    position: str = "learned"  # "learned" (P of (7.11)), "sinusoidal" (chapter 5's (5.4)) or "rotary" (7.6)
    rope_base: float = 10000.0  # the 10000 of theta_i (7.6)

    def __post_init__(self):
        for name in ("vocab_size", "context", "d_model", "layers", "heads", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by the number of heads ({self.heads})")
        g = self.kv_heads
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1 or self.heads % g):
            divisors = [d for d in range(1, self.heads + 1) if self.heads % d == 0]
            raise ValueError(f"kv_heads must be None or a divisor of heads ({self.heads}): one of {divisors}, "
                             f"got {g!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be 'learned', 'sinusoidal' or 'rotary', got {self.position!r}")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions pair a sine with a cosine: d_model must be even, "
                             f"got {self.d_model}")
        if self.position == "rotary" and self.d_k % 2:
            raise ValueError(f"rotary positions (7.6) rotate pairs of dimensions: d_k = d_model / heads must be even, "
                             f"got {self.d_k}")
        if not (isinstance(self.rope_base, (int, float)) and math.isfinite(self.rope_base) and self.rope_base > 1):
            raise ValueError(f"rope_base must be a number > 1, got {self.rope_base!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def d_k(self) -> int:
        return self.d_model // self.heads

    @property
    def g(self) -> int:
        """Key/value heads of (7.8): ``kv_heads``, or ``heads`` when None."""
        return self.heads if self.kv_heads is None else self.kv_heads


# --------------------------------------------------------------------------- A. the cost of attention: (7.1)


def causal_mask(n_q: int, n_k: int, device=None) -> torch.Tensor:
    """(n_q, n_k) boolean, True where query i may see key j: j <= i + n_k - n_q (7.5).

    The queries are the last n_q of the n_k positions (a decoding step, or a chunk after a
    cache); with n_q = n_k it is the usual lower triangle. Note that
    ``F.scaled_dot_product_attention(..., is_causal=True)`` aligns the triangle top-left
    instead (j <= i), which is the same only when n_q = n_k.
    """
    for name, value in (("n_q", n_q), ("n_k", n_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_q > n_k:
        raise ValueError(f"a causal mask needs n_q <= n_k (the queries are the last n_q positions), got {n_q} > {n_k}")
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(n_k - n_q)


def _check_qkv(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, causal: bool) -> None:
    for name, x in (("Q", Q), ("K", K), ("V", V)):
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"expected {name} of shape (..., n, d), got {_shape(x)}")
    if not (Q.shape[:-2] == K.shape[:-2] == V.shape[:-2]):
        raise ValueError(f"Q, K and V need the same leading dims (..., n, d), got {_shape(Q)}, {_shape(K)}, "
                         f"{_shape(V)}")
    if Q.shape[-1] != K.shape[-1]:
        raise ValueError(f"queries and keys need the same d, got Q {_shape(Q)} and K {_shape(K)}")
    if K.shape[-2] != V.shape[-2]:
        raise ValueError(f"keys and values need the same length n_k, got K {_shape(K)} and V {_shape(V)}")
    if causal and Q.shape[-2] > K.shape[-2]:
        raise ValueError(f"causal attention needs n_q <= n_k (7.5), got Q {_shape(Q)} and K {_shape(K)}")


def attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, causal: bool = False,
              return_weights: bool = False):
    """O = softmax(Q K^T / sqrt(d)) V (7.1), written out: the n_q x n_k matrices S and P exist in memory.

    ``Q`` (..., n_q, d), ``K`` (..., n_k, d), ``V`` (..., n_k, d_v) -> O (..., n_q, d_v); with
    ``return_weights``, (O, P). ``causal``: the mask of :func:`causal_mask` (7.5).
    """
    _check_qkv(Q, K, V, causal)
    S = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
    if causal:
        S = S.masked_fill(~causal_mask(Q.shape[-2], K.shape[-2], Q.device), float("-inf"))
    P = S.softmax(-1)
    return (P @ V, P) if return_weights else P @ V


def fused_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """(7.1) in torch's fused ``F.scaled_dot_product_attention``, with the mask of (7.5) (bottom-right aligned)."""
    _check_qkv(Q, K, V, causal)
    n_q, n_k = Q.shape[-2], K.shape[-2]
    if not causal or n_q == 1:  # one query (a decoding step) sees every key
        return F.scaled_dot_product_attention(Q, K, V)
    if n_q == n_k:
        return F.scaled_dot_product_attention(Q, K, V, is_causal=True)
    return F.scaled_dot_product_attention(Q, K, V, attn_mask=causal_mask(n_q, n_k, Q.device))


def sdpa_backend(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, causal: bool = False) -> str:
    """The kernel ``F.scaled_dot_product_attention`` picks for these inputs ("FLASH_ATTENTION", "MATH", ...), as
    torch's dispatcher reports it (``torch._fused_sdp_choice``, a private function: "unknown" where it is missing)."""
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(int(torch._fused_sdp_choice(Q, K, V, is_causal=causal))).name
    except (AttributeError, ImportError, RuntimeError, TypeError, ValueError):
        return "unknown"


# --------------------------------------------------------------------------- B. the online softmax: (7.2), (7.3)


def online_normalizer(blocks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, l) of (7.2) over the last dim, from a stream of blocks (..., B_b) read once each, by (7.3)."""
    m = l = None
    for number, x in enumerate(blocks):
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] < 1:
            raise ValueError(f"expected blocks of shape (..., B) with B >= 1, block {number} is {_shape(x)}")
        if m is None:
            m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)
            l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        elif x.shape[:-1] != m.shape:
            raise ValueError(f"every block needs the leading shape {tuple(m.shape)}, block {number} is {_shape(x)}")
        m_new = torch.maximum(m, x.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(x - m_new[..., None]).sum(-1)
        m = m_new
    if m is None:
        raise ValueError("expected at least one block")
    return m, l


def online_softmax(x: torch.Tensor, block_size: int = 32) -> torch.Tensor:
    """softmax over the last dim (7.2), its normaliser (m, l) gathered over blocks of ``block_size`` (7.3)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"expected x of shape (..., n) with n >= 1, got {_shape(x)}")
    _check_block("block_size", block_size)
    m, l = online_normalizer(x.split(block_size, -1))
    return torch.exp(x - m[..., None]) / l[..., None]


def online_softmax_update(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, s: torch.Tensor,
                          v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of (7.4): the running max ``m`` (..., n_q), sum ``l`` (..., n_q) and unnormalised output ``acc``
    (..., n_q, d_v), updated with a new block of scores ``s`` (..., n_q, B_c) (already divided by sqrt(d); -inf where
    masked) and its values ``v`` (..., B_c, d_v). Start from m = -inf, l = 0, acc = 0; the output is acc / l.
    """
    m_new = torch.maximum(m, s.amax(-1))
    P = torch.exp(s - m_new[..., None])  # P~ of (7.4)
    rescale = torch.exp(m - m_new)  # e^{m - m_new}: 0 on the first block, where m = -inf
    return m_new, rescale * l + P.sum(-1), rescale[..., None] * acc + P @ v


# --------------------------------------------------------------------------- C. FlashAttention's tiling: (7.4), (7.5)


def blocked_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, block_size: int | tuple[int, int] = 64,
                      causal: bool = False, checkpoint: bool = False) -> torch.Tensor:
    """(7.1) by (7.4): query blocks of B_r rows against key/value blocks of B_c, never more than a B_r x B_c piece
    of S at a time. ``block_size``: B_r = B_c, or (B_r, B_c); neither needs to divide n.

    ``causal`` masks by (7.5) and skips the key blocks a query block cannot see. Written with
    torch operations, it is differentiable; autograd then keeps every block's P~ for the
    backward pass (n^2 numbers again). ``checkpoint=True`` recomputes them in the backward
    pass instead, from Q, K, V, as FlashAttention's backward does.
    """
    _check_qkv(Q, K, V, causal)
    B_r, B_c = (block_size, block_size) if not isinstance(block_size, (tuple, list)) else tuple(block_size)
    _check_block("block_size", B_r)
    _check_block("block_size", B_c)
    n_q, n_k = Q.shape[-2], K.shape[-2]
    out = []
    for start in range(0, n_q, B_r):
        Q_i = Q[..., start:start + B_r, :]
        diagonal = start + n_k - n_q  # (7.5): the last key the block's first query may see
        if checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint as recompute

            out.append(recompute(_query_block, Q_i, K, V, diagonal, B_c, causal, use_reentrant=False))
        else:
            out.append(_query_block(Q_i, K, V, diagonal, B_c, causal))
    return torch.cat(out, -2)


def _query_block(Q_i: torch.Tensor, K: torch.Tensor, V: torch.Tensor, diagonal: int, B_c: int,
                 causal: bool) -> torch.Tensor:
    """O_i (..., B_r, d_v) of (7.4); row r of the block may see keys j <= diagonal + r when ``causal``."""
    rows, n_k = Q_i.shape[-2], K.shape[-2]
    m = torch.full(Q_i.shape[:-1], float("-inf"), dtype=Q_i.dtype, device=Q_i.device)
    l = torch.zeros(Q_i.shape[:-1], dtype=Q_i.dtype, device=Q_i.device)
    acc = torch.zeros(*Q_i.shape[:-1], V.shape[-1], dtype=V.dtype, device=V.device)
    seen = min(n_k, diagonal + rows) if causal else n_k  # keys from here on are in every row's future: skipped
    scale = 1.0 / math.sqrt(Q_i.shape[-1])
    for j in range(0, seen, B_c):
        K_j, V_j = K[..., j:j + B_c, :], V[..., j:j + B_c, :]
        S_ij = Q_i @ K_j.transpose(-2, -1) * scale
        if causal and j + K_j.shape[-2] - 1 > diagonal:  # the block crosses the diagonal: mask its future part
            future = (torch.arange(j, j + K_j.shape[-2], device=Q_i.device)[None, :]
                      > diagonal + torch.arange(rows, device=Q_i.device)[:, None])
            S_ij = S_ij.masked_fill(future, float("-inf"))
        m, l, acc = online_softmax_update(m, l, acc, S_ij, V_j)
    return acc / l[..., None]


# --------------------------------------------------------------------------- D. rotary positions: (7.6), (7.7)


def rope_angles(positions: torch.Tensor, d: int, base: float = 10000.0) -> torch.Tensor:
    """m theta_i of (7.6), (..., T, d/2) in float64, for ``positions`` m (..., T) and theta_i = base^(-2i/d)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 2 or d % 2:
        raise ValueError(f"rotary positions rotate pairs of dimensions: d must be a positive even int, got {d!r}")
    positions = torch.as_tensor(positions)
    if positions.is_floating_point() or positions.is_complex() or positions.dim() < 1:
        raise ValueError(f"expected integer positions of shape (..., T), got {positions.dtype} {_shape(positions)}")
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=positions.device) / d)  # (d/2,)
    return positions.double()[..., None] * theta


def _check_rope_input(x: torch.Tensor, positions) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"expected floating-point x of shape (..., T, d), got {_shape(x)}")
    positions = torch.as_tensor(positions, device=x.device)
    if positions.dim() < 1 or positions.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected positions (..., T) with T = {x.shape[-2]} (one per row of x {_shape(x)}), "
                         f"got {_shape(positions)}")
    return positions


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """f(x, m) of (7.6): rotate each interleaved pair (x_2i, x_2i+1) of every row of ``x`` (..., T, d) by the angle
    m theta_i, m the row's entry of ``positions`` (..., T). Norms are kept; q . k after rotation depends on m - n."""
    positions = _check_rope_input(x, positions)
    angles = rope_angles(positions, x.shape[-1], base)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], -1).flatten(-2)


def rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """(7.7): the same rotation as :func:`rope`, as (x_2i + i x_2i+1) e^{i m theta_i} in complex numbers."""
    positions = _check_rope_input(x, positions)
    angles = rope_angles(positions, x.shape[-1], base)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2).to(x.dtype)


def sinusoidal_positions(positions: torch.Tensor, d: int, base: float = 10000.0) -> torch.Tensor:
    """Chapter 5's (5.4) at ``positions`` (T,) -> (T, d): columns 2i and 2i+1 are sin and cos of m theta_i, the
    angles RoPE (7.6) turns q and k by; here they are added to the embedding instead."""
    angles = rope_angles(positions, d, base)
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2).float()


# --------------------------------------------------------------------------- E. the KV cache: (7.8)-(7.10)


def expand_kv(K: torch.Tensor, heads: int) -> torch.Tensor:
    """(7.8): g key (or value) heads (B, g, t, d_k) -> (B, h, t, d_k), query head j reading head floor(j g / h):
    each of the g heads repeated h / g times in a row (``repeat_interleave``, not ``repeat``)."""
    if not isinstance(K, torch.Tensor) or K.dim() != 4:
        raise ValueError(f"expected keys or values of shape (B, g, t, d_k), got {_shape(K)}")
    g = K.shape[1]
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or heads % g:
        raise ValueError(f"the query heads ({heads!r}) must be a positive multiple of the key/value heads ({g})")
    return K if heads == g else K.repeat_interleave(heads // g, dim=1)


class KVCache:
    """One layer's cache of (7.9): the keys and values K, V (B, g, t, d_k) of the t tokens read so far
    (keys after their rotation, with rotary positions)."""

    def __init__(self):
        self.K: torch.Tensor | None = None
        self.V: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.K is None else self.K.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' ``k``, ``v`` (B, g, T_new, d_k) at the end; returns K, V (B, g, t + T_new, d_k)."""
        if not isinstance(k, torch.Tensor) or k.dim() != 4 or not isinstance(v, torch.Tensor) \
                or v.shape[:3] != k.shape[:3]:
            raise ValueError(f"expected k and v of shape (B, g, T_new, d_k), got {_shape(k)} and {_shape(v)}")
        if self.K is not None and (k.shape[:2] != self.K.shape[:2] or k.shape[3] != self.K.shape[3]
                                   or v.shape[3] != self.V.shape[3]):
            raise ValueError(f"the cache holds K {_shape(self.K)} and V {_shape(self.V)}: new keys and values need "
                             f"the same batch, heads and width, got {_shape(k)} and {_shape(v)}")
        self.K = k if self.K is None else torch.cat([self.K, k], 2)
        self.V = v if self.V is None else torch.cat([self.V, v], 2)
        return self.K, self.V

    def nbytes(self) -> int:
        """Bytes the cache's tensors take now (compare :func:`kv_cache_bytes`)."""
        return sum(x.numel() * x.element_size() for x in (self.K, self.V) if x is not None)


def kv_cache_step(K_cache: torch.Tensor, V_cache: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                  v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(7.9) written out: append ``k``, ``v`` (B, g, T_new, d_k) to the cache ``K_cache``, ``V_cache`` (B, g, t, d_k)
    and attend the new queries ``q`` (B, h, T_new, d_k) to all t + T_new keys (query head j on key/value head
    floor(j g / h) (7.8)), new token i seeing the cache and new tokens 1..i (7.5). Returns (o, K, V), o
    (B, h, T_new, d_k), K and V (B, g, t + T_new, d_k)."""
    for name, x in (("K_cache", K_cache), ("V_cache", V_cache), ("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"expected {name} of shape (B, heads, time, d_k), got {_shape(x)}")
    K, V = torch.cat([K_cache, k], 2), torch.cat([V_cache, v], 2)
    return attention(q, expand_kv(K, q.shape[1]), expand_kv(V, q.shape[1]), causal=True), K, V


def kv_cache_bytes(config: GPTConfig, length: int, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """(7.10): bytes of the keys and values of ``length`` tokens for ``batch`` sequences, over all layers."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    for name, value in (("length", length), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.layers * batch * length * config.g * config.d_k * element


# --------------------------------------------------------------------------- F. the decoder: (7.11), (7.12)


class CausalSelfAttention(nn.Module):
    """Attn of (7.11): h query heads and g key/value heads (7.8), rotary or no positions, the causal mask (7.5).

    The attention itself runs in :func:`fused_attention`; with a :class:`KVCache` the new
    tokens' keys and values are appended to it first and the queries attend to all of them.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config, self.heads, self.g, self.d_k = config, config.heads, config.g, config.d_k
        self.W_Q = nn.Linear(config.d_model, config.heads * config.d_k)
        self.W_K = nn.Linear(config.d_model, config.g * config.d_k)
        self.W_V = nn.Linear(config.d_model, config.g * config.d_k)
        self.W_O = nn.Linear(config.heads * config.d_k, config.d_model)

    def _split(self, y: torch.Tensor, heads: int) -> torch.Tensor:  # (B, T, heads d_k) -> (B, heads, T, d_k)
        return y.view(y.shape[0], y.shape[1], heads, self.d_k).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x`` (B, T, D), the tokens at positions t .. t + T - 1, t = len(cache) (0 without one) -> (B, T, D)."""
        B, T, _ = x.shape
        q = self._split(self.W_Q(x), self.heads)
        k, v = self._split(self.W_K(x), self.g), self._split(self.W_V(x), self.g)
        if self.config.position == "rotary":
            t = 0 if cache is None else len(cache)
            positions = torch.arange(t, t + T, device=x.device)
            q, k = rope(q, positions, self.config.rope_base), rope(k, positions, self.config.rope_base)
        K, V = (k, v) if cache is None else cache.append(k, v)
        o = fused_attention(q, expand_kv(K, self.heads), expand_kv(V, self.heads), causal=True)
        return self.W_O(o.transpose(1, 2).reshape(B, T, self.heads * self.d_k))


class Block(nn.Module):
    """One pre-norm decoder block of (7.11): h' = h + Attn(LN(h)), then h' + MLP(LN(h')),
    MLP(x) = GELU(x W_1 + b_1) W_2 + b_2."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        D = config.d_model
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attention = CausalSelfAttention(config)
        self.mlp = nn.Sequential(nn.Linear(D, config.mlp_ratio * D), nn.GELU(), nn.Linear(config.mlp_ratio * D, D))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = h + self.dropout(self.attention(self.norm1(h), cache))
        return h + self.dropout(self.mlp(self.norm2(h)))


class GPT(nn.Module):
    """The decoder of (7.11): token embedding E (tied with the output layer), positions P (learned or sinusoidal)
    or rotary ones, L pre-norm blocks, a final LayerNorm and logits LN(h_L) E^T."""

    def __init__(self, config: GPTConfig = GPTConfig()):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.E = nn.Embedding(config.vocab_size, config.d_model)
        if config.position == "learned":
            self.P = nn.Parameter(torch.randn(config.context, config.d_model) * 0.02)
        elif config.position == "sinusoidal":
            table = sinusoidal_positions(torch.arange(config.context), config.d_model, config.rope_base)
            self.register_buffer("P", table, persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.d_model)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        """GPT-2's: N(0, 0.02) for every matrix and embedding, zero biases, and the two projections that end a
        residual branch (W_O, the MLP's second layer) scaled down by sqrt(2 L)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear):
                module.bias.zero_()
        for block in self.blocks:
            block.attention.W_O.weight.mul_(1 / math.sqrt(2 * self.config.layers))
            block.mlp[2].weight.mul_(1 / math.sqrt(2 * self.config.layers))

    def empty_cache(self) -> list[KVCache]:
        """One empty :class:`KVCache` per layer, for :meth:`forward`."""
        return [KVCache() for _ in self.blocks]

    def forward(self, ids: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """``ids`` (B, T) -> logits (B, T, vocab_size), position t predicting token t + 1.

        With ``caches`` (one :class:`KVCache` per layer, from :meth:`empty_cache`), ``ids`` are the
        tokens after the t already cached, at positions t .. t + T - 1, and the caches grow by T (7.9).
        """
        c = self.config
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"expected integer token ids of shape (B, T), got {_shape(ids)}"
                             + (f" of {ids.dtype}" if isinstance(ids, torch.Tensor) else ""))
        if caches is not None and (len(caches) != c.layers or not all(isinstance(x, KVCache) for x in caches)):
            raise ValueError(f"expected one KVCache per layer ({c.layers}), from model.empty_cache()")
        t = 0 if caches is None else len(caches[0])
        if t + ids.shape[1] > c.context:
            raise ValueError(f"the model reads at most config.context = {c.context} tokens, got {t} cached and "
                             f"{ids.shape[1]} new")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, {c.vocab_size}), got {int(ids.min())} .. {int(ids.max())}")
        h = self.E(ids)
        if c.position == "sinusoidal":  # chapter 5's form (its section 3.4): E[x] sqrt(d_model) + PE
            h = h * math.sqrt(c.d_model) + self.P[t:t + ids.shape[1]]
        elif c.position == "learned":
            h = h + self.P[t:t + ids.shape[1]]
        h = self.dropout(h)
        for l, block in enumerate(self.blocks):
            h = block(h, None if caches is None else caches[l])
        return self.norm(h) @ self.E.weight.T


def parameter_count(config: GPTConfig) -> dict[str, int]:
    """Parameters, counted from the shapes (P only with learned positions; E counted once, tied)."""
    D, L, r, h, g, d_k = config.d_model, config.layers, config.mlp_ratio, config.heads, config.g, config.d_k
    attention = (D * h * d_k + h * d_k) + 2 * (D * g * d_k + g * d_k) + (h * d_k * D + D)
    counts = {
        "embedding": config.vocab_size * D,
        "position": config.context * D if config.position == "learned" else 0,
        "blocks": L * (attention + (D * r * D + r * D) + (r * D * D + D) + 2 * 2 * D),
        "final_norm": 2 * D,
    }
    return {**counts, "total": sum(counts.values())}


def next_token_loss(model: GPT, batch: Mapping[str, torch.Tensor]):
    """(7.12): the mean cross-entropy of the next token over ``batch["inputs"]`` (B, T), targets
    ``batch["targets"]`` (B, T) (the inputs shifted by one); the bits per character as a metric."""
    logits = model(batch["inputs"])
    targets = batch["targets"]
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"expected targets of shape {tuple(logits.shape[:2])} like the inputs, got "
                         f"{_shape(targets)}")
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, {"bits_per_char": loss.detach() / math.log(2)}


# --------------------------------------------------------------------------- G. generation: (7.9), (7.13)


@torch.no_grad()
def generate(model: GPT, prompt_ids, n: int, use_cache: bool = True, temperature: float = 0.0,
             generator: torch.Generator | None = None, return_logits: bool = False):
    """Continue ``prompt_ids`` ((T_0,) or (B, T_0)) by ``n`` tokens by (7.13); returns the ids with the prompt, of
    the prompt's rank, and with ``return_logits`` also the logits (B, n, vocab_size) each token was picked from.

    ``use_cache``: read the prompt once into a :class:`KVCache` per layer, then feed one token
    a step (7.9); else re-run the whole sequence every step. Both give the same tokens.
    ``temperature`` 0 is greedy; above 0, draws use ``generator``.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=model.E.weight.device)
    single = ids.dim() == 1
    ids = ids[None] if single else ids
    if ids.dim() != 2 or ids.shape[1] < 1:
        raise ValueError(f"expected a non-empty prompt of shape (T_0,) or (B, T_0), got {_shape(ids)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if ids.shape[1] + n > model.config.context:
        raise ValueError(f"the prompt ({ids.shape[1]} tokens) and n = {n} new ones exceed the model's context of "
                         f"{model.config.context}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    was_training = model.training
    model.eval()
    try:
        caches = model.empty_cache() if use_cache else None
        chosen = []
        new = ids
        for _ in range(n):
            logits = model(new, caches)[:, -1] if use_cache else model(ids)[:, -1]
            chosen.append(logits)
            if temperature == 0:
                token = logits.argmax(-1, keepdim=True)
            else:
                token = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)
            ids = torch.cat([ids, token], 1)
            new = token
    finally:
        model.train(was_training)
    logits = torch.stack(chosen, 1) if chosen else torch.zeros(len(ids), 0, model.config.vocab_size)
    ids = ids[0] if single else ids
    return (ids, logits.to(ids.device)) if return_logits else ids


# --------------------------------------------------------------------------- H. the text


@dataclass(frozen=True)
class Corpus:
    """A text with its SHA-256 (of the UTF-8 bytes), where it came from, and the files it was read from."""

    text: str
    sha256: str
    source: str
    files: tuple[str, ...] = ()

    def split(self, validation: float = 0.1) -> tuple[str, str]:
        """(train, validation) by position: the last ``validation`` fraction of the text is held out."""
        return split_by_position(self.text, validation)


SKIPPED_DIRECTORIES = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The .py files under the standard library (``sysconfig.get_paths()["stdlib"]``), in a sorted walk that skips
    the test suites and installed packages (:data:`SKIPPED_DIRECTORIES`) and ``_sysconfigdata*.py`` (the settings
    of the machine's own build, which differ between machines)."""
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not root.is_dir():
        raise FileNotFoundError(f"no standard library directory at {root}")
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in SKIPPED_DIRECTORIES)
        files += [Path(directory) / name for name in sorted(names)
                  if name.endswith(".py") and not name.startswith("_sysconfigdata")]
    return files


def stdlib_corpus(max_chars: int | None = 2_000_000, seed: int = 0) -> Corpus:
    """The Python standard library's own source as a character corpus, the same on every machine with the same
    Python: the files of :func:`stdlib_files` that are pure ASCII and not a generated codec table (the
    ``encodings/`` files that say "Character Mapping Codec" at the top), in an order shuffled by ``seed`` (so that
    a prefix mixes many modules), each after a line ``# file: <path>``, cut at ``max_chars`` (None: all).

    The text is distributed with Python under the PSF License Agreement. Python versions (and
    some distributions' builds) differ in their library, so ``source`` records the version
    next to the checksum.
    """
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    random.Random(seed).shuffle(files)
    pieces, used, size = [], [], 0
    for path in files:
        try:
            text = path.read_text(encoding="ascii")
        except (UnicodeDecodeError, OSError):
            continue
        if "character mapping codec" in text[:200].lower():
            continue
        name = path.relative_to(root).as_posix()
        piece = f"# file: {name}\n{text}" + ("" if text.endswith("\n") else "\n")
        pieces.append(piece)
        used.append(name)
        size += len(piece)
        if max_chars is not None and size >= max_chars:
            break
    text = "".join(pieces)[:max_chars]
    source = f"the standard library of Python {platform.python_version()} ({platform.python_implementation()}), " \
             f"seed {seed}"
    return Corpus(text, hashlib.sha256(text.encode()).hexdigest(), source, tuple(used))


def text_corpus(path: str | os.PathLike, max_chars: int | None = None) -> Corpus:
    """A corpus from a UTF-8 text file of the reader's own, cut at ``max_chars`` (None: all of it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {path}")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")
    text = path.read_text(encoding="utf-8")[:max_chars]
    if not text:
        raise ValueError(f"{path} holds no text")
    return Corpus(text, hashlib.sha256(text.encode()).hexdigest(), str(path), (path.name,))


def split_by_position(sequence, validation: float = 0.1):
    """(train, validation): the first and the last ``validation`` fraction of a text, list or tensor, by position."""
    if not 0.0 < validation < 1.0:
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation}")
    cut = len(sequence) - int(round(len(sequence) * validation))
    if cut < 1 or cut >= len(sequence):
        raise ValueError(f"a sequence of {len(sequence)} items is too short to hold out {validation:.0%} of it")
    return sequence[:cut], sequence[cut:]


@dataclass(frozen=True)
class CharTokenizer:
    """Characters to ids and back: id i is ``chars[i]``, the corpus's distinct characters in sorted order."""

    chars: str

    def __post_init__(self):
        if not isinstance(self.chars, str) or not self.chars or len(set(self.chars)) != len(self.chars):
            raise ValueError("chars must be a non-empty string of distinct characters")

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not isinstance(text, str) or not text:
            raise ValueError(f"expected a non-empty text, got {type(text).__name__}")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """(len(text),) int64 ids."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(f"characters outside the vocabulary of {self.vocab_size}: {unknown[:10]!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids outside [0, {self.vocab_size}): {bad[:10]}")
        return "".join(self.chars[i] for i in ids)


def sample_windows(ids: torch.Tensor, context: int, batch_size: int, generator: torch.Generator | None = None,
                   device=None) -> dict[str, torch.Tensor]:
    """A batch for (7.12): ``batch_size`` windows of ``context`` tokens at random offsets of ``ids`` (N,),
    ``{"inputs": (B, T), "targets": (B, T)}``, the targets the inputs shifted by one."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError(f"expected token ids of shape (N,), got {_shape(ids)}")
    for name, value in (("context", context), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if len(ids) < context + 1:
        raise ValueError(f"windows of {context} + 1 tokens need at least {context + 1} ids, got {len(ids)}")
    starts = torch.randint(0, len(ids) - context, (batch_size,), generator=generator, device=ids.device)
    windows = ids[starts[:, None] + torch.arange(context + 1, device=ids.device)]
    return {"inputs": windows[:, :-1].to(device), "targets": windows[:, 1:].to(device)}


def _check_block(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (or a pair (B_r, B_c) of them), got {value!r}")


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
