"""Chapter 5's implement-it exercises (Vaswani et al. 2017): checkers for the student's attention code."""

from __future__ import annotations

import math

import torch

from ..transformer import scaled_dot_product_attention
from . import Case, report, run_cases


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
