"""Chapter 7: exact attention (7.1), the online softmax (7.2)-(7.3), FlashAttention's tiling (7.4)-(7.5), RoPE
(7.6)-(7.7), grouped-query attention (7.8), the decoder and its loss (7.11)-(7.12), the KV cache (7.9)-(7.10),
generation (7.13) and the corpus."""

import hashlib
import math
import platform
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attn_course.scale as scale
from attn_course.scale import (GPT, CharTokenizer, GPTConfig, KVCache, attention, blocked_attention, causal_mask,
                               expand_kv, fused_attention, generate, kv_cache_bytes, kv_cache_step, next_token_loss,
                               online_normalizer, online_softmax, online_softmax_update, parameter_count, rope,
                               rope_angles, rope_complex, sample_windows, sdpa_backend, sinusoidal_positions,
                               split_by_position,
                               stdlib_corpus, stdlib_files, text_corpus)


def qkv(n_q, n_k=None, d=4, d_v=3, lead=(2, 3), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n_k = n_q if n_k is None else n_k
    return (torch.randn(*lead, n_q, d, generator=g, dtype=dtype), torch.randn(*lead, n_k, d, generator=g, dtype=dtype),
            torch.randn(*lead, n_k, d_v, generator=g, dtype=dtype))


# --------------------------------------------------------------------------- (7.1), (7.5) exact attention


def test_causal_mask_is_aligned_bottom_right():
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.equal(causal_mask(2, 5), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    assert causal_mask(1, 6).all()
    with pytest.raises(ValueError, match="n_q <= n_k"):
        causal_mask(5, 3)


@pytest.mark.parametrize("causal", [False, True])
def test_written_out_attention_is_torchs(causal):
    Q, K, V = qkv(7)
    O, P = attention(Q, K, V, causal, return_weights=True)
    assert torch.allclose(O, F.scaled_dot_product_attention(Q, K, V, is_causal=causal), atol=1e-12)
    assert torch.allclose(P.sum(-1), torch.ones(2, 3, 7, dtype=torch.float64))
    if causal:
        assert (P.triu(1) == 0).all()
    assert torch.allclose(fused_attention(Q, K, V, causal), O, atol=1e-12)


def test_fused_attention_masks_a_chunk_after_the_cache_bottom_right():
    Q, K, V = qkv(3, 8)
    expected = attention(Q, K, V, causal=True)
    assert torch.allclose(fused_attention(Q, K, V, causal=True), expected, atol=1e-12)
    # torch's is_causal aligns top-left: query 0 would see key 0 only, not keys 0..5
    assert not torch.allclose(F.scaled_dot_product_attention(Q, K, V, is_causal=True), expected, atol=1e-3)


def test_attention_rejects_mismatched_shapes():
    Q, K, V = qkv(4, 6)
    with pytest.raises(ValueError, match="same length n_k"):
        attention(Q, K, V[..., :5, :])
    with pytest.raises(ValueError, match="same d"):
        attention(Q[..., :3], K, V)
    with pytest.raises(ValueError, match="n_q <= n_k"):
        attention(K, Q, Q, causal=True)


def test_sdpa_backend_is_named():
    Q, K, V = qkv(8, dtype=torch.float32)
    names = {"MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "OVERRIDEABLE"}
    assert sdpa_backend(Q, K, V) in (names if hasattr(torch, "_fused_sdp_choice") else {"unknown"})


# --------------------------------------------------------------------------- (7.2), (7.3) the online softmax


@pytest.mark.parametrize("block_size", [1, 3, 7, 50, 64])
def test_online_softmax_is_the_softmax(block_size):
    x = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5
    assert torch.allclose(online_softmax(x, block_size), x.softmax(-1), atol=1e-14)
    m, l = online_normalizer(x.split(block_size, -1))
    assert torch.equal(m, x.amax(-1))
    assert torch.allclose(l, torch.exp(x - m[..., None]).sum(-1), rtol=1e-13)


def test_the_online_softmax_does_not_overflow_where_exp_does():
    x = torch.tensor([[1000.0, 999.0, -5.0, 998.0, 1001.0]])
    assert torch.isinf(torch.exp(x).sum())
    expected = torch.softmax(x.double(), -1).float()
    assert torch.allclose(online_softmax(x, 2), expected, atol=1e-6)


def test_one_update_over_two_blocks_equals_attention_over_both():
    g = torch.Generator().manual_seed(2)
    s, v = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3, torch.randn(9, 2, generator=g, dtype=torch.float64)
    m, l, acc = torch.full((4,), -math.inf, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), \
        torch.zeros(4, 2, dtype=torch.float64)
    for j in (0, 5):
        m, l, acc = online_softmax_update(m, l, acc, s[:, j:j + 5], v[j:j + 5])
    assert torch.equal(m, s.amax(-1))
    assert torch.allclose(acc / l[:, None], s.softmax(-1) @ v, atol=1e-14)


def test_online_normalizer_rejects_bad_blocks():
    with pytest.raises(ValueError, match="at least one block"):
        online_normalizer([])
    with pytest.raises(ValueError, match="leading shape"):
        online_normalizer([torch.zeros(2, 3), torch.zeros(3, 3)])


# --------------------------------------------------------------------------- (7.4), (7.5) blocked attention


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("block_size", [1, 4, 5, 13, 32, (3, 5), (6, 2)])
def test_blocked_attention_equals_exact_attention_forward_and_backward(block_size, causal):
    Q, K, V = (x.requires_grad_() for x in qkv(13))
    out = blocked_attention(Q, K, V, block_size, causal)
    expected = attention(Q, K, V, causal)
    assert torch.allclose(out, expected, atol=1e-10, rtol=0)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    got = torch.autograd.grad((out * weights).sum(), (Q, K, V))
    want = torch.autograd.grad((expected * weights).sum(), (Q, K, V))
    for name, a, b in zip("QKV", got, want):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), f"the gradient of {name}"


@pytest.mark.parametrize("causal", [False, True])
def test_blocked_attention_with_fewer_queries_than_keys_and_recomputation(causal):
    Q, K, V = (x.requires_grad_() for x in qkv(5, 11, d=6, d_v=2))
    out = blocked_attention(Q, K, V, (2, 3), causal, checkpoint=True)
    expected = attention(Q, K, V, causal)
    assert torch.allclose(out, expected, atol=1e-10, rtol=0)
    got = torch.autograd.grad(out.sum(), (Q, K, V))
    want = torch.autograd.grad(expected.sum(), (Q, K, V))
    assert all(torch.allclose(a, b, atol=1e-10, rtol=0) for a, b in zip(got, want))


class LargestTensor(TorchFunctionMode):
    """Records the most entries of any tensor an operation returns."""

    largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def test_blocked_attention_never_holds_the_n_by_n_matrix():
    n = 64
    Q, K, V = qkv(n, d=2, d_v=2, lead=())
    with LargestTensor() as exact:
        attention(Q, K, V)
    with LargestTensor() as blocked:
        blocked_attention(Q, K, V, 8)
    assert exact.largest == n * n
    assert blocked.largest == n * 2  # Q, K, V and the output (n, 2) themselves; no score block is larger (8 x 8)


def test_causal_blocked_attention_skips_the_blocks_in_the_future(monkeypatch):
    calls = []
    update = scale.online_softmax_update
    monkeypatch.setattr(scale, "online_softmax_update", lambda *a: calls.append(a[3].shape[-1]) or update(*a))
    Q, K, V = qkv(16, lead=())
    blocked_attention(Q, K, V, 4, causal=False)
    assert len(calls) == 16
    calls.clear()
    blocked_attention(Q, K, V, 4, causal=True)
    assert len(calls) == 1 + 2 + 3 + 4  # query block i reads key blocks 0..i


def test_blocked_attention_rejects_bad_block_sizes():
    Q, K, V = qkv(4)
    for bad in (0, -2, 2.5, True, (2, 0)):
        with pytest.raises(ValueError, match="block_size"):
            blocked_attention(Q, K, V, bad)


# --------------------------------------------------------------------------- (7.6), (7.7) rotary positions


def test_rope_angles_are_position_times_theta():
    angles = rope_angles(torch.arange(4), 8)
    theta = torch.tensor([1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75], dtype=torch.float64)
    assert torch.allclose(angles, torch.arange(4, dtype=torch.float64)[:, None] * theta)
    with pytest.raises(ValueError, match="even"):
        rope_angles(torch.arange(3), 5)
    with pytest.raises(ValueError, match="integer positions"):
        rope_angles(torch.tensor([0.5]), 4)


def test_rope_rotates_interleaved_pairs():
    x = torch.zeros(1, 4, dtype=torch.float64)
    x[0, 0] = 1.0  # the first pair (x_0, x_1) = (1, 0), at position 2: rotated by 2 theta_0 = 2 radians
    out = rope(x, torch.tensor([2]))
    assert torch.allclose(out[0, :2], torch.tensor([math.cos(2), math.sin(2)], dtype=torch.float64))
    assert (out[0, 2:] == 0).all()
    assert torch.equal(rope(x, torch.tensor([0])), x)


def test_rope_keeps_norms_and_equals_the_complex_form():
    x = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    positions = torch.tensor([0, 1, 5, 17, 100, 1000])
    out = rope(x, positions)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-12)
    assert torch.allclose(out, rope_complex(x, positions), atol=1e-12)
    assert not torch.allclose(out, x)


@pytest.mark.parametrize("shift", [1, 3, 10, 250])
def test_rope_scores_depend_only_on_the_distance(shift):
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)

    def score(m, n):
        return float(rope(q[None], torch.tensor([m])) @ rope(k[None], torch.tensor([n]))[0])

    for m, n in ((7, 2), (2, 7), (4, 4), (30, 0)):
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-10)
    assert score(7, 2) != pytest.approx(score(8, 2), abs=1e-3)  # but it does depend on m - n


# --------------------------------------------------------------------------- (7.8) grouped-query attention


def test_expand_kv_gives_query_head_j_the_head_j_g_over_h():
    K = torch.arange(3.0).reshape(1, 3, 1, 1).expand(1, 3, 2, 4)  # head i holds the number i
    out = expand_kv(K, 6)
    assert [int(out[0, j, 0, 0]) for j in range(6)] == [j * 3 // 6 for j in range(6)] == [0, 0, 1, 1, 2, 2]
    assert expand_kv(K, 3) is K
    with pytest.raises(ValueError, match="multiple"):
        expand_kv(K, 4)


def test_config_validates_kv_heads_and_positions():
    assert GPTConfig(heads=4, kv_heads=None).g == 4
    assert GPTConfig(heads=4, kv_heads=1).g == 1
    with pytest.raises(ValueError, match=r"divisor of heads \(4\): one of \[1, 2, 4\]"):
        GPTConfig(heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="'learned', 'sinusoidal' or 'rotary'"):
        GPTConfig(position="alibi")
    with pytest.raises(ValueError, match="d_model must be even"):
        GPTConfig(d_model=9, heads=1, position="sinusoidal")
    with pytest.raises(ValueError, match="must be even"):
        GPTConfig(d_model=12, heads=4, position="rotary")
    with pytest.raises(ValueError, match="d_model"):
        GPTConfig(d_model=10, heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0)


# --------------------------------------------------------------------------- (7.11), (7.12) the decoder


def tiny(position="learned", kv_heads=None, **kwargs):
    return GPTConfig(**{"vocab_size": 11, "context": 24, "d_model": 16, "layers": 2, "heads": 4, "kv_heads": kv_heads,
                        "position": position, "mlp_ratio": 2, **kwargs})


def spread(model):
    """A random model whose logits spread out (at GPT-2's initial scale they are nearly equal), so that greedy
    choices do not hinge on the last digits."""
    with torch.no_grad():
        model.E.weight.normal_(0, 1, generator=torch.Generator().manual_seed(6))
    return model.eval()


@pytest.mark.parametrize("config", [tiny(), tiny("rotary", 2), tiny("learned", 1), tiny(dropout=0.1),
                                    tiny("sinusoidal")], ids=["mha", "gqa_rotary", "mqa", "dropout", "sinusoidal"])
def test_parameter_count_matches_the_model(config):
    model = GPT(config)
    counts = parameter_count(config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["position"] == (24 * 16 if config.position == "learned" else 0)


def test_sinusoidal_positions_are_chapter_5s_encoding_at_the_rotary_angles():
    from attn_course.transformer import positional_encoding
    table = sinusoidal_positions(torch.arange(50), 16)
    assert torch.allclose(table, positional_encoding(50, 16), atol=1e-6)
    angles = rope_angles(torch.arange(50), 16)
    assert torch.allclose(table[:, 0::2], angles.sin().float()) and torch.allclose(table[:, 1::2], angles.cos().float())
    model = GPT(tiny("sinusoidal"))
    assert "P" not in model.state_dict() and not any(p.shape == (24, 16) for p in model.parameters())
    assert torch.allclose(model.P, sinusoidal_positions(torch.arange(24), 16))


def test_the_decoder_is_causal():
    torch.manual_seed(0)
    model = spread(GPT(tiny("rotary", 2)))
    ids = torch.randint(0, 11, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 11
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_the_decoder_rejects_bad_input():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="at most config.context = 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 11\)"):
        model(torch.full((1, 3), 11))
    with pytest.raises(ValueError, match="shape \\(B, T\\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"vocab_size": 3})


def test_next_token_loss_starts_at_log_vocab_and_falls():
    torch.manual_seed(0)
    config = tiny(context=16)
    model = GPT(config)
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 8)
    batch = sample_windows(ids, 16, 8, torch.Generator().manual_seed(0))
    loss, metrics = next_token_loss(model, batch)
    assert loss.item() == pytest.approx(math.log(11), abs=0.1)
    assert metrics["bits_per_char"].item() == pytest.approx(loss.item() / math.log(2))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        loss, _ = next_token_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5  # the cycle 0..10 is learnt


# --------------------------------------------------------------------------- (7.9)-(7.13) the KV cache and decoding


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("kv_heads", [None, 2, 1], ids=["mha", "gqa", "mqa"])
def test_cached_and_uncached_greedy_decoding_agree(kv_heads, position):
    torch.manual_seed(1)
    model = spread(GPT(tiny(position, kv_heads)))
    prompt = torch.randint(0, 11, (2, 5))
    cached, cached_logits = generate(model, prompt, 12, use_cache=True, return_logits=True)
    plain, plain_logits = generate(model, prompt, 12, use_cache=False, return_logits=True)
    assert torch.equal(cached, plain)
    assert cached.shape == (2, 17) and torch.equal(cached[:, :5], prompt)
    assert torch.allclose(cached_logits, plain_logits, atol=1e-5)
    assert not torch.allclose(cached_logits[:, 0], cached_logits[:, -1], atol=1e-2)  # the steps differ


def test_a_chunk_after_the_cache_is_read_like_the_whole_sequence():
    torch.manual_seed(2)
    model = spread(GPT(tiny("rotary", 2)))
    ids = torch.randint(0, 11, (2, 12))
    caches = model.empty_cache()
    pieces = [model(ids[:, :5], caches), model(ids[:, 5:9], caches), model(ids[:, 9:], caches)]
    assert [len(c) for c in caches] == [12, 12]
    assert torch.allclose(torch.cat(pieces, 1), model(ids), atol=1e-5)


def test_sampling_with_the_same_generator_is_the_same_with_and_without_the_cache():
    torch.manual_seed(3)
    model = spread(GPT(tiny("rotary", 1)))
    prompt = [1, 2, 3]
    a = generate(model, prompt, 10, True, temperature=1.0, generator=torch.Generator().manual_seed(0))
    b = generate(model, prompt, 10, False, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (13,) and torch.equal(a, b)
    with pytest.raises(ValueError, match="exceed the model's context of 24"):
        generate(model, prompt, 22)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 2, temperature=-1.0)


def test_kv_cache_step_is_attention_over_the_whole_sequence():
    g = torch.Generator().manual_seed(7)
    B, h, gk, t, T_new, d = 2, 4, 2, 5, 3, 6
    K_all, V_all = torch.randn(B, gk, t + T_new, d, generator=g), torch.randn(B, gk, t + T_new, d, generator=g)
    q = torch.randn(B, h, t + T_new, d, generator=g)
    full = attention(q, expand_kv(K_all, h), expand_kv(V_all, h), causal=True)
    o, K, V = kv_cache_step(K_all[:, :, :t], V_all[:, :, :t], q[:, :, t:], K_all[:, :, t:], V_all[:, :, t:])
    assert torch.equal(K, K_all) and torch.equal(V, V_all)
    assert torch.allclose(o, full[:, :, t:], atol=1e-6)
    cache = KVCache()
    cache.append(K_all[:, :, :t], V_all[:, :, :t])
    with pytest.raises(ValueError, match="same batch, heads and width"):
        cache.append(K_all[:1, :, t:], V_all[:1, :, t:])


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_kv_cache_bytes_counts_the_cache(kv_heads):
    config = tiny("rotary", kv_heads)
    model = GPT(config).eval()
    caches = model.empty_cache()
    model(torch.randint(0, 11, (3, 7)), caches)
    assert sum(c.nbytes() for c in caches) == kv_cache_bytes(config, 7, 3)
    assert kv_cache_bytes(config, 7, 3) == 2 * 2 * 3 * 7 * config.g * 4 * 4
    assert kv_cache_bytes(tiny(), 100, 2) // kv_cache_bytes(config, 100, 2) == 4 // config.g  # MQA: h times less
    assert kv_cache_bytes(config, 7, 3, torch.float16) * 2 == kv_cache_bytes(config, 7, 3)


# --------------------------------------------------------------------------- the text


def test_stdlib_corpus_is_deterministic_and_skips_the_tests():
    a, b = stdlib_corpus(30_000, seed=0), stdlib_corpus(30_000, seed=0)
    assert a == b and len(a.text) == 30_000
    assert a.sha256 == hashlib.sha256(a.text.encode()).hexdigest()
    assert platform.python_version() in a.source
    assert a.text.startswith(f"# file: {a.files[0]}\n") and a.text.isascii()
    assert stdlib_corpus(30_000, seed=1).sha256 != a.sha256
    root = Path(sysconfig.get_paths()["stdlib"])
    names = [p.relative_to(root).parts for p in stdlib_files()]
    top = [parts[0] for parts in names if len(parts) == 1]
    assert top == sorted(top) and len(names) > 100
    assert not any(set(parts) & {"test", "tests", "site-packages", "idle_test"} for parts in names)
    assert ("os.py",) in names and not any(parts[-1].startswith("_sysconfigdata") for parts in names)
    everything = stdlib_corpus(None)
    assert len(everything.text) > 1_000_000 and len(everything.files) > 100
    assert "encodings/cp1252.py" not in everything.files and "encodings/idna.py" in everything.files


def test_text_corpus_tokenizer_and_split(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("the cat sat on the mat\n" * 10, encoding="utf-8")
    corpus = text_corpus(path)
    assert corpus.sha256 == hashlib.sha256(corpus.text.encode()).hexdigest() and len(corpus.text) == 230
    train, validation = corpus.split()
    assert train + validation == corpus.text and len(validation) == 23
    tokenizer = CharTokenizer.from_text(corpus.text)
    assert tokenizer.chars == "\n acehmnost" and tokenizer.vocab_size == 11
    ids = tokenizer.encode("the mat")
    assert ids.dtype == torch.long and tokenizer.decode(ids) == "the mat"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.encode("dog")
    with pytest.raises(FileNotFoundError):
        text_corpus(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="fraction"):
        split_by_position("abc", 1.5)


def test_sample_windows_shifts_the_targets_by_one():
    ids = torch.arange(100)
    batch = sample_windows(ids, 8, 5, torch.Generator().manual_seed(0))
    assert batch["inputs"].shape == batch["targets"].shape == (5, 8)
    assert torch.equal(batch["targets"], batch["inputs"] + 1)
    with pytest.raises(ValueError, match="at least 9 ids"):
        sample_windows(torch.arange(8), 8, 1)
