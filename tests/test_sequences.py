"""Sequence tasks: the vocabulary, dates against Python's own formatting, carriers, and a disjoint test set."""

import datetime

import pytest
import torch

from attn_course.data.sequences import (DATE_FORMATS, EOS, PAD, TASKS, SequenceTask, calendar_days, decode, encode,
                                        encode_batch, render_dates)


def ap_month(d):
    """The AP Stylebook's month: March to July in full, the rest cut to three letters and a dot (four for Sept.)."""
    name = d.strftime("%B")
    return name if len(name) <= 5 else ("Sept." if name == "September" else name[:3] + ".")


def python_date(year, month, day, fmt):
    """The same surface forms written with datetime, independently of the tensor renderer."""
    d = datetime.date(year, month, day)
    ordinal = lambda n: f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"  # noqa
    fields = {"D2": f"{day:02d}", "D": str(day), "Dth": ordinal(day), "M2": f"{month:02d}", "M": str(month),
              "Month": d.strftime("%B"), "month": d.strftime("%B").lower(), "MONTH": d.strftime("%B").upper(),
              "Mon": d.strftime("%b"), "MonAP": ap_month(d),
              "MON": d.strftime("%b").upper(), "mon": d.strftime("%b").lower(), "Y": str(year),
              "Wkd": d.strftime("%A"), "Wk": d.strftime("%a")}
    return fmt.format(**fields)


def test_vocabulary_round_trip_and_errors():
    text = "Tuesday, 24 November 2026年11月24日"
    assert decode(encode(text)) == text
    assert decode(encode("ab") + [EOS] + encode("cd")) == "ab"
    batch = encode_batch(["ab", "abcd"])
    assert batch.shape == (2, 4) and batch[0, 2:].eq(PAD).all()
    with pytest.raises(ValueError, match="not in the vocabulary"):
        encode("24 Nov ½")
    with pytest.raises(ValueError, match="unknown sequence task"):
        SequenceTask("translate")


def test_every_date_format_matches_python_and_the_iso_target():
    days = calendar_days()
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(len(days["year"]), (len(DATE_FORMATS) * 6,), generator=g)
    formats = torch.arange(len(DATE_FORMATS)).repeat(6)
    out = render_dates(days["year"][pick], days["month"][pick], days["day"][pick], days["weekday"][pick], formats)
    for i in range(len(pick)):
        y, m, d = (int(days[k][pick[i]]) for k in ("year", "month", "day"))
        assert decode(out["src"][i]) == python_date(y, m, d, DATE_FORMATS[int(formats[i])])
        assert decode(out["tgt"][i]) == datetime.date(y, m, d).isoformat()
    assert len(DATE_FORMATS) >= 20
    assert "2026年11月24日" == python_date(2026, 11, 24, "{Y}年{M}月{D}日")


def test_carriers_point_at_the_characters_of_each_field():
    days = calendar_days()
    index = int(((days["year"] == 2026) & (days["month"] == 11) & (days["day"] == 4)).nonzero())
    one = lambda f: render_dates(*(days[k][index:index + 1] for k in ("year", "month", "day", "weekday")),  # noqa
                                 torch.tensor([DATE_FORMATS.index(f)]))
    out = one("{Wkd}, {D} {Month} {Y}")  # "Wednesday, 4 November 2026"
    source = decode(out["src"][0])
    carried = ["".join(c for c, on in zip(source, row) if on) for row in out["carriers"][0].tolist()]
    assert carried == ["2", "0", "2", "6", "", "November", "November", "", "4", "4", ""]
    out = one("{Y}{M2}{D2}")
    rows = out["carriers"][0]
    assert [int(r.nonzero()) if r.any() else None for r in rows] == [0, 1, 2, 3, None, 4, 5, None, 6, 7, None]


def test_symbol_tasks_targets_and_carriers():
    for name in ("copy", "reverse", "sort"):
        task = SequenceTask(name, max_length=8)
        batch = task.sample(torch.Generator().manual_seed(1), 50)
        for src, tgt, carriers in zip(batch["src"], batch["tgt"], batch["carriers"]):
            text, out = decode(src), decode(tgt)
            assert out == {"copy": text, "reverse": text[::-1], "sort": "".join(sorted(text))}[name]
            for t, char in enumerate(out):  # every output character is carried by equal source characters
                assert carriers[t].any() and all(text[j] == char for j in carriers[t].nonzero().flatten().tolist())
            assert tgt[len(out) + 1] == EOS


@pytest.mark.parametrize("name", TASKS)
def test_test_set_is_fixed_large_and_disjoint_from_training(name):
    task = SequenceTask(name)
    test = task.test_set()
    assert len(test["src"]) >= 2000
    again = SequenceTask(name).test_set()
    assert torch.equal(test["src"], again["src"]) and torch.equal(test["tgt"], again["tgt"])
    train = [task.sample(torch.Generator().manual_seed(s), 512) for s in range(4)]
    if name == "dates":  # disjoint by calendar day: no training target (the ISO date) is a test target
        seen = {decode(t) for b in train for t in b["tgt"]}
        assert not seen & {decode(t) for t in test["tgt"]}
        assert calendar_days()["held_out"].float().mean() == pytest.approx(0.1, abs=0.01)
    else:
        assert task.is_held_out(test["src"]).all()
        assert not any(task.is_held_out(b["src"]).any() for b in train)
        assert len({decode(s) for s in test["src"]}) == len(test["src"])  # distinct sources
    batches = list(task.test_batches(700))
    assert sum(len(b["src"]) for b in batches) == len(test["src"])
    assert batches[0]["carriers"].shape[1:] == (batches[0]["tgt"].shape[1] - 1, batches[0]["src"].shape[1])


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_sequence_calls():
    from attn_course.data.sequences import encode_batch, render_dates, source_hash

    g = torch.Generator().manual_seed(0)
    one = lambda v: torch.tensor([v])  # noqa: E731
    date = {"year": one(2000), "month": one(5), "day": one(3), "weekday": one(2), "formats": one(0)}
    task = SequenceTask("copy", test_size=4)
    return [
        (TypeError, "text", lambda: encode(None)),
        (ValueError, "not in the vocabulary", lambda: encode("ä")),
        (TypeError, "texts", lambda: encode_batch("abc")),
        (ValueError, "at least one string", lambda: encode_batch([])),
        (ValueError, "src", lambda: source_hash(torch.zeros(3).long())),
        (ValueError, r"month must be integers in \[1, 12\]", lambda: render_dates(**{**date, "month": one(13)})),
        (ValueError, "day", lambda: render_dates(**{**date, "day": one(0)})),
        (ValueError, "weekday", lambda: render_dates(**{**date, "weekday": one(7)})),
        (ValueError, "year", lambda: render_dates(**{**date, "year": one(1850)})),
        (ValueError, "formats", lambda: render_dates(**{**date, "formats": one(len(DATE_FORMATS))})),
        (ValueError, "formats", lambda: render_dates(**{**date, "formats": torch.tensor([0, 1])})),
        (ValueError, "task 'add'.*copy", lambda: SequenceTask("add")),
        (ValueError, "min_length", lambda: SequenceTask("copy", min_length=5, max_length=3)),
        (ValueError, "test_size", lambda: SequenceTask("copy", test_size=0)),
        (ValueError, "batch_size", lambda: task.sample(g, 0)),
        (ValueError, "batch_size", lambda: next(task.test_batches(0))),
    ]


BAD_SEQUENCE_CALLS = _bad_sequence_calls()


@pytest.mark.parametrize("error, match, call", BAD_SEQUENCE_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_SEQUENCE_CALLS)])
def test_bad_sequence_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()
