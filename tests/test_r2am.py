"""R2AM: the three blocks (equations 4.1-4.2), their parameter counts and receptive fields, the attention decoder,
decoding, the metrics, training and the registry."""

import pytest
import torch

from attn_course.data.text_lines import HEIGHT, PAD, WIDTH, TextLineConfig, TextLines
from attn_course.experiments.r2am import TASKS, alignment, character_error_rate, column_centres, evaluate_reading
from attn_course.r2am import (BLOCKS, FIRST_KERNELS, R2AM, PlainBlock, R2AMConfig, RecurrentBlock, RecursiveBlock, block_parameters,
                              r2am_loss, read, read_line, receptive_field)
from attn_course.registry import get_spec, train_model

SMALL = dict(c1=8, c2=8, D=16, m=8, n=16, att_hidden=8)


@pytest.fixture(scope="module")
def lines():
    return TextLines(TextLineConfig(seed=1, test_size=24, val_size=8))


def batch_of(lines, n=6):
    return lines.sample(torch.Generator().manual_seed(0), n)


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("T", [0, 1, 3])
def test_parameter_count_formula(kind, T):
    block = {"recursive": RecursiveBlock(12, T), "recurrent": RecurrentBlock(12, T),
             "plain": PlainBlock(12, T)}[kind]
    assert sum(p.numel() for p in block.parameters()) == block_parameters(kind, 12, T)
    untied = RecurrentBlock(12, T, tied=False)
    assert sum(p.numel() for p in untied.parameters()) == block_parameters("recurrent", 12, T, tied=False)


@pytest.mark.parametrize("first_kernel", FIRST_KERNELS)
def test_recursive_block_equals_a_plain_stack_with_tied_weights(first_kernel):
    """Unrolled, (4.1) is a plain stack whose layers 1..T hold w^hh, and layer 0 w^f (or w^hh too, "shared")."""
    torch.manual_seed(0)
    recursive, plain = RecursiveBlock(6, 3, first_kernel).eval(), PlainBlock(6, 3).eval()
    first = recursive.w_f if first_kernel == "separate" else recursive.w_hh
    for t, (conv, norm) in enumerate(zip(plain.convs, plain.norms)):
        conv.load_state_dict((first if t == 0 else recursive.w_hh).state_dict())
        recursive.norms[t].running_mean.uniform_(-0.1, 0.1)
        norm.load_state_dict(recursive.norms[t].state_dict())
    x = torch.randn(2, 6, 8, 10)
    assert torch.allclose(recursive(x), plain(x), atol=1e-6)
    steps = recursive(x, return_steps=True)
    assert len(steps) == 4 and torch.equal(steps[-1], recursive(x))
    if first_kernel == "separate":  # the two kernels really differ, and w^f only reads the input
        with torch.no_grad():
            recursive.w_f.weight.zero_()
            recursive.w_f.bias.zero_()
        assert not torch.allclose(recursive(x), plain(x), atol=1e-3)


@pytest.mark.parametrize("first_kernel", FIRST_KERNELS)
@pytest.mark.parametrize("T", [0, 1, 3])
def test_recursive_parameter_count_by_first_kernel(first_kernel, T):
    block = RecursiveBlock(12, T, first_kernel)
    counted = sum(p.numel() for p in block.parameters())
    assert counted == block_parameters("recursive", 12, T, first_kernel=first_kernel)
    conv = 9 * 12 * 12 + 12
    assert counted == (2 if first_kernel == "separate" and T >= 1 else 1) * conv + 2 * 12 * (T + 1)


def test_recursive_first_kernel_is_checked():
    with pytest.raises(ValueError, match="first_kernel must be one of"):
        RecursiveBlock(4, 1, "tied")
    with pytest.raises(ValueError, match="R2AMConfig.first_kernel"):
        R2AMConfig(first_kernel="both")


def test_recurrent_block_feeds_the_input_at_every_step():
    torch.manual_seed(0)
    block = RecurrentBlock(4, 2).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        feed = block.w_f(x)
        h = torch.relu(block.norms[0](feed))
        for t in (1, 2):
            h = torch.relu(block.norms[t](block.w_r[0](h) + feed))
    assert torch.allclose(block(x), h, atol=1e-6)
    assert len(RecurrentBlock(4, 3, tied=False).w_r) == 3 and len(RecurrentBlock(4, 3).w_r) == 1


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("T", [0, 2])
def test_receptive_field_formula_matches_the_gradient(kind, T):
    torch.manual_seed(0)
    model = R2AM(R2AMConfig(block=kind, T=T, **SMALL)).eval()
    support = torch.zeros(WIDTH)
    for _ in range(3):
        x = torch.rand(2, 1, HEIGHT, WIDTH, requires_grad=True)
        model.encoder(x)[:, 12].sum().backward()
        support += x.grad.abs().sum((0, 1, 2))
    seen = support.nonzero()[:, 0]
    assert int(seen.max() - seen.min() + 1) == receptive_field(T) == 25 + 12 * T


@pytest.mark.parametrize("attention", ["soft", "none"])
def test_shapes_attention_sums_to_one_and_loss(lines, attention):
    torch.manual_seed(0)
    model = R2AM(R2AMConfig(attention=attention, **SMALL))
    batch = batch_of(lines)
    out = model(batch["images"], batch["tokens"])
    steps = int((batch["tokens"] != PAD).sum(1).max()) - 1
    assert out["logits"].shape == (6, steps, model.config.vocab_size)
    assert out["alpha"].shape == (6, steps, WIDTH // 4)
    assert torch.allclose(out["alpha"].sum(-1), torch.ones(6, steps), atol=1e-5)
    loss, metrics = r2am_loss(model, batch)
    assert 2.0 < float(loss.detach()) < 5.0 and 0 <= float(metrics["char_accuracy"]) <= 1


def test_bad_inputs_get_clear_errors(lines):
    model = R2AM(R2AMConfig(**SMALL))
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 100\)"):
        model.encoder(torch.zeros(2, 1, 32, 64))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.zeros(1, 1, 32, 100), torch.tensor([[1, 99, 2]]))
    with pytest.raises(ValueError, match="block"):
        R2AMConfig(block="deep")
    with pytest.raises(ValueError, match="no task 'lstm'; choose one of: recursive"):
        get_spec("r2am").model_config("lstm")


@pytest.mark.parametrize("beam", [1, 3])
def test_reading_returns_strings_and_alignment(lines, beam):
    model = R2AM(R2AMConfig(**SMALL))
    batch = batch_of(lines, 4)
    out = read(model, batch["images"], beam_size=beam)
    assert len(out["texts"]) == 4 and out["alpha"].shape[:2] == out["tokens"].shape
    assert set(out) == {"texts", "tokens", "alpha"} | ({"score", "finished"} if beam > 1 else set())


def test_read_line_labels_each_step_up_to_eos(lines):
    torch.manual_seed(0)
    model = R2AM(R2AMConfig(**SMALL)).train()
    line = batch_of(lines, 1)["images"][0]
    result = read_line(model, line[0])  # (32, 100) is one line too
    read_out = read(model, line[None])
    assert result["text"] == read_out["texts"][0] and model.training  # read in eval mode, the mode restored
    assert len(result["labels"]) == len(result["alpha"]) and result["alpha"].shape[1] == WIDTH // 4
    assert result["labels"][-1] == "EOS" or len(result["labels"]) == read_out["tokens"].shape[1]
    assert "".join(label for label in result["labels"] if label not in ("EOS", "?")) == result["text"]


def test_alignment_scores_the_nearest_character():
    centres = torch.tensor([[10.0, 30.0, 50.0, float("nan")]])
    x = column_centres()
    alpha = torch.zeros(1, 3, 25)
    for t, target in enumerate((10.0, 30.0, 28.0)):  # the third step looks at the second character
        alpha[0, t, (x - target).abs().argmin()] = 1.0
    scored = alignment(alpha, centres)
    assert scored["hit"].tolist() == [[True, True, False]]
    assert scored["valid"].tolist() == [[True, True, True]]


def test_character_error_rate():
    assert character_error_rate(["abc", "abd"], ["abc", "abc"]) == pytest.approx(1 / 6)
    assert character_error_rate(["", "xyz"], ["ab", "xyz"]) == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        character_error_rate(["a"], [])


@pytest.mark.slow
def test_a_short_training_run_learns(lines):
    torch.set_num_threads(2)
    model, result, _ = train_model("r2am", "recursive", steps=120, device="cpu", data=lines, progress=False,
                                   batch_size=32)
    losses = result.history.series("loss")[1]
    assert losses[-1] < losses[0] - 0.5
    scores = evaluate_reading(model, lines, ("test_words",))
    assert set(scores) == {"word_accuracy_words", "cer_words", "alignment_words"}
    assert scores["cer_words"] < 1.0


def test_registry_tasks_and_configs():
    spec = get_spec("r2am")
    assert set(spec.tasks) == set(TASKS)
    assert spec.model_config("plain-noattn")["attention"] == "none"
    assert spec.model_config("recurrent")["block"] == "recurrent"


def test_train_takes_a_config_for_experiments(lines):
    model, result, _ = train_model("r2am", "recursive", steps=2, device="cpu", data=lines, progress=False,
                                   batch_size=4, config=R2AMConfig(block="recurrent", tied=False, T=1, **SMALL))
    assert model.config.block == "recurrent" and not model.config.tied and result.step == 2
    assert len(model.encoder.block1.w_r) == 1 and isinstance(model.encoder.block1, RecurrentBlock)


def test_the_reader_without_attention_has_no_attention_network_and_still_decodes():
    with_attention = R2AM(R2AMConfig(**SMALL))
    without = R2AM(R2AMConfig(attention="none", **SMALL))
    assert without.f_att is None and "Wa_a" not in without.annotate(torch.rand(2, 1, HEIGHT, WIDTH))
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert size(without) - size(with_attention) == sum(p.numel() for p in without.summary.parameters()) - sum(
        p.numel() for p in with_attention.f_att.parameters())
    images = torch.rand(3, 1, HEIGHT, WIDTH)
    for beam in (1, 2):
        out = read(without, images, beam_size=beam)
        assert len(out["texts"]) == 3
    with pytest.raises(ValueError, match="without attention"):
        without.step(torch.zeros(3, dtype=torch.long), without.annotate(images), "expected")


# --------------------------------------------------------------------------- reading dark text on light paper


@pytest.mark.slow
def test_the_shipped_reader_reads_dark_text_on_light_paper():
    from attn_course.data.text_lines import FONTS, load_words, render, split_words
    from attn_course.r2am import to_light_on_dark
    from attn_course.registry import load_pretrained

    reader = load_pretrained("r2am", "recurrent", device="cpu")
    g = torch.Generator().manual_seed(0)
    words = split_words(load_words())["test"]
    texts = [words[i] for i in torch.randint(len(words), (24,), generator=g).tolist()]
    lines = render(texts, torch.randint(len(FONTS), (24,), generator=g), g)["images"]  # light text on dark
    paper = 1 - lines  # ordinary print: dark text on a light background
    assert torch.equal(to_light_on_dark(lines), lines) and torch.allclose(to_light_on_dark(paper), lines, atol=1e-6)
    as_rendered = read(reader, lines)["texts"]
    assert sum(r == t for r, t in zip(as_rendered, texts)) >= 20  # about 96% of held-out words
    assert read(reader, paper)["texts"] == as_rendered  # polarity="auto" inverts it first
    assert read(reader, paper, polarity="dark_on_light")["texts"] == as_rendered
    misread = read(reader, paper, polarity="light_on_dark")["texts"]  # what the readers did before
    assert sum(r == t for r, t in zip(misread, texts)) < sum(r == t for r, t in zip(as_rendered, texts)) // 2
    assert read_line(reader, paper[0])["text"] == read_line(reader, lines[0])["text"] == as_rendered[0]
    assert read_line(reader, paper[0], polarity="light_on_dark")["text"] != as_rendered[0]


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_r2am_calls():
    from attn_course import r2am
    from attn_course.experiments import r2am as experiment

    model = R2AM(R2AMConfig(c1=4, c2=4, D=8, m=4, n=8, att_hidden=4)).eval()
    line = torch.rand(1, 1, HEIGHT, WIDTH)
    return [
        (ValueError, "block 'dense'.*recursive", lambda: r2am.make_block("dense", 8, 2)),
        (ValueError, "channels", lambda: r2am.make_block("plain", 0, 2)),
        (ValueError, r"T \(steps after t = 0\)", lambda: r2am.make_block("recurrent", 8, -1)),
        (ValueError, r"T \(steps after t = 0\)", lambda: RecursiveBlock(8, -1)),
        (ValueError, "channels", lambda: RecurrentBlock(0, 2)),
        (ValueError, r"T \(steps after t = 0\)", lambda: PlainBlock(8, -2)),
        (ValueError, "block 'dense'", lambda: r2am.block_parameters("dense", 8, 2)),
        (ValueError, "kernel", lambda: r2am.block_parameters("plain", 8, 2, kernel=0)),
        (ValueError, r"T \(steps after t = 0\)", lambda: r2am.receptive_field(-1)),
        (ValueError, r"T \(steps after t = 0\)", lambda: r2am.receptive_field(1.5)),
        (TypeError, "config", lambda: R2AM({"block": "plain"})),
        (ValueError, "text lines", lambda: model.encoder(torch.rand(1, 1, 64, 50))),
        (ValueError, "tokens", lambda: model(line, torch.ones(1, 2, dtype=torch.long))),
        (ValueError, "context", lambda: model.step(torch.ones(1, dtype=torch.long), model.annotate(line), "peek")),
        (TypeError, "model", lambda: r2am.read(object(), line)),
        (ValueError, r"images must be text lines .*\(1, 1, 64, 50\)", lambda: r2am.read(model, torch.rand(1, 1, 64, 50))),
        (ValueError, "images must be text lines", lambda: r2am.read(model, torch.rand(0, 1, HEIGHT, WIDTH))),
        (TypeError, "images", lambda: r2am.read(model, line.numpy())),
        (TypeError, "images", lambda: r2am.read(model, line.long())),
        (ValueError, r"images must lie in \[0, 1\]", lambda: r2am.read(model, line * 255)),
        (ValueError, r"images must lie in \[0, 1\]", lambda: r2am.read(model, line * float("nan"))),
        (ValueError, "beam_size", lambda: r2am.read(model, line, beam_size=0)),
        (ValueError, "polarity must be one of auto, light_on_dark, dark_on_light", lambda: r2am.read(model, line,
                                                                                                   polarity="dark")),
        (ValueError, "polarity", lambda: r2am.to_light_on_dark(line, "negative")),
        (ValueError, r"image must be one text line .*\(1, 64, 50\)",
         lambda: r2am.read_line(model, torch.zeros(1, 64, 50))),
        (ValueError, "polarity", lambda: r2am.read_line(model, torch.zeros(32, 100), polarity="inverted")),
        (TypeError, "model", lambda: r2am.read_line(object(), torch.zeros(32, 100))),
        (ValueError, "columns", lambda: experiment.column_centres(0)),
        (ValueError, "centres", lambda: experiment.alignment(torch.rand(2, 3, 25), torch.rand(3, 10))),
        (ValueError, "targets", lambda: experiment.character_error_rate(["a"], [""])),
        (ValueError, "targets", lambda: experiment.character_error_rate(["a"], ["a", "b"])),
        (TypeError, "targets", lambda: experiment.character_error_rate("ab", "ab")),
        (ValueError, "batch_size", lambda: experiment.evaluate_reading(model, None, batch_size=0)),
    ]


BAD_R2AM_CALLS = _bad_r2am_calls()


@pytest.mark.parametrize("error, match, call", BAD_R2AM_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_R2AM_CALLS)])
def test_bad_reading_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()
