"""Chapter 5's implement-it exercises (Vaswani et al. 2017): checkers for the student's attention code.

* :func:`check_scaled_dot_product_attention`: (5.1), against
  :func:`attn_course.transformer.scaled_dot_product_attention`;
* :func:`check_multi_head_attention`: (5.2), the split into h heads, attention per head, the
  concatenation and the output projection, against :class:`attn_course.transformer.MultiHeadAttention`;
* :func:`check_positional_encoding`: (5.4), against :func:`attn_course.transformer.positional_encoding`;
* :func:`train_with_scaled_dot_product_attention`: the student's (5.1) inside every attention of a
  small Transformer, trained for a short run on ``reverse`` (see :mod:`attn_course.exercises.training`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import torch
from torch.func import functional_call

from .. import transformer
from ..data.sequences import VOCAB_SIZE, SequenceTask
from ..experiments.transformer import TRANSFORMER, exact_match
from ..transformer import (MultiHeadAttention, Transformer, TransformerConfig, causal_mask, positional_encoding,
                           scaled_dot_product_attention)
from . import Case, named, report, run_cases
from .training import Score, Setting, training_check, try_once


def _attention_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for name, (batch, T_q, T_k, d_k, d_v), masked in (
            ("one query, no mask", ((1,), 1, 5, 4, 3), False), ("a batch, no mask", ((2,), 6, 6, 8, 8), False),
            ("batch and heads, a causal mask", ((2, 3), 5, 5, 16, 4), True),
            ("more keys than queries, a padding mask", ((3,), 2, 7, 8, 5), True)):
        Q = torch.randn(*batch, T_q, d_k, generator=g, dtype=torch.float64)
        K = torch.randn(*batch, T_k, d_k, generator=g, dtype=torch.float64)
        V = torch.randn(*batch, T_k, d_v, generator=g, dtype=torch.float64)
        mask = None
        if masked:
            if T_q == T_k:
                mask = torch.ones(T_q, T_k, dtype=torch.bool).tril()
            else:
                mask = torch.rand(*batch, 1, T_k, generator=g) > 0.4
                mask[..., 0] = True  # every query may see at least one key
        unscaled = scaled_dot_product_attention(Q, K, V, mask, scale=1.0)
        scores = Q @ K.transpose(-2, -1) / math.sqrt(d_k)
        unmasked = torch.softmax(scores, -1) @ V
        normalised_over_queries = torch.softmax(scores.masked_fill(~mask, float("-inf")) if mask is not None
                                                else scores, -2)
        mistakes = {"the scores are not divided by sqrt(d_k)": unscaled[0],
                    "the softmax runs over the queries (dim=-2) instead of the keys": normalised_over_queries @ V}
        if mask is not None:
            mistakes["the mask is ignored"] = unmasked
            mistakes["the mask is applied the wrong way round (True should mean: may attend)"] = \
                torch.softmax(scores.masked_fill(mask, -1e9), -1) @ V
        cases.append(Case(name, (Q, K, V, mask), mistakes=mistakes))
    return cases


def check_scaled_dot_product_attention(student) -> None:
    """Grade ``student(Q, K, V, mask=None) -> (output, weights)`` against (5.1), with masks and gradients."""
    what = "scaled dot-product attention (5.1)"
    count = run_cases(student, scaled_dot_product_attention, _attention_cases(), what, gradient_of=(0, 1, 2))
    report(what, count, ", gradients with respect to Q, K and V included")


# --------------------------------------------------------------------------- (5.2) multi-head attention


def _module(d_model: int, h: int) -> MultiHeadAttention:
    """The package's MultiHeadAttention, written-out path (it returns the weights), built without touching the global
    random state; its weights are replaced by the case's in :func:`_multi_head_reference`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = MultiHeadAttention(d_model, h)
    module.fused = False
    return module.double().eval()


_MHA_ARGUMENTS = ("query", "key_value", "W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")


def _multi_head_reference(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None):
    """:class:`MultiHeadAttention` with the case's weights; ``W`` is the paper's d_model x d_model matrix (x W), so the
    Linear layer's weight is its transpose."""
    params = {"W_Q.weight": W_Q.T, "W_Q.bias": b_Q, "W_K.weight": W_K.T, "W_K.bias": b_K,
              "W_V.weight": W_V.T, "W_V.bias": b_V, "W_O.weight": W_O.T, "W_O.bias": b_O}
    out, _ = functional_call(_module(query.shape[-1], h), params, (query, key_value), {"mask": mask,
                                                                                       "need_weights": True})
    return out


def _multi_head_variant(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None, *,
                        split="transpose", merge="transpose", scale=None, project=True, transposed=False,
                        biases=True, use_mask=True, swap_kv=False):
    """(5.2) with one thing done wrong (the typical mistakes): how the heads are split and merged, the scale, the
    output projection, the weights' orientation, the biases, the mask, K and V's projections."""
    B, T_q, d_model = query.shape
    d_k = d_model // h
    W = (lambda M: M.T) if transposed else (lambda M: M)
    b = (lambda v: v) if biases else (lambda v: torch.zeros_like(v))
    if swap_kv:
        W_K, b_K, W_V, b_V = W_V, b_V, W_K, b_K

    def heads(x):  # (B, T, d_model) -> (B, h, T, d_k)
        if split == "transpose":
            return x.reshape(B, x.shape[1], h, d_k).transpose(1, 2)
        if split == "reshape":
            return x.reshape(B, h, x.shape[1], d_k)
        return x.reshape(B, x.shape[1], d_k, h).permute(0, 3, 1, 2)  # "interleaved"

    Q, K, V = heads(query @ W(W_Q) + b(b_Q)), heads(key_value @ W(W_K) + b(b_K)), heads(key_value @ W(W_V) + b(b_V))
    out, _ = scaled_dot_product_attention(Q, K, V, mask if use_mask else None, scale=scale)
    if merge == "transpose":
        out = out.transpose(1, 2).reshape(B, T_q, d_model)
    elif merge == "reshape":
        out = out.reshape(B, T_q, d_model)
    else:  # "interleaved", the inverse of the interleaved split
        out = out.permute(0, 2, 3, 1).reshape(B, T_q, d_model)
    return out @ W(W_O) + b(b_O) if project else out


def _multi_head_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    cases = []
    for name, (B, T_q, T_k, d_model, h, mask_kind) in (
            ("self-attention, 2 heads", (2, 5, 5, 8, 2, None)),
            ("cross-attention, 3 heads, a padding mask", (3, 4, 6, 12, 3, "padding")),
            ("causal self-attention, 4 heads", (2, 6, 6, 16, 4, "causal")),
            ("one head", (2, 3, 4, 6, 1, None)),
            ("d_k = 1: as many heads as d_model", (2, 4, 3, 4, 4, None))):
        r = lambda *shape, s=1.0: torch.randn(*shape, generator=g, dtype=torch.float64) * s  # noqa: E731
        query = r(B, T_q, d_model)
        key_value = query if T_q == T_k and mask_kind != "padding" else r(B, T_k, d_model)
        weights = []
        for _ in range(4):
            weights += [r(d_model, d_model, s=1.5 / math.sqrt(d_model)), r(d_model, s=0.5)]
        mask = None
        if mask_kind == "causal":
            mask = causal_mask(T_q)
        elif mask_kind == "padding":
            mask = torch.rand(B, 1, 1, T_k, generator=g) > 0.4
            mask[..., 0] = True  # every query may see at least one key
        args = (query, key_value, *weights, h)
        d_k = d_model // h
        variant = partial(_multi_head_variant, *args, mask=mask)
        mistakes = {
            "the heads are split by reshaping (B, T, d_model) to (B, h, T, d_k) without the transpose (each head "
            "then gets a block of rows mixing positions, not the features i d_k .. (i + 1) d_k of every position), "
            "and merged back the same way": variant(split="reshape", merge="reshape"),
            "the heads are split right, (B, T, h, d_k) then transpose(1, 2), but concatenated by reshaping "
            "(B, h, T_q, d_k) to (B, T_q, d_model) without moving the head axis back first":
                variant(merge="reshape"),
            "the heads are split by reshaping to (B, h, T, d_k) without the transpose (each head then gets a "
            "block of rows mixing positions)": variant(split="reshape"),
            "the heads take interleaved features (a view to (B, T, d_k, h)): head i must take the consecutive "
            "columns i d_k .. (i + 1) d_k": variant(split="interleaved", merge="interleaved"),
            f"the scores are divided by sqrt(d_model) = sqrt({d_model}) instead of sqrt(d_k) = sqrt({d_k})":
                variant(scale=1.0 / math.sqrt(d_model)),
            "the scores are not divided by sqrt(d_k)": variant(scale=1.0),
            "the output projection (W_O, b_O) is forgotten: the concatenated heads are returned as they are":
                variant(project=False),
            "the weights are used transposed (x @ W.T): here W_Q, W_K, W_V and W_O are the paper's matrices, "
            "applied as x @ W + b": variant(transposed=True),
            "the biases b_Q, b_K, b_V and b_O are left out": variant(biases=False),
            "the keys and the values are projected with each other's weights (K with W_V, V with W_K)":
                variant(swap_kv=True),
        }
        if h > 1:
            mistakes["the output bias b_O is left out"] = variant() - weights[7]
            mistakes[f"h is ignored: one head of width d_model = {d_model} attends, instead of h = {h} heads of "
                     f"d_k = d_model / h = {d_k} each"] = _multi_head_variant(*args[:-1], 1, mask=mask)
        if mask is not None:
            mistakes["the mask is ignored"] = variant(use_mask=False)
        cases.append(Case(name, args, {"mask": mask}, mistakes=mistakes))
    return cases


def check_multi_head_attention(student) -> None:
    """Grade ``student(query, key_value, W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O, h, mask=None) -> (B, T_q, d_model)``,
    multi-head attention (5.2), against :class:`attn_course.transformer.MultiHeadAttention` with the same weights.

    ``query`` (B, T_q, d_model); ``key_value`` (B, T_k, d_model), projected to both the keys
    and the values (the module's interface: the same tensor as ``query`` in self-attention,
    the encoder's output in cross-attention); ``W_*`` (d_model, d_model), the paper's
    matrices, applied as ``x @ W + b`` (the transposes of the module's Linear weights): head
    i uses the columns i d_k .. (i + 1) d_k of W_Q, W_K and W_V, d_k = d_model / h; ``mask``
    boolean, broadcastable to (B, h, T_q, T_k), True where a query may look. Gradients with
    respect to the inputs and the weights are compared too (not b_K's: it adds the same
    number q . b_K to every score of a query, which the softmax ignores).
    """
    what = "multi-head attention (5.2)"
    with named(arguments=_MHA_ARGUMENTS):
        count = run_cases(student, _multi_head_reference, _multi_head_cases(), what,
                          gradient_of=(0, 1, 2, 3, 4, 6, 7, 8, 9))
    report(what, count, ", h = 1 to 4, padding and causal masks, gradients included")


# --------------------------------------------------------------------------- (5.4) the positional encoding


def _encoding(pos: torch.Tensor, w: torch.Tensor, d_model: int, interleaved: bool = True,
              sin_first: bool = True) -> torch.Tensor:
    """sin(pos w_i) and cos(pos w_i), interleaved (columns 2i, 2i + 1) or one half each: (5.4) and its mistakes."""
    first, second = (torch.sin(pos * w), torch.cos(pos * w)) if sin_first else (torch.cos(pos * w), torch.sin(pos * w))
    if not interleaved:
        return torch.cat([first, second], 1)
    pe = torch.zeros(pos.shape[0], d_model, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = first, second
    return pe


def _positional_cases() -> list[Case]:
    cases = []
    for name, (max_len, d_model) in (("10 positions, d_model = 8", (10, 8)), ("one position, d_model = 2", (1, 2)),
                                     ("50 positions, d_model = 16", (50, 16)), ("7 positions, d_model = 6", (7, 6)),
                                     ("100 positions, d_model = 64", (100, 64))):
        pos = torch.arange(max_len, dtype=torch.float64)[:, None]
        i = torch.arange(d_model // 2, dtype=torch.float64)
        w = 10000.0 ** (-2 * i / d_model)
        j = torch.arange(d_model, dtype=torch.float64)
        own = torch.where(j % 2 == 0, torch.sin(pos * 10000.0 ** (-j / d_model)),
                          torch.cos(pos * 10000.0 ** (-j / d_model)))
        mistakes = {
            "sin and cos are swapped: the even columns 2i hold sin(pos w_i), the odd ones 2i + 1 cos(pos w_i)":
                _encoding(pos, w, d_model, sin_first=False),
            "the exponent 2i / d_model is written i / d_model (i the pair index 0 .. d_model/2 - 1): "
            "w_i = 10000^(-2i / d_model)": _encoding(pos, 10000.0 ** (-i / d_model), d_model),
            "every column j gets its own frequency 10000^(-j / d_model): the two columns 2i and 2i + 1 of a pair "
            "share w_i = 10000^(-2i / d_model)": own,
            "the exponent is 2j / d_model with j the column index (4i / d_model for pair i): with i the pair "
            "index, w_i = 10000^(-2i / d_model)": _encoding(pos, 10000.0 ** (-4 * i / d_model), d_model),
            "the exponent has the wrong sign: w_i = 10000^(-2i / d_model), a frequency that falls with i":
                _encoding(pos, 10000.0 ** (2 * i / d_model), d_model),
            "the positions start at 1: pos runs from 0 to max_len - 1": _encoding(pos + 1, w, d_model),
            "sin fills the first half of the columns and cos the second: they alternate, sin in the even "
            "columns 2i and cos in the odd ones 2i + 1": _encoding(pos, w, d_model, interleaved=False),
        }
        cases.append(Case(name, (max_len, d_model), mistakes=mistakes))
    return cases


def check_positional_encoding(student) -> None:
    """Grade ``student(max_len, d_model) -> PE`` (max_len, d_model), the sinusoidal positional encoding (5.4):
    PE[pos, 2i] = sin(pos w_i), PE[pos, 2i + 1] = cos(pos w_i), w_i = 10000^(-2i / d_model), pos = 0 .. max_len - 1,
    against :func:`attn_course.transformer.positional_encoding`."""
    what = "positional encoding (5.4)"
    count = run_cases(student, positional_encoding, _positional_cases(), what, atol=5e-5)
    report(what, count, ", d_model = 2 to 64, up to 100 positions")


# --------------------------------------------------------------------------- (5.1) inside the model, trained


# A Transformer small enough for a short run in a notebook: one encoder and one decoder layer, d_model 32,
# 2 heads of d_k = 16, no dropout (the course's model has 2 + 2 layers of d_model 64).
SHORT_CONFIG = TransformerConfig(vocab_size=VOCAB_SIZE, d_model=32, heads=2, d_ff=128, encoder_layers=1,
                                 decoder_layers=1, dropout=0.0, norm="post", max_len=64)


def _written_out(config: TransformerConfig) -> Transformer:
    """The Transformer with every attention on the written-out path, which calls the module-level
    ``scaled_dot_product_attention`` (the fused kernel would bypass it)."""
    return Transformer(config).use_fused_attention(False)


def _attention_arguments(Q, K, V, mask=None, dropout_p=0.0, scale=None):
    """The model's call of (5.1) as the exercise's: (Q, K, V, mask)."""
    if dropout_p or scale is not None:
        raise ValueError(f"the exercise's attention takes neither dropout nor another scale, got dropout_p "
                         f"{dropout_p} and scale {scale}: train with a config without dropout")
    return Q, K, V, mask


def train_with_scaled_dot_product_attention(student, *, steps: int = 300, batch_size: int = 64,
                                            config: TransformerConfig = SHORT_CONFIG, task: str = "reverse",
                                            test_size: int = 500, seed: int = 0, share: float = 0.5,
                                            device: str = "cpu", progress: bool = False) -> None:
    """Train a Transformer whose every attention runs ``student(Q, K, V, mask) -> (output, weights)``, then the
    same with the course's (5.1), and compare their greedy exact match on ``test_size`` held-out strings.

    The model is ``config`` (default :data:`SHORT_CONFIG`, without dropout) with the
    written-out attention, trained by the chapter's recipe (Adam with the rate (5.5), batch
    ``batch_size``) for ``steps`` steps on ``task``. It passes when the exact match rises by at
    least ``share`` of the rise the course's function gives. Attention that is not normalised
    over the keys, or that lets a query see later positions, fails: the decoder then cannot
    write the answer one character after the other.
    """
    if config.dropout:
        raise ValueError(f"train without dropout (the exercise's attention has no dropout_p), got {config.dropout}")
    try_once(student, "scaled dot-product attention (5.1)", _attention_cases()[0].args)
    data = SequenceTask(task, device=device, test_size=test_size)
    setting = Setting(spec=replace(TRANSFORMER, model_class=_written_out), task=task, config=config, data=data,
                      measure=lambda model: exact_match(model, data)[0], steps=steps, batch_size=batch_size,
                      seed=seed, device=device, key=(test_size,))
    layers = f"{config.encoder_layers} + {config.decoder_layers} layers"
    training_check(student, what="scaled dot-product attention (5.1)",
                   model=f"a Transformer ({layers}, d_model {config.d_model}, {config.heads} heads) on {task}",
                   module=transformer, name="scaled_dot_product_attention", arguments=_attention_arguments,
                   setting=setting, score=Score(f"exact match on {test_size} held-out strings", True, percent=True),
                   share=share, progress=progress)
