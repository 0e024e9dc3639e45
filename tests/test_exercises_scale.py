"""Chapter 7's checkers: the reference passes, each typical mistake fails naming it, a stub says "not implemented"."""

import math

import pytest
import torch
import torch.nn.functional as F

from attn_course.exercises import ExerciseFailed
from attn_course.exercises.scale import (_cache_cases, _update_cases, check_kv_cache_step, check_online_softmax_update,
                                         check_rope)


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- (7.4) the online-softmax update


def update(m, l, acc, s, v, rescale_l=True, rescale_acc=True, upside_down=False, running=True, shift="new",
           normalise=False, order="mla"):
    """One step of (7.4), with the typical mistakes as switches."""
    m_new = torch.maximum(m, s.amax(-1)) if running else s.amax(-1)
    P = torch.exp(s - (m_new if shift == "new" else m)[..., None]) if shift != "none" else torch.exp(s)
    factor = torch.exp(m_new - m) if upside_down else torch.exp(m - m_new)
    l_new = (factor * l if rescale_l else l) + P.sum(-1)
    acc_new = (factor[..., None] * acc if rescale_acc else acc) + P @ v
    if normalise:
        acc_new = acc_new / l_new[..., None]
    values = {"m": m_new, "l": l_new, "a": acc_new}
    return tuple(values[c] for c in order)


def with_keepdim(m, l, acc, s, v):
    """Another right answer: the statistics kept as columns (..., n_q, 1) inside, the first block handled apart."""
    m_col, l_col = m[..., None], l[..., None]
    m_new = torch.maximum(m_col, s.max(-1, keepdim=True).values)
    P = (s - m_new).exp()
    alpha = torch.where(torch.isinf(m_col), torch.zeros_like(m_col), (m_col - m_new).exp())
    return m_new[..., 0], (alpha * l_col + P.sum(-1, keepdim=True))[..., 0], alpha * acc + torch.einsum(
        "...qk,...kd->...qd", P, v)


def test_the_cases_do_what_their_names_say():
    moved = {c.name: float((c.args[3].amax(-1) > c.args[0]).double().mean()) for c in _update_cases()}
    assert moved["a block with larger scores: the maximum moves up in every row"] == 1.0
    assert moved["a block with smaller scores: the maximum stays in every row"] == 0.0
    assert 0.0 < moved["batch and heads (2, 3): the maximum moves in some rows only"] < 1.0
    for case in _cache_cases():
        K_cache, _, q, k, _ = case.args
        assert f"{q.shape[1]} query heads on {k.shape[1]}" in case.name or q.shape[1] == k.shape[1]


@pytest.mark.parametrize("right", [update, with_keepdim], ids=["written_out", "keepdim"])
def test_online_softmax_update_passes(right, capsys):
    check_online_softmax_update(right)
    assert "\N{CHECK MARK} online-softmax update (7.4)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: update(*a, rescale_l=False), r"the returned l .*old sum l is not rescaled by e\^\{m_old - m_new\}"),
    (lambda *a: update(*a, rescale_acc=False), "the returned acc .*old accumulator acc is not rescaled"),
    (lambda *a: update(*a, upside_down=True), "upside down"),
    (lambda *a: update(*a, running=False), "the returned m .*the block's own row maximum"),
    (lambda *a: update(*a, shift="old"), "shifted by the old maximum m_old"),
    (lambda m, l, acc, s, v: (m, *update(m, l, acc, s, v)[1:]), "m is returned unchanged"),
    (lambda *a: update(*a, normalise=True), "acc is divided by l"),
    (lambda *a: update(*a, order="lma"), "wrong order"),
    (lambda *a: update(*a, shift="none"), r"exponentiated as they are, e\^s"),
    (stub, "not implemented yet"),
], ids=["l_not_rescaled", "acc_not_rescaled", "upside_down", "block_max", "old_shift", "m_unchanged", "normalised",
        "order", "no_shift", "stub"])
def test_online_softmax_update_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_online_softmax_update(wrong)


# --------------------------------------------------------------------------- (7.9) a step with the KV cache


def cache_step(K_cache, V_cache, q, k, v, keep="all", mask="bottom_right", scale=True, heads="interleave",
               put="end", swap=False, softmax_dim=-1):
    """(7.9) written out, with the typical mistakes as switches."""
    K = torch.cat([K_cache, k], 2) if put == "end" else torch.cat([k, K_cache], 2)
    V = torch.cat([V_cache, v], 2) if put == "end" else torch.cat([v, V_cache], 2)
    K_seen, V_seen = {"all": (K, V), "new": (k, v), "cache": (K_cache, V_cache)}[keep]
    h, g = q.shape[1], K.shape[1]
    if heads == "interleave":
        K_seen, V_seen = K_seen.repeat_interleave(h // g, 1), V_seen.repeat_interleave(h // g, 1)
    elif heads == "tile":
        K_seen, V_seen = K_seen.repeat(1, h // g, 1, 1), V_seen.repeat(1, h // g, 1, 1)
    S = q @ K_seen.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1)
    n_q, n_k = S.shape[-2:]
    if mask == "bottom_right":
        S = S.masked_fill(~torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q), -math.inf)
    o = S.softmax(softmax_dim) @ V_seen
    return (o, V, K) if swap else (o, K, V)


def with_sdpa(K_cache, V_cache, q, k, v):
    """Another right answer: torch's kernel with an explicit bottom-right mask."""
    K, V = torch.cat([K_cache, k], 2), torch.cat([V_cache, v], 2)
    h, g, n_q, n_k = q.shape[1], K.shape[1], q.shape[2], K.shape[2]
    mask = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
    o = F.scaled_dot_product_attention(q, K.repeat_interleave(h // g, 1), V.repeat_interleave(h // g, 1),
                                       attn_mask=mask)
    return o, K, V


def grouped(K_cache, V_cache, q, k, v):
    """Another right answer: the query heads grouped (B, g, h / g, T, d), no copies of K and V."""
    K, V = torch.cat([K_cache, k], 2), torch.cat([V_cache, v], 2)
    B, h, n_q, d = q.shape
    g, n_k = K.shape[1], K.shape[2]
    q = q.reshape(B, g, h // g, n_q, d)
    S = torch.einsum("bgrqd,bgkd->bgrqk", q, K) / math.sqrt(d)
    S = S.masked_fill(torch.arange(n_k) > torch.arange(n_q)[:, None] + n_k - n_q, -math.inf)
    o = torch.einsum("bgrqk,bgkd->bgrqd", S.softmax(-1), V)
    return o.reshape(B, h, n_q, d), K, V


def top_left(K_cache, V_cache, q, k, v):
    """torch's is_causal=True, aligned top-left: wrong whenever there is a cache."""
    K, V = torch.cat([K_cache, k], 2), torch.cat([V_cache, v], 2)
    h, g = q.shape[1], K.shape[1]
    o = F.scaled_dot_product_attention(q, K.repeat_interleave(h // g, 1), V.repeat_interleave(h // g, 1),
                                       is_causal=True)
    return o, K, V


@pytest.mark.parametrize("right", [cache_step, with_sdpa, grouped], ids=["written_out", "sdpa", "grouped"])
def test_kv_cache_step_passes(right, capsys):
    check_kv_cache_step(right)
    assert "\N{CHECK MARK} KV-cache step (7.9)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda *a: cache_step(*a, keep="new"), "attend only to the new token"),
    (lambda *a: cache_step(*a, keep="cache"), "not appended before attending"),
    (lambda *a: cache_step(*a, mask="none"), "the causal mask is missing"),
    (top_left, r"aligned top-left .*is_causal=True.*j <= i \+ t, here t = 4"),
    (lambda *a: cache_step(*a, scale=False), r"not divided by sqrt\(d_k\)"),
    (lambda *a: cache_step(*a, heads="tile"), r"tiled \(repeat.*repeat_interleave"),
    (lambda *a: cache_step(*a, put="front"), "the returned K .*new keys are put in front of the cache"),
    (lambda *a: cache_step(*a, swap=True), "swapped"),
    (lambda *a: cache_step(*a, softmax_dim=-2), "over the queries instead of over the keys"),
    (lambda *a: tuple(x.detach() for x in cache_step(*a)), "carries no gradient"),
    (lambda K_cache, V_cache, q, k, v: cache_step(K_cache, V_cache, q, k, v, heads="none"),
     r"repeat_interleave\(h // g, dim=1\)"),
    (lambda K_cache, V_cache, q, k, v: (q, torch.cat([K_cache, k], 1), V_cache), r"torch.cat\(\[K_cache, k\], dim=2\)"),
    (stub, "not implemented yet"),
], ids=["new_only", "cache_only", "no_mask", "top_left", "no_scale", "tiled_heads", "prepended", "swapped",
        "softmax_over_queries", "detached", "heads_not_repeated", "cat_wrong_dim", "stub"])
def test_kv_cache_step_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_kv_cache_step(wrong)


# --------------------------------------------------------------------------- (7.6) rotary positions


def rotate(x, positions, pairs="interleaved", sign=1.0, exponent=2.0, first=0, swap=False, use_positions=True):
    """(7.6) written out, with the typical mistakes as switches."""
    d = x.shape[-1]
    theta = 10000.0 ** (-exponent * torch.arange(first, first + d // 2, dtype=x.dtype) / d)
    m = positions.to(x.dtype) if use_positions else torch.arange(x.shape[-2], dtype=x.dtype)
    angle = sign * m[:, None] * theta
    cos, sin = (angle.sin(), angle.cos()) if swap else (angle.cos(), angle.sin())
    if pairs == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    a, b = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


def as_complex(x, positions):
    """Another right answer: (7.7), each pair a complex number turned by e^{i m theta_i}."""
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    turn = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * theta)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous()) * turn
    return torch.view_as_real(z).flatten(-2)


def with_matrices(x, positions):
    """Another right answer: a d x d block-diagonal rotation matrix per position."""
    d = x.shape[-1]
    rows = []
    for m in positions.tolist():
        R = torch.zeros(d, d, dtype=x.dtype)
        for i in range(d // 2):
            a = m * 10000.0 ** (-2 * i / d)
            R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[math.cos(a), -math.sin(a)],
                                                                [math.sin(a), math.cos(a)]], dtype=x.dtype)
        rows.append(R)
    return torch.einsum("tij,...tj->...ti", torch.stack(rows), x)


@pytest.mark.parametrize("right", [rotate, as_complex, with_matrices], ids=["pairs", "complex", "matrices"])
def test_rope_passes(right, capsys):
    check_rope(right)
    assert "\N{CHECK MARK} rotary positions (7.6)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda x, p: rotate(x, p, pairs="halves"), r"the halves are paired, \(x_i, x_\{i \+ d/2\}\) \(the rotate_half "
                                                 r"convention.*rotates interleaved pairs \(x_2i, x_2i\+1\)"),
    (lambda x, p: rotate(x, p, sign=-1.0), "rotated the wrong way"),
    (lambda x, p: rotate(x, p, exponent=1.0), "the exponent is -2i/d"),
    (lambda x, p: rotate(x, p, first=1), "counted from 1"),
    (lambda x, p: rotate(x, p, swap=True), "cos and sin are swapped"),
    (lambda x, p: x.clone(), "the positions are ignored"),
    (lambda x, p: rotate(x, p, use_positions=False), "rotated by its row number"),
    (lambda x, p: rotate(x, p).detach(), "carries no gradient"),
    (stub, "not implemented yet"),
], ids=["halves", "wrong_way", "exponent", "from_one", "cos_sin_swapped", "unrotated", "row_numbers", "detached",
        "stub"])
def test_rope_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_rope(wrong)
