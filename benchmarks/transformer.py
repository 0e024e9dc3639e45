"""Transformer training throughput: the written-out attention, the fused kernel, and torch.nn.Transformer.

    python benchmarks/transformer.py                # the course's model on this machine's default device
    OMP_NUM_THREADS=1 python benchmarks/transformer.py
    ATTN_COURSE_DEVICE=cuda python benchmarks/transformer.py --d-model 512 --heads 8 --d-ff 2048 --layers 6

All three rows train the same sizes (post-norm, no dropout, shared embeddings for ours;
``torch.nn.Transformer`` with its own embeddings and output layer, which it lacks) on the
same batches of the date task, with Adam. Tokens per second counts source and target
tokens, padding excluded. Each row is the median of several timed steps after a warm-up.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from attn_course.data.sequences import PAD, VOCAB_SIZE, SequenceTask
from attn_course.runtime import banner, get_device
from attn_course.transformer import Transformer, TransformerConfig, causal_mask, label_smoothed_loss


class TorchTransformer(nn.Module):
    """``torch.nn.Transformer`` with the embeddings, positional encoding and output layer it does not have."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        from attn_course.transformer import positional_encoding

        self.d_model = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.register_buffer("pe", positional_encoding(config.max_len, config.d_model), persistent=False)
        self.core = nn.Transformer(config.d_model, config.heads, config.encoder_layers, config.decoder_layers,
                                   config.d_ff, config.dropout, batch_first=True, norm_first=config.norm == "pre")

    def forward(self, src, tgt):
        embed = lambda x: self.embedding(x) * math.sqrt(self.d_model) + self.pe[:x.shape[1]]  # noqa: E731
        T = tgt.shape[1]
        out = self.core(embed(src), embed(tgt), tgt_mask=~causal_mask(T, tgt.device), src_key_padding_mask=src == PAD,
                        memory_key_padding_mask=src == PAD, tgt_is_causal=True)
        return out @ self.embedding.weight.T


def timed(fn, repeat, warmup, device):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)

    device = get_device()
    print(banner(device=device))
    config = TransformerConfig(vocab_size=VOCAB_SIZE, d_model=args.d_model, heads=args.heads, d_ff=args.d_ff,
                               encoder_layers=args.layers, decoder_layers=args.layers, dropout=0.0, max_len=64)
    print(f"sizes: d_model {config.d_model}, heads {config.heads}, d_ff {config.d_ff}, "
          f"{config.encoder_layers}+{config.decoder_layers} layers, batch {args.batch} dates")
    task = SequenceTask("dates", device=device)
    batches = [task.sample(torch.Generator().manual_seed(s), args.batch) for s in range(4)]
    tokens = statistics.mean(int((b["src"] != PAD).sum() + (b["tgt"][:, 1:] != PAD).sum()) for b in batches)

    rows = []
    for name in ("explicit (5.1), weights materialised", "fused scaled_dot_product_attention", "torch.nn.Transformer"):
        torch.manual_seed(0)
        if name.startswith("torch"):
            model = TorchTransformer(config).to(device)
        else:
            model = Transformer(config).to(device).use_fused_attention(name.startswith("fused"))
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        counter = iter(range(10**9))

        def step():
            batch = batches[next(counter) % len(batches)]
            logits = model(batch["src"], batch["tgt"][:, :-1])
            loss = label_smoothed_loss(logits, batch["tgt"][:, 1:], 0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        seconds = timed(step, args.repeat, 3, device)
        parameters = sum(p.numel() for p in model.parameters())
        rows.append((name, seconds, tokens / seconds, parameters))
    width = max(len(r[0]) for r in rows)
    for name, seconds, rate, parameters in rows:
        print(f"{name:<{width}}  {seconds * 1e3:8.1f} ms/step  {rate:>10,.0f} tokens/s  ({parameters:,} parameters)")


if __name__ == "__main__":
    main()
