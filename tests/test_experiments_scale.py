"""Chapter 7's experiments: the model spec, the fixed alphabet, the text and its split, the validation loss (7.12),
rotary against learned positions past the context, sampling (7.13), attention weights, the cost of attention (7.1)
and decoding with the KV cache (7.9)."""

import dataclasses
import math
import platform

import pytest
import torch
import torch.nn.functional as F

from attn_course.__main__ import main
from attn_course.experiments import CHAPTERS
from attn_course.experiments import scale as X
from attn_course.registry import get_spec, train_model
from attn_course.scale import GPT, CharTokenizer, GPTConfig, generate, kv_cache_bytes, stdlib_corpus, text_corpus

TINY = GPTConfig(vocab_size=X.VOCAB_SIZE, context=16, d_model=16, layers=2, heads=2, kv_heads=1, position="rotary")


def tiny_model(position="rotary", seed=0, **changes):
    torch.manual_seed(seed)
    return GPT(dataclasses.replace(TINY, position=position, **changes)).eval()


def program_text(lines=400, seed=0):
    """A small Python-like text, the same for a seed."""
    g = torch.Generator().manual_seed(seed)
    names = ["x", "y", "total", "count", "value"]
    out = []
    for _ in range(lines):
        a, b = (names[int(i)] for i in torch.randint(0, len(names), (2,), generator=g))
        out.append(f"def f_{a}({b}):\n    return {b} + {int(torch.randint(0, 10, (), generator=g))}\n")
    return "".join(out)


@pytest.fixture
def corpus_file(tmp_path, monkeypatch):
    path = tmp_path / "text.txt"
    path.write_text(program_text(), encoding="utf-8")
    monkeypatch.setenv(X.CORPUS_ENV, str(path))
    return path


# --------------------------------------------------------------------------- the spec


def test_the_chapter_registers_gpt_with_two_tasks_that_differ_only_in_positions():
    assert X in CHAPTERS and CHAPTERS[-1] is X
    spec = get_spec("gpt")
    assert spec is X.GPT_SPEC and spec.title == "GPT" and spec.tasks == ("stdlib", "stdlib-learned", "stdlib-sinusoidal")
    assert spec.default_task == "stdlib" and spec.targets is X.TARGETS and set(X.TARGETS) == set(spec.tasks)
    assert X.TARGETS["stdlib"].at_most == 1.9
    rotary, learned = spec.config("stdlib"), spec.config("stdlib-learned")
    assert rotary.position == "rotary" and learned.position == "learned"
    assert dataclasses.replace(learned, position="rotary") == rotary
    assert rotary.vocab_size == X.VOCAB_SIZE == 98 and rotary.context == 128
    for task in spec.tasks:
        assert spec.model_config(task)["kind"] == "gpt"
        assert isinstance(spec.build(spec.model_config(task)), GPT)
        assert spec.recipes[task] == spec.recipes["stdlib"], "the comparison trains with the same recipe"
    assert sum(p.numel() for p in GPT(rotary).parameters()) == 189_696


def test_the_config_must_fit_the_alphabet_and_the_windows():
    with pytest.raises(ValueError, match="alphabet has 98 ids"):
        X._check_config("stdlib", dataclasses.replace(X.COURSE_CONFIGS["stdlib"], vocab_size=100))
    with pytest.raises(ValueError, match="windows of 128"):
        X._check_config("stdlib", dataclasses.replace(X.COURSE_CONFIGS["stdlib"], context=64))


def test_the_optimiser_warms_up_then_decays_on_a_cosine():
    model = tiny_model()
    optimizer, schedule = X.warmup_then_cosine(model, 1e-2, 1000)
    rates = []
    for _ in range(1000):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-4) and rates[99] == pytest.approx(1e-2)
    assert max(rates) == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-3, rel=1e-3)
    assert all(a >= b for a, b in zip(rates[100:], rates[101:])), "the cosine only decreases"
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(model.E.weight) in decayed and id(model.norm.weight) not in decayed
    assert optimizer.param_groups[0]["weight_decay"] == 0.1 and optimizer.param_groups[1]["weight_decay"] == 0.0


# --------------------------------------------------------------------------- the alphabet


def test_the_alphabet_is_fixed_and_round_trips():
    assert X.ALPHABET[:2] == "\t\n" and len(X.ALPHABET) == 97 and X.TOKENIZER.unknown_id == 97
    assert torch.equal(X.TOKENIZER.encode("\t\n a~"), torch.tensor([0, 1, 2, 67, 96]))
    text = X.ALPHABET + "def f(x):\n\treturn x ** 2  # ok\n"
    ids = X.TOKENIZER.encode(text)
    assert ids.dtype == torch.long and X.TOKENIZER.decode(ids) == text
    generic = CharTokenizer(X.ALPHABET + X.UNKNOWN)
    assert torch.equal(ids, generic.encode(text)), "the fast table agrees with the tokenizer it extends"
    assert X.TOKENIZER.encode("").shape == (0,)


def test_characters_outside_the_alphabet_read_as_the_unknown_id():
    ids = X.TOKENIZER.encode("é\r\x00ok→")
    assert ids.tolist() == [97, 97, 97, X.ALPHABET.index("o"), X.ALPHABET.index("k"), 97]
    assert X.TOKENIZER.decode(ids) == "\ufffd\ufffd\ufffdok\ufffd"
    assert X.TOKENIZER.unknown_count("naïve\r\n") == 2
    with pytest.raises(TypeError, match="expected a str"):
        X.TOKENIZER.encode(b"bytes")


# --------------------------------------------------------------------------- the text


def test_a_readers_file_is_split_by_position_and_sampled_from_the_training_part(tmp_path, monkeypatch):
    path = tmp_path / "mine.txt"
    path.write_text("ab" * 900 + "xy" * 100, encoding="utf-8")  # the last tenth: x and y only
    monkeypatch.setenv(X.CORPUS_ENV, str(path))
    data = X.text_data("stdlib")
    assert len(data.train_ids) == 1800 and len(data.validation_ids) == 200
    assert X.TOKENIZER.decode(data.validation_ids) == "xy" * 100
    batch = data.sample(torch.Generator().manual_seed(0), 5)
    assert batch["inputs"].shape == batch["targets"].shape == (5, 128)
    assert torch.equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert set(X.TOKENIZER.decode(torch.cat([batch["inputs"], batch["targets"]]))) == {"a", "b"}
    again = data.sample(torch.Generator().manual_seed(0), 5)
    assert torch.equal(batch["inputs"], again["inputs"]), "the generator decides the windows"
    described = data.describe()
    assert str(path) in described and text_corpus(path).sha256 in described and "1,800 to train on" in described
    assert "PSF" not in described


def test_the_corpus_variable_must_name_a_file_and_the_text_must_hold_windows(tmp_path, monkeypatch):
    monkeypatch.setenv(X.CORPUS_ENV, str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match=X.CORPUS_ENV):
        X.text_data("stdlib")
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    monkeypatch.setenv(X.CORPUS_ENV, str(short))
    with pytest.raises(ValueError, match="too short|windows of 128"):
        X.text_data("stdlib")
    with pytest.raises(ValueError, match="unknown task"):
        X.text_data("imagenet")


def test_the_stdlib_data_are_the_first_characters_of_the_corpus(monkeypatch):
    monkeypatch.delenv(X.CORPUS_ENV, raising=False)
    data = X.text_data("stdlib")
    corpus = stdlib_corpus(X.MAX_CHARS)
    assert len(data.train_ids) + len(data.validation_ids) == len(corpus.text) == X.MAX_CHARS
    assert len(data.validation_ids) == X.MAX_CHARS // 10
    assert X.TOKENIZER.decode(data.validation_ids[:200]) == corpus.text[-X.MAX_CHARS // 10:][:200]
    described = data.describe()
    assert platform.python_version() in described and corpus.sha256 in described and "PSF" in described


# --------------------------------------------------------------------------- the validation loss (7.12)


def test_validation_windows_tile_the_text_without_overlap():
    ids = torch.arange(50)
    windows = X.validation_windows(ids, 8)
    assert windows.shape == (6, 9)  # (50 - 1) // 8 windows of 8 inputs and the next target
    assert torch.equal(windows[:, 0], torch.arange(0, 48, 8)) and torch.equal(windows[:-1, -1], windows[1:, 0])
    assert X.validation_windows(ids, 8, windows=2).shape == (2, 9)
    with pytest.raises(ValueError, match="no window"):
        X.validation_windows(torch.arange(5), 8)


def test_the_validation_loss_is_deterministic_and_the_mean_cross_entropy(corpus_file):
    data = X.TextData(text_corpus(corpus_file), 16)
    model = tiny_model()
    result = X.validation_loss(model, data, windows=10, batch_size=3)
    by_hand = []
    for w in range(10):
        window = data.validation_ids[w * 16:w * 16 + 17]
        with torch.no_grad():
            logits = model(window[None, :-1])[0]
        by_hand.append(F.cross_entropy(logits, window[1:], reduction="sum").item())
    assert result["characters"] == 160
    assert result["nats_per_char"] == pytest.approx(sum(by_hand) / 160, rel=1e-6)
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))
    assert result["per_position"].shape == (16,)
    assert X.validation_loss(model, data, windows=10, batch_size=3)["nats_per_char"] == result["nats_per_char"]
    assert X.validation_bits_per_char(model, data, windows=10) == pytest.approx(result["bits_per_char"], rel=1e-6)
    assert X.validation_loss(model, data)["characters"] == (len(data.validation_ids) - 1) // 16 * 16
    with pytest.raises(ValueError, match="at most 16"):
        X.validation_loss(model, data, length=32)


def test_rotary_models_read_past_their_context_and_learned_ones_say_why_not(corpus_file):
    data = X.TextData(text_corpus(corpus_file), 16)
    rotary, learned = tiny_model("rotary"), tiny_model("learned")
    longer = X.with_context(rotary, 32)
    assert longer.config.context == 32 and not longer.training
    ids = data.validation_ids[None, :16]
    with torch.no_grad():
        assert torch.allclose(longer(ids), rotary(ids), atol=1e-6), "the same weights, the same first 16 positions"
    with pytest.raises(ValueError, match="P has 16 rows"):
        X.with_context(learned, 32)
    rows = X.extrapolation(rotary, data, [8, 16, 32], characters=256)
    assert [row["length"] for row in rows] == [8, 16, 32]
    assert rows[1]["nats_per_char"] == pytest.approx(X.validation_loss(rotary, data, windows=16)["nats_per_char"])
    assert rows[0]["beyond"] is None and rows[2]["beyond"] is not None and rows[2]["characters"] == 256
    learned_rows = X.extrapolation(learned, data, [16, 32], characters=256)
    assert learned_rows[0]["bits_per_char"] is not None
    assert learned_rows[1]["bits_per_char"] is None and "P has 16 rows" in learned_rows[1]["why"]
    table = X.summary(rows + learned_rows)
    assert table.count("\n") == 5 and "P has 16 rows" in table
    sinusoidal = tiny_model("sinusoidal")
    with torch.no_grad():
        assert torch.allclose(X.with_context(sinusoidal, 32)(ids), sinusoidal(ids), atol=1e-6)
    assert X.extrapolation(sinusoidal, data, [32], characters=256)[0]["beyond"] is not None


# --------------------------------------------------------------------------- training through the registry


def test_twenty_steps_through_the_registry_lower_the_validation_loss(tmp_path, monkeypatch):
    path = tmp_path / "text.txt"
    path.write_text(program_text(1500), encoding="utf-8")
    monkeypatch.setenv(X.CORPUS_ENV, str(path))
    config = dataclasses.replace(TINY, context=128, d_model=32, layers=1)
    data = X.text_data("stdlib")
    torch.manual_seed(0)
    before = X.validation_bits_per_char(GPT(config), data, windows=8)
    model, result, described = train_model("gpt", "stdlib", steps=20, batch_size=8, lr=1e-2, config=config,
                                           data=data, progress=False, device="cpu")
    after = X.validation_bits_per_char(model, data, windows=8)
    assert result.step == 20 and str(path) in described
    assert "eval_bits_per_char" in result.history.state_dict(), "the spec's validation ran"
    assert after < before - 1.0, f"20 steps should lower the loss by a bit per character: {before:.2f} -> {after:.2f}"


# --------------------------------------------------------------------------- sampling (7.13)


def test_a_card_records_seeded_samples_from_each_prompt():
    model = tiny_model()
    extras = X.GPT_SPEC.card_extras(model, "stdlib", "cpu")
    assert [(s["prompt"], s["temperature"]) for s in extras["samples"]] == [
        (prompt, temperature) for prompt in X.CARD_PROMPTS for temperature in (0.0, 0.8)]
    assert all(s["text"].startswith(s["prompt"]) and len(s["text"]) == len(s["prompt"]) + 160
               for s in extras["samples"])
    assert X.GPT_SPEC.card_extras(model, "stdlib", "cpu") == extras, "seeded: the same samples again"


def test_sampling_is_seeded_and_slides_past_the_context():
    model = tiny_model()
    text = X.sample_text(model, "def ", 40, temperature=1.0, seed=3)
    assert len(text) == 44 and text.startswith("def ")
    assert X.sample_text(model, "def ", 40, temperature=1.0, seed=3) == text
    assert X.sample_text(model, "def ", 40, temperature=1.0, seed=4) != text
    greedy = generate(model, X.TOKENIZER.encode("def "), 10)
    assert X.sample_text(model, "def ", 10, temperature=0.0) == X.TOKENIZER.decode(greedy)
    assert len(X.sample_text(model, "x" * 30, 5)) == 35, "a prompt longer than the context is read from its end"
    with pytest.raises(ValueError, match="non-empty"):
        X.sample_text(model, "", 5)


# --------------------------------------------------------------------------- attention weights and costs


@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_attention_weights_are_the_ones_the_layer_uses(position):
    model = tiny_model(position, kv_heads=1)
    ids = X.TOKENIZER.encode("def f(x): return")
    outputs = []
    hooks = [b.attention.register_forward_hook(lambda m, i, o: outputs.append((i[0], o))) for b in model.blocks]
    with torch.no_grad():
        model(ids[None])
    for hook in hooks:
        hook.remove()
    weights = X.attention_weights(model, ids)
    assert len(weights) == TINY.layers and weights[0].shape == (1, TINY.heads, len(ids), len(ids))
    for P, block, (x, out) in zip(weights, model.blocks, outputs):
        assert torch.allclose(P.sum(-1), torch.ones(())) and (P.triu(1) == 0).all()
        a = block.attention
        v = a.W_V(x).view(1, len(ids), 1, TINY.d_k).transpose(1, 2).expand(-1, TINY.heads, -1, -1)
        o = (P @ v).transpose(1, 2).reshape(1, len(ids), -1)
        assert torch.allclose(a.W_O(o), out, atol=1e-5), "P V through W_O is the layer's output"


def test_attention_cost_measures_the_written_out_matrices():
    rows = X.attention_cost([32, 128], d=8, block_size=16, repeat=1)
    methods = ("explicit", "fused", "blocked")
    assert [(r["method"], r["n"]) for r in rows] == [(m, n) for n in (32, 128) for m in methods]
    assert all(r["seconds"] > 0 and r["score_bytes"] == r["n"] ** 2 * 4 for r in rows)
    assert rows[1]["kernel"] and not rows[0]["kernel"]
    explicit, blocked = rows[3]["peak_bytes"], rows[5]["peak_bytes"]
    if explicit is None:
        pytest.skip("this torch's profiler gives no allocation events")
    assert explicit >= 2 * rows[3]["score_bytes"], "S and P are both held"
    assert blocked < rows[3]["score_bytes"], "blocks of 16 x 16, never the 128 x 128 matrix"
    with pytest.raises(ValueError, match="unknown method"):
        X.attention_cost([8], methods=["sparse"])


def test_decoding_with_the_cache_writes_the_same_tokens_and_the_trace_records_its_growth():
    model = tiny_model(kv_heads=1)
    prompt = X.TOKENIZER.encode("def ")
    cost = X.decoding_cost(model, prompt, 8)
    assert cost["same_tokens"] and cost["tokens"] == 8 and cost["tokens_per_s_cached"] > 0
    assert cost["cache_bytes"] == kv_cache_bytes(model.config, 4 + 8 - 1)
    trace = X.cache_trace(model, prompt, 8)
    assert torch.equal(trace["ids"], generate(model, prompt, 8))
    assert trace["prompt_length"] == 4 and trace["length"] == list(range(4, 12))
    assert trace["bytes"] == [kv_cache_bytes(model.config, t) for t in range(4, 12)]
    assert len(trace["weights"]) == TINY.layers and trace["weights"][0].shape == (TINY.heads, 12, 12)
    assert X.cache_trace(model, prompt, 0)["length"] == [4]
    with pytest.raises(ValueError, match=r"n must be an int in \[0, 12\]"):
        X.cache_trace(model, prompt, 13)


def test_info_lists_the_model(capsys):
    assert main(["info"]) == 0
    assert "gpt (stdlib|stdlib-learned|stdlib-sinusoidal)" in capsys.readouterr().out
