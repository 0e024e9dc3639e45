"""The text-line generator: labels, the split rule, the word list, the atlas, rendering and its ground truth."""

import math

import pytest
import torch

from attn_course.data.text_lines import (ALPHABET, BOS, CHARSET, EOS, FONTS, HEIGHT, MAX_LENGTH, PAD, WIDTH, Style,
                                         TextLineConfig, TextLines, decode, encode, encode_batch, glyph_atlas,
                                         is_test_string, load_words, random_strings, render, split_words)


def test_encode_decode_round_trip_and_case_insensitive():
    ids = encode("Hello42")
    assert ids[-1] == EOS and len(ids) == 8
    assert decode(ids) == "hello42"
    assert decode(encode("hello42")) == "hello42"
    batch = encode_batch(["abc", "z9"])
    assert batch[:, 0].tolist() == [BOS, BOS]
    assert batch[1].tolist()[:4] == [BOS, 3 + ALPHABET.index("z"), 3 + ALPHABET.index("9"), EOS]
    assert batch[1, 4:].eq(PAD).all()


@pytest.mark.parametrize("bad, message", [("", "non-empty"), ("a" * (MAX_LENGTH + 1), "at most"),
                                          ("caf\u00e9", "outside the alphabet"), ("two words", "outside")])
def test_bad_strings_get_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        encode(bad)


def test_word_list_and_held_out_split():
    words = load_words()
    assert len(words) > 50_000 and all(3 <= len(w) <= 10 for w in words[:1000])
    split = split_words(words)
    assert not set(split["train"]) & set(split["test"])
    share = len(split["test"]) / len(words)
    assert 0.08 < share < 0.12  # one checksum in ten
    assert all(is_test_string(w) for w in split["test"][:100])


def test_random_strings_stay_in_their_split_and_follow_the_seed():
    a = random_strings(torch.Generator().manual_seed(3), 200, "test")
    b = random_strings(torch.Generator().manual_seed(3), 200, "test")
    assert a == b and all(is_test_string(s) for s in a)
    train = random_strings(torch.Generator().manual_seed(3), 200, "train")
    assert not any(is_test_string(s) for s in train)
    assert all(3 <= len(s) <= MAX_LENGTH and set(s) <= set(ALPHABET) for s in a + train)


def test_atlas_has_every_glyph_of_every_font():
    atlas = glyph_atlas()
    assert atlas["glyphs"].shape[:2] == (len(FONTS), len(CHARSET) + 1)
    ink = atlas["glyphs"][:, :-1].flatten(2).sum(-1)
    assert (ink > 5).all()  # every character draws something
    assert atlas["glyphs"][:, -1].eq(0).all()  # the blank
    assert (atlas["advance"][:, :-1] > 3).all()


def test_render_shapes_range_and_ground_truth_centres():
    g = torch.Generator().manual_seed(0)
    texts = ["hello", "ab", "mississipp"]
    out = render(texts, torch.tensor([0, 4, 10]), g, Style.clean())
    assert out["images"].shape == (3, 1, HEIGHT, WIDTH)
    assert 0 <= float(out["images"].min()) and float(out["images"].max()) <= 1
    centres = out["centres"]
    for row, text in enumerate(texts):
        known = centres[row, :len(text)]
        assert not known.isnan().any() and centres[row, len(text):].isnan().all()
        assert (known.diff() > 0).all() and 0 < float(known.min()) and float(known.max()) < WIDTH
        # the ink of the clean line lies between the first and the last centre, give or take a character
        columns = out["images"][row, 0].sum(0) > 0.5
        inked = columns.nonzero()[:, 0]
        step = float(known.diff().mean()) if len(text) > 1 else 10.0
        assert float(known[0]) - step < int(inked.min()) < float(known[0])
        assert float(known[-1]) < int(inked.max()) < float(known[-1]) + step


def test_a_character_centre_marks_where_its_glyph_is_drawn():
    """Render 'l' alone at a known place in a line of spaces-free strings: its ink column matches its centre."""
    g = torch.Generator().manual_seed(1)
    out = render(["lmmmm", "mmmml"], torch.tensor([0, 0]), g, Style.clean())
    for row, j in ((0, 0), (1, 4)):
        image = out["images"][row, 0]
        centre = float(out["centres"][row, j])
        band = image[:, max(0, int(centre) - 2):int(centre) + 3]
        assert band.sum() > 1.0  # ink at the centre of the 'l'


def test_bad_render_inputs():
    g = torch.Generator()
    with pytest.raises(ValueError, match="font index"):
        render(["abc"], torch.tensor([len(FONTS)]), g)
    with pytest.raises(ValueError, match="at least one"):
        render([], torch.tensor([], dtype=torch.long), g)


@pytest.mark.slow
def test_data_set_is_deterministic_and_holds_out_test_words():
    data = TextLines(TextLineConfig(seed=5, test_size=40, val_size=20))
    again = TextLines(TextLineConfig(seed=5, test_size=40, val_size=20))
    assert torch.equal(data.split("test_words")["images"], again.split("test_words")["images"])
    assert all(is_test_string(t) for t in data.split("test_words")["texts"])
    assert all(is_test_string(t) for t in data.split("test_random")["texts"])
    assert not any(is_test_string(t) for t in data.split("val_words")["texts"])
    a = data.sample(torch.Generator().manual_seed(9), 16)
    b = again.sample(torch.Generator().manual_seed(9), 16)
    assert a["texts"] == b["texts"] and torch.equal(a["images"], b["images"])
    assert not any(is_test_string(t) for t in a["texts"])
    assert a["tokens"].shape == (16, MAX_LENGTH + 2)
    with pytest.raises(ValueError, match="unknown split"):
        data.split("train")
    with pytest.raises(ValueError, match="random_fraction"):
        TextLineConfig(random_fraction=1.5)


def test_custom_word_list(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(f"w{i:04d}x" for i in range(300)) + "\nbad word\nx\n")
    words = load_words(path)
    assert len(words) == 300
    with pytest.raises(FileNotFoundError, match="no word list"):
        load_words(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_text_line_calls():
    from attn_course.data import text_lines as tl

    g = torch.Generator().manual_seed(0)
    data = tl.TextLines(tl.TextLineConfig(test_size=2, val_size=2))
    return [
        (ValueError, "max_length", lambda: tl.encode("abc", max_length=0)),
        (ValueError, "outside the alphabet", lambda: tl.encode("ab!")),
        (TypeError, "texts", lambda: tl.encode_batch("abc")),
        (TypeError, "text", lambda: tl.is_test_string(None)),
        (ValueError, "split", lambda: tl.random_strings(g, 3, split="dev")),
        (ValueError, "n ", lambda: tl.random_strings(g, -1)),
        (ValueError, "letters", lambda: tl.random_strings(g, 3, letters="")),
        (ValueError, "cases", lambda: tl.apply_case(["ab", "cd"], torch.tensor([0, 3]))),
        (ValueError, "cases", lambda: tl.apply_case(["ab", "cd"], torch.tensor([0]))),
        (ValueError, "font 'Comic'.*DejaVu Sans", lambda: tl.font_path("Comic")),
        (ValueError, "font 'Comic'", lambda: tl.glyph_atlas(("Comic",))),
        (ValueError, "Style.blur", lambda: tl.Style(blur=(1.0, 0.0))),
        (ValueError, "Style.noise", lambda: tl.Style(noise=(-0.1, 0.1))),
        (ValueError, "Style.text_height", lambda: tl.Style(text_height=(0.0, 0.5))),
        (ValueError, "Style.rotation_degrees", lambda: tl.Style(rotation_degrees=float("nan"))),
        (ValueError, "Style.cases", lambda: tl.Style(cases=(0.0, 0.0, 0.0))),
        (ValueError, "fonts", lambda: tl.render(["abc", "de"], torch.tensor([0]), g)),
        (TypeError, "texts", lambda: tl.render("abc", torch.tensor([0, 0, 0]), g)),
        (ValueError, "cases", lambda: tl.render(["abc"], torch.tensor([0]), g, cases=torch.tensor([0, 1]))),
        (ValueError, "angles", lambda: tl.render(["abc"], torch.tensor([0]), g, angles=torch.zeros(3))),
        (ValueError, "angles", lambda: tl.render(["abc"], torch.tensor([0]), g, angles=torch.tensor([float("nan")]))),
        (ValueError, "test_size", lambda: tl.TextLineConfig(test_size=0)),
        (ValueError, "unknown fonts", lambda: tl.TextLineConfig(fonts=("Comic",))),
        (ValueError, "batch_size", lambda: data.sample(g, 0)),
        (ValueError, "batch_size", lambda: next(data.batches("val_words", batch_size=0))),
        (ValueError, "split 'dev'", lambda: data.split("dev")),
        (ValueError, "split", lambda: data.draw_texts(g, 2, "dev", 0.0)),
        (ValueError, "random_fraction", lambda: data.draw_texts(g, 2, "train", 1.5)),
    ]


BAD_TEXT_LINE_CALLS = _bad_text_line_calls()


@pytest.mark.parametrize("error, match, call", BAD_TEXT_LINE_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_TEXT_LINE_CALLS)])
def test_bad_text_line_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()
