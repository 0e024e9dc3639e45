"""Chapter 3's implement-it exercises (Xu et al. 2015, Show, Attend and Tell): checkers for soft and hard attention.

- :func:`check_soft_context`: the gated expected context (3.13)-(3.14), graded against
  :func:`attn_course.decoding.soft_context`, which the model's step uses;
- :func:`check_doubly_stochastic_penalty`: the penalty of (3.15), graded against
  :func:`attn_course.show_attend_tell.doubly_stochastic_penalty`, which ``soft_loss`` uses;
- :func:`check_hard_attention_loss` and :func:`check_update_baseline`: the loss whose
  gradient is the estimate (3.12) and the moving-average baseline (3.11). The package
  computes both inline in :func:`attn_course.show_attend_tell.hard_loss`; the references
  here reproduce its lines exactly (each says which);
- :func:`train_with_soft_context`: the student's soft context inside the captioner, trained
  for a short run (see :mod:`attn_course.exercises.training`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import show_attend_tell
from ..data.scenes import VOCAB, ShapeScenes, left_to_right_reference
from ..decoding import soft_context
from ..experiments.show_attend_tell import DATA_SEED, SAT, TRAINING_ORDER
from ..runtime import evaluating
from ..show_attend_tell import SATConfig, ShowAttendTell, doubly_stochastic_penalty
from . import Case, ExerciseFailed, call_student, compare, report, run_cases
from .training import Score, Setting, training_check, try_once

F64 = torch.float64


def _check_batch_shape(student: Callable, case: Case, expected: torch.Tensor, what: str, per: str) -> None:
    """Name the most common shape mistake, a result reduced over the batch, before comparing values."""
    got = call_student(student, case.args, what, case.name, case.kwargs)
    if isinstance(got, torch.Tensor) and got.shape != expected.shape and got.numel() < expected.numel():
        raise ExerciseFailed(f"{what} ({case.name}): expected shape {tuple(expected.shape)}, one value per {per}, "
                             f"got {tuple(got.shape)}: do not sum or average over the batch (the loss averages "
                             "the batch later)")


# --------------------------------------------------------------------------- the soft context (3.13)-(3.14)


def _context_cases() -> tuple[list[Case], list[Case]]:
    """(cases with the gate beta, cases without it)."""
    g = torch.Generator().manual_seed(5)
    gated, plain = [], []
    for name, B, L, D, one_hot in (("B = L = D = 4: a square case, where a sum over the wrong axis still fits",
                                    4, 4, 4, False),
                                   ("a batch of 2, L = 5 regions, D = 3 features", 2, 5, 3, False),
                                   ("one-hot alpha: the context is the chosen region a_s times beta", 3, 6, 2, True),
                                   ("a batch of 5, L = 16 regions, D = 8", 5, 16, 8, False)):
        a = torch.randn(B, L, D, generator=g, dtype=F64)
        if one_hot:
            alpha = torch.nn.functional.one_hot(torch.randint(L, (B,), generator=g), L).to(F64)
        else:
            alpha = torch.softmax(torch.randn(B, L, generator=g, dtype=F64) * 2, -1)
        beta = torch.sigmoid(torch.randn(B, 1, generator=g, dtype=F64))
        z = soft_context(a, alpha)
        mistakes = {
            "beta is forgotten: (3.14) scales the expected context by the gate beta_t": z,
            "alpha is passed through a softmax again: it already is a distribution over the L regions":
                soft_context(a, torch.softmax(alpha, -1), beta),
            "beta multiplies along the wrong axis: it has shape (B, 1), one gate per image, broadcast over D":
                z * beta[:, 0][None, :] if B == D else None,
        }
        if L == D:
            mistakes["the sum runs over the features instead of the regions: (3.13) sums alpha_ti a_i over i, "
                     "the L regions (dim 1 of a)"] = beta * (alpha[..., None] * a).sum(-1)
            mistakes["a is not transposed: alpha (B, L) weights the rows of a (B, L, D), alpha a, not a alpha"] = \
                beta * (a @ alpha[..., None])[..., 0]
        gated.append(Case(name, (a, alpha, beta), mistakes={k: v for k, v in mistakes.items() if v is not None}))
        if not one_hot:
            plain.append(Case(f"{name}, no gate (beta = None: return the plain sum)", (a, alpha, None)))
    return gated, plain


def check_soft_context(student) -> None:
    """Grade ``student(a, alpha, beta) -> z_hat``: equations (3.13)-(3.14), z^_t = beta_t sum_i alpha_ti a_i.

    ``a`` (B, L, D), ``alpha`` (B, L), ``beta`` (B, 1) or None (no gate: the plain sum);
    returns (B, D). Checked on four gated cases (one square, where a wrong axis still fits;
    one with one-hot alpha, the hard context), three without the gate, and the gradients
    with respect to a, alpha and beta.
    """
    what = "the soft context (3.13)-(3.14)"
    gated, plain = _context_cases()
    count = run_cases(student, soft_context, gated, what, gradient_of=(0, 1, 2))
    count += run_cases(student, soft_context, plain, what, gradient_of=(0, 1))
    report(what, count, ", with and without the gate, gradients with respect to a, alpha and beta included")


# --------------------------------------------------------------------------- the doubly stochastic penalty (3.15)


def _penalty_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    cases = []
    identity = torch.cat([torch.eye(4, dtype=F64), torch.full((1, 4), 0.25, dtype=F64)])[None]  # 4 steps, 1 pad
    for name, alpha, mask, lambda_ in (
            ("2 captions of 6 and 4 steps (the second padded), L = 9 regions, lambda = 0.7",
             torch.softmax(torch.randn(2, 6, 9, generator=g, dtype=F64), -1),
             torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2], dtype=F64), 0.7),
            ("3 captions without padding, L = 16, lambda = 1",
             torch.softmax(torch.randn(3, 5, 16, generator=g, dtype=F64) * 2, -1), torch.ones(3, 5, dtype=F64), 1.0),
            ("every region receives exactly one unit over the 4 real steps: the penalty is 0", identity,
             torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]], dtype=F64), 2.0),
            ("4 captions of random lengths, 12 steps, L = 25, lambda = 0.01",
             torch.softmax(torch.randn(4, 12, 25, generator=g, dtype=F64), -1),
             (torch.arange(12)[None] < torch.tensor([[12], [3], [7], [1]])).to(F64), 0.01)):
        total = (alpha * mask[..., None]).sum(1)
        mistakes = {
            "the padding steps are counted: sum alpha_ti over the real steps only, alpha * mask":
                lambda_ * ((1 - alpha.sum(1)) ** 2).sum(-1),
            "the square is forgotten: (3.15) sums (1 - sum_t alpha_ti)^2": lambda_ * (1 - total).sum(-1),
            "the sums are swapped: (3.15) sums over the regions i the square of (1 - the sum over time t), not "
            "over time the square of (1 - the sum over regions), which is 0 since every alpha_t sums to 1":
                lambda_ * (((1 - (alpha * mask[..., None]).sum(-1)) ** 2) * mask).sum(-1),
            "the sums are swapped (and every padding step adds (1 - 0)^2): (3.15) sums over the regions i the "
            "square of (1 - the sum over time t)": lambda_ * ((1 - (alpha * mask[..., None]).sum(-1)) ** 2).sum(-1),
            "lambda is forgotten": ((1 - total) ** 2).sum(-1),
            "the squares are averaged over the regions: (3.15) sums them": lambda_ * ((1 - total) ** 2).mean(-1),
        }
        cases.append(Case(name, (alpha, mask, lambda_), mistakes=mistakes))
    return cases


def check_doubly_stochastic_penalty(student) -> None:
    """Grade ``student(alpha, mask, lambda_) -> penalty``: equation (3.15), lambda sum_i (1 - sum_t alpha_ti)^2.

    ``alpha`` (B, T, L), the weights of every step; ``mask`` (B, T), 1.0 on the real steps
    (the words and EOS), 0.0 on padding; ``lambda_`` a float. Returns (B,), one penalty per
    caption. Checked on four cases (padding, a penalty of exactly 0), and the gradient with
    respect to alpha.
    """
    what = "the doubly stochastic penalty (3.15)"
    cases = _penalty_cases()
    _check_batch_shape(student, cases[0], doubly_stochastic_penalty(*cases[0].args), what, "caption")
    count = run_cases(student, doubly_stochastic_penalty, cases, what, gradient_of=(0,))
    report(what, count, ", the gradient with respect to alpha included")


# --------------------------------------------------------------------------- hard attention: the loss of (3.12)


def reference_hard_attention_loss(log_p_y, log_p_s, entropy, b, sampled, lambda_r, lambda_e):
    """The per-caption loss that :func:`attn_course.show_attend_tell.hard_loss` averages over the batch.

    Mirrors hard_loss's lines ``reward = (log_p_y.detach() - model.b) * sampled`` and
    ``surrogate = log_p_y + c.lambda_r * reward * log_p_s + c.lambda_e * entropy`` (hard_loss
    returns ``-surrogate.mean()``); here ``b``, ``lambda_r`` and ``lambda_e`` are arguments
    instead of the model's buffer and config, and the mean over the batch is left out.
    """
    reward = (log_p_y.detach() - b) * sampled
    surrogate = log_p_y + lambda_r * reward * log_p_s + lambda_e * entropy
    return -surrogate


def _hard_cases() -> list[Case]:
    g = torch.Generator().manual_seed(8)
    cases = []
    for name, B, b, share_sampled, lambda_r, lambda_e in (
            ("4 captions, all sampled, b = -4, lambda_r = 1, lambda_e = 0.5", 4, -4.0, 1.0, 1.0, 0.5),
            ("6 captions, half read with the expected context (sampled False), the course's weights", 6, -2.5, 0.5,
             0.1, 0.001),
            ("5 captions, lambda_r = 0.3, lambda_e = 0.05, b = -7", 5, -7.0, 0.6, 0.3, 0.05)):
        log_p_y = -torch.rand(B, generator=g, dtype=F64) * 10 - 0.1  # log p(y | s~, a) < 0
        log_p_s = -torch.rand(B, generator=g, dtype=F64) * 30 - 0.5  # log p(s~ | a) = sum_t log alpha_{t, s~_t}
        entropy = torch.rand(B, generator=g, dtype=F64) * 40  # H[s~] = sum_t H(alpha_t)
        sampled = torch.arange(B) < round(share_sampled * B)
        sampled = sampled[torch.randperm(B, generator=g)]
        sampled[0] = True
        b_t = torch.tensor(b, dtype=F64)
        args = (log_p_y, log_p_s, entropy, b_t, sampled, lambda_r, lambda_e)
        loss = reference_hard_attention_loss(*args)
        reward = (log_p_y - b_t) * sampled
        mistakes = {
            "the baseline is not subtracted: the reward is log p(y | s~, a) - b (3.12)":
                -(log_p_y + lambda_r * log_p_y * sampled * log_p_s + lambda_e * entropy),
            "the baseline is added: the reward is log p(y | s~, a) - b (3.12)":
                -(log_p_y + lambda_r * (log_p_y + b_t) * sampled * log_p_s + lambda_e * entropy),
            "the reward has the wrong sign: it is log p(y | s~, a) - b, not b - log p(y | s~, a)":
                -(log_p_y - lambda_r * reward * log_p_s + lambda_e * entropy),
            "the sign of the whole loss is flipped: this is the surrogate of (3.12), which training maximises; "
            "return its negative, the loss the optimiser minimises": -loss,
            "the entropy term has the wrong sign: (3.12) rewards uncertain attention, + lambda_e H in the surrogate, "
            "so - lambda_e H in the loss": -(log_p_y + lambda_r * reward * log_p_s - lambda_e * entropy),
            "the REINFORCE term is kept for the captions read with the expected context: multiply the reward by "
            "sampled, they made no random choice": -(log_p_y + lambda_r * (log_p_y - b_t) * log_p_s
                                                     + lambda_e * entropy),
            "lambda_r is forgotten": -(log_p_y + reward * log_p_s + lambda_e * entropy),
            "lambda_e is forgotten": -(log_p_y + lambda_r * reward * log_p_s + entropy),
            "each sample is weighted by p(s~ | a) again: the samples already come from p(s | a), so (3.10) has no "
            "extra factor": loss * log_p_s.exp(),
        }
        cases.append(Case(name, args, mistakes=mistakes))
    return cases


def _hard_gradient_check(student: Callable, case: Case, what: str) -> None:
    """Compare the gradients of the weighted per-caption losses with respect to log_p_y, log_p_s and entropy."""
    weights = torch.rand(len(case.args[0]), generator=torch.Generator().manual_seed(9), dtype=F64) + 0.5
    names = ("log_p_y", "log_p_s", "entropy")

    def gradients(function, check: bool = False):
        leaves = [v.detach().clone().requires_grad_(True) for v in case.args[:3]]
        out = function(*leaves, *case.args[3:])
        if check and (not isinstance(out, torch.Tensor) or not out.requires_grad):
            raise ExerciseFailed(f"{what} ({case.name}): the result carries no gradient: is everything detached, or "
                                 "computed outside torch?")
        return [g if g is not None else torch.zeros_like(v)
                for g, v in zip(torch.autograd.grad((out * weights).sum(), leaves, allow_unused=True), leaves)]

    got = gradients(lambda *args: call_student(student, args, what, case.name), check=True)
    expected = gradients(reference_hard_attention_loss)
    b, sampled, lambda_r, lambda_e = case.args[3:]
    undetached = gradients(lambda y, s, h, *rest: -(y + lambda_r * (y - b) * sampled * s + lambda_e * h))
    mistakes = {"the reward is not detached: (log p(y | s~, a) - b) must be a constant (.detach()), or its "
                "gradient adds lambda_r log p(s~ | a) to the gradient of the first term": undetached[0]}
    for name, g, e in zip(names, got, expected):
        compare(g, e, f"{what}: the gradient with respect to {name}",
                Case(case.name, case.args, mistakes=mistakes if name == "log_p_y" else {}), atol=1e-8, rtol=1e-6)


def check_hard_attention_loss(student) -> None:
    """Grade ``student(log_p_y, log_p_s, entropy, b, sampled, lambda_r, lambda_e) -> loss``: minus (3.12)'s surrogate.

    Per caption, (B,): -[log p(y | s~, a) + lambda_r (log p(y | s~, a) - b) log p(s~ | a)
    + lambda_e H[s~]], with the reward (log p(y | s~, a) - b) held constant and set to 0 for
    the captions read with the expected context (``sampled`` False, section 4.1). The
    gradient of this loss is minus the estimate (3.12); ``hard_loss`` averages it over the
    batch. ``log_p_y``, ``log_p_s``, ``entropy`` (B,); ``b`` a 0-dim tensor; ``sampled`` (B,)
    bool; ``lambda_r``, ``lambda_e`` floats. Checked on three cases, values and gradients.
    """
    what = "the hard-attention loss (3.12)"
    cases = _hard_cases()
    _check_batch_shape(student, cases[0], reference_hard_attention_loss(*cases[0].args), what, "caption")
    count = run_cases(student, reference_hard_attention_loss, cases, what)
    for case in cases:
        _hard_gradient_check(student, case, what)
    report(what, count, ", gradients with respect to log p(y | s~, a), log p(s~ | a) and H included")


# --------------------------------------------------------------------------- the moving-average baseline (3.11)


def reference_update_baseline(b, log_p_y, sampled, started, decay=0.9):
    """The baseline after one mini-batch, as :func:`attn_course.show_attend_tell.hard_loss` moves it.

    Mirrors hard_loss's lines ``mean = log_p_y[sampled].mean()`` and ``model.b.copy_(torch.where(
    model.b_started, c.baseline_decay * model.b + (1 - c.baseline_decay) * mean, mean))``, run
    under ``torch.no_grad()``; ``started`` is the buffer ``b_started``, False before the first batch.
    """
    with torch.no_grad():
        mean = log_p_y[sampled].mean()
        return torch.where(torch.as_tensor(started), decay * b + (1 - decay) * mean, mean)


def _baseline_cases() -> list[Case]:
    g = torch.Generator().manual_seed(10)
    cases = []
    for name, B, b, share_sampled, started, decay in (
            ("b = -5, 4 captions, all sampled", 4, -5.0, 1.0, True, None),
            ("half the captions read with the expected context: only the sampled ones count", 6, -3.0, 0.5, True,
             None),
            ("the first mini-batch (started = False, b = 0): b becomes the mean reward", 5, 0.0, 0.6, False, None),
            ("decay = 0.99", 4, -2.0, 0.75, True, 0.99)):
        log_p_y = -torch.rand(B, generator=g, dtype=F64) * 10 - 0.1
        sampled = torch.arange(B) < round(share_sampled * B)
        sampled = sampled[torch.randperm(B, generator=g)]
        b_t = torch.tensor(b, dtype=F64)
        d = 0.9 if decay is None else decay
        mean = log_p_y[sampled].mean()
        mistakes = {
            "the weights are swapped: (3.11) keeps 0.9 of the old baseline and adds 0.1 of the new rewards":
                (1 - d) * b_t + d * mean,
            "every caption is averaged, also those read with the expected context: average log_p_y[sampled]":
                (d * b_t + (1 - d) * log_p_y.mean()) if started else log_p_y.mean(),
            "the first mini-batch is not special: with started False the baseline is set to the mean reward, "
            "so the run does not start from 0": d * b_t + (1 - d) * mean,
            "the rewards are summed: (3.11) moves b towards their mean":
                (d * b_t + (1 - d) * log_p_y[sampled].sum()) if started else log_p_y[sampled].sum(),
            "the decay is ignored (0.9 whatever decay is)": 0.9 * b_t + 0.1 * mean,
        }
        kwargs = {} if decay is None else {"decay": decay}
        cases.append(Case(name, (b_t, log_p_y, sampled, started), kwargs, mistakes=mistakes))
    return cases


def check_update_baseline(student) -> None:
    """Grade ``student(b, log_p_y, sampled, started, decay=0.9) -> b``: equation (3.11), as ``hard_loss`` runs it.

    b_k = decay b_{k-1} + (1 - decay) mean(log p(y | s~, a)), the mean over the captions of
    the batch that sampled their regions (``sampled`` True); on the first mini-batch
    (``started`` False) b_1 is that mean. ``b`` a 0-dim tensor, ``log_p_y`` (B,), ``sampled``
    (B,) bool, ``started`` a bool. Returns the new baseline, a 0-dim tensor that carries no
    gradient. Checked on four cases.
    """
    what = "the moving-average baseline (3.11)"
    cases = _baseline_cases()
    count = run_cases(student, reference_update_baseline, cases, what)
    case = cases[1]
    log_p_y = case.args[1].clone().requires_grad_(True)
    got = call_student(student, (case.args[0], log_p_y, *case.args[2:]), what, case.name, case.kwargs)
    if isinstance(got, torch.Tensor) and got.requires_grad:
        raise ExerciseFailed(f"{what} ({case.name}): the new baseline carries a gradient from log_p_y: compute it "
                             "from log_p_y.detach() or under torch.no_grad(). b is a constant of the reward "
                             "(log p(y | s~, a) - b), and a baseline with a graph keeps every earlier batch's graph "
                             "alive")
    report(what, count, ", detached from the graph")


# --------------------------------------------------------------------------- the soft context inside the model, trained


# A captioner small enough for a short run in a notebook: 32 x 32 scenes on a 4 x 4 grid (L = 16), D = m = 32,
# 64 LSTM units. h_0 and c_0 are learned constants, not f_init of the image (3.4), so the decoder sees the
# image only through the context z^_t: what it learns of the scene, it learns through the student's function.
SHORT_CONFIG = SATConfig(vocab_size=len(VOCAB), image_size=32, cell=8, channels=8, D=32, m=32, n=64, att_hidden=32,
                         attention="soft", init_from_image=False)


@torch.no_grad()
def content_word_accuracy(model: ShowAttendTell, data: ShapeScenes, split: str = "val") -> float:
    """The share of size, colour and shape words predicted right, teacher-forced on every scene of ``split``
    with its left-to-right reference: the words that only the image can tell."""
    scenes = data.split(split)
    batch = data.batch(split, slice(0, len(scenes)))
    pick = left_to_right_reference(batch["layout"])
    rows = torch.arange(len(pick), device=pick.device)
    captions, referents = batch["references"][rows, pick], batch["referents"][rows, pick]
    with evaluating(model):
        predicted = model(batch["images"], captions)["logits"].argmax(-1)
    content = referents[:, 1:] >= 0
    return float(((predicted == captions[:, 1:]) & content).sum() / content.sum())


def train_with_soft_context(student, *, steps: int = 200, batch_size: int = 32, config: SATConfig = SHORT_CONFIG,
                            train_size: int = 4000, val_size: int = 250, seed: int = 0, share: float = 0.75,
                            device: str = "cpu", progress: bool = False) -> None:
    """Train Show, Attend and Tell with ``student(a, alpha, beta) -> z_hat`` as its soft context, then the same with
    the course's (3.13)-(3.14), and compare how many content words each gets right.

    The model is ``config`` (default :data:`SHORT_CONFIG`, soft attention), trained by the
    chapter's recipe for ``steps`` steps of ``batch_size`` scenes drawn from ``train_size``
    training scenes of the chapter's generator; the score is :func:`content_word_accuracy`
    on ``val_size`` validation scenes. It passes when that accuracy rises by at least
    ``share`` of the rise the course's context gives. A context that carries nothing of the
    image leaves the decoder a language model, which guesses sizes, colours and shapes.
    """
    if config.attention != "soft":
        raise ValueError(f"the soft context is used by soft attention, got attention={config.attention!r}")
    try_once(student, "the soft context (3.13)-(3.14)", _context_cases()[0][0].args)
    data = ShapeScenes(seed=DATA_SEED, train_size=train_size, val_size=val_size, test_size=val_size,
                       image_size=config.image_size, device=device, training_order=TRAINING_ORDER)
    setting = Setting(spec=SAT, task="soft", config=config, data=data,
                      measure=lambda model: content_word_accuracy(model, data), steps=steps, batch_size=batch_size,
                      seed=seed, device=device, key=(train_size, val_size))
    grid = config.image_size // config.cell
    training_check(student, what="the soft context (3.13)-(3.14)",
                   model=f"Show, Attend and Tell ({config.image_size} x {config.image_size} scenes, a {grid} x {grid} "
                         f"grid, D = {config.D}, {config.n} LSTM units)",
                   module=show_attend_tell, name="soft_context", arguments=lambda a, alpha, beta=None: (a, alpha, beta),
                   setting=setting, score=Score(f"content-word accuracy on {val_size} validation scenes", True,
                                                percent=True), share=share, progress=progress)
