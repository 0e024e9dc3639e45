"""Chapter 4's implement-it exercises (Lee & Osindero 2016, R2AM): the recursive block and the attention decoder.

* :func:`check_recursive_block` grades the recursive block in its fully tied form (4.1), one
  kernel w^hh for every step, against :class:`attn_course.r2am.RecursiveBlock` with
  ``first_kernel="shared"``, fed the same convolution and batch norms;
* :func:`check_attention_context` grades the decoder's scores, weights and context (4.6)
  against :class:`attn_course.decoding.SoftAttention` and :func:`attn_course.decoding.soft_context`,
  the f_att the model uses.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..decoding import SoftAttention, soft_context
from ..r2am import RecurrentBlock, RecursiveBlock
from . import Case, ExerciseFailed, named, report, run_cases


def _built(module: type[nn.Module], *args, **kwargs) -> nn.Module:
    """A module built without touching the global random state (the student's notebook keeps its seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return module(*args, **kwargs)


# --------------------------------------------------------------------------- (4.1) the recursive block


class _StepNorms(nn.ModuleList):
    """The block's T + 1 batch norms, one per step; an index past the last says what it means."""

    def __getitem__(self, index):
        if isinstance(index, int) and not -len(self) <= index < len(self):
            raise IndexError(f"norms holds T + 1 = {len(self)} batch norms, norms[0] .. norms[{len(self) - 1}], "
                             f"one per convolution t = 0..T; norms[{index}] would belong to a convolution too many")
        return super().__getitem__(index)


def _random_block(C: int, T: int, seed: int, dtype=torch.float64) -> RecursiveBlock:
    """A RecursiveBlock in eval mode whose convolution and per-step batch norms (statistics, scale and shift) are
    random and different, so that a step skipped, repeated or given the wrong norm shows."""
    block = _built(RecursiveBlock, C, T, first_kernel="shared")
    block.norms = _StepNorms(list(block.norms))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        block.w_hh.weight.copy_(torch.randn(C, C, 3, 3, generator=g) * 1.5 / (3 * C ** 0.5))
        block.w_hh.bias.copy_(torch.randn(C, generator=g) * 0.5)
        for norm in block.norms:
            norm.running_mean.copy_(torch.randn(C, generator=g) * 0.3)
            norm.running_var.copy_(torch.rand(C, generator=g) * 1.5 + 0.5)
            norm.weight.copy_(torch.rand(C, generator=g) + 0.5)
            norm.bias.copy_(torch.randn(C, generator=g) * 0.3)
    return block.to(dtype).eval()


def _loop(x, weight, bias, norms, convolutions, norm_of=lambda t: t, layer=lambda norm, u: F.relu(norm(u)),
          feed=None):
    """``convolutions`` steps h <- layer(norms[norm_of(t)], w * h + b (+ feed after t = 0)): the mistakes' variants
    of (4.1)."""
    h = x
    for t in range(convolutions):
        u = F.conv2d(h, weight, bias, padding=1)
        if feed is not None and t > 0:
            u = u + feed
        h = layer(norms[norm_of(t)], u)
    return h


def _recursive_cases(dtype=torch.float64) -> tuple[list[Case], dict[int, RecursiveBlock]]:
    g = torch.Generator().manual_seed(0)
    cases, blocks = [], {}
    for number, (name, (B, C, H, W, T)) in enumerate((
            ("T = 2, three channels", (2, 3, 6, 7, 2)), ("T = 0: one convolution only", (1, 4, 5, 5, 0)),
            ("T = 1, two channels", (3, 2, 4, 6, 1)), ("T = 3, five channels", (2, 5, 6, 5, 3)))):
        block = _random_block(C, T, seed=100 + number, dtype=dtype)
        x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
        weight, bias, norms = block.w_hh.weight.detach(), block.w_hh.bias.detach(), block.norms
        blocks[id(norms)] = block
        with torch.no_grad():
            steps = block(x, return_steps=True)
            recurrent = _built(RecurrentBlock, C, T, tied=True).to(dtype).eval()
            recurrent.norms = norms
            params = {"w_f.weight": weight, "w_f.bias": bias}
            if T:
                params["w_r.0.weight"] = weight
            mistakes = {
                "the input is fed again at every step, h(t) = sigma(w * h(t-1) + w * x + b): that is the recurrent "
                "block (4.2); in (4.1) x enters at t = 0 only": functional_call(recurrent, params, (x,)),
                "the input is fed again at every step (w * h(t-1) + b + w * x + b): that is the recurrent block "
                "(4.2); in (4.1) x enters at t = 0 only":
                    _loop(x, weight, bias, norms, T + 1, feed=F.conv2d(x, weight, bias, padding=1)),
                f"there is one convolution too few: {T} instead of T + 1 = {T + 1} (t runs from 0 to T)":
                    steps[T - 1] if T else x,
                f"there is one convolution too many: {T + 2} instead of T + 1 = {T + 1} (the step t = 0 is done "
                "twice)": _loop(x, weight, bias, norms, T + 2, norm_of=lambda t: max(t - 1, 0)),
                "the same batch norm, norms[0], is used at every step: the convolution is tied, the normalisation "
                "is not (norms[t] at step t)": _loop(x, weight, bias, norms, T + 1, norm_of=lambda t: 0),
                "the bias b is left out": _loop(x, weight, None, norms, T + 1),
                "the batch norms are left out: sigma(u) here is relu(norms[t](u))":
                    _loop(x, weight, bias, norms, T + 1, layer=lambda norm, u: F.relu(u)),
                "the ReLU is left out: sigma(u) here is relu(norms[t](u))":
                    _loop(x, weight, bias, norms, T + 1, layer=lambda norm, u: norm(u)),
                "the batch norm comes after the ReLU: sigma(u) here is relu(norms[t](u)), the norm first":
                    _loop(x, weight, bias, norms, T + 1, layer=lambda norm, u: norm(F.relu(u))),
            }
        cases.append(Case(name, (x, weight, bias, norms, T), mistakes=mistakes))
    return cases, blocks


def _tied_precheck(student, what: str) -> None:
    """Two calls on the same input must agree, and the gradient must reach the given weight: a function that builds
    convolutions of its own (untied, freshly initialised weights) fails here with a message that says so."""
    cases, _ = _recursive_cases(torch.float32)
    x, weight, bias, norms, T = cases[0].args
    outputs = []
    for _ in range(2):
        w = weight.clone().requires_grad_(True)
        try:
            out = student(x, w, bias, norms, T)
        except Exception:  # run_cases reports the error with its case
            return
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            return  # run_cases reports the type or the shape
        outputs.append(out.detach())
        if not out.requires_grad:
            raise ExerciseFailed(f"{what}: no gradient reaches the weight w^hh from your result: use the weight "
                                 "and bias you are given at every step (tied), not convolutions of your own or "
                                 "a detached copy")
        (grad,) = torch.autograd.grad(out.sum(), [w], allow_unused=True)
        if grad is None:
            raise ExerciseFailed(f"{what}: no gradient reaches the weight w^hh from your result: use the weight "
                                 "and bias you are given at every step (tied), not convolutions of your own")
    if not torch.allclose(outputs[0], outputs[1], atol=1e-6, rtol=1e-5):
        raise ExerciseFailed(f"{what}: two calls on the same input give different results: does your function "
                             "build convolutions of its own (an nn.Conv2d has fresh random weights)? Every step "
                             "must apply the given weight w^hh and bias b: the weights are tied")


def check_recursive_block(student) -> None:
    """Grade ``student(x, weight, bias, norms, T) -> h(T)``, the recursive block with tied weights (4.1).

    ``x`` (B, C, H, W); ``weight`` (C, C, 3, 3) and ``bias`` (C,), the one convolution w^hh
    (3 x 3, padding 1, so the size stays); ``norms`` the T + 1 batch norms (eval mode),
    ``norms[t]`` for step t; sigma(u) = relu(norms[t](u)). The reference is
    :class:`attn_course.r2am.RecursiveBlock` (``first_kernel="shared"``) with this weight and these norms; gradients
    with respect to x, the weight and the bias are compared too.
    """
    what = "recursive block (4.1)"
    if not callable(student):
        raise ExerciseFailed(f"{what}: expected a function, got {type(student).__name__}")
    cases, blocks = _recursive_cases()

    def reference(x, weight, bias, norms, T):
        block = blocks[id(norms)]
        return functional_call(block, {"w_hh.weight": weight, "w_hh.bias": bias}, (x,))

    _tied_precheck(student, what)
    with named(arguments=("x", "weight", "bias")):
        count = run_cases(student, reference, cases, what, gradient_of=(0, 1, 2), hints={
            "Kernel size can't be greater": "without padding=1 every 3 x 3 convolution shrinks the map by one "
                                            "pixel on each side; with it, h(t) keeps the size of x"})
    report(what, count, ", T = 0 to 3, gradients with respect to x, w^hh and b included")


# --------------------------------------------------------------------------- (4.6) scores, weights and context


class _Attend(nn.Module):
    """The reference: the model's f_att and soft context, as R2AM.step calls them."""

    def __init__(self, D: int, n: int, hidden: int):
        super().__init__()
        self.f_att = SoftAttention(D, n, hidden)

    def forward(self, a: torch.Tensor, h_prev: torch.Tensor):
        alpha = self.f_att(self.f_att.project(a), h_prev)
        return soft_context(a, alpha), alpha


def _attention_reference(a, h_prev, W_a, b_a, W_h, w):
    module = _built(_Attend, a.shape[-1], h_prev.shape[-1], W_a.shape[0]).to(a.dtype)
    params = {"f_att.W_a.weight": W_a, "f_att.W_a.bias": b_a, "f_att.W_h.weight": W_h, "f_att.w.weight": w[None],
              "f_att.w.bias": torch.full((1,), 0.7, dtype=a.dtype)}  # w's bias shifts every e_ti alike: no effect
    return functional_call(module, params, (a, h_prev))


def _attention_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for name, (B, L, D, n, hidden) in (
            ("as many lines as columns", (3, 3, 4, 5, 7)), ("two lines of five columns", (2, 5, 6, 4, 3)),
            ("one column", (2, 1, 3, 2, 4)), ("a batch of four, seven columns", (4, 7, 5, 6, 8))):
        r = lambda *shape, s=1.0: torch.randn(*shape, generator=g, dtype=torch.float64) * s  # noqa: E731
        a, h_prev = r(B, L, D), r(B, n)
        W_a, b_a, W_h, w = r(hidden, D, s=D ** -0.5 * 1.5), r(hidden, s=0.5), r(hidden, n, s=n ** -0.5 * 1.5), \
            r(hidden, s=1.5)
        Wa_a, Wh_h = a @ W_a.T + b_a, h_prev @ W_h.T  # (B, L, hidden), (B, hidden)
        e = torch.tanh(Wa_a + Wh_h[:, None]) @ w
        wrong_alpha = {
            "the tanh is forgotten, e_ti = w^T (W_a a_i + b_a + W_h h_{t-1}): then W_h h_{t-1} adds the same "
            "number to every e_ti and the weights ignore the decoder's state": ((Wa_a + Wh_h[:, None]) @ w).softmax(1),
            "W_h h_{t-1} is left out of the scores": (torch.tanh(Wa_a) @ w).softmax(1),
            "the bias b_a is left out of the scores": (torch.tanh(Wa_a - b_a + Wh_h[:, None]) @ w).softmax(1),
            "the softmax runs over the batch axis (dim=0) instead of the columns i (dim=1)": e.softmax(0),
            "the softmax runs over an axis of size 1 (e kept as (B, L, 1)), so every alpha_ti is 1":
                torch.ones(B, L, dtype=torch.float64),
            "the softmax is forgotten: alpha_ti = e_ti, not exp(e_ti) / sum_k exp(e_tk)": e,
        }
        if B == L:
            wrong_alpha["W_h h_{t-1} (B, d_att) is added without a column axis, so it broadcasts over the wrong "
                        "axis: column i gets the state of line i; use (W_h h_{t-1})[:, None, :]"] = \
                (torch.tanh(Wa_a + Wh_h[None, :]) @ w).softmax(1)
        mistakes = {}
        for mistake, alpha in wrong_alpha.items():
            mistakes[mistake] = soft_context(a, alpha)  # z_t, compared first
            mistakes[mistake + " (seen in alpha)"] = alpha
        mistakes["z_t is the plain mean of the columns: alpha is not used"] = a.mean(1)
        mistakes["z_t is the plain sum of the columns: alpha is not used"] = a.sum(1)
        cases.append(Case(name, (a, h_prev, W_a, b_a, W_h, w), mistakes=mistakes))
    return cases


def check_attention_context(student) -> None:
    """Grade ``student(a, h_prev, W_a, b_a, W_h, w) -> (z_t, alpha_t)``, the decoder's attention of (4.6).

    e_ti = w^T tanh(W_a a_i + b_a + W_h h_{t-1}), alpha_t = softmax over the columns i,
    z_t = sum_i alpha_ti a_i. ``a`` (B, L, D) the columns, ``h_prev`` (B, n), ``W_a``
    (d_att, D), ``b_a`` (d_att,), ``W_h`` (d_att, n), ``w`` (d_att,) (matrices act on column
    vectors, as in the equation: W_a a_i is ``a @ W_a.T``). Returns z_t (B, D) and alpha_t
    (B, L). The reference is the model's f_att (:class:`attn_course.decoding.SoftAttention`)
    and :func:`attn_course.decoding.soft_context`; the gradients of z_t with respect to every
    argument are compared too.
    """
    what = "attention context (4.6)"
    if not callable(student):
        raise ExerciseFailed(f"{what}: expected a function, got {type(student).__name__}")

    with named(values=("z_t", "alpha_t"), arguments=("a", "h_prev", "W_a", "b_a", "W_h", "w")):
        count = run_cases(student, _attention_reference, _attention_cases(), what, gradient_of=(0, 1, 2, 3, 4, 5),
                          hints={"must match the size": "if this is W_a a + W_h h_{t-1}: W_h h_{t-1} is (B, d_att) "
                                 "and W_a a is (B, L, d_att); give the first a column axis, [:, None, :], so that "
                                 "it broadcasts over the L columns"})
    report(what, count, ", gradients of z_t with respect to a, h_{t-1}, W_a, b_a, W_h and w included")
