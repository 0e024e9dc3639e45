"""Chapter 7's experiments: a small GPT-style decoder on the Python standard library's source (attention at scale).

The paper module is :mod:`attn_course.scale`; here are the course's model size, a fixed
character alphabet (so that a checkpoint reads the same ids on every machine), the text
(the standard library, or the reader's own file named by ``ATTN_COURSE_CORPUS``) split by
position, the recipe, the validation loss in nats and bits per character (7.12) a card
records, rotary against learned and sinusoidal positions beyond the trained context, sampling (7.13), and
the measurements behind the chapter's figures: attention weights per layer and head, the
time and peak memory of attention (7.1) written out, fused and blocked (7.4), and decoding
with and without the KV cache (7.9).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..runtime import evaluating
from ..scale import (GPT, CharTokenizer, Corpus, GPTConfig, attention, blocked_attention, expand_kv, fused_attention,
                     generate, next_token_loss, rope, sample_windows, sdpa_backend, split_by_position, stdlib_corpus,
                     text_corpus)
from ..spec import ModelSpec, Recipe, Target

TASKS = ("stdlib", "stdlib-learned", "stdlib-sinusoidal")
CORPUS_ENV = "ATTN_COURSE_CORPUS"  # a UTF-8 text file to train on instead of the standard library
MAX_CHARS = 4_000_000  # of the corpus: the standard library's first 4 million characters (in its shuffled order)
VALIDATION = 0.1  # the last tenth of the text, by position, is held out
VALIDATE_WINDOWS = 256  # windows of the validation text read while training (the card reads all of them)

# --------------------------------------------------------------------------- the alphabet

ALPHABET = "\t\n" + "".join(chr(c) for c in range(32, 127))  # tab, newline and printable ASCII: 97 characters
UNKNOWN = "\N{REPLACEMENT CHARACTER}"  # one more id, for every character outside the alphabet


class FixedTokenizer(CharTokenizer):
    """:class:`~attn_course.scale.CharTokenizer` over a fixed alphabet, :data:`ALPHABET` and :data:`UNKNOWN` (id 97):
    the same ids whatever the text and the Python version, so a checkpoint is portable. Characters outside the
    alphabet (``\\r``, non-ASCII) read as the unknown id and decode as U+FFFD."""

    def __init__(self):
        super().__init__(ALPHABET + UNKNOWN)

    @property
    def unknown_id(self) -> int:
        return len(ALPHABET)

    def encode(self, text: str) -> torch.Tensor:
        """(len(text),) int64 ids; a character outside the alphabet is :attr:`unknown_id`."""
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        if not text.isascii():  # one placeholder byte per character outside ASCII, which the table maps to unknown
            text = re.sub(r"[^\x00-\x7f]", "\x00", text)
        table = torch.full((128,), self.unknown_id, dtype=torch.long)
        table[torch.tensor([ord(c) for c in ALPHABET])] = torch.arange(len(ALPHABET))
        if not text:
            return torch.zeros(0, dtype=torch.long)
        return table[torch.frombuffer(bytearray(text.encode("ascii")), dtype=torch.uint8).long()]

    def unknown_count(self, text: str) -> int:
        """How many characters of ``text`` lie outside the alphabet."""
        return int((self.encode(text) == self.unknown_id).sum())


TOKENIZER = FixedTokenizer()
VOCAB_SIZE = TOKENIZER.vocab_size  # 98

# --------------------------------------------------------------------------- the model and the recipe

# The course's model: d_model 64, 4 layers of 4 query heads sharing 2 key/value heads (7.8), a context of 128
# characters; 189,696 parameters. One step of batch 32 takes 130 to 150 ms on one CPU thread, so the full profile's
# 10,000 steps take 22 to 25 minutes. "stdlib-learned" and "stdlib-sinusoidal" are the same model with learned
# positions and with chapter 5's sinusoidal ones, for the comparison with rotary ones at equal steps.
COURSE_CONFIGS = {
    "stdlib": GPTConfig(vocab_size=VOCAB_SIZE, context=128, d_model=64, layers=4, heads=4, kv_heads=2,
                        position="rotary"),
}
COURSE_CONFIGS["stdlib-learned"] = dataclasses.replace(COURSE_CONFIGS["stdlib"], position="learned")
COURSE_CONFIGS["stdlib-sinusoidal"] = dataclasses.replace(COURSE_CONFIGS["stdlib"], position="sinusoidal")
WARMUP = 100  # steps of linear warm-up, at most a tenth of a shorter run


def warmup_then_cosine(model: GPT, lr: float, steps: int, weight_decay: float = 0.1, final_fraction: float = 0.1):
    """AdamW (betas 0.9, 0.99) with weight decay on the matrices and embeddings (not on biases or LayerNorm gains),
    the rate rising linearly over :data:`WARMUP` steps (a tenth of a shorter run), then a cosine to
    ``final_fraction`` of ``lr``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    warmup = min(WARMUP, max(steps // 10, 1))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rate)


# Batch 32 windows of 128 characters, AdamW from 2e-3, gradients clipped at norm 1, mixed precision on a GPU.
_RECIPE = dict(batch_size=32, lr=2e-3, optimizer=warmup_then_cosine, clip_grad_norm=1.0, amp=None, log_every=50,
               checkpoint_every=1000, evaluations=5, long_run=2000)
RECIPES = {task: Recipe(300, 10_000, **_RECIPE) for task in TASKS}
# What the shipped checkpoints must show (tests/test_pretrained.py requires a shipped checkpoint for every target).
TARGETS = {
    "stdlib": Target("bits_per_char", at_most=1.9, why="more than 2.6 bits per character below a model that ignores "
                                                       "the context (4.58)"),
    "stdlib-learned": Target("bits_per_char", why="learned positions, for the comparison with rotary ones"),
    "stdlib-sinusoidal": Target("bits_per_char", why="chapter 5's sinusoidal positions, for the comparison with "
                                                     "rotary ones"),
}

# --------------------------------------------------------------------------- the text


def load_corpus(max_chars: int | None = MAX_CHARS) -> Corpus:
    """The text to train on: the file ``$ATTN_COURSE_CORPUS`` names (UTF-8) if set, else the standard library
    (:func:`~attn_course.scale.stdlib_corpus`); cut at ``max_chars``."""
    path = os.environ.get(CORPUS_ENV, "").strip()
    if not path:
        return stdlib_corpus(max_chars)
    try:
        return text_corpus(path, max_chars)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{CORPUS_ENV} names {path}, which is not a text file") from error


class TextData:
    """A corpus as ids of :data:`TOKENIZER`, split by position (the last ``validation`` fraction held out); training
    batches are random windows of ``context`` characters of the first part (7.12)."""

    def __init__(self, corpus: Corpus, context: int, validation: float = VALIDATION, device=None):
        if not isinstance(corpus, Corpus):
            raise TypeError(f"corpus must be a scale.Corpus, got {type(corpus).__name__}")
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ValueError(f"context must be a positive int, got {context!r}")
        self.corpus, self.context, self.validation = corpus, context, validation
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        ids = TOKENIZER.encode(corpus.text)
        self.train_ids, self.validation_ids = split_by_position(ids, validation)
        self.unknown = int((ids == TOKENIZER.unknown_id).sum())
        for part, part_ids in (("training", self.train_ids), ("validation", self.validation_ids)):
            if len(part_ids) < context + 1:
                raise ValueError(f"the {part} part of {corpus.source} has {len(part_ids)} characters; windows of "
                                 f"{context} + 1 need more: use a longer text")

    def sample(self, generator: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        """``batch_size`` windows at random offsets of the training part: ``{"inputs", "targets"}`` (B, context)."""
        return sample_windows(self.train_ids, self.context, batch_size, generator, self.device)

    def describe(self) -> str:
        c = self.corpus
        licence = "; the PSF License Agreement" if c.source.startswith("the standard library") else ""
        return (f"{c.source}{licence}: {len(c.text):,} characters from {len(c.files)} file(s), sha256 {c.sha256}; "
                f"{len(self.train_ids):,} to train on, the last {self.validation:.0%} ({len(self.validation_ids):,}) "
                f"held out; {self.unknown:,} outside the {len(ALPHABET)}-character alphabet")


def text_data(task: str, device=None, max_chars: int | None = MAX_CHARS) -> TextData:
    """The task's data: :func:`load_corpus` in windows of the task's context."""
    if task not in COURSE_CONFIGS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return TextData(load_corpus(max_chars), COURSE_CONFIGS[task].context, device=device)


# --------------------------------------------------------------------------- the metrics: (7.12)


def validation_windows(ids: torch.Tensor, length: int, windows: int | None = None) -> torch.Tensor:
    """(W, length + 1): consecutive non-overlapping windows from the start of ``ids`` (N,), window w holding
    ids[w length .. (w + 1) length] (its inputs and, shifted by one, its targets); the first ``windows`` of them
    (None: all (N - 1) // length)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError(f"expected ids of shape (N,), got {_shape(ids)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    available = (len(ids) - 1) // length
    if windows is not None and (isinstance(windows, bool) or not isinstance(windows, int) or windows < 1):
        raise ValueError(f"windows must be a positive int or None, got {windows!r}")
    count = available if windows is None else min(windows, available)
    if count < 1:
        raise ValueError(f"{len(ids)} ids hold no window of {length} + 1")
    starts = torch.arange(count) * length
    return ids[starts[:, None] + torch.arange(length + 1)]


@torch.no_grad()
def validation_loss(model: GPT, data: TextData, windows: int | None = None, length: int | None = None,
                    batch_size: int = 64) -> dict:
    """(7.12) on :func:`validation_windows` of the held-out text (deterministic): ``nats_per_char`` (the mean
    cross-entropy), ``bits_per_char`` (/ ln 2), ``characters`` predicted, and ``per_position`` (length,): the mean
    loss at each position of a window. ``length`` defaults to the data's context."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    length = data.context if length is None else length
    if length > model.config.context:
        raise ValueError(f"the model reads at most {model.config.context} characters, asked for windows of {length}")
    chunks = validation_windows(data.validation_ids, length, windows)
    device = model.E.weight.device
    total = torch.zeros(length, dtype=torch.float64)
    with evaluating(model):
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start:start + batch_size].to(device)
            logits = model(batch[:, :-1]).float()
            loss = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (B, length)
            total += loss.sum(0).double().cpu()
    per_position = total / len(chunks)
    nats = float(per_position.mean())
    return {"nats_per_char": nats, "bits_per_char": nats / math.log(2), "characters": len(chunks) * length,
            "per_position": per_position}


def validation_bits_per_char(model: GPT, data: TextData, windows: int | None = None) -> float:
    """Bits per character (7.12) on the first ``windows`` non-overlapping windows of the held-out text (None:
    all of it)."""
    return validation_loss(model, data, windows)["bits_per_char"]


def _validate(model: GPT, data: TextData) -> dict[str, float]:
    result = validation_loss(model, data, VALIDATE_WINDOWS)
    return {"bits_per_char": result["bits_per_char"], "nats_per_char": result["nats_per_char"]}


def _evaluate(model: GPT, task: str, device) -> tuple[dict[str, float], int]:
    result = validation_loss(model, text_data(task, device))
    return {"bits_per_char": result["bits_per_char"], "nats_per_char": result["nats_per_char"]}, result["characters"]


# What a card records of the model's writing: each prompt continued at temperature 0 (greedy) and 0.8 (seed 0).
CARD_PROMPTS = ("def ", "import os\n", "class Parser:\n    def __init__(self")


def _card_samples(model: GPT, task: str, device) -> dict:
    samples = [{"prompt": prompt, "temperature": temperature, "seed": 0,
                "text": sample_text(model, prompt, 160, temperature=temperature, seed=0)}
               for prompt in CARD_PROMPTS for temperature in (0.0, 0.8)]
    return {"samples": samples}


def _check_config(task: str, config: GPTConfig) -> None:
    if config.vocab_size != VOCAB_SIZE:
        raise ValueError(f"config.vocab_size is {config.vocab_size}, but the alphabet has {VOCAB_SIZE} ids")
    context = COURSE_CONFIGS[task].context
    if config.context != context:
        raise ValueError(f"config.context is {config.context}, but the {task} data are windows of {context} "
                         f"characters: pass data=TextData(load_corpus(), {config.context}) for another context")


GPT_SPEC = ModelSpec(
    name="gpt", description="a GPT-style decoder (Radford et al. 2018), character level, d_model 64, 4 layers, "
                            "4 heads over 2 key/value heads, a context of 128",
    title="GPT", tasks=TASKS, config_class=GPTConfig, model_class=GPT, config=COURSE_CONFIGS.__getitem__,
    data=text_data, loss=lambda task: next_token_loss, evaluate=_evaluate, validate=_validate, recipes=RECIPES,
    targets=TARGETS, check_config=_check_config, default_task="stdlib",
    card_extras=_card_samples)
SPECS = (GPT_SPEC,)


# --------------------------------------------------------------------------- beyond the trained context


def with_context(model: GPT, context: int) -> GPT:
    """A copy of ``model`` that reads up to ``context`` characters: rotary (7.6) and sinusoidal positions add no
    weights, so the same weights serve any length. Learned positions have a row of P per position and cannot."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    c = model.config
    if c.position == "learned" and context > c.context:
        raise ValueError(f"learned positions: P has {c.context} rows, none for positions {c.context} and beyond")
    longer = GPT(dataclasses.replace(c, context=context)).to(model.E.weight.device)
    longer.load_state_dict(model.state_dict())
    return longer.train(model.training)


def extrapolation(model: GPT, data: TextData, lengths: Iterable[int], characters: int = 65_536) -> list[dict]:
    """Validation loss (7.12) in windows of each of ``lengths``, over the same first ``characters`` (or fewer) of
    the held-out text: one row per length with ``nats_per_char``, ``bits_per_char``, and ``beyond`` (the mean loss
    at the positions the model never trained on, >= its context; None for shorter windows).

    A rotary or sinusoidal model is read at any length (:func:`with_context`); a learned-position model
    beyond its context gets a row of None with ``why`` (P has no row for those positions).
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    trained, rows = model.config.context, []
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"lengths must be positive ints, got {length!r}")
        row = {"length": length, "nats_per_char": None, "bits_per_char": None, "beyond": None, "why": ""}
        if length > trained and model.config.position == "learned":
            row["why"] = f"learned positions: P has {trained} rows, none for positions {trained} and beyond"
            rows.append(row)
            continue
        reader = model if length <= trained else with_context(model, length)
        result = validation_loss(reader, data, windows=max(characters // length, 1), length=length)
        row.update(nats_per_char=result["nats_per_char"], bits_per_char=result["bits_per_char"],
                   characters=result["characters"])
        if length > trained:
            row["beyond"] = float(result["per_position"][trained:].mean())
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- sampling: (7.13)


@torch.no_grad()
def sample_text(model: GPT, prompt: str, n: int = 200, temperature: float = 0.8, seed: int = 0) -> str:
    """``prompt`` continued by ``n`` characters drawn by (7.13) (``temperature`` 0: greedy), the draws seeded by
    ``seed``. Past the model's context the window slides: each chunk re-reads the last half-context."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string (e.g. '# file: ')")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    context = model.config.context
    generator = torch.Generator(device=model.E.weight.device).manual_seed(seed)
    ids = TOKENIZER.encode(prompt).to(model.E.weight.device)
    keep = max(context // 2, 1)
    written = 0
    while written < n:
        window = ids[-keep:] if written or len(ids) > context - 1 else ids
        chunk = min(n - written, context - len(window))
        ids = torch.cat([ids, generate(model, window, chunk, temperature=temperature, generator=generator)[-chunk:]])
        written += chunk
    return TOKENIZER.decode(ids.cpu())


# --------------------------------------------------------------------------- attention weights, for the figures


@torch.no_grad()
def attention_weights(model: GPT, ids: torch.Tensor) -> list[torch.Tensor]:
    """The weights P = softmax(Q K^T / sqrt(d_k)) (7.1) of every layer, (B, h, T, T) each, for token ids (B, T) or
    (T,) ((1, h, T, T) then): the fused forward pass does not keep them, so each layer's are recomputed from its
    input, with the rotation (7.6), the shared key heads (7.8) and the causal mask (7.5)."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    ids = torch.as_tensor(ids, device=model.E.weight.device)
    ids = ids[None] if ids.dim() == 1 else ids
    c = model.config
    weights: list[torch.Tensor] = []

    def keep(module, inputs, output):
        x = inputs[0]
        B, T, _ = x.shape
        q = module.W_Q(x).view(B, T, c.heads, c.d_k).transpose(1, 2)
        k = module.W_K(x).view(B, T, c.g, c.d_k).transpose(1, 2)
        if c.position == "rotary":
            positions = torch.arange(T, device=x.device)
            q, k = rope(q, positions, c.rope_base), rope(k, positions, c.rope_base)
        K = expand_kv(k, c.heads)
        weights.append(attention(q, K, K, causal=True, return_weights=True)[1])

    hooks = [block.attention.register_forward_hook(keep) for block in model.blocks]
    try:
        with evaluating(model):
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return weights


# --------------------------------------------------------------------------- the cost of attention: (7.1), (7.4)


def peak_bytes(fn: Callable[[], object], device=None) -> tuple[object, int | None]:
    """(fn(), the most bytes of tensors fn had allocated at once beyond what was there before it). On CUDA from
    ``torch.cuda.max_memory_allocated``; on a CPU from the allocation events torch's profiler records with
    ``profile_memory`` (None where they cannot be read)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorder:
        result = fn()
    try:
        events = [e for e in recorder.profiler.kineto_results.events() if e.name() == "[memory]"]
        now = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            now += event.nbytes()
            peak = max(peak, now)
    except (AttributeError, RuntimeError):  # the profiler's results in another form: no reading
        return result, None
    return result, peak


ATTENTION_METHODS: dict[str, Callable] = {
    "explicit": lambda Q, K, V, block: attention(Q, K, V),  # S and P written out (7.1)
    "fused": lambda Q, K, V, block: fused_attention(Q, K, V),  # torch's scaled_dot_product_attention
    "blocked": lambda Q, K, V, block: blocked_attention(Q, K, V, block),  # the tiling of (7.4)
}


@torch.no_grad()
def attention_cost(lengths: Sequence[int] = (128, 256, 512, 1024), methods: Sequence[str] = tuple(ATTENTION_METHODS),
                   d: int = 64, heads: int = 1, batch: int = 1, block_size: int = 128, repeat: int = 3,
                   device=None) -> list[dict]:
    """Time and peak memory of one forward pass of attention (7.1) per method and length n, in this process:
    ``seconds`` (the median of ``repeat`` calls after a warm-up), ``peak_bytes`` (:func:`peak_bytes`),
    ``score_bytes`` (one n x n matrix for every batch and head, what "explicit" holds twice) and ``kernel`` (the
    SDPA backend torch picks for "fused"). ``benchmarks/scale.py`` measures the same in fresh processes."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    unknown = [m for m in methods if m not in ATTENTION_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(ATTENTION_METHODS)}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    rows = []
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"lengths must be positive ints, got {n!r}")
        g = torch.Generator(device=device).manual_seed(0)
        Q, K, V = (torch.randn(batch, heads, n, d, generator=g, device=device) for _ in range(3))
        for method in methods:
            call = lambda: ATTENTION_METHODS[method](Q, K, V, block_size)  # noqa: E731
            call()  # warm-up
            _, peak = peak_bytes(call, device)
            seconds = []
            for _ in range(repeat):
                start = time.perf_counter()
                call()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds.append(time.perf_counter() - start)
            rows.append({"method": method, "n": n, "seconds": statistics.median(seconds), "peak_bytes": peak,
                         "score_bytes": batch * heads * n * n * Q.element_size(),
                         "kernel": sdpa_backend(Q, K, V) if method == "fused" else ""})
    return rows


# --------------------------------------------------------------------------- decoding with and without the cache: (7.9)


@torch.no_grad()
def decoding_cost(model: GPT, prompt_ids, n: int, repeat: int = 1) -> dict:
    """Greedy decoding of ``n`` tokens after ``prompt_ids`` with and without the KV cache (7.9): tokens per second
    (the best of ``repeat`` runs), whether both wrote the same tokens, and the cache's bytes at the end (7.10)."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    speeds, outputs = {}, {}
    for cached in (True, False):
        best = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            outputs[cached] = generate(model, prompt_ids, n, use_cache=cached)
            if model.E.weight.device.type == "cuda":
                torch.cuda.synchronize(model.E.weight.device)
            best = min(best, time.perf_counter() - start)
        speeds[cached] = n / best if best > 0 else math.inf
    ids = outputs[True]
    caches = model.empty_cache()
    with evaluating(model):
        model((ids[None] if ids.dim() == 1 else ids)[:, :-1], caches)
    return {"tokens_per_s_cached": speeds[True], "tokens_per_s_uncached": speeds[False],
            "same_tokens": bool(torch.equal(outputs[True], outputs[False])),
            "cache_bytes": sum(cache.nbytes() for cache in caches), "tokens": n}


@torch.no_grad()
def cache_trace(model: GPT, prompt_ids, n: int) -> dict:
    """Greedy decoding of ``n`` tokens after ``prompt_ids`` (T_0,) one step at a time through the KV cache (7.9),
    recorded for the figure: ``ids`` (T_0 + n,), ``prompt_length``, the cache's ``length`` and ``bytes`` after each
    forward pass (the first reads the prompt, each later one the token just written: T_0, T_0 + 1, ...), and
    ``weights``: each layer's attention (h, T, T) over the whole text (row t is what token t read from the cache)."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=model.E.weight.device)
    if ids.dim() != 1 or len(ids) < 1:
        raise ValueError(f"expected a non-empty prompt of shape (T_0,), got {_shape(ids)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or len(ids) + n > model.config.context:
        raise ValueError(f"n must be an int in [0, {model.config.context - len(ids)}] (the context less the "
                         f"prompt), got {n!r}")
    caches = model.empty_cache()
    lengths, sizes = [], []

    def read(new: torch.Tensor) -> torch.Tensor:
        logits = model(new, caches)[:, -1]
        lengths.append(len(caches[0]))
        sizes.append(sum(cache.nbytes() for cache in caches))
        return logits

    with evaluating(model):
        logits = read(ids[None])
        for step in range(n):
            token = logits.argmax(-1, keepdim=True)  # (7.13), greedy
            ids = torch.cat([ids, token[0]])
            if step < n - 1:  # the last token is written, never read
                logits = read(token)
    weights = [w[0].cpu() for w in attention_weights(model, ids)]
    return {"ids": ids.cpu(), "prompt_length": len(ids) - n, "length": lengths, "bytes": sizes, "weights": weights}


def summary(rows: Iterable[Mapping]) -> str:
    """The rows of :func:`extrapolation` as a small table (bits per character; ``beyond``: at positions >= the
    trained context)."""
    lines = [f"{'length':>7} {'bits/char':>10} {'beyond':>8}  note"]
    for row in rows:
        bits = "-" if row["bits_per_char"] is None else f"{row['bits_per_char']:.3f}"
        beyond = "-" if row["beyond"] is None else f"{row['beyond'] / math.log(2):.3f}"
        lines.append(f"{row['length']:>7} {bits:>10} {beyond:>8}  {row['why']}")
    return "\n".join(lines)


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__

