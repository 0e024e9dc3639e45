"""Attention decoders, one copy for chapters 3, 4 and 5: additive attention, greedy decoding and beam search.

Chapter 3 (Show, Attend and Tell) introduced the pieces and chapter 4 (R2AM) reuses them
unchanged; chapter 5 (the Transformer) decodes with the same two searches:

* :class:`SoftAttention`, the additive attention f_att of (3.1)-(3.2) (and (4.6)):
  e_ti = w^T tanh(W_a a_i + W_h h_{t-1}), alpha_ti = exp(e_ti) / sum_k exp(e_tk);
* :func:`soft_context`, the expected context z^_t = beta_t sum_i alpha_ti a_i of
  (3.13)-(3.14) (without the gate beta in (4.6));
* :class:`Decoder`, the two methods a model offers to be decoded here (``annotate`` and
  ``step``), and :func:`greedy_decode` and :func:`beam_search` written once against them;
* :func:`length_penalty`, lp(Y) = ((5 + |Y|) / 6)^alpha of (5.7) (Wu et al. 2016), by which
  the beam ranks its hypotheses (alpha = 0, the default, ranks by log p(Y | X) alone, as
  Show, Attend and Tell does), and :func:`finish`, which cuts every sequence after its EOS.

Used by :mod:`attn_course.show_attend_tell` (``ShowAttendTell`` and ``caption``),
:mod:`attn_course.r2am` (``R2AM`` and ``read``) and :mod:`attn_course.transformer`
(``Transformer.annotate``/``step`` and ``predict``). The three chapters' vocabularies all
number their special tokens PAD = 0, BOS = 1, EOS = 2 (:mod:`attn_course.data.captions`,
:mod:`~attn_course.data.text_lines`, :mod:`~attn_course.data.sequences`); the searches take
``bos``, ``eos`` and ``pad`` as arguments with these defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from .data.captions import BOS, EOS, PAD

State = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- additive attention (3.1)-(3.2), (3.13)


class SoftAttention(nn.Module):
    """f_att (3.1) as a one-hidden-layer MLP, e_ti = w^T tanh(W_a a_i + W_h h_{t-1}), and alpha (3.2).

    Additive ("Bahdanau") attention. W_a a_i does not depend on t: :meth:`project` computes it
    once per input.
    """

    def __init__(self, D: int, n: int, hidden: int):
        super().__init__()
        self.W_a = nn.Linear(D, hidden)
        self.W_h = nn.Linear(n, hidden, bias=False)
        self.w = nn.Linear(hidden, 1)

    def project(self, a: torch.Tensor) -> torch.Tensor:
        return self.W_a(a)  # (B, L, hidden)

    def forward(self, Wa_a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """alpha_t (B, L) from the projected annotations (B, L, hidden) and h_{t-1} (B, n)."""
        e = self.w(torch.tanh(Wa_a + self.W_h(h)[:, None, :]))[..., 0]  # e_ti, (3.1)
        return e.softmax(-1)  # alpha_ti, (3.2)


def soft_context(a: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """z^_t = beta_t sum_i alpha_ti a_i, the expected context (3.13)-(3.14); ``a`` (B, L, D), ``alpha`` (B, L),
    ``beta`` (B, 1) or None -> (B, D)."""
    if a.dim() != 3 or alpha.shape != a.shape[:2]:
        raise ValueError(f"expected a (B, L, D) and alpha (B, L), got {tuple(a.shape)} and {tuple(alpha.shape)}")
    if beta is not None and beta.shape != (a.shape[0], 1):
        raise ValueError(f"expected beta of shape ({a.shape[0]}, 1), got {tuple(beta.shape)}")
    z = (alpha[:, None, :] @ a)[:, 0]
    return z if beta is None else beta * z


# --------------------------------------------------------------------------- the interface


class Decoder(Protocol):
    """What a model offers to be decoded by :func:`greedy_decode` and :func:`beam_search`.

    ``annotate(inputs) -> state``
        Everything the steps need about a batch of B inputs (images, text lines, source
        sequences), and the decoder's initial recurrent state: a dict of tensors, every one
        with the batch first, (B, ...). The searches never look inside: beam search repeats
        every entry ``beam_size`` times along the first axis (``repeat_interleave``) and,
        after each step, takes the rows of the hypotheses that survive.

    ``step(tokens, state, **options) -> (logits, state, extras)``
        One output token. ``tokens`` (B,) long is the previous token of every row: BOS at the
        first step, PAD after a row has finished. Returns ``logits`` (B, V), the scores of the
        next token (unnormalised log-probabilities; greedy takes their argmax, the beam their
        ``log_softmax``); the new ``state``, with the same keys and batch-first shapes (the
        given one is not modified); and ``extras``, a dict of (B, ...) tensors that the
        searches record for every step and return stacked (B, T, ...), e.g. the attention
        weights ``alpha`` (may be empty). Rows must not influence each other. ``options``
        are passed on from the search's keyword arguments (Show, Attend and Tell's
        ``context``).

    The searches run without gradients and leave the model's mode alone: call them in eval
    mode (the chapters' ``caption``, ``read`` and ``predict`` do, with
    :func:`~attn_course.runtime.evaluating`).
    """

    def annotate(self, inputs: Any) -> State: ...

    def step(self, tokens: torch.Tensor, state: State, **options: Any) -> tuple[torch.Tensor, State, State]: ...


# --------------------------------------------------------------------------- helpers of both searches


def finish(tokens: torch.Tensor, eos: int = EOS, pad: int = PAD) -> torch.Tensor:
    """``tokens`` (B, T) with PAD after the first EOS of every row (the EOS kept)."""
    if tokens.dim() != 2:
        raise ValueError(f"expected token ids of shape (B, T), got {tuple(tokens.shape)}")
    ends = (tokens == eos).long()
    return tokens.masked_fill(ends.cumsum(1) - ends > 0, pad)


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """lp(Y) = ((5 + |Y|) / 6)^alpha, equation (5.7) (Wu et al. 2016; the Transformer uses alpha = 0.6).

    lp(1) = 1, and alpha = 0 gives 1 for every length (no penalty)."""
    return ((5.0 + length.float()) / 6.0) ** alpha


def _penalised(log_p: torch.Tensor, length: torch.Tensor, alpha: float) -> torch.Tensor:
    """log p(Y | X) / lp(Y): the beam's ranking score (exactly log p when alpha is 0)."""
    return log_p / length_penalty(length, alpha) if alpha else log_p


def _batch(state: State) -> tuple[int, torch.device]:
    """B and the device of a state from ``annotate`` (every entry is batch-first)."""
    if not state:
        raise ValueError("annotate returned an empty state: it must hold at least one (B, ...) tensor")
    first = next(iter(state.values()))
    return first.shape[0], first.device


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")


# --------------------------------------------------------------------------- the two searches


@torch.no_grad()
def greedy_decode(model: Decoder, inputs: Any, max_len: int, *, bos: int = BOS, eos: int = EOS, pad: int = PAD,
                  allowed: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  **options: Any) -> dict[str, torch.Tensor]:
    """y_t = argmax p(y_t | y_<t, x), one token at a time, up to ``max_len`` tokens or until every row emitted EOS.

    ``options`` go to every ``model.step`` (see :class:`Decoder`). ``allowed``, if given, constrains
    the search: it maps the tokens so far (B, t) (no BOS) to a (B, V) bool mask of the tokens that
    may come next, and y_t is the argmax over those only. Returns ``tokens`` (B, T),
    T <= ``max_len``, without BOS, EOS included, PAD after it; and every extra of the steps
    stacked, (B, T, ...).
    """
    _check_positive("max_len", max_len)
    state = model.annotate(inputs)
    B, device = _batch(state)
    y = torch.full((B,), bos, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, extras = [], {}
    for _ in range(max_len):
        logits, state, extra = model.step(y, state, **options)
        if allowed is not None:
            prefix = torch.stack(tokens, 1) if tokens else torch.zeros(B, 0, dtype=torch.long, device=device)
            mask = allowed(prefix)
            if mask.shape != logits.shape or mask.dtype != torch.bool:
                raise ValueError(f"allowed must return a bool mask of shape {tuple(logits.shape)}, got "
                                 f"{tuple(mask.shape)} of {mask.dtype}")
            if bool((~mask.any(-1) & ~done).any()):
                raise ValueError("allowed left a row that has not ended without any token to continue with")
            logits = logits.masked_fill(~mask, float("-inf"))
        y = logits.argmax(-1).masked_fill(done, pad)
        tokens.append(y)
        for key, value in extra.items():
            extras.setdefault(key, []).append(value)
        done |= y == eos
        if bool(done.all()):
            break
    out = {"tokens": finish(torch.stack(tokens, 1), eos, pad)}
    out.update((key, torch.stack(values, 1)) for key, values in extras.items())
    return out


@torch.no_grad()
def beam_search(model: Decoder, inputs: Any, beam_size: int = 4, max_len: int = 20, *, length_penalty: float = 0.0,
                bos: int = BOS, eos: int = EOS, pad: int = PAD, **options: Any) -> dict[str, torch.Tensor]:
    """Beam search ranked by log p(Y | X) / lp(Y), lp of (5.7) with exponent ``length_penalty`` (0: no penalty).

    Keeps ``beam_size`` hypotheses per input; a finished one (it emitted EOS) keeps its score
    (and its length) and only continues with PAD at no cost, until better ones push it out.
    At the end the best finished hypothesis wins (an unfinished one only where none finished).
    With ``beam_size`` 1 this is :func:`greedy_decode`. Returns ``tokens`` and the extras of
    the best hypothesis (as :func:`greedy_decode`), its ``score`` (B,) (log p(Y | X) / lp(Y))
    and ``finished`` (B,), whether it ended with EOS.
    """
    _check_positive("beam_size", beam_size)
    _check_positive("max_len", max_len)
    alpha, k = length_penalty, beam_size
    state = model.annotate(inputs)
    B, device = _batch(state)
    state = {key: value.repeat_interleave(k, 0) for key, value in state.items()}
    log_p = torch.zeros(B, k, device=device)
    log_p[:, 1:] = float("-inf")  # all beams start equal: expand only the first
    lengths = torch.zeros(B, k, dtype=torch.long, device=device)
    done = torch.zeros(B, k, dtype=torch.bool, device=device)
    y = torch.full((B * k,), bos, dtype=torch.long, device=device)
    tokens, parents, extras = [], [], {}  # per step, aligned with the hypotheses after the step
    for _ in range(max_len):
        logits, state, extra = model.step(y, state, **options)
        V = logits.shape[-1]
        step = logits.float().log_softmax(-1).view(B, k, V)
        frozen = torch.full_like(step, float("-inf"))
        frozen[..., pad] = 0.0  # a finished hypothesis only continues with PAD, at no cost
        step = torch.where(done[..., None], frozen, step)
        candidates = (log_p[..., None] + step).view(B, k * V)
        new_length = (lengths + (~done).long())[..., None].expand(B, k, V).reshape(B, k * V)
        _, best = _penalised(candidates, new_length, alpha).topk(k, dim=1)
        beam, token = best // V, best % V
        log_p, lengths = candidates.gather(1, best), new_length.gather(1, best)
        done = done.gather(1, beam) | (token == eos)
        rows = (torch.arange(B, device=device)[:, None] * k + beam).flatten()
        state = {key: value[rows] for key, value in state.items()}
        y = token.flatten()
        tokens.append(y)
        parents.append(rows)
        for key, value in extra.items():
            extras.setdefault(key, []).append(value[rows])
        if bool(done.all()):
            break
    score = _penalised(log_p, lengths, alpha)
    top = torch.where(done, score, score - 1e9).argmax(1)  # prefer hypotheses that finished
    chosen = torch.arange(B, device=device) * k + top
    path = [chosen]  # the hypothesis' row at every step, traced back through the parents
    for rows in reversed(parents[1:]):
        path.append(rows[path[-1]])
    path.reverse()
    out = {"tokens": finish(torch.stack([t[r] for t, r in zip(tokens, path)], 1), eos, pad)}
    out.update((key, torch.stack([v[r] for v, r in zip(values, path)], 1)) for key, values in extras.items())
    out["score"] = score.gather(1, top[:, None])[:, 0]
    out["finished"] = done.gather(1, top[:, None])[:, 0]
    return out
