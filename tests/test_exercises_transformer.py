"""Chapter 5's checkers: the reference passes, each typical mistake fails naming it, a stub says "not implemented"."""

import math

import pytest
import torch

from attn_course.exercises import ExerciseFailed
from attn_course.exercises.transformer import (check_multi_head_attention, check_positional_encoding,
                                               check_scaled_dot_product_attention)
from attn_course.transformer import scaled_dot_product_attention as package_attention


def stub(*args, **kwargs):
    raise NotImplementedError("write this function: see the exercise above")


# --------------------------------------------------------------------------- (5.1) scaled dot-product attention


def attention(Q, K, V, mask=None, scale=None, dim=-1, flip_mask=False):
    scores = Q @ K.transpose(-2, -1) * (1 / math.sqrt(Q.shape[-1]) if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(mask, -1e9) if flip_mask else scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=dim)
    return weights @ V, weights


def test_scaled_dot_product_attention_passes(capsys):
    check_scaled_dot_product_attention(attention)
    assert "\N{CHECK MARK} scaled dot-product attention (5.1)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda Q, K, V, mask=None: attention(Q, K, V, mask, scale=1.0), r"not divided by sqrt\(d_k\)"),
    (lambda Q, K, V, mask=None: attention(Q, K, V, mask, dim=-2), "softmax runs over the queries"),
    (lambda Q, K, V, mask=None: attention(Q, K, V), "the mask is ignored"),
    (lambda Q, K, V, mask=None: attention(Q, K, V, mask, flip_mask=True), "the mask is applied the wrong way round"),
    (stub, "not implemented yet"),
], ids=["unscaled", "softmax_over_queries", "mask_ignored", "mask_flipped", "stub"])
def test_scaled_dot_product_attention_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_scaled_dot_product_attention(wrong)


# --------------------------------------------------------------------------- (5.2) multi-head attention


def multi_head(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None, split="right",
               merge="right", scale=None, project=True, transposed=False, swap_kv=False, output_bias=True):
    B, T_q, d_model = query.shape
    d_k = d_model // h
    W = (lambda M: M.T) if transposed else (lambda M: M)
    if swap_kv:
        W_K, b_K, W_V, b_V = W_V, b_V, W_K, b_K

    def heads(x):
        if split == "right":
            return x.reshape(B, -1, h, d_k).transpose(1, 2)
        if split == "no transpose":
            return x.reshape(B, h, -1, d_k)
        return x.reshape(B, -1, d_k, h).permute(0, 3, 1, 2)

    Q, K, V = heads(query @ W(W_Q) + b_Q), heads(key_value @ W(W_K) + b_K), heads(key_value @ W(W_V) + b_V)
    out, _ = attention(Q, K, V, mask, scale=scale)
    if merge == "right":
        out = out.transpose(1, 2).reshape(B, T_q, d_model)
    elif merge == "no transpose":
        out = out.reshape(B, T_q, d_model)
    else:
        out = out.permute(0, 2, 3, 1).reshape(B, T_q, d_model)
    if not project:
        return out
    return out @ W(W_O) + (b_O if output_bias else 0)


def multi_head_wrong(**how):
    def wrong(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None):
        return multi_head(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask, **how)
    return wrong


def multi_head_with_the_package(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None):
    """The notebook's reference: the package's (5.1) for the attention of every head."""
    B, T_q, d_model = query.shape
    d_k = d_model // h

    def split(x):
        return x.view(B, x.shape[1], h, d_k).transpose(1, 2)

    heads, _ = package_attention(split(query @ W_Q + b_Q), split(key_value @ W_K + b_K),
                                 split(key_value @ W_V + b_V), mask)
    return heads.transpose(1, 2).reshape(B, T_q, d_model) @ W_O + b_O


def without_b_K(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None):
    """Leaving b_K out changes nothing (the softmax ignores q . b_K, the same for every key): it passes."""
    return multi_head(query, key_value, W_Q, b_Q, W_K, torch.zeros_like(b_K), W_V, b_V, W_O, b_O, h, mask)


@pytest.mark.parametrize("right", [multi_head_wrong(), multi_head_with_the_package, without_b_K],
                         ids=["written_out", "with_the_package", "without_b_K"])
def test_multi_head_attention_passes(right, capsys):
    check_multi_head_attention(right)
    assert "\N{CHECK MARK} multi-head attention (5.2)" in capsys.readouterr().out


def without_the_mask(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None):
    return multi_head(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h)


def without_biases(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None):
    zero = torch.zeros_like(b_Q)
    return multi_head(query, key_value, W_Q, zero, W_K, zero, W_V, zero, W_O, zero, h, mask)


def one_wide_head(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None):
    return multi_head(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, 1, mask)


def detached_query(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None):
    return multi_head(query.detach(), key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask)


@pytest.mark.parametrize("wrong, message", [
    (multi_head_wrong(split="no transpose", merge="no transpose"),
     r"split by reshaping \(B, T, d_model\) to \(B, h, T, d_k\) without the transpose"),
    (multi_head_wrong(merge="no transpose"), "concatenated by reshaping .* without moving the head axis back"),
    (multi_head_wrong(split="no transpose"), r"split by reshaping to \(B, h, T, d_k\) without the transpose"),
    (multi_head_wrong(split="interleaved", merge="interleaved"), "interleaved features"),
    (multi_head_wrong(scale=1 / math.sqrt(8)), r"divided by sqrt\(d_model\) = sqrt\(8\) instead of sqrt\(d_k\)"),
    (multi_head_wrong(scale=1.0), r"not divided by sqrt\(d_k\)"),
    (multi_head_wrong(project=False), "the output projection .* is forgotten"),
    (multi_head_wrong(output_bias=False), "the output bias b_O is left out"),
    (multi_head_wrong(transposed=True), r"the weights are used transposed"),
    (multi_head_wrong(swap_kv=True), "each other's weights"),
    (without_biases, "the biases b_Q, b_K, b_V and b_O are left out"),
    (without_the_mask, "the mask is ignored"),
    (one_wide_head, "h is ignored: one head of width d_model = 8 attends, instead of h = 2 heads"),
    (detached_query, "gradient with respect to `query`|no gradient reaches `query`"),
    (stub, "not implemented yet"),
], ids=["split_and_merge_without_transpose", "merge_without_transpose", "split_without_transpose", "interleaved",
        "sqrt_d_model", "unscaled", "no_output_projection", "no_output_bias", "transposed_weights", "swapped_kv",
        "no_biases", "mask_ignored", "one_wide_head", "detached_query", "stub"])
def test_multi_head_attention_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_multi_head_attention(wrong)


def test_the_multi_head_checker_leaves_the_global_random_state_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_multi_head_attention(multi_head_wrong())
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- (5.4) the positional encoding


def encoding(max_len, d_model, start=0, sin_first=True, exponent=lambda i, d: 2 * i / d, interleaved=True,
             per_column=False):
    pos = torch.arange(start, start + max_len, dtype=torch.float64)[:, None]
    if per_column:
        j = torch.arange(d_model, dtype=torch.float64)
        w = 10000.0 ** (-j / d_model)
        return torch.where(j % 2 == 0, torch.sin(pos * w), torch.cos(pos * w))
    w = 10000.0 ** (-exponent(torch.arange(d_model // 2, dtype=torch.float64), d_model))
    first, second = (torch.sin(pos * w), torch.cos(pos * w)) if sin_first else (torch.cos(pos * w),
                                                                                 torch.sin(pos * w))
    if not interleaved:
        return torch.cat([first, second], 1)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = first, second
    return pe


def encoding_in_float32(max_len, d_model):
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    w = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * w), torch.cos(pos * w)
    return pe


@pytest.mark.parametrize("right", [encoding, encoding_in_float32], ids=["float64", "float32_via_exp_log"])
def test_positional_encoding_passes(right, capsys):
    check_positional_encoding(right)
    assert "\N{CHECK MARK} positional encoding (5.4)" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda n, d: encoding(n, d, sin_first=False), "sin and cos are swapped"),
    (lambda n, d: encoding(n, d, exponent=lambda i, d: i / d), r"the exponent 2i / d_model is written i / d_model"),
    (lambda n, d: encoding(n, d, per_column=True), "every column j gets its own frequency"),
    (lambda n, d: encoding(n, d, exponent=lambda i, d: 4 * i / d), "the exponent is 2j / d_model"),
    (lambda n, d: encoding(n, d, exponent=lambda i, d: -2 * i / d), "the exponent has the wrong sign"),
    (lambda n, d: encoding(n, d, start=1), "the positions start at 1"),
    (lambda n, d: encoding(n, d, interleaved=False), "sin fills the first half"),
    (lambda n, d: encoding(n, d)[None], r"expected shape \(10, 8\), got \(1, 10, 8\)"),
    (stub, "not implemented yet"),
], ids=["swapped", "i_over_d", "per_column", "4i_over_d", "sign", "from_1", "halves", "batch_axis", "stub"])
def test_positional_encoding_mistakes_are_named(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        check_positional_encoding(wrong)
