"""Show, Attend and Tell: shapes, attention, the two contexts, the losses, decoding, BLEU, attention correctness, training."""

import math

import pytest
import torch

from attn_course.data.captions import BOS, EOS, PAD
from attn_course.data.scenes import VOCAB, ShapeScenes
from attn_course.decoding import beam_search, greedy_decode, soft_context
from attn_course.experiments.show_attend_tell import (_mean_by_key, attention_correctness, attention_hit_by_phrase,
                                                      attention_maps, corpus_bleu, evaluate_captions, noun_phrase_index)
from attn_course.registry import get_spec, train_model
from attn_course.show_attend_tell import (SATConfig, ShowAttendTell, caption, caption_log_likelihood,
                                          doubly_stochastic_gradient, doubly_stochastic_penalty, hard_context,
                                          hard_loss, soft_loss)

SMALL = dict(vocab_size=len(VOCAB), image_size=32, cell=8, channels=8, D=16, m=16, n=24, att_hidden=16)


@pytest.fixture(scope="module")
def scenes():
    return ShapeScenes(seed=2, train_size=400, val_size=40, test_size=40)


def model_for(attention, **changes):
    torch.manual_seed(0)
    return ShowAttendTell(SATConfig(**{**SMALL, "attention": attention, **changes}))


def small_batch(scenes, n=6):
    batch = scenes.sample(torch.Generator().manual_seed(0), n)
    images = torch.nn.functional.avg_pool2d(batch["images"], 2)  # 32 x 32 for the small model
    return {"images": images, "captions": batch["captions"]}


@pytest.mark.parametrize("attention", ["soft", "hard", "none"])
def test_shapes_and_attention_weights_sum_to_one(scenes, attention):
    model = model_for(attention)
    batch = small_batch(scenes)
    out = model(batch["images"], batch["captions"])
    B, T = batch["captions"].shape
    assert out["logits"].shape == (B, T - 1, len(VOCAB)) and out["alpha"].shape == (B, T - 1, 16)
    assert out["beta"].shape == (B, T - 1) and ((0 < out["beta"]) & (out["beta"] < 1)).all()
    assert torch.allclose(out["alpha"].sum(-1), torch.ones(B, T - 1), atol=1e-6) and (out["alpha"] >= 0).all()
    if attention == "none":
        assert torch.allclose(out["alpha"], torch.full_like(out["alpha"], 1 / 16))
    a = model.annotate(batch["images"])
    assert a["a"].shape == (B, 16, 16) and a["h"].shape == (B, 24) and a["c"].shape == (B, 24)


def test_bad_inputs_are_clear_errors(scenes):
    model = model_for("soft")
    batch = small_batch(scenes, 2)
    images, caps = batch["images"], batch["captions"]
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\) = \(B, 3, 32, 32\)"):
        model(images[:, :1], caps)
    with pytest.raises(ValueError, match=r"\(B, T\) = \(2, T >= 2\)"):
        model(images, caps[0])
    with pytest.raises(ValueError, match="start with BOS"):
        model(images, caps[:, 1:])
    empty = caps.clone()
    empty[0, 1] = EOS
    with pytest.raises(ValueError, match="empty caption"):
        model(images, empty)
    unknown = caps.clone()
    unknown[1, 2] = len(VOCAB)
    with pytest.raises(ValueError, match="unknown token"):
        model(images, unknown)
    with pytest.raises(ValueError, match="unknown words"):
        VOCAB.encode("a small mauve circle")
    with pytest.raises(ValueError, match="attention must be one of"):
        SATConfig(attention="hardish")
    with pytest.raises(ValueError, match=r"a \(B, L, D\) and alpha \(B, L\)"):
        soft_context(torch.zeros(2, 5, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="beam_size must be positive"):
        caption(model, images, beam_size=0)


def test_soft_context_is_the_expectation_of_the_hard_context():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    alpha = torch.randn(3, 7, generator=g, dtype=torch.float64).softmax(-1)
    beta = torch.rand(3, 1, generator=g, dtype=torch.float64)
    exact = sum(alpha[:, i:i + 1] * hard_context(a, torch.full((3,), i), beta) for i in range(7))
    assert torch.allclose(soft_context(a, alpha, beta), exact)  # (3.13): E_{p(s|a)}[z^] = sum_i alpha_i a_i
    s = torch.multinomial(alpha, 20_000, replacement=True, generator=g)  # (3, N) samples of s ~ Multinoulli(alpha)
    monte_carlo = torch.stack([hard_context(a, s[:, k], beta) for k in range(0, 20_000, 10)]).mean(0)
    assert torch.allclose(monte_carlo, exact, atol=0.05)


def test_doubly_stochastic_gradient_matches_autograd():
    g = torch.Generator().manual_seed(1)
    alpha = torch.randn(2, 6, 9, generator=g, dtype=torch.float64).softmax(-1).requires_grad_()
    mask = torch.ones(2, 6, dtype=torch.float64)
    mask[1, 4:] = 0  # a shorter caption: its padding steps count for nothing
    penalty = doubly_stochastic_penalty(alpha, mask, lambda_=0.7)
    manual = 0.7 * ((1 - (alpha * mask[..., None]).sum(1)) ** 2).sum(-1)
    assert torch.allclose(penalty, manual)
    penalty.sum().backward()
    assert torch.allclose(alpha.grad, doubly_stochastic_gradient(alpha.detach(), mask, 0.7))
    assert alpha.grad[1, 4:].abs().max() == 0
    # minimised when every location gets one unit of attention over the caption (T = L)
    uniform = torch.full((1, 9, 9), 1 / 9, dtype=torch.float64)
    assert doubly_stochastic_penalty(uniform, torch.ones(1, 9, dtype=torch.float64)).item() == pytest.approx(0)


def test_hard_loss_baseline_and_the_expected_value_trick(scenes):
    batch = small_batch(scenes)
    targets = batch["captions"][:, 1:]
    # every sample replaced by its expected value: the REINFORCE term vanishes and only -log p(y|a) - lambda_e H remain
    model = model_for("hard", expected_value_prob=1.0, lambda_e=0.0)
    loss, metrics = hard_loss(model, batch)
    torch.manual_seed(3)
    soft = model(batch["images"], batch["captions"], context="expected")
    assert torch.allclose(loss, -caption_log_likelihood(soft["logits"], targets).mean(), atol=1e-5)
    # with sampling, the baseline starts at the first batch's mean log p(y | s~, a), then moves by 0.9 / 0.1 (3.11)
    model = model_for("hard", expected_value_prob=0.0)
    torch.manual_seed(4)
    hard_loss(model, batch)
    first = float(model.b)
    torch.manual_seed(5)
    out = model(batch["images"], batch["captions"])
    torch.manual_seed(5)
    hard_loss(model, batch)
    second = caption_log_likelihood(out["logits"], targets).mean().item()
    assert first < 0 and float(model.b) == pytest.approx(0.9 * first + 0.1 * second, rel=1e-5)
    # the surrogate's gradient reaches f_att only through the REINFORCE and entropy terms
    model.zero_grad()
    hard_loss(model, batch)[0].backward()
    assert model.f_att.w.weight.grad.abs().sum() > 0


def test_beam_of_one_is_greedy_and_beams_score_their_captions(scenes):
    model = model_for("soft").eval()
    images = small_batch(scenes, 5)["images"]
    greedy = caption(model, images, beam_size=1, max_len=8)
    assert set(greedy) == {"tokens", "alpha", "beta", "s"} and greedy["beta"].shape == greedy["tokens"].shape
    beam = beam_search(model, images, beam_size=1, max_len=8)
    assert torch.equal(greedy["tokens"], beam["tokens"]) and torch.allclose(greedy["alpha"], beam["alpha"])
    wide = caption(model, images, beam_size=4, max_len=8)
    assert torch.allclose(teacher_log_p(model, images, wide["tokens"]), wide["score"], atol=1e-4)  # log p(y | a)
    with torch.no_grad():
        model.L_o.bias[EOS] += 3.0  # make the untrained model's captions end within max_len
    wide = caption(model, images, beam_size=4, max_len=8)
    assert (wide["tokens"] == EOS).any(1).all() and wide["finished"].all()
    assert torch.allclose(teacher_log_p(model, images, wide["tokens"]), wide["score"], atol=1e-4)


def test_hard_attention_decodes_at_the_likeliest_the_sampled_or_the_expected_location(scenes):
    model = model_for("hard").eval()
    images = small_batch(scenes, 4)["images"]
    argmax = caption(model, images, max_len=6)
    assert torch.equal(argmax["s"], argmax["alpha"].argmax(-1))  # read where alpha is largest
    expected = caption(model, images, max_len=6, hard="expected")
    assert torch.equal(expected["tokens"], greedy_decode(model, images, 6, context="expected")["tokens"])
    torch.manual_seed(0)
    sampled = caption(model, images, max_len=6, hard="sample")
    torch.manual_seed(0)
    assert torch.equal(sampled["tokens"], caption(model, images, max_len=6, hard="sample")["tokens"])
    training = model_for("none").train()
    caption(training, images, max_len=3)
    assert training.training  # caption decodes in eval mode and restores the mode after


def teacher_log_p(model, images, tokens):
    """log p(y | a) of decoded ``tokens`` (B, T) (no BOS, PAD after EOS), one :meth:`step` at a time."""
    state = model.annotate(images)
    y = torch.full((len(tokens),), BOS)
    total = torch.zeros(len(tokens))
    for t in range(tokens.shape[1]):
        logits, state, _ = model.step(y, state)
        log_p = logits.log_softmax(-1).gather(1, tokens[:, t:t + 1].clamp(min=0))[:, 0]
        total += torch.where(tokens[:, t] != PAD, log_p, 0.0)
        y = tokens[:, t]
    return total


def test_bleu_against_a_hand_computed_case():
    hypotheses = ["a red circle above a blue square", "a red circle"]
    references = [["a red circle above a green square", "a blue square below a red circle"], ["a large red circle"]]
    # clipped n-gram matches over the corpus: 1-grams 10/10, 2-grams 7/8, 3-grams 4/6, 4-grams 2/4;
    # hypothesis length 10, closest reference lengths 7 + 4 = 11: BP = exp(1 - 11/10)
    bp = math.exp(1 - 11 / 10)
    expected = [bp * 1.0, bp * (7 / 8) ** (1 / 2), bp * (7 / 8 * 4 / 6) ** (1 / 3), bp * (7 / 8 * 4 / 6 * 2 / 4) ** 0.25]
    scores = corpus_bleu(hypotheses, references)
    for n, value in enumerate(expected, start=1):
        assert scores[f"bleu{n}"] == pytest.approx(100 * value, abs=1e-6)
    assert corpus_bleu(["a b c d"], [["a b c d"]])["bleu4"] == pytest.approx(100)
    with pytest.raises(ValueError, match="one non-empty list"):
        corpus_bleu(["a"], [])


def test_attention_correctness_on_a_constructed_case():
    masks = torch.zeros(1, 2, 16, 16, dtype=torch.bool)
    masks[0, 0, 0:8, 0:8] = True  # object 0 fills the top-left cell of a 2 x 2 grid
    masks[0, 1, 8:10, 8:10] = True  # object 1 covers a sixteenth of the bottom-right cell
    alpha = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.1, 0.7, 0.1, 0.1], [0.25] * 4]])
    referents = torch.tensor([[0, 1, 0, -1]])
    scores = attention_correctness(alpha, referents, masks)
    assert torch.allclose(scores["mass"], torch.tensor([0.7, 0.7 / 16, 0.1]))
    assert scores["hit"].tolist() == [1.0, 1.0, 0.0]  # the small object's best cell counts as on it
    assert torch.allclose(scores["chance"], torch.tensor([0.25, 1 / 64, 0.25]))
    maps = attention_maps(alpha[0], 16)
    assert maps.shape == (4, 16, 16) and torch.allclose(maps.sum((1, 2)), torch.ones(4), atol=1e-6)


@pytest.mark.slow
def test_a_short_training_run_learns_and_evaluates(scenes):
    torch.manual_seed(0)
    data = ShapeScenes(seed=3, train_size=500, val_size=50, test_size=50)
    model, result, description = train_model("sat", "soft", profile="quick", device="cpu", steps=60, batch_size=16,
                                             data=data, progress=False, lr=3e-3)
    _, values = result.history.series("nll_per_word")
    assert values[-1] < 0.6 * values[0], values  # from about log K = 3.1 nats per word
    scores = evaluate_captions(model, data, "test")
    assert scores["count"] == 50 and set(scores) >= {"bleu1", "bleu4", "bleu4_relational", "bleu4_novel"} and "never seen in training" in description
    assert 0.0 <= scores["attention_mass"] <= 1.0 and scores["words_checked"] > 0
    by_phrase = attention_hit_by_phrase(model, data, "test")  # the same words, grouped
    assert sum(count for _, count in by_phrase.values()) == scores["words_checked"]
    overall = sum(rate * count for rate, count in by_phrase.values()) / scores["words_checked"]
    assert overall == pytest.approx(scores["attention_hit"], abs=1e-6)
    assert all(1 <= objects <= 3 and phrase >= 1 for objects, phrase in by_phrase)


def test_registered_for_the_command_line():
    spec = get_spec("sat")
    assert spec.tasks == ("soft", "hard", "noattn") and spec.default_task == "soft"
    assert spec.model_config("noattn")["attention"] == "none"
    config = spec.model_config("hard")
    model = spec.build(config)
    assert isinstance(model, ShowAttendTell) and model.config.attention == "hard"
    for name in ("E", "L_o", "L_h", "L_z", "f_att", "f_beta", "f_init_h", "f_init_c"):
        assert hasattr(model, name)
    with pytest.raises(ValueError, match="no task 'medium'; choose one of: soft, hard, noattn"):
        spec.model_config("medium")


def test_finer_grid_has_four_pixel_cells():
    model = ShowAttendTell(SATConfig(**{**SMALL, "cell": 4}))
    a = model.encoder(torch.rand(2, 3, 32, 32))
    assert model.config.grid == 8 and a.shape == (2, 64, SMALL["D"])
    with pytest.raises(ValueError, match="cell"):
        SATConfig(cell=2)


def test_the_course_model_has_a_16_by_16_grid():
    config = SATConfig()
    assert (config.cell, config.grid, config.L) == (4, 16, 256)
    assert get_spec("sat").model_config("noattn")["cell"] == 4  # the baseline shares the encoder


def test_shipped_captioners_with_attention_beat_the_one_without():
    """What no single card's target can say: soft and hard attention are "far above" the decoder without
    attention on relational captions (10 BLEU-4 points or more). Each card's own target is checked with the
    others'."""
    from attn_course.checkpoints import PRETRAINED_DIR, available_pretrained, read_card

    shipped = {name.removeprefix("sat-") for name in available_pretrained() if name.startswith("sat-")}
    assert {"soft", "hard", "noattn"} <= shipped, "ship soft and hard with the no-attention baseline they beat"
    metrics = {v: read_card(PRETRAINED_DIR / f"sat-{v}.pt")["metrics"] for v in ("soft", "hard", "noattn")}
    for variant in ("soft", "hard"):
        assert metrics[variant]["bleu4_relational"] >= metrics["noattn"]["bleu4_relational"] + 10


def test_noun_phrases_start_at_each_article_and_misses_are_counted_by_phrase():
    tokens = torch.tensor(VOCAB.encode("a small red circle above a large blue square"))[None]
    assert noun_phrase_index(tokens, VOCAB.stoi["a"]).tolist() == [[1, 1, 1, 1, 1, 2, 2, 2, 2]]
    hits = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    keys = torch.tensor([[2, 1], [2, 1], [2, 2], [2, 2], [3, 1], [3, 1]])
    table = _mean_by_key(hits, keys)
    assert table == {(2, 1): (0.5, 2), (2, 2): (1.0, 2), (3, 1): (0.0, 2)}


def test_without_f_init_every_image_starts_from_the_same_state():
    model = model_for("soft", init_from_image=False)
    state = model.annotate(torch.rand(3, 3, 32, 32))
    assert not hasattr(model, "f_init_h") and state["h"].shape == (3, SMALL["n"])
    assert torch.equal(state["h"][0], state["h"][2]) and torch.equal(state["c"][1], model.c_0)
    loss = soft_loss(model, {"images": torch.rand(2, 3, 32, 32),
                             "captions": torch.tensor([[BOS, 3, 4, EOS], [BOS, 5, EOS, PAD]])})
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    assert model.h_0.grad is not None and model.h_0.grad.abs().sum() > 0  # the start is learned


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_sat_calls():
    from attn_course import show_attend_tell as sat
    from attn_course.experiments import show_attend_tell as experiment

    model = ShowAttendTell(SATConfig(vocab_size=len(VOCAB), channels=4, D=8, m=8, n=8, att_hidden=8)).eval()
    images = torch.rand(2, 3, 64, 64)
    a = torch.rand(2, 4, 8)
    return [
        (ValueError, "beta", lambda: sat.soft_context(a, torch.rand(2, 4), torch.rand(2))),
        (ValueError, "alpha", lambda: sat.soft_context(a, torch.rand(2, 5))),
        (TypeError, "locations s", lambda: sat.hard_context(a, torch.zeros(2))),
        (TypeError, "config", lambda: ShowAttendTell({"attention": "soft"})),
        (ValueError, "images", lambda: model.annotate(torch.rand(2, 3, 32, 32))),
        (ValueError, "captions", lambda: model(images, torch.ones(2, 1, dtype=torch.long))),
        (ValueError, "context", lambda: model.step(torch.ones(2, dtype=torch.long), model.annotate(images), "peek")),
        (ValueError, "mask", lambda: sat.doubly_stochastic_penalty(torch.rand(2, 3, 4), torch.ones(2, 4))),
        (ValueError, "mask", lambda: sat.doubly_stochastic_gradient(torch.rand(2, 3, 4), torch.ones(3, 3))),
        (ValueError, "targets", lambda: sat.caption_log_likelihood(torch.rand(2, 3, 5), torch.zeros(2, 4).long())),
        (ValueError, "max_len", lambda: sat.caption(model, images, max_len=0)),
        (ValueError, "max_len", lambda: sat.caption(model, images, beam_size=3, max_len=0)),
        (ValueError, "hard", lambda: sat.caption(model, images, hard="soft")),
        (ValueError, "beam_size", lambda: sat.caption(model, images, beam_size=0)),
        (ValueError, "beam_size", lambda: sat.caption(model, images, beam_size=-2)),
        (TypeError, "model", lambda: sat.caption_with_attention(object(), torch.rand(1, 3, 64, 64))),
        (ValueError, "non-empty batch of images", lambda: sat.caption_with_attention(model, torch.rand(0, 3, 64, 64))),
        (ValueError, "max_order", lambda: experiment.corpus_bleu(["a b"], [["a b"]], max_order=0)),
        (TypeError, "hypotheses", lambda: experiment.corpus_bleu("a b", [["a b"]])),
        (ValueError, "reference", lambda: experiment.corpus_bleu(["a b"], [[]])),
        (ValueError, "grid", lambda: experiment.location_cover(torch.ones(1, 1, 8, 8), 0)),
        (ValueError, "masks", lambda: experiment.location_cover(torch.ones(1, 8, 8), 2)),
        (ValueError, "masks", lambda: experiment.attention_correctness(torch.rand(2, 3, 4), torch.zeros(2, 3).long(),
                                                                        torch.ones(3, 1, 8, 8))),
        (ValueError, "alpha", lambda: experiment.attention_correctness(torch.rand(2, 3, 5), torch.zeros(2, 3).long(),
                                                                        torch.ones(2, 1, 8, 8))),
        (ValueError, "batch_size", lambda: experiment.evaluate_captions(model, None, batch_size=0)),
        (ValueError, "batch_size", lambda: experiment.attention_hit_by_phrase(model, None, batch_size=0)),
        (ValueError, "alpha", lambda: experiment.attention_maps(torch.rand(2, 5))),
        (ValueError, "image_size", lambda: experiment.attention_maps(torch.rand(2, 4), image_size=0)),
    ]


BAD_SAT_CALLS = _bad_sat_calls()


@pytest.mark.parametrize("error, match, call", BAD_SAT_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_SAT_CALLS)])
def test_bad_captioning_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()
