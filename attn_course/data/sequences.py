"""Sequence-to-sequence tasks with readable attention, for the Transformer (chapter 5).

Four tasks, all over one character vocabulary (:data:`VOCAB`):

* ``copy``: ``"qhzta" -> "qhzta"``;
* ``reverse``: ``"qhzta" -> "athzq"``;
* ``sort``: ``"qhzta" -> "ahqtz"``;
* ``dates``: a date in one of many surface forms -> ISO 8601, e.g.
  ``"Tuesday, 24 November 2026"``, ``"Nov 24th, 2026"``, ``"24.11.2026"``,
  ``"11/24/2026"``, ``"2026年11月24日"`` -> ``"2026-11-24"``; and, for measuring how far
  that reaches, dates in forms the generator never writes (:func:`off_generator_dates`),
  and the calendar as a constraint on the output (:func:`calendar_allowed`).

Every example comes with its *carriers*: for each output character, which source
characters carry it (the year digits for the year, the month's name or digits for the
month, ...). They are the ground truth that cross-attention can be checked against.

The held-out test set (:meth:`SequenceTask.test_set`, 2,000 examples by default) is
disjoint from training *by construction*: a fixed hash puts one source in ten (for
``dates``: one calendar day in ten, in every surface form) into the held-out bucket;
training batches never contain a held-out source and the test set contains nothing
else. Generation is vectorised (loops run over formats and positions, never over
examples): random numbers come from the caller's CPU ``torch.Generator``, the strings
are assembled as token tensors on the task's device.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

# --------------------------------------------------------------------------- A. the vocabulary

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>")
CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.-/年月日"
VOCAB = SPECIALS + tuple(CHARACTERS)
VOCAB_SIZE = len(VOCAB)
_INDEX = {c: i for i, c in enumerate(VOCAB)}

TASKS = ("copy", "reverse", "sort", "dates")
SYMBOLS = "abcdefghijklmnopqrstuvwxyz"  # the alphabet of copy, reverse and sort
HELD_OUT_ONE_IN = 10  # one source (or calendar day) in ten is reserved for the test set
TEST_SEED = 1_000_003


def encode(text: str) -> list[int]:
    """Character ids of ``text`` (no BOS or EOS); a clear error for a character outside the vocabulary."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    unknown = sorted({c for c in text if c not in _INDEX or c in SPECIALS})
    if unknown:
        raise ValueError(f"characters {unknown} are not in the vocabulary; it has: {CHARACTERS!r}")
    return [_INDEX[c] for c in text]


def decode(ids) -> str:
    """The text of a row of ids, up to the first EOS; BOS and PAD are skipped."""
    out = []
    for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
        if i == EOS:
            break
        if i not in (PAD, BOS):
            out.append(VOCAB[i])
    return "".join(out)


def encode_batch(texts: list[str], device=None) -> torch.Tensor:
    """Strings as a (B, S) tensor of ids, right-padded with PAD."""
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, not one string ({texts!r})")
    if not texts:
        raise ValueError("encode_batch needs at least one string")
    rows = [encode(t) for t in texts]
    out = torch.full((len(rows), max(1, max(map(len, rows)))), PAD, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(device) if device is not None else out


def _mix(h: torch.Tensor) -> torch.Tensor:
    """A fixed integer hash (Knuth's multiplicative constant), the same on every platform."""
    return (h * 2654435761) % (1 << 32)


def source_hash(src: torch.Tensor) -> torch.Tensor:
    """A polynomial hash of each row of ids (B, S), ignoring the padding after the text."""
    if src.dim() != 2 or src.is_floating_point():
        raise ValueError(f"expected src as integer ids of shape (B, S), got {tuple(src.shape)} of {src.dtype}")
    h = torch.zeros(src.shape[0], dtype=torch.long, device=src.device)
    for j in range(src.shape[1]):  # over positions, never over examples
        token = src[:, j]
        h = torch.where(token != PAD, (h * 131 + token) % 2_147_483_647, h)
    return _mix(h)


# --------------------------------------------------------------------------- B. copy, reverse, sort


def _symbol_targets(task: str, src: torch.Tensor, lengths: torch.Tensor):
    """Targets (B, S) and carriers (B, S, S) of copy, reverse or sort for sources ``src`` (B, S)."""
    B, S = src.shape
    j = torch.arange(S, device=src.device)
    valid = j < lengths[:, None]
    if task == "copy":
        origin = j.expand(B, S)
    elif task == "reverse":
        origin = (lengths[:, None] - 1 - j).clamp(min=0)
    elif task == "sort":
        key = torch.where(valid, src, torch.full_like(src, 10_000))
        origin = torch.sort(key, dim=1, stable=True).indices
    else:
        raise ValueError(f"unknown symbol task {task!r}")
    out = torch.where(valid, src.gather(1, origin), torch.full_like(src, PAD))
    # output j is carried by every source character equal to it (for sort: all copies of a repeated symbol)
    if task == "sort":
        carriers = (out[:, :, None] == src[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    else:
        carriers = torch.zeros(B, S, S, dtype=torch.bool, device=src.device)
        carriers.scatter_(2, origin[:, :, None], valid[:, :, None])
    return out, carriers


# --------------------------------------------------------------------------- C. dates

FIRST_YEAR, LAST_YEAR = 1900, 2099
MONTHS = tuple(calendar.month_name[1:])
AP_MONTHS = ("Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.", "Dec.")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Each field is a table of strings; ``digits`` marks which of the field's output digits a character carries.
_FIELD_STRINGS = {
    "D2": ("day", [f"{d:02d}" for d in range(1, 32)]),
    "D": ("day", [str(d) for d in range(1, 32)]),
    "Dth": ("day", [_ordinal(d) for d in range(1, 32)]),
    "M2": ("month", [f"{m:02d}" for m in range(1, 13)]),
    "M": ("month", [str(m) for m in range(1, 13)]),
    "Month": ("month", list(MONTHS)),
    "month": ("month", [m.lower() for m in MONTHS]),
    "MONTH": ("month", [m.upper() for m in MONTHS]),
    "Mon": ("month", [m[:3] for m in MONTHS]),
    "MON": ("month", [m[:3].upper() for m in MONTHS]),
    "mon": ("month", [m[:3].lower() for m in MONTHS]),
    "MonAP": ("month", list(AP_MONTHS)),
    "Y": ("year", [str(y) for y in range(FIRST_YEAR, LAST_YEAR + 1)]),
    "Wkd": ("weekday", list(WEEKDAYS)),
    "Wk": ("weekday", [w[:3] for w in WEEKDAYS]),
}

# The surface forms. Every string has exactly one reading: the two numeric orders that can
# be confused never share a separator (DMY: "." or "-", MDY: "/"), and a year-first form is
# told apart by its four-digit year. Two-digit years ("3/7/21") are left out: in 1900-2099
# they have two readings. Beyond the first 21, the forms reach toward what people type: ISO
# itself, year-first with dots, a zero-padded day before a month name, no comma after the
# day, "3rd of July", spreadsheet and e-mail forms, lower and upper case, AP abbreviations,
# doubled spaces.
DATE_FORMATS = (
    "{D} {Month} {Y}",
    "{Month} {D}, {Y}",
    "{Mon} {D}, {Y}",
    "{D} {Mon} {Y}",
    "{Dth} {Month} {Y}",
    "{Month} {Dth}, {Y}",
    "the {Dth} of {Month}, {Y}",
    "{D2}.{M2}.{Y}",
    "{D}.{M}.{Y}",
    "{M2}/{D2}/{Y}",
    "{M}/{D}/{Y}",
    "{Y}/{M2}/{D2}",
    "{Y}年{M}月{D}日",
    "{Wkd}, {D} {Month} {Y}",
    "{Wk} {Mon} {D} {Y}",
    "{D2}-{MON}-{Y}",
    "{MONTH} {D}, {Y}",
    "{Y}{M2}{D2}",
    "{D}-{M}-{Y}",
    "{Y}-{M}-{D}",
    "{mon} {Dth} {Y}",
    "{Y}-{M2}-{D2}",  # ISO 8601 itself: the identity
    "{Y}.{M2}.{D2}",
    "{D2} {Month} {Y}",
    "{Month} {D} {Y}",
    "{Month} {Dth} {Y}",
    "{Dth} of {Month} {Y}",
    "{D}-{Mon}-{Y}",  # spreadsheets
    "{Wk}, {D2} {Mon} {Y}",  # the Date header of an e-mail (RFC 5322)
    "{Wkd}, {Month} {D}, {Y}",
    "{month} {D}, {Y}",
    "{D} {MON} {Y}",
    "{MonAP} {D}, {Y}",  # the AP Stylebook
    "{D} {Month}  {Y}",
    "{Mon}  {D}, {Y}",
)

# Forms people type that the generator never produces, for measuring generalisation
# (:func:`off_generator_dates`): each puts together fields, separators and orders that
# training forms use, in a combination no training form has.
OFF_GENERATOR_FORMATS = (
    "{Y}.{M}.{D}",
    "{Y}/{M}/{D}",
    "{D2} {Mon} {Y}",
    "{Mon} {D} {Y}",
    "{Dth} {Mon} {Y}",
    "{Mon} {Dth}, {Y}",
    "{D2}-{Mon}-{Y}",
    "{D2}/{Mon}/{Y}",  # web server logs
    "{Wk} {D} {Mon} {Y}",
    "{Wkd} {D} {Month} {Y}",
    "{Wkd}, {Dth} {Month} {Y}",
    "{D} {month} {Y}",
    "{D} {MONTH} {Y}",
    "{MonAP} {D} {Y}",
    "{Dth} of {Month}, {Y}",
    "{Mon}  {D}  {Y}",
)
ISO_SLOTS = {"year": (0, 1, 2, 3), "month": (5, 6), "day": (8, 9)}  # output positions of each field in YYYY-MM-DD
ISO_LENGTH = 10


def _field_digits(field: str, text: str) -> list[list[bool]]:
    """For each output digit of the field, which characters of ``text`` carry it."""
    if field == "weekday":
        return []
    slots = len(ISO_SLOTS[field])
    digits = [i for i, c in enumerate(text) if c.isdigit()]
    if not digits:  # a month name: the whole name carries both digits
        return [[True] * len(text) for _ in range(slots)]
    if len(digits) == slots:  # digit for digit
        return [[i == digits[k] for i in range(len(text))] for k in range(slots)]
    # one digit for two (e.g. "5" -> "05", "5th" -> "05"): that digit carries both
    return [[i in digits for i in range(len(text))] for _ in range(slots)]


_FIELDS = ("literal", "year", "month", "day", "weekday")  # how a piece of a format picks its string


def _parse_format(fmt: str) -> list[tuple[str, str]]:
    """``"{D}.{M}.{Y}"`` -> ``[("field", "D"), ("literal", "."), ...]``."""
    pieces = []
    for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", fmt):
        if literal:
            pieces.append(("literal", literal))
        if name:
            if name not in _FIELD_STRINGS:
                raise ValueError(f"unknown date field {{{name}}} in format {fmt!r}")
            pieces.append(("field", name))
    return pieces


@dataclass(frozen=True)
class _Strings:
    """Every string a date can be built from, in one table, and every format as a row of pieces.

    ``tokens`` (N, L) and ``lengths`` (N,): the strings (field values and literals; row 0 is
    empty); ``carriers`` (N, 11, L): which characters of a string carry which ISO output
    character; ``base`` and ``kind`` (F, P): piece p of format f is string
    ``base[f, p] + value of field kind[f, p]`` (kind 0: a literal, value 0).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    carriers: torch.Tensor
    base: torch.Tensor
    kind: torch.Tensor


@lru_cache(maxsize=8)
def _strings(device: str, forms: tuple[str, ...]) -> _Strings:
    strings, carriers, first = [""], [None], {}
    for name, (field, values) in _FIELD_STRINGS.items():
        first[name] = len(strings)
        for text in values:
            strings.append(text)
            carriers.append((field, _field_digits(field, text)))
    literals = {}
    parsed = [_parse_format(f) for f in forms]
    for pieces in parsed:
        for kind, text in pieces:
            if kind == "literal" and text not in literals:
                literals[text] = len(strings)
                strings.append(text)
                carriers.append(None)
    width = max(map(len, strings))
    tokens = torch.full((len(strings), width), PAD, dtype=torch.long)
    carries = torch.zeros(len(strings), ISO_LENGTH + 1, width, dtype=torch.bool)
    for row, text in enumerate(strings):
        tokens[row, :len(text)] = torch.tensor(encode(text), dtype=torch.long)
        if carriers[row] is not None:
            field, masks = carriers[row]
            for slot, mask in zip(ISO_SLOTS.get(field, ()), masks):
                carries[row, slot, :len(text)] = torch.tensor(mask)
    P = max(map(len, parsed))
    base = torch.zeros(len(parsed), P, dtype=torch.long)  # unused pieces: string 0, the empty string
    kind = torch.zeros(len(parsed), P, dtype=torch.long)
    for f, pieces in enumerate(parsed):
        for p, (what, text) in enumerate(pieces):
            if what == "literal":
                base[f, p] = literals[text]
            else:
                base[f, p] = first[text]
                kind[f, p] = _FIELDS.index(_FIELD_STRINGS[text][0])
    lengths = torch.tensor([len(s) for s in strings])
    return _Strings(*(t.to(device) for t in (tokens, lengths, carries, base, kind)))


@lru_cache(maxsize=1)
def calendar_days() -> dict[str, torch.Tensor]:
    """Every day from 1900-01-01 to 2099-12-31: ``year``, ``month``, ``day``, ``weekday`` (Monday = 0), ``held_out``."""
    days = np.arange(f"{FIRST_YEAR}-01-01", f"{LAST_YEAR + 1}-01-01", dtype="datetime64[D]")
    years = days.astype("datetime64[Y]")
    months = days.astype("datetime64[M]")
    number = days.astype(np.int64)  # days since 1970-01-01, a Thursday
    return {
        "year": torch.from_numpy(years.astype(np.int64) + 1970),
        "month": torch.from_numpy((months - years).astype(np.int64) + 1),
        "day": torch.from_numpy((days - months).astype(np.int64) + 1),
        "weekday": torch.from_numpy((number + 3) % 7),
        "held_out": _mix(torch.from_numpy(number - number[0])) % HELD_OUT_ONE_IN == 0,
    }


def render_dates(year: torch.Tensor, month: torch.Tensor, day: torch.Tensor, weekday: torch.Tensor,
                 formats: torch.Tensor, device=None, forms: tuple[str, ...] = DATE_FORMATS,
                 with_carriers: bool = True) -> dict[str, torch.Tensor]:
    """Dates (B,) written in ``formats`` (B,), indices into ``forms`` (the training forms :data:`DATE_FORMATS`
    unless told otherwise, e.g. :data:`OFF_GENERATOR_FORMATS`).

    Returns ``src`` (B, S) ids, ``tgt`` (B, 12) = BOS, YYYY-MM-DD, EOS, and ``carriers``
    (B, 11, S) (unless ``with_carriers`` is False; they are most of the work): for each
    predicted character (the ten of the ISO date, then EOS), the
    source characters that carry it (none for the hyphens and EOS). Every example is
    P pieces looked up in one string table, placed at the running sum of the piece
    lengths by one scatter: no loop over examples or formats.
    """
    device = torch.device(device) if device is not None else year.device
    if not isinstance(forms, tuple) or not forms or not all(isinstance(f, str) for f in forms):
        raise ValueError(f"forms must be a non-empty tuple of format strings, got {forms!r}")
    table = _strings(str(device), forms)
    year, month, day, weekday, formats = (torch.as_tensor(t).to(device) for t in (year, month, day, weekday, formats))
    shapes = {tuple(t.shape) for t in (year, month, day, weekday, formats)}
    if len(shapes) != 1 or year.dim() != 1 or len(year) == 0:
        raise ValueError(f"year, month, day, weekday and formats must be tensors of one shape (B,), B >= 1, got "
                         f"{sorted(shapes)}")
    for name, value, low, high in (("year", year, FIRST_YEAR, LAST_YEAR), ("month", month, 1, 12), ("day", day, 1, 31),
                                   ("weekday", weekday, 0, 6), ("formats", formats, 0, len(forms) - 1)):
        if value.is_floating_point() or not ((low <= value) & (value <= high)).all():
            raise ValueError(f"{name} must be integers in [{low}, {high}], got {value.dtype} values from "
                             f"{float(value.min()):g} to {float(value.max()):g}")
    B = len(year)
    values = torch.stack([torch.zeros_like(year), year - FIRST_YEAR, month - 1, day - 1, weekday], 1)  # (B, 5)
    kind = table.kind[formats]  # (B, P)
    ids = table.base[formats] + values.gather(1, kind)  # (B, P): the string of every piece
    lengths = table.lengths[ids]  # (B, P)
    offset = lengths.cumsum(1) - lengths  # where each piece starts
    L = table.tokens.shape[1]
    col = torch.arange(L, device=device)
    S = int(lengths.sum(1).max())
    where = torch.where(col < lengths[..., None], offset[..., None] + col, S).flatten(1)  # (B, P L); padding -> S
    src = torch.full((B, S + 1), PAD, dtype=torch.long, device=device)
    src.scatter_(1, where, table.tokens[ids].flatten(1))
    digits = torch.stack([year // 1000, year // 100 % 10, year // 10 % 10, year % 10,
                          month // 10, month % 10, day // 10, day % 10], 1) + _INDEX["0"]
    dash = torch.full((B, 1), _INDEX["-"], device=device)
    bos, eos = torch.full((B, 1), BOS, device=device), torch.full((B, 1), EOS, device=device)
    tgt = torch.cat([bos, digits[:, :4], dash, digits[:, 4:6], dash, digits[:, 6:], eos], 1)
    if not with_carriers:
        return {"src": src[:, :S], "tgt": tgt}
    carries = table.carriers[ids].permute(0, 2, 1, 3).flatten(2)  # (B, 11, P L)
    carriers = torch.zeros(B, ISO_LENGTH + 1, S + 1, dtype=torch.bool, device=device)
    carriers.scatter_(2, where[:, None, :].expand_as(carries), carries)
    return {"src": src[:, :S], "tgt": tgt, "carriers": carriers[:, :, :S]}


# --------------------------------------------------------------------------- D. the task object


class SequenceTask:
    """One of :data:`TASKS`, with training batches and a fixed held-out test set.

    ``min_length``/``max_length`` bound the sources of copy, reverse and sort. Batches are
    dicts: ``src`` (B, S) and ``tgt`` (B, T) ids (``tgt`` = BOS, output, EOS; PAD after),
    and ``carriers`` (B, T - 1, S) bool, the ground truth alignment of every predicted
    token (row t is the token ``tgt[:, t + 1]``).
    """

    def __init__(self, name: str, device: torch.device | str = "cpu", test_size: int = 2000,
                 min_length: int = 3, max_length: int = 12):
        if name not in TASKS:
            raise ValueError(f"unknown sequence task {name!r}; choose one of: {', '.join(TASKS)}")
        if not 1 <= min_length <= max_length:
            raise ValueError(f"expected 1 <= min_length <= max_length, got {min_length} and {max_length}")
        if test_size < 1:
            raise ValueError(f"test_size must be positive, got {test_size}")
        self.name = name
        self.device = torch.device(device)
        self.test_size = test_size
        self.min_length, self.max_length = min_length, max_length
        self._test = None
        if name == "dates":
            days = calendar_days()
            self._train_days = (~days["held_out"]).nonzero().squeeze(1)
            self._test_days = days["held_out"].nonzero().squeeze(1)

    @property
    def max_target_length(self) -> int:
        """The most tokens a model must predict (the output and EOS)."""
        return ISO_LENGTH + 1 if self.name == "dates" else self.max_length + 1

    def describe(self) -> str:
        if self.name == "dates":
            return (f"dates {FIRST_YEAR}-{LAST_YEAR} in {len(DATE_FORMATS)} surface forms -> ISO 8601; one calendar "
                    f"day in {HELD_OUT_ONE_IN} (by a fixed hash) held out: the test set is {self.test_size:,} of "
                    "those days, never seen in training in any form")
        return (f"{self.name}: strings of {self.min_length}-{self.max_length} letters a-z; one source in "
                f"{HELD_OUT_ONE_IN} (by a fixed hash) held out: the test set is {self.test_size:,} distinct held-out "
                "sources, never seen in training")

    # ------------------------------------------------------------------ drawing examples

    def _dates(self, days: torch.Tensor, generator: torch.Generator, count: int) -> dict[str, torch.Tensor]:
        pick = days[torch.randint(len(days), (count,), generator=generator)]
        formats = torch.randint(len(DATE_FORMATS), (count,), generator=generator)
        table = calendar_days()
        return render_dates(table["year"][pick], table["month"][pick], table["day"][pick], table["weekday"][pick],
                            formats, device=self.device)

    def _symbols(self, generator: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.randint(self.min_length, self.max_length + 1, (count,), generator=generator)
        letters = torch.randint(len(SYMBOLS), (count, self.max_length), generator=generator) + _INDEX["a"]
        src = torch.where(torch.arange(self.max_length) < lengths[:, None], letters, PAD)
        return src.to(self.device), lengths.to(self.device)

    def _symbol_batch(self, src: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        out, carriers = _symbol_targets(self.name, src, lengths)
        B, S = src.shape
        tgt = torch.full((B, S + 2), PAD, dtype=torch.long, device=src.device)
        tgt[:, 0] = BOS
        tgt[:, 1:S + 1] = out
        tgt[torch.arange(B, device=src.device), lengths + 1] = EOS
        rows = torch.zeros(B, S + 1, S, dtype=torch.bool, device=src.device)
        rows[:, :S] = carriers
        return {"src": src, "tgt": tgt, "carriers": rows}

    def is_held_out(self, src: torch.Tensor) -> torch.Tensor:
        """Whether each source (B, S) belongs to the held-out bucket (for copy, reverse, sort)."""
        return source_hash(src) % HELD_OUT_ONE_IN == 0

    def sample(self, generator: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        """A training batch; held-out sources (or days) are never drawn."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if self.name == "dates":
            return self._dates(self._train_days, generator, batch_size)
        kept = []
        have = 0
        while have < batch_size:  # rejection: about one draw in ten is held out
            src, lengths = self._symbols(generator, batch_size + batch_size // 4 + 8)
            keep = ~self.is_held_out(src)
            kept.append((src[keep], lengths[keep]))
            have += int(keep.sum())
        src = torch.cat([s for s, _ in kept])[:batch_size]
        lengths = torch.cat([n for _, n in kept])[:batch_size]
        return self._symbol_batch(src, lengths)

    def test_set(self) -> dict[str, torch.Tensor]:
        """The fixed held-out test set (the same on every call and every machine)."""
        if self._test is not None:
            return self._test
        generator = torch.Generator().manual_seed(TEST_SEED)
        if self.name == "dates":
            if self.test_size > len(self._test_days):
                raise ValueError(f"test_size {self.test_size} exceeds the {len(self._test_days)} held-out days")
            days = self._test_days[torch.randperm(len(self._test_days), generator=generator)[:self.test_size]]
            formats = torch.randint(len(DATE_FORMATS), (self.test_size,), generator=generator)
            table = calendar_days()
            self._test = render_dates(table["year"][days], table["month"][days], table["day"][days],
                                      table["weekday"][days], formats, device=self.device)
            return self._test
        pool = []
        for _ in range(100):
            src, _ = self._symbols(generator, 20 * self.test_size)
            pool.append(src[self.is_held_out(src)])
            unique = torch.unique(torch.cat(pool), dim=0)  # sorted rows: deterministic
            if len(unique) >= self.test_size:
                break
        else:
            raise ValueError(f"cannot find {self.test_size} distinct held-out {self.name} sources")
        src = unique[torch.randperm(len(unique), generator=generator)[:self.test_size]]
        self._test = self._symbol_batch(src, (src != PAD).sum(1))
        return self._test

    def test_batches(self, batch_size: int = 500) -> Iterator[dict[str, torch.Tensor]]:
        """The test set in batches, trimmed to each batch's longest source and target."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        test = self.test_set()
        for start in range(0, len(test["src"]), batch_size):
            batch = {k: v[start:start + batch_size] for k, v in test.items()}
            S = int((batch["src"] != PAD).sum(1).max())
            T = int((batch["tgt"] != PAD).sum(1).max())
            yield {"src": batch["src"][:, :S], "tgt": batch["tgt"][:, :T], "carriers": batch["carriers"][:, :T - 1, :S]}

    def __repr__(self) -> str:
        return f"SequenceTask({self.name!r}, device={str(self.device)!r}, test_size={self.test_size})"


# ------------------------------------------------------------------- E. forms off the generator, and the calendar


def _training_form_hashes(days: torch.Tensor) -> torch.Tensor:
    """The hash of each day (N,) written in each training form: (len(DATE_FORMATS), N)."""
    table = calendar_days()
    fields = [table[k][days] for k in ("year", "month", "day", "weekday")]
    return torch.stack([source_hash(render_dates(*fields, torch.full_like(days, f), with_carriers=False)["src"])
                        for f in range(len(DATE_FORMATS))])  # over forms, never over examples


def off_generator_dates(size: int = 2000, seed: int = TEST_SEED, device="cpu") -> dict[str, torch.Tensor]:
    """``size`` held-out days written in :data:`OFF_GENERATOR_FORMATS`, as many in each form (the first forms take
    one more where ``size`` does not divide): :func:`render_dates`'s ``src``, ``tgt``, ``carriers``, and ``forms``
    (B,), indices into OFF_GENERATOR_FORMATS.

    Neither the day nor the string was seen in training: the days are the test set's (never drawn
    for training), and a string that a training form also writes for that day ("13 Jul 2021" is
    both "{D2} {Mon} {Y}" and the training form "{D} {Mon} {Y}") is never picked.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    table = calendar_days()
    pool = table["held_out"].nonzero().squeeze(1)
    fields = [table[k][pool] for k in ("year", "month", "day", "weekday")]
    written_in_training = _training_form_hashes(pool)
    count = len(OFF_GENERATOR_FORMATS)
    days, forms = [], []
    for f, form in enumerate(OFF_GENERATOR_FORMATS):  # over forms, never over examples
        need = size // count + (f < size % count)
        off = render_dates(*fields, torch.full_like(pool, f), forms=OFF_GENERATOR_FORMATS, with_carriers=False)
        off = source_hash(off["src"])
        shuffled = torch.randperm(len(pool), generator=generator)
        fresh = pool[shuffled[~(written_in_training == off).any(0)[shuffled]]]
        if len(fresh) < need:
            raise ValueError(f"size {size} needs {need} days in form {form!r}; only {len(fresh)} held-out days "
                             "are written in it differently from every training form")
        days.append(fresh[:need])
        forms.append(torch.full((need,), f))
    days, forms = torch.cat(days), torch.cat(forms)
    out = render_dates(*(table[k][days] for k in ("year", "month", "day", "weekday")), forms, device=device,
                       forms=OFF_GENERATOR_FORMATS)
    return {**out, "forms": forms.to(out["src"].device)}


@lru_cache(maxsize=1)
def iso_dates() -> tuple[str, ...]:
    """Every day from FIRST_YEAR-01-01 to LAST_YEAR-12-31 as YYYY-MM-DD, in order (which is alphabetical order)."""
    days = calendar_days()
    return tuple(f"{y:04d}-{m:02d}-{d:02d}" for y, m, d in zip(*(days[k].tolist() for k in ("year", "month", "day"))))


def is_iso_date(text: str) -> bool:
    """Whether ``text`` is exactly a real day between FIRST_YEAR and LAST_YEAR written YYYY-MM-DD."""
    dates = iso_dates()
    at = bisect_left(dates, text)
    return at < len(dates) and dates[at] == text


@lru_cache(maxsize=1 << 16)
def _next_tokens(prefix: str) -> tuple[int, ...]:
    """The tokens that can follow ``prefix`` on the way to a date of :func:`iso_dates`: a character, or EOS
    after a whole date (none: ``prefix`` leads to no date)."""
    if len(prefix) >= ISO_LENGTH:
        return (EOS,) if is_iso_date(prefix) else ()
    dates = iso_dates()
    tokens = []
    for character in "0123456789-":
        longer = prefix + character
        at = bisect_left(dates, longer)  # the first date not before ``longer``: it starts with it, if any does
        if at < len(dates) and dates[at].startswith(longer):
            tokens.append(_INDEX[character])
    return tuple(tokens)


def calendar_allowed(prefix: torch.Tensor) -> torch.Tensor:
    """The calendar as a mask: for outputs so far ``prefix`` (B, t) (ids, no BOS), which next tokens (B, VOCAB_SIZE)
    keep each row on the way to a real day in FIRST_YEAR..LAST_YEAR written YYYY-MM-DD, then EOS.

    A year in range, a month 01-12, a day that month has (29 February in leap years only).
    A row that has ended (EOS or PAD in its prefix) may only go on with PAD; a row on no
    date's way gets no token at all. The ``allowed`` hook of
    :func:`~attn_course.decoding.greedy_decode`.
    """
    if prefix.dim() != 2 or prefix.is_floating_point():
        raise ValueError(f"expected prefix as integer ids of shape (B, t), got {tuple(prefix.shape)} of {prefix.dtype}")
    if prefix.numel() and (prefix.min() < 0 or prefix.max() >= VOCAB_SIZE):
        raise ValueError(f"prefix ids must lie in [0, {VOCAB_SIZE - 1}]")
    allowed = torch.zeros(prefix.shape[0], VOCAB_SIZE, dtype=torch.bool)
    for row, ids in enumerate(prefix.tolist()):  # a cached look-up per row: the same prefixes recur
        if EOS in ids or PAD in ids:
            allowed[row, PAD] = True
        else:
            allowed[row, list(_next_tokens("".join(VOCAB[i] for i in ids)))] = True
    return allowed.to(prefix.device)
