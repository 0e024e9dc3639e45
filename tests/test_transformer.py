"""Transformer: attention against its definition, the fused path, masks, encodings, the loss, schedule, decoding."""

import math

import pytest
import torch
import torch.nn.functional as F

from attn_course.data.sequences import BOS, EOS, PAD, VOCAB_SIZE
from attn_course.decoding import greedy_decode
from attn_course.transformer import (EncoderLayer, MultiHeadAttention, Transformer, TransformerConfig, attention_maps,
                                     beam_search, causal_mask, label_smoothed_loss, noam_lr, noam_optimizer,
                                     padding_mask, parameter_count, pe_shift_matrix, positional_encoding, predict,
                                     scaled_dot_product_attention, smoothed_targets, transformer_loss)

SMALL = TransformerConfig(vocab_size=VOCAB_SIZE, d_model=32, heads=4, d_ff=64, encoder_layers=2, decoder_layers=2,
                          dropout=0.0, max_len=32)


def tokens(B, T, seed=0, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, VOCAB_SIZE, (B, T), generator=g)
    if pad_from is not None:
        for b, start in enumerate(pad_from):
            x[b, start:] = PAD
    return x


def test_attention_is_softmax_of_scaled_scores_times_values():
    g = torch.Generator().manual_seed(0)
    Q, K, V = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for n in (5, 7, 7))
    out, weights = scaled_dot_product_attention(Q, K, V)
    expected = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(8), -1)
    assert torch.allclose(weights, expected) and torch.allclose(out, expected @ V)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))


def test_masks_zero_the_weights_they_forbid():
    g = torch.Generator().manual_seed(1)
    Q, K, V = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    _, w = scaled_dot_product_attention(Q, K, V, causal_mask(6))
    assert torch.equal(w.triu(1), torch.zeros_like(w))
    src = tokens(2, 6, pad_from=[4, 6])
    _, w = scaled_dot_product_attention(Q, K, V, padding_mask(src))
    assert w[0, ..., 4:].abs().max() == 0 and w[1].min() > 0


def test_fused_and_explicit_paths_agree():
    torch.manual_seed(0)
    model = Transformer(SMALL).eval()
    src, tgt = tokens(3, 9, 1, pad_from=[5, 9, 7]), tokens(3, 6, 2)
    fused = model(src, tgt)
    explicit = model.use_fused_attention(False)(src, tgt)
    assert torch.allclose(fused, explicit, atol=1e-5)
    mha = MultiHeadAttention(32, 4)
    x = torch.randn(2, 5, 32)
    a, none = mha(x, x, causal=True)
    b, w = mha(x, x, causal=True, need_weights=True)
    assert none is None and w.shape == (2, 4, 5, 5) and torch.allclose(a, b, atol=1e-6)


def test_causal_decoder_ignores_the_future():
    torch.manual_seed(0)
    model = Transformer(SMALL).eval()
    src, tgt = tokens(2, 7, 3), tokens(2, 8, 4)
    changed = tgt.clone()
    changed[:, 5:] = tokens(2, 3, 5)
    a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6) and not torch.allclose(a[:, 5:], b[:, 5:])


def test_encoder_without_positions_is_permutation_equivariant():
    torch.manual_seed(0)
    layer = EncoderLayer(SMALL).eval()
    x = torch.randn(2, 6, 32)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.allclose(layer(x)[0][:, perm], layer(x[:, perm])[0], atol=1e-5)


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="divisible by the number of heads"):
        TransformerConfig(d_model=30, heads=4)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(32, 4)
    x = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match=r"broadcastable to \(B, h, T_q, T_k\) = \(2, 4, 5, 5\)"):
        mha(x, x, torch.ones(2, 4, 5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean mask"):
        mha(x, x, torch.ones(5, 5))
    with pytest.raises(ValueError, match=r"\(B, T_q, 32\)"):
        mha(torch.randn(2, 5, 16), x)
    with pytest.raises(ValueError, match="same d_k"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4),
                                     torch.ones(2, 5, dtype=torch.bool))
    model = Transformer(SMALL)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(4, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="ids must lie"):
        model(torch.full((1, 3), VOCAB_SIZE), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="norm must be"):
        TransformerConfig(norm="sandwich")


def test_parameter_count_matches_the_formula_and_the_paper():
    for norm in ("post", "pre"):
        config = TransformerConfig(vocab_size=100, d_model=48, heads=6, d_ff=96, encoder_layers=2, decoder_layers=3,
                                   norm=norm)
        assert sum(p.numel() for p in Transformer(config).parameters()) == parameter_count(config)["total"]
    assert abs(parameter_count(TransformerConfig())["total"] / 65e6 - 1) < 0.05  # Table 3: base, 65M


def test_positional_encoding_shift_is_a_rotation():
    pe = positional_encoding(60, 16)
    assert pe.shape == (60, 16) and torch.allclose(pe[0, 1::2], torch.ones(8))
    for k in (1, 7):
        M = pe_shift_matrix(k, 16)
        assert torch.allclose(pe[k:] , pe[:-k] @ M.T, atol=1e-5)
        assert torch.allclose(M @ M.T, torch.eye(16), atol=1e-6)


def test_label_smoothing_matches_pytorch_and_is_minimised_by_the_smoothed_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 11, generator=g)
    target = torch.randint(3, 11, (4, 5), generator=g)
    target[0, 3:] = PAD
    ours = label_smoothed_loss(logits, target, 0.1)
    theirs = F.cross_entropy(logits.reshape(-1, 11), target.flatten(), label_smoothing=0.1, ignore_index=PAD)
    assert torch.allclose(ours, theirs, atol=1e-6)
    q = smoothed_targets(target, 11, 0.1)
    best = q.log().requires_grad_()
    label_smoothed_loss(best, target, 0.1).backward()
    assert best.grad.abs().max() < 1e-6


def test_noam_schedule_peaks_at_warmup():
    lrs = [noam_lr(s, 512, 4000) for s in range(1, 20001)]
    assert max(range(len(lrs)), key=lrs.__getitem__) + 1 == 4000
    assert noam_lr(4000, 512, 4000) == pytest.approx(512 ** -0.5 * 4000 ** -0.5)
    optimizer, scheduler = noam_optimizer(torch.nn.Linear(2, 2), 512, 10)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(noam_lr(2, 512, 10))


def test_step_runs_the_decoder_over_the_prefix():
    """The Decoder interface of attn_course.decoding: step t's logits are those of the teacher-forced pass at t."""
    torch.manual_seed(0)
    model = Transformer(SMALL).eval()
    src, tgt = tokens(2, 6, 7, pad_from=[4, 6]), tokens(2, 5, 8)
    tgt[:, 0] = BOS
    state = model.annotate(src)
    assert state["prefix"].shape == (2, 0) and state["memory"].shape == (2, 6, 32)
    forced = model(src, tgt)
    for t in range(5):
        logits, state, extras = model.step(tgt[:, t], state)
        assert extras == {} and torch.equal(state["prefix"], tgt[:, :t + 1])
        assert torch.allclose(logits, forced[:, t], atol=1e-5)


def test_greedy_and_beam_decoding():
    torch.manual_seed(0)
    model = Transformer(SMALL).eval()
    src = tokens(3, 6, 7)
    greedy = predict(model, src, 8)
    assert torch.equal(greedy, greedy_decode(model, src, 8)["tokens"])
    one, _ = beam_search(model, src, 8, beam_size=1)
    assert torch.equal(greedy, one)
    four, scores = beam_search(model, src, 8, beam_size=4)
    assert four.shape[0] == 3 and scores.shape == (3,) and torch.equal(four, predict(model, src, 8, beam_size=4))
    for row in four:  # PAD only after an EOS
        ends = (row == EOS).nonzero()
        if len(ends):
            assert (row[ends[0, 0] + 1:] == PAD).all()
    maps = attention_maps(model.train(), src, 8)
    assert torch.equal(maps["output"], greedy) and model.training  # decoded in eval mode, the mode restored


def test_beam_search_finds_a_better_sequence_than_greedy():
    """A decoder whose first step prefers token a, after which everything is uncertain; token b leads to a
    certain continuation. Greedy takes a, the beam finds b."""

    class Toy(Transformer):
        def decode(self, tgt, memory, memory_mask, need_weights=False):
            B, T = tgt.shape
            logits = torch.full((B, T, self.config.vocab_size), -20.0)
            last = tgt[:, -1]
            logits[:, -1, 3] = torch.where(last == BOS, 1.0, -20.0)  # a: p ~ 0.6
            logits[:, -1, 4] = torch.where(last == BOS, 0.6, -20.0)  # b: p ~ 0.4
            logits[:, -1, 5:9] = torch.where(last == 3, 0.0, -20.0)[:, None]  # after a: four equal choices
            logits[:, -1, EOS] = torch.where((last == 4) | (last >= 5), 10.0, -20.0)
            return logits, [], []

    model = Toy(SMALL).eval()
    src = tokens(1, 4)
    assert greedy_decode(model, src, 5)["tokens"][0, 0] == 3
    assert beam_search(model, src, 5, beam_size=2)[0][0, 0] == 4


@pytest.mark.slow
def test_a_few_steps_lower_the_loss():
    from attn_course.data.sequences import SequenceTask

    torch.manual_seed(0)
    model = Transformer(SMALL)
    task = SequenceTask("reverse", max_length=5)
    optimizer, scheduler = noam_optimizer(model, 32, 20, factor=2.0)
    g = torch.Generator().manual_seed(0)
    batch = task.sample(g, 32)
    first, _ = transformer_loss(model, batch)
    for _ in range(30):
        loss, metrics = transformer_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    assert loss < first.detach() * 0.7 and 0 <= float(metrics["token_accuracy"]) <= 1


@pytest.mark.slow
def test_cli_trains_and_evaluates_the_transformer(tmp_path, capsys):
    import json

    from attn_course.__main__ import main

    out = tmp_path / "transformer-copy.pt"
    assert main(["train", "transformer", "--task", "copy", "--steps", "2", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["test_examples"] == 2000 and 0.0 <= trained["metrics"]["exact_match"] < 0.05
    assert main(["evaluate", "transformer", "--task", "copy", "--checkpoint", str(out), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["metrics"] == trained["metrics"]  # evaluation is deterministic
    assert main(["evaluate", "transformer", "--task", "translate"]) == 2
    assert "choose one of: copy, reverse, sort, dates" in capsys.readouterr().err


def test_cooldown_ramps_the_schedule_to_zero():
    optimizer, scheduler = noam_optimizer(torch.nn.Linear(2, 2), 64, 10, total_steps=100, cooldown=0.3)
    rate = scheduler.lr_lambdas[0]
    assert rate(50) == pytest.approx(noam_lr(51, 64, 10)) and rate(85) == pytest.approx(noam_lr(86, 64, 10) * 0.5)
    assert rate(99) < 0.05 * noam_lr(100, 64, 10)
    with pytest.raises(ValueError, match="needs total_steps"):
        noam_optimizer(torch.nn.Linear(2, 2), 64, 10, cooldown=0.3)


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_transformer_calls():
    from attn_course import transformer as tr
    from attn_course.experiments import transformer as experiment

    model = Transformer(TransformerConfig(vocab_size=VOCAB_SIZE, d_model=16, heads=2, d_ff=32, encoder_layers=1,
                                          decoder_layers=1, dropout=0.0, max_len=32)).eval()
    src = torch.full((2, 5), 5, dtype=torch.long)
    Q = torch.rand(2, 3, 4)
    return [
        (ValueError, "T must", lambda: tr.causal_mask(0)),
        (ValueError, "token ids", lambda: tr.padding_mask(torch.zeros(3))),
        (ValueError, "dropout_p", lambda: tr.scaled_dot_product_attention(Q, Q, Q, dropout_p=1.5)),
        (ValueError, "scale", lambda: tr.scaled_dot_product_attention(Q, Q, Q, scale=0.0)),
        (ValueError, "mask", lambda: tr.scaled_dot_product_attention(Q, Q, Q, mask=torch.ones(3, 3))),
        (ValueError, "d_k", lambda: tr.scaled_dot_product_attention(Q, torch.rand(2, 3, 5), Q)),
        (ValueError, "temperature", lambda: tr.softmax_statistics(8, temperature=0.0)),
        (ValueError, "num_keys", lambda: tr.softmax_statistics(8, num_keys=0)),
        (ValueError, "heads", lambda: MultiHeadAttention(16, 0)),
        (ValueError, "dropout", lambda: MultiHeadAttention(16, 2, dropout=1.0)),
        (ValueError, "queries", lambda: MultiHeadAttention(16, 2)(torch.rand(2, 3, 8), torch.rand(2, 3, 16))),
        (ValueError, "d_ff", lambda: tr.PositionwiseFeedForward(16, 0)),
        (ValueError, "d_model", lambda: tr.positional_encoding(10, 7)),
        (ValueError, "max_len", lambda: tr.positional_encoding(0, 8)),
        (ValueError, "d_model", lambda: tr.pe_shift_matrix(1, 3)),
        (TypeError, "config", lambda: Transformer({"d_model": 16})),
        (TypeError, "config", lambda: tr.parameter_count({"d_model": 16})),
        (ValueError, "src", lambda: model.encode(src.float())),
        (ValueError, "tgt ids", lambda: model(src, torch.full((2, 3), VOCAB_SIZE))),
        (ValueError, "epsilon", lambda: tr.smoothed_targets(torch.zeros(3).long(), 5, 1.0)),
        (ValueError, "num_classes", lambda: tr.smoothed_targets(torch.zeros(3).long(), 0, 0.1)),
        (TypeError, "target", lambda: tr.smoothed_targets(torch.zeros(3), 5, 0.1)),
        (ValueError, "logits", lambda: tr.label_smoothed_loss(torch.rand(2, 3, 5), torch.zeros(2, 4).long())),
        (ValueError, "warmup", lambda: tr.noam_lr(1, 16, 0)),
        (ValueError, "factor", lambda: tr.noam_lr(1, 16, 10, factor=0.0)),
        (ValueError, "total_steps", lambda: tr.noam_optimizer(model, 16, 10, total_steps=0)),
        (ValueError, "cooldown", lambda: tr.noam_optimizer(model, 16, 10, cooldown=0.3)),
        (ValueError, "max_len", lambda: tr.predict(model, src, 0)),
        (ValueError, "max_len", lambda: tr.predict(model, src, 0, beam_size=2)),
        (ValueError, "max_len", lambda: tr.beam_search(model, src, 0)),
        (ValueError, "beam_size", lambda: tr.beam_search(model, src, 5, beam_size=0)),
        (ValueError, "beam_size", lambda: tr.predict(model, src, 5, beam_size=0)),
        (ValueError, "predicted and target", lambda: experiment.same_sequences(src, src[0])),
        (ValueError, "batch_size", lambda: experiment.exact_match(model, None, batch_size=0)),
        (ValueError, "batch_size", lambda: experiment.alignment_hits(model, None, batch_size=0)),
    ]


BAD_TRANSFORMER_CALLS = _bad_transformer_calls()


@pytest.mark.parametrize("error, match, call", BAD_TRANSFORMER_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_TRANSFORMER_CALLS)])
def test_bad_transformer_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()
