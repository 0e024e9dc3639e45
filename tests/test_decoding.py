"""The shared decoders (attn_course.decoding), once, against a tiny model that implements the Decoder interface:
greedy is the beam of one, the beam finds the best sequence of a problem small enough to enumerate, the length
penalty (5.7), finish, and the attention pieces of (3.1)-(3.2), (3.13)."""

import itertools
import math

import pytest
import torch

from attn_course import decoding
from attn_course.decoding import (BOS, EOS, PAD, SoftAttention, beam_search, finish, greedy_decode, length_penalty,
                                  soft_context)

WORDS = (EOS, 3, 4)  # the tokens the toy model may emit; every other id has probability 0
V = 5


class Toy:
    """A first-order Markov decoder: row b's next token has the log-probabilities table[b, previous token].

    ``annotate`` takes the tables (B, V, V); ``step`` records the token it was fed and the step number as extras.
    """

    def __init__(self, seed=0, B=3):
        g = torch.Generator().manual_seed(seed)
        table = torch.full((B, V, V), float("-inf"))
        table[:, :, list(WORDS)] = torch.randn(B, V, len(WORDS), generator=g) * 1.5
        self.table = table.log_softmax(-1)
        self.options_seen = []

    def annotate(self, inputs):
        rows = torch.as_tensor(inputs)
        return {"table": self.table[rows], "t": torch.zeros(len(rows), dtype=torch.long)}

    def step(self, tokens, state, **options):
        self.options_seen.append(options)
        logits = state["table"][torch.arange(len(tokens)), tokens]
        return logits, {**state, "t": state["t"] + 1}, {"fed": tokens, "t": state["t"]}


def log_p(model, row, sequence):
    """log p(sequence) of the toy's row ``row``, BOS first; the sequence (no BOS) may end with EOS."""
    total, previous = 0.0, BOS
    for token in sequence:
        total += float(model.table[row, previous, token])
        previous = token
    return total


def best_by_enumeration(model, row, max_len, alpha):
    """The finished sequence (ending with EOS, at most max_len tokens) of highest log p / lp, by brute force."""
    best, best_score = None, -math.inf
    for n in range(1, max_len + 1):
        for body in itertools.product((3, 4), repeat=n - 1):
            sequence = list(body) + [EOS]
            score = log_p(model, row, sequence) / ((5 + n) / 6) ** alpha
            if score > best_score:
                best, best_score = sequence, score
    return best, best_score


def as_list(row):
    return [t for t in row.tolist() if t != PAD]


def test_the_three_chapters_number_their_special_tokens_alike():
    from attn_course.data import captions, sequences, text_lines

    for module in (captions, text_lines, sequences):
        assert (module.PAD, module.BOS, module.EOS) == (decoding.PAD, decoding.BOS, decoding.EOS), module.__name__


def test_finish_pads_after_the_first_eos():
    tokens = torch.tensor([[3, EOS, 4, EOS], [3, 4, 4, 4], [EOS, 3, 3, 3]])
    assert finish(tokens).tolist() == [[3, EOS, PAD, PAD], [3, 4, 4, 4], [EOS, PAD, PAD, PAD]]
    assert finish(torch.tensor([[7, 9, 8]]), eos=9, pad=5).tolist() == [[7, 9, 5]]
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        finish(torch.tensor([3, EOS]))


def test_length_penalty_is_the_gnmt_formula():
    lengths = torch.arange(1, 12)
    assert torch.allclose(length_penalty(lengths, 0.6), ((5 + lengths.float()) / 6) ** 0.6)
    assert length_penalty(torch.tensor(1), 0.6) == 1.0  # lp(1) = 1
    assert length_penalty(torch.tensor(7), 0.6) == pytest.approx(2 ** 0.6)
    assert torch.equal(length_penalty(lengths, 0.0), torch.ones(11))  # alpha = 0: no penalty


def test_greedy_is_the_beam_of_one():
    model = Toy(seed=1, B=6)
    rows = torch.arange(6)
    greedy = greedy_decode(model, rows, 6)
    beam = beam_search(model, rows, beam_size=1, max_len=6)
    assert set(greedy) == {"tokens", "fed", "t"} and set(beam) == set(greedy) | {"score", "finished"}
    for key in greedy:
        assert torch.equal(greedy[key], beam[key]), key
    for b in range(6):  # the argmax at every step, and the score is its log-probability
        previous, expected = BOS, []
        for _ in range(6):
            previous = int(model.table[b, previous].argmax())
            expected.append(previous)
            if previous == EOS:
                break
        assert as_list(greedy["tokens"][b]) == expected
        assert float(beam["score"][b]) == pytest.approx(log_p(model, b, expected), abs=1e-5)
    assert beam["finished"].tolist() == [EOS in as_list(row) for row in greedy["tokens"]]


def test_the_searches_record_what_each_step_was_fed():
    model = Toy(seed=2, B=4)
    for out in (greedy_decode(model, torch.arange(4), 5), beam_search(model, torch.arange(4), 3, 5)):
        T = out["tokens"].shape[1]
        assert out["fed"].shape == out["t"].shape == (4, T)
        assert (out["fed"][:, 0] == BOS).all() and torch.equal(out["fed"][:, 1:], out["tokens"][:, :-1])
        assert torch.equal(out["t"], torch.arange(T).expand(4, T))  # the extras of the chosen path, in order


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_wide_beam_finds_the_best_sequence(alpha):
    model, max_len = Toy(seed=3, B=8), 4
    out = beam_search(model, torch.arange(8), beam_size=40, max_len=max_len, length_penalty=alpha)  # holds them all
    for b in range(8):
        best, score = best_by_enumeration(model, b, max_len, alpha)
        assert as_list(out["tokens"][b]) == best
        assert float(out["score"][b]) == pytest.approx(score, abs=1e-5)
    assert out["finished"].all()


def test_the_beam_finds_a_better_sequence_than_greedy():
    """First step: a (p 0.6) or b (p 0.4); after a, four equal choices; after b, EOS surely. Greedy takes a."""
    model = Toy(B=1)
    table = torch.full((1, V, V), -30.0)
    table[0, BOS, 3], table[0, BOS, 4] = math.log(0.6), math.log(0.4)
    table[0, 3, :] = math.log(0.25)
    table[0, 4, EOS] = 0.0
    model.table = table
    assert greedy_decode(model, [0], 5)["tokens"][0, 0] == 3
    out = beam_search(model, [0], beam_size=2, max_len=5)
    assert as_list(out["tokens"][0]) == [4, EOS] and float(out["score"][0]) == pytest.approx(math.log(0.4), abs=1e-4)


def test_an_unfinished_hypothesis_wins_only_when_none_finished():
    model = Toy(B=1)
    table = torch.full((1, V, V), -30.0)
    table[0, :, 3] = 0.0  # always 3, never EOS
    model.table = table
    out = beam_search(model, [0], beam_size=2, max_len=3)
    assert out["tokens"].tolist() == [[3, 3, 3]] and not out["finished"][0]
    assert float(out["score"][0]) > -1e-3  # the hypothesis' own log-probability, not pushed down


def test_options_reach_the_step_and_the_ids_can_be_changed():
    model = Toy(seed=4, B=2)
    greedy_decode(model, [0, 1], 3, context="expected")
    beam_search(model, [0, 1], 2, 3, context="expected")
    assert model.options_seen and all(seen == {"context": "expected"} for seen in model.options_seen)
    out = greedy_decode(model, [0, 1], 3, bos=3)  # start from token 3
    assert (out["fed"][:, 0] == 3).all()


def test_bad_arguments_are_clear_errors():
    model = Toy()
    with pytest.raises(ValueError, match="max_len must be positive"):
        greedy_decode(model, [0], 0)
    with pytest.raises(ValueError, match="max_len must be positive"):
        beam_search(model, [0], 2, 0)
    with pytest.raises(ValueError, match="beam_size must be positive"):
        beam_search(model, [0], 0, 3)

    class Empty(Toy):
        def annotate(self, inputs):
            return {}

    with pytest.raises(ValueError, match="empty state"):
        greedy_decode(Empty(), [0], 3)


def test_soft_attention_is_additive_and_sums_to_one():
    torch.manual_seed(0)
    f_att = SoftAttention(D=6, n=5, hidden=4)
    a, h = torch.randn(2, 7, 6), torch.randn(2, 5)
    alpha = f_att(f_att.project(a), h)
    e = f_att.w(torch.tanh(f_att.W_a(a) + f_att.W_h(h)[:, None]))[..., 0]  # e_ti = w^T tanh(W_a a_i + W_h h)
    assert torch.allclose(alpha, e.softmax(-1)) and torch.allclose(alpha.sum(-1), torch.ones(2))
    assert sorted(name for name, _ in f_att.named_parameters()) == ["W_a.bias", "W_a.weight", "W_h.weight",
                                                                   "w.bias", "w.weight"]  # the checkpoints' keys
    z = soft_context(a, alpha, torch.full((2, 1), 0.5))
    assert torch.allclose(z, 0.5 * (alpha[..., None] * a).sum(1), atol=1e-6)


def test_the_three_chapters_models_offer_the_interface():
    from attn_course.r2am import R2AM, R2AMConfig
    from attn_course.show_attend_tell import SATConfig, ShowAttendTell
    from attn_course.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    models = {
        "sat": (ShowAttendTell(SATConfig(image_size=32, cell=8, channels=4, D=8, m=8, n=8, att_hidden=8)).eval(),
                torch.rand(2, 3, 32, 32)),
        "r2am": (R2AM(R2AMConfig(c1=4, c2=4, D=8, m=4, n=8, att_hidden=4)).eval(), torch.rand(2, 1, 32, 100)),
        "transformer": (Transformer(TransformerConfig(vocab_size=20, d_model=16, heads=2, d_ff=32, encoder_layers=1,
                                                      decoder_layers=1, dropout=0.0, max_len=16)).eval(),
                        torch.randint(3, 20, (2, 5))),
    }
    for name, (model, inputs) in models.items():
        greedy = greedy_decode(model, inputs, 4)
        beam = beam_search(model, inputs, 1, 4)
        assert greedy["tokens"].shape[0] == 2, name
        for key in greedy:
            assert torch.equal(greedy[key], beam[key]), (name, key)
