"""Dates off the generator (chapter 5): the held-out forms, the calendar as a decoding constraint, and a reader
that only ever answers with a real day."""

import datetime
import random

import pytest
import torch
from test_sequences import python_date

from attn_course import decoding
from attn_course.data.sequences import (CHARACTERS, DATE_FORMATS, EOS, OFF_GENERATOR_FORMATS, PAD, VOCAB_SIZE,
                                        calendar_allowed, calendar_days, decode, encode, is_iso_date, iso_dates,
                                        off_generator_dates, render_dates)
from attn_course.experiments.transformer import (DateReading, off_generator_exact_match, translate_date,
                                                 translate_dates, writes_a_day)
from attn_course.transformer import Transformer, TransformerConfig, predict

FIRST_DAY, LAST_DAY = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)


def real_days():
    """Every day of the data's years, by Python's calendar (independently of the tensors)."""
    return {(FIRST_DAY + datetime.timedelta(n)).isoformat() for n in range((LAST_DAY - FIRST_DAY).days + 1)}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=VOCAB_SIZE, d_model=16, heads=2, d_ff=32, encoder_layers=1,
                               decoder_layers=1, dropout=0.0, max_len=64)
    return Transformer(config).eval()


# --------------------------------------------------------------------------- the held-out forms


def test_off_generator_forms_are_new_strings_on_held_out_days():
    assert not set(OFF_GENERATOR_FORMATS) & set(DATE_FORMATS)
    data = off_generator_dates(16 * 20 + 3, seed=5)
    days = calendar_days()
    held_out = {(int(y), int(m), int(d)) for y, m, d, h in zip(days["year"], days["month"], days["day"],
                                                                days["held_out"]) if h}
    counts = torch.bincount(data["forms"], minlength=len(OFF_GENERATOR_FORMATS))
    assert counts.tolist() == [21] * 3 + [20] * 13
    for src, tgt, form in zip(data["src"], data["tgt"], data["forms"].tolist()):
        y, m, d = map(int, decode(tgt).split("-"))
        text = decode(src)
        assert (y, m, d) in held_out
        assert text == python_date(y, m, d, OFF_GENERATOR_FORMATS[form])
        assert text not in {python_date(y, m, d, f) for f in DATE_FORMATS}  # no training form writes it
    again = off_generator_dates(16 * 20 + 3, seed=5)
    assert torch.equal(again["src"], data["src"])
    assert not torch.equal(off_generator_dates(16 * 20 + 3, seed=6)["tgt"], data["tgt"])


def test_every_string_has_one_reading():
    """No string is written for two days by any two forms, training or held-out (e.g. D/M/Y and M/D/Y)."""
    days = calendar_days()
    pick = ((days["year"] == 2000) | (days["year"] == 2021)).nonzero().squeeze(1)
    fields = [days[k][pick] for k in ("year", "month", "day", "weekday")]
    reading = {}
    for forms in (DATE_FORMATS, OFF_GENERATOR_FORMATS):
        for f in range(len(forms)):
            out = render_dates(*fields, torch.full_like(pick, f), forms=forms)
            for src, tgt in zip(out["src"], out["tgt"]):
                assert reading.setdefault(decode(src), decode(tgt)) == decode(tgt), decode(src)
    assert len(reading) > 700 * (len(DATE_FORMATS) + len(OFF_GENERATOR_FORMATS)) * 0.9


# --------------------------------------------------------------------------- the calendar as a mask


def test_calendar_mask_spells_exactly_the_real_days():
    """Expanding every allowed token from the empty prefix yields every real day of 1900-2099 and nothing else."""
    days = real_days()
    assert set(iso_dates()) == days and list(iso_dates()) == sorted(iso_dates())
    level = torch.zeros(1, 0, dtype=torch.long)
    for _ in range(10):
        rows, tokens = calendar_allowed(level).nonzero(as_tuple=True)
        level = torch.cat([level[rows], tokens[:, None]], 1)
    last = calendar_allowed(level)
    assert last[:, EOS].all() and last.sum(1).eq(1).all()
    assert {decode(row) for row in level} == days and len(level) == len(days)


def allowed_after(prefix):
    ids = encode(prefix) if prefix else []
    mask = calendar_allowed(torch.tensor([ids], dtype=torch.long).reshape(1, len(ids)))[0]
    return "".join("$" if i == EOS else decode([i]) for i in mask.nonzero().flatten().tolist())


@pytest.mark.parametrize("prefix, allowed", [
    ("", "12"), ("1", "9"), ("2", "0"), ("20", "0123456789"), ("2021", "-"), ("2021-", "01"),
    ("2021-0", "123456789"), ("2021-1", "012"), ("2021-02-", "012"), ("2021-02-2", "012345678"),
    ("2020-02-2", "0123456789"), ("1900-02-2", "012345678"), ("2000-02-2", "0123456789"), ("2021-04-3", "0"),
    ("2021-12-3", "01"), ("2021-12-31", "$"), ("2021-02-29", ""), ("2021/", ""), ("21", ""),
])
def test_calendar_mask_after_a_prefix(prefix, allowed):
    assert allowed_after(prefix) == allowed


def test_calendar_mask_after_the_end_and_bad_input():
    ended = torch.tensor([encode("2021-12-31") + [EOS], encode("2021-12-31") + [EOS]])
    ended[1, -1] = PAD
    assert calendar_allowed(ended).nonzero().tolist() == [[0, PAD], [1, PAD]]
    with pytest.raises(ValueError, match="prefix"):
        calendar_allowed(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="prefix ids"):
        calendar_allowed(torch.tensor([[VOCAB_SIZE]]))


# --------------------------------------------------------------------------- greedy decoding with a mask


class Scripted:
    """A decoder whose logits favour the tokens of ``script`` in turn, then EOS; the rest in falling order."""

    def __init__(self, script):
        self.script = script

    def annotate(self, inputs):
        return {"t": torch.zeros(inputs, dtype=torch.long)}

    def step(self, tokens, state):
        t = int(state["t"][0])
        logits = -torch.arange(VOCAB_SIZE, dtype=torch.float).repeat(len(tokens), 1)  # prefers low ids
        logits[:, self.script[t] if t < len(self.script) else EOS] = 100.0
        return logits, {"t": state["t"] + 1}, {}


def test_greedy_decode_with_allowed_takes_the_best_allowed_token():
    model = Scripted(encode("2021-02-30"))
    plain = decoding.greedy_decode(model, 2, 11)["tokens"]
    assert decode(plain[0]) == "2021-02-30"
    everything = lambda prefix: torch.ones(len(prefix), VOCAB_SIZE, dtype=torch.bool)  # noqa: E731
    assert torch.equal(decoding.greedy_decode(model, 2, 11, allowed=everything)["tokens"], plain)
    constrained = decoding.greedy_decode(model, 2, 11, allowed=calendar_allowed)["tokens"]
    assert decode(constrained[0]) == "2021-02-01"  # "3" is not allowed: the lowest allowed id wins, then "1"
    assert constrained[:, -1].eq(EOS).all()
    valid = Scripted(encode("1999-12-31"))
    assert torch.equal(decoding.greedy_decode(valid, 2, 11, allowed=calendar_allowed)["tokens"],
                       decoding.greedy_decode(valid, 2, 11)["tokens"])


def test_greedy_decode_rejects_a_bad_mask():
    model = Scripted(encode("2021"))
    with pytest.raises(ValueError, match="bool mask of shape"):
        decoding.greedy_decode(model, 2, 5, allowed=lambda prefix: torch.ones(len(prefix), 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="without any token"):
        decoding.greedy_decode(model, 2, 5, allowed=lambda prefix: torch.zeros(len(prefix), VOCAB_SIZE,
                                                                                dtype=torch.bool))


# --------------------------------------------------------------------------- the reader


def test_translate_dates_answers_only_real_days_even_for_garbage():
    model = tiny_model()
    rng = random.Random(0)
    garbage = ["".join(rng.choice(CHARACTERS) for _ in range(rng.randint(1, 40))) for _ in range(150)]
    readings = translate_dates(model, garbage + ["30 Feb 2021", "2021-13-45"], batch_size=64)
    assert [r.text for r in readings] == garbage + ["30 Feb 2021", "2021-13-45"]
    days = real_days()
    assert all(r.iso in days for r in readings)
    assert all(0.0 <= r.probability <= 1.0 for r in readings)
    greedy = predict(model, torch.stack([torch.tensor(encode(t) + [PAD] * (40 - len(t))) for t in garbage]), 11)
    assert [r.greedy for r in readings[:150]] == [decode(g) for g in greedy]
    for r in readings:  # where greedy wrote a real day the reading is greedy's; elsewhere it is flagged
        assert r.corrected or (r.iso == r.greedy and r.greedy in days)
        assert r.greedy in days or (r.corrected and "not a day" in r.reason)
    assert any(r.corrected for r in readings)
    assert writes_a_day(torch.tensor([encode("2021-07-03") + [EOS, PAD], encode("2021-02-29") + [EOS, PAD],
                                      encode("2021-07-03") + [PAD, EOS], encode("2021-07-031") + [PAD]])).tolist() == [
        True, False, False, False]
    assert translate_date(model, "3 July 2021") == translate_dates(model, ["3 July 2021"])[0]


@pytest.mark.parametrize("call, match", [
    (lambda m: translate_dates(m, "3 July 2021"), "list of strings"),
    (lambda m: translate_dates(m, []), "list of strings"),
    (lambda m: translate_dates(m, ["3 July 2021", ""]), "non-empty string"),
    (lambda m: translate_date(m, 3), "every text must be a non-empty string, got \\[3\\]"),
    (lambda m: translate_date(m, "3 Jul '21"), "not in the vocabulary"),
    (lambda m: off_generator_dates(0), "size"),
    (lambda m: render_dates(*(torch.tensor([v]) for v in (2000, 1, 1, 5, 0)), forms=["{Y}"]), "forms"),
])
def test_bad_input_gets_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model())


def test_shipped_model_off_the_generator():
    """The shipped dates model on 208 strings in held-out forms: the calendar never lowers exact match (where
    greedy is right it is a real day, so the mask leaves it alone) and leaves no output that is not a day."""
    from attn_course.registry import load_pretrained

    model = load_pretrained("transformer", "dates", device="cpu")
    data = off_generator_dates(208)
    result = off_generator_exact_match(model, 208)
    readings = translate_dates(model, [decode(s) for s in data["src"]])
    truth = [decode(t) for t in data["tgt"]]
    greedy_right = sum(r.greedy == t for r, t in zip(readings, truth)) / len(truth)
    ours_right = sum(r.iso == t for r, t in zip(readings, truth)) / len(truth)
    assert result["examples"] == 208 and set(result["by_form"]) == set(OFF_GENERATOR_FORMATS)
    assert result["exact_match"] == pytest.approx(greedy_right)
    assert result["not_a_date"] == pytest.approx(sum(r.corrected for r in readings) / len(truth))
    assert ours_right >= greedy_right >= 0.85  # a floor: the model reads most held-out forms
    assert all(is_iso_date(r.iso) for r in readings) and all(isinstance(r, DateReading) for r in readings)
    assert all(r.iso == r.greedy for r in readings if not r.corrected)
    assert any(r.corrected for r in readings) and all(r.greedy != t for r, t in zip(readings, truth) if r.corrected)
