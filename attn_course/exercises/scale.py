"""Chapter 7's implement-it exercises (attention at scale): checkers for the student's online-softmax update (7.4),
KV-cache step (7.9) and rotary positions (7.6).

* :func:`check_online_softmax_update`: one block's update of the running max m, the rescaled sum l and the
  unnormalised output acc, against :func:`attn_course.scale.online_softmax_update` (Milakov & Gimelshein 2018,
  FlashAttention's tiling, Dao et al. 2022);
* :func:`check_kv_cache_step`: append the new keys and values to the cache and attend the new queries, against
  :func:`attn_course.scale.kv_cache_step` (with grouped-query heads (7.8) and the causal mask (7.5));
* :func:`check_rope`: rotate interleaved pairs (x_2i, x_2i+1) by m theta_i, against
  :func:`attn_course.scale.rope` (Su et al. 2021).
"""

from __future__ import annotations

import math

import torch

from ..scale import kv_cache_step, online_softmax_update, rope
from . import Case, named, report, run_cases

# --------------------------------------------------------------------------- (7.4) the online-softmax update


def _state(g: torch.Generator, lead: tuple[int, ...], n_q: int, B_c: int, d_v: int, scores: float = 2.0):
    """(m, l, acc) after one earlier block of scores, as the loop of (7.4) leaves them."""
    m = torch.full((*lead, n_q), -math.inf, dtype=torch.float64)
    l, acc = torch.zeros_like(m), torch.zeros(*lead, n_q, d_v, dtype=torch.float64)
    s = torch.randn(*lead, n_q, B_c, generator=g, dtype=torch.float64) * scores
    return online_softmax_update(m, l, acc, s, torch.randn(*lead, B_c, d_v, generator=g, dtype=torch.float64))


def _update_mistakes(m, l, acc, s, v) -> dict[str, torch.Tensor]:
    m_new, l_new, acc_new = online_softmax_update(m, l, acc, s, v)
    P = torch.exp(s - m_new[..., None])
    up = torch.exp(m_new - m)
    block_max = s.amax(-1)
    P_block = torch.exp(s - block_max[..., None])
    return {
        "the values come back in the wrong order (this is the sum l where the maximum m belongs): return "
        "(m, l, acc)": l_new,
        "the values come back in the wrong order (this is the maximum m where the sum l belongs): return "
        "(m, l, acc)": m_new,
        "the old sum l is not rescaled by e^{m_old - m_new}: its terms were taken relative to the old maximum":
            l + P.sum(-1),
        "the old accumulator acc is not rescaled by e^{m_old - m_new}: its terms were taken relative to the old "
        "maximum": acc + P @ v,
        "the old terms are multiplied by e^{m_new - m_old}, upside down: the factor e^{m_old - m_new} <= 1 shrinks "
        "them": up * l + P.sum(-1),
        "the accumulator's old terms are multiplied by e^{m_new - m_old}, upside down: the factor is "
        "e^{m_old - m_new}": up[..., None] * acc + P @ v,
        "the new maximum is the block's own row maximum: it must be the running one, max(m_old, rowmax s)":
            block_max,
        "the sum uses the block's own row maximum instead of the running one max(m_old, rowmax s)":
            torch.exp(m - block_max) * l + P_block.sum(-1),
        "the scores are exponentiated as they are, e^s: subtract the running maximum, e^{s - m_new}, or e^s "
        "overflows": torch.exp(m - m_new) * l + torch.exp(s).sum(-1),
        "the block's scores are shifted by the old maximum m_old instead of the new one m_new":
            torch.exp(m - m_new) * l + torch.exp(s - m[..., None]).sum(-1),
        "m is returned unchanged: the running maximum is max(m_old, rowmax s)": m,
        "acc is divided by l: keep it unnormalised; the division by l comes once, after the last block":
            acc_new / l_new[..., None],
    }


def _update_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for name, lead, n_q, B_c, d_v, shift in (
            ("a block with larger scores: the maximum moves up in every row", (), 4, 5, 3, 4.0),
            ("a block with smaller scores: the maximum stays in every row", (), 4, 3, 2, -4.0),
            ("batch and heads (2, 3): the maximum moves in some rows only", (2, 3), 5, 4, 3, 0.0),
            ("a block of one key", (2,), 3, 1, 4, 1.0)):
        state = _state(g, lead, n_q, 6, d_v)
        s = torch.randn(*lead, n_q, B_c, generator=g, dtype=torch.float64) * 2 + shift
        v = torch.randn(*lead, B_c, d_v, generator=g, dtype=torch.float64)
        cases.append(Case(name, (*state, s, v), mistakes=_update_mistakes(*state, s, v)))
    first = (torch.full((3,), -math.inf, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
             torch.zeros(3, 2, dtype=torch.float64))
    s, v = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    cases.append(Case("the first block: m = -inf, l = 0, acc = 0 (e^{m - m_new} = e^{-inf} = 0)",
                      (*first, s, v)))
    state = _state(g, (), 4, 5, 2)
    s = torch.randn(4, 3, generator=g, dtype=torch.float64) + 1.0
    s[1] = -math.inf  # a causal block wholly in the future of query 1
    v = torch.randn(3, 2, generator=g, dtype=torch.float64)
    cases.append(Case("row 1's block is all masked (-inf), as above the diagonal of causal attention",
                      (*state, s, v), mistakes=_update_mistakes(*state, s, v)))
    state = _state(g, (), 3, 4, 2, scores=1.0)
    state = (state[0] + 1000.0, *state[1:])  # scores near 1000: e^1000 overflows
    s = torch.randn(3, 4, generator=g, dtype=torch.float64) + 1001.0
    v = torch.randn(4, 2, generator=g, dtype=torch.float64)
    cases.append(Case("scores near 1000, where e^s overflows", (*state, s, v), mistakes=_update_mistakes(*state, s, v)))
    return cases


def check_online_softmax_update(student) -> None:
    """Grade ``student(m, l, acc, s, v) -> (m_new, l_new, acc_new)``, one step of (7.4).

    ``m``, ``l`` (..., n_q): the running row maximum and the sum of e^{score - m} so far (m = -inf and l = 0
    before the first block); ``acc`` (..., n_q, d_v): the sum of e^{score - m} v so far, not divided by l;
    ``s`` (..., n_q, B_c): the new block's scores (already divided by sqrt(d), -inf where masked); ``v``
    (..., B_c, d_v): its values. m_new = max(m, rowmax s); the old l and acc are rescaled by e^{m - m_new}.
    """
    what = "online-softmax update (7.4)"
    with named(values=("m", "l", "acc"), arguments=("m", "l", "acc", "s", "v")):
        count = run_cases(student, online_softmax_update, _update_cases(), what, atol=1e-9, rtol=1e-9)
    report(what, count, ", from the first block on, with masked rows and scores near 1000")


# --------------------------------------------------------------------------- (7.9) a step with the KV cache


def _attend(q, K, V, heads: str = "interleave", mask: str = "bottom_right", scale: bool = True,
            softmax_dim: int = -1) -> torch.Tensor:
    """Attention of the new queries over K, V with one thing done wrong (the typical mistakes)."""
    h, g = q.shape[1], K.shape[1]
    if heads == "interleave":
        K, V = K.repeat_interleave(h // g, 1), V.repeat_interleave(h // g, 1)
    else:
        K, V = K.repeat(1, h // g, 1, 1), V.repeat(1, h // g, 1, 1)
    S = q @ K.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    n_q, n_k = S.shape[-2:]
    if mask == "bottom_right":
        S = S.masked_fill(~torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q), -math.inf)
    elif mask == "top_left":
        S = S.masked_fill(~torch.ones(n_q, n_k, dtype=torch.bool).tril(), -math.inf)
    return S.softmax(softmax_dim).nan_to_num() @ V


def _cache_mistakes(K_cache, V_cache, q, k, v) -> dict[str, torch.Tensor]:
    K, V = torch.cat([K_cache, k], 2), torch.cat([V_cache, v], 2)
    t, T_new = K_cache.shape[2], q.shape[2]
    wrong = {
        "the new queries attend only to the new token(s): the keys and values of the cache are left out":
            _attend(q, k, v),
        "the causal mask is missing: new token i may not see the new tokens after it": _attend(q, K, V, mask="none"),
        f"the causal mask is aligned top-left (j <= i, what F.scaled_dot_product_attention's is_causal=True does "
        f"when there are fewer queries than keys): new token i sits at position t + i, so it sees keys "
        f"j <= i + t, here t = {t}": _attend(q, K, V, mask="top_left"),
        "the scores are not divided by sqrt(d_k)": _attend(q, K, V, scale=False),
        "the softmax is taken over the queries instead of over the keys": _attend(q, K, V, softmax_dim=-2),
    }
    if K.shape[1] not in (1, q.shape[1]):
        wrong["the key/value heads are tiled (repeat: query head j reads head j mod g); (7.8) repeats each of them "
              "h / g times in a row (repeat_interleave: head floor(j g / h))"] = _attend(q, K, V, heads="tile")
    if t:
        wrong["the new keys and values are not appended before attending: the new queries see only the cache"] = \
            _attend(q, K_cache, V_cache, mask="none")
        wrong["the new keys are put in front of the cache: append them at the end of the time axis (dim 2)"] = \
            torch.cat([k, K_cache], 2)
        wrong["the new values are put in front of the cache: append them at the end of the time axis (dim 2)"] = \
            torch.cat([v, V_cache], 2)
    wrong["K and V come back swapped (these are the values where the keys belong): return (o, K, V)"] = V
    wrong["K and V come back swapped (these are the keys where the values belong): return (o, K, V)"] = K
    return wrong


def _cache_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    cases = []
    for name, (B, h, g_kv, t, T_new, d) in (
            ("one new token after 4 cached, 2 heads", (2, 2, 2, 4, 1, 4)),
            ("the prompt: 3 tokens into an empty cache (the causal mask matters)", (1, 2, 2, 0, 3, 4)),
            ("a chunk of 3 new tokens after 5 cached", (2, 2, 2, 5, 3, 6)),
            ("grouped-query: 4 query heads on 2 key/value heads, one new token", (2, 4, 2, 4, 1, 4)),
            ("grouped-query: 6 query heads on 3 key/value heads, a chunk of 2 after 3", (1, 6, 3, 3, 2, 4)),
            ("multi-query: 4 query heads on 1 key/value head, 2 new tokens after 6", (2, 4, 1, 6, 2, 4))):
        K_cache, V_cache = (torch.randn(B, g_kv, t, d, generator=g, dtype=torch.float64) for _ in range(2))
        q = torch.randn(B, h, T_new, d, generator=g, dtype=torch.float64) * 1.5
        k, v = (torch.randn(B, g_kv, T_new, d, generator=g, dtype=torch.float64) for _ in range(2))
        args = (K_cache, V_cache, q, k, v)
        cases.append(Case(name, args, mistakes=_cache_mistakes(*args)))
    return cases


def check_kv_cache_step(student) -> None:
    """Grade ``student(K_cache, V_cache, q, k, v) -> (o, K, V)``, one decoding step with the KV cache (7.9).

    ``K_cache``, ``V_cache`` (B, g, t, d_k): the t tokens read so far (t may be 0); ``k``, ``v`` (B, g, T_new, d_k)
    and ``q`` (B, h, T_new, d_k): the T_new new tokens'. Append k, v at the end of the time axis (dim 2), then
    attend: o = softmax(q K^T / sqrt(d_k)) V over all t + T_new keys, query head j reading key/value head
    floor(j g / h) (7.8), new token i (at position t + i) seeing keys j <= t + i (7.5). Returns o
    (B, h, T_new, d_k) and the grown K, V (B, g, t + T_new, d_k). Gradients with respect to q, k, v are
    compared too.
    """
    what = "KV-cache step (7.9)"
    hints = {"must match the size of tensor": "q has h heads, K and V have g: repeat each key/value head h / g "
                                              "times in a row, K.repeat_interleave(h // g, dim=1) (7.8)",
             "Sizes of tensors must match": "append along the time axis: torch.cat([K_cache, k], dim=2)"}
    with named(values=("o", "K", "V"), arguments=("K_cache", "V_cache", "q", "k", "v")):
        count = run_cases(student, kv_cache_step, _cache_cases(), what, atol=1e-9, rtol=1e-9, gradient_of=(2, 3, 4),
                          hints=hints)
    report(what, count, ", empty and filled caches, chunks, multi-head, grouped-query and multi-query, gradients "
                        "included")


# --------------------------------------------------------------------------- (7.6) rotary positions


def _rotate(x, positions, pairs: str = "interleaved", sign: float = 1.0, exponent: float = 2.0, first: int = 0,
            swap: bool = False) -> torch.Tensor:
    """(7.6) with one thing done wrong (the typical mistakes)."""
    d = x.shape[-1]
    i = torch.arange(first, first + d // 2, dtype=torch.float64)
    angles = torch.as_tensor(positions).double()[..., None] * 10000.0 ** (-exponent * i / d) * sign
    cos, sin = angles.cos(), angles.sin()
    if swap:
        cos, sin = sin, cos
    if pairs == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    a, b = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


def _rope_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    cases = []
    for name, shape, positions in (
            ("(B, h, T, d) = (2, 3, 5, 8) at positions 10..14, after 10 cached tokens", (2, 3, 5, 8),
             torch.arange(10, 15)),
            ("d = 16, positions out of order", (4, 16), torch.tensor([7, 0, 19, 2])),
            ("one vector, d = 8, at position 3", (1, 8), torch.tensor([3])),
            ("6 rows at positions 0..5, d = 4", (6, 4), torch.arange(6))):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        mistakes = {
            "the halves are paired, (x_i, x_{i + d/2}) (the rotate_half convention of GPT-NeoX and Hugging Face's "
            "LLaMA): this course's (7.6) rotates interleaved pairs (x_2i, x_2i+1), as Su et al. write it":
                _rotate(x, positions, pairs="halves"),
            "each pair is rotated the wrong way (by -m theta_i): the pair's first entry is x_2i cos - x_2i+1 sin, "
            "the second x_2i sin + x_2i+1 cos": _rotate(x, positions, sign=-1.0),
            "theta_i = 10000^(-i/d): the exponent is -2i/d, i = 0 .. d/2 - 1": _rotate(x, positions, exponent=1.0),
            "i is counted from 1 in theta_i = 10000^(-2i/d): it runs over 0 .. d/2 - 1, so theta_0 = 1":
                _rotate(x, positions, first=1),
            "cos and sin are swapped": _rotate(x, positions, swap=True),
            "the positions are ignored (x comes back unrotated)": x,
        }
        if not torch.equal(positions, torch.arange(len(positions))):
            mistakes["each row is rotated by its row number: rotate it by its entry of positions"] = \
                _rotate(x, torch.arange(len(positions)))
        cases.append(Case(name, (x, positions), mistakes=mistakes))
    return cases


def check_rope(student) -> None:
    """Grade ``student(x, positions) -> f(x, m)``, the rotary position embedding (7.6).

    ``x`` (..., T, d), d even; ``positions`` (T,): the position m of each row. The convention is the paper's:
    interleaved pairs, (x_2i, x_2i+1) -> (x_2i cos m theta_i - x_2i+1 sin m theta_i,
    x_2i sin m theta_i + x_2i+1 cos m theta_i), theta_i = 10000^(-2i/d), i = 0 .. d/2 - 1 (not the halves
    (x_i, x_{i + d/2}) that some libraries rotate). Gradients with respect to x are compared too.
    """
    what = "rotary positions (7.6)"
    with named(arguments=("x", "positions")):
        count = run_cases(student, rope, _rope_cases(), what, gradient_of=(0,))
    report(what, count, ", one vector to (B, h, T, d), positions in and out of order, gradients included")

