"""The shipped models as ONNX files for the live demos of the rendered book (onnxruntime-web).

``python -m attn_course export-web --out DIR`` writes, from the shipped checkpoints:

``dates-encoder.onnx``
    chapter 5's ``transformer-dates`` encoder: ``src`` (1, S) int64 ids -> ``memory`` (1, S, d_model).
``dates-decoder.onnx``
    one step of its decoder over the whole prefix: ``tgt`` (1, T) int64 (BOS first),
    ``memory``, ``src`` -> ``logits`` (1, vocab) of the next token and ``cross`` (L, h, T, S), the
    cross-attention of every layer and head for every position of the prefix.
``ram-mnist28-step.onnx``
    one glimpse of chapter 1's ``ram-mnist28``: ``image`` (1, 1, 28, 28), ``l`` (1, 2), ``h`` (1, hidden)
    -> ``h_next``, ``probabilities`` (1, 10) (a_t) and ``mu`` (1, 2), the mean of the next location.
``demos.json``
    what the pages' scripts need, written from the package (never copied by hand): vocabularies,
    special ids, sizes, each model's SHA-256, and reference cases the browser test compares with.

The wrappers call the models' unchecked inner functions (``Transformer._encode``, ``_decode``,
``ram._glimpse_sensor``): the checks of the public ones compare tensor values, which an
exported graph cannot branch on. Greedy decoding and the glimpse loop stay in the page's script,
as in :func:`attn_course.experiments.transformer.translate_dates` (greedy, and greedy kept to the calendar)
and :func:`attn_course.ram.glimpse_paths`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoints import atomic_write_bytes, sha256_of

OPSET = 18
FILES = ("dates-encoder.onnx", "dates-decoder.onnx", "ram-mnist28-step.onnx", "demos.json")
# Dates the browser test types into the page; the last two are not days, and the calendar overrules the model.
DATE_EXAMPLES = ("March 3, 2021", "3/14/1999", "tuesday 7 july 1953", "2001年2月3日", "31.12.2099", "Sept. 9, 1911",
                 "the 2nd of August 1984", "14 Feb 2020", "2/30/2001", "31.04.1988")


class DatesEncoder(nn.Module):
    """``src`` (1, S) -> the memories z (1, S, d_model) of (5.2)-(5.3)'s encoder stack."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        return self.model._encode(src)[0]


class DatesDecoderStep(nn.Module):
    """``tgt`` (1, T), ``memory`` (1, S, D), ``src`` (1, S) -> the next token's logits (1, V) and the
    cross-attention weights (L, h, T, S) of every decoder layer."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor):
        from .transformer import padding_mask
        logits, _, cross = self.model._decode(tgt, memory, padding_mask(src), need_weights=True)
        return logits[:, -1], torch.stack(cross)[:, 0]


class RAMGlimpseStep(nn.Module):
    """One glimpse of a rectifier-core RAM: rho(x, l) -> g_t -> h_t = f_h(h_{t-1}, g_t), then a_t = softmax
    f_a(h_t) and mu_{t+1} = tanh(f_l(h_t)) (chapter 1's (1.1)); the page follows mu (the deterministic policy)."""

    def __init__(self, model):
        super().__init__()
        if model.config.core != "rnn" or model.config.zoom or model.config.stop:
            raise ValueError("the web export takes a RAM with the rectifier core and no zoom or stop")
        self.model = model

    def forward(self, image: torch.Tensor, l: torch.Tensor, h: torch.Tensor):
        from .ram import _glimpse_sensor
        c = self.model.config
        rho = _glimpse_sensor(image, l, c.glimpse_size, c.num_scales)
        g_t = self.model.glimpse_network(rho, l)
        h_next, _ = self.model.core_network(g_t, h)
        probabilities = self.model.action_network(h_next).softmax(-1)
        mu = torch.tanh(self.model.location_network(h_next))
        return h_next, probabilities, mu


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict | None = None) -> None:
    """torch.onnx.export (the dynamo exporter), written to ``path`` through a temporary file."""
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RuntimeError("exporting the web models needs onnx and onnxscript: pip install onnx onnxscript "
                           "(both are in the course's dev set-up)") from error
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=dynamic, verbose=False)
    atomic_write_bytes(program.model_proto.SerializeToString(), path)



# --------------------------------------------------------------------------- what the pages compute, in Python


def greedy_date(encoder, decoder, text: str) -> dict:
    """Greedy decoding of ``text`` with two onnxruntime sessions, step by step as the page's plain greedy pass is:
    ``output`` (the string up to EOS) and ``cross`` (L, h, T, S) of the last step."""
    import numpy as np

    from .data.sequences import BOS, EOS, ISO_LENGTH, decode, encode
    src = np.array([encode(text)], dtype=np.int64)
    (memory,) = encoder.run(None, {"src": src})
    tgt, cross = [BOS], None
    for _ in range(ISO_LENGTH + 1):
        logits, cross = decoder.run(None, {"tgt": np.array([tgt], dtype=np.int64), "memory": memory, "src": src})
        tgt.append(int(logits[0].argmax()))
        if tgt[-1] == EOS:
            break
    return {"output": decode(tgt[1:]), "ids": tgt[1:], "cross": cross}


def glimpse_path(step, image, steps: int) -> dict:
    """The deterministic policy on one ``image`` (28, 28) in [0, 1] with an onnxruntime session of the glimpse
    step, from the centre, as the page follows it."""
    import numpy as np
    l = np.zeros((1, 2), dtype=np.float32)
    h = np.zeros((1, step.get_inputs()[2].shape[1]), dtype=np.float32)
    x = np.asarray(image, dtype=np.float32).reshape(1, 1, *np.shape(image)[-2:])
    locations, probabilities = [], []
    for _ in range(steps):
        locations.append(l[0].copy())
        h, p, mu = step.run(None, {"image": x, "l": l, "h": h})
        probabilities.append(p[0])
        l = mu
    return {"locations": np.array(locations), "probabilities": np.array(probabilities),
            "predicted": int(probabilities[-1].argmax())}


def _placed_path(model, images: torch.Tensor, placed: dict[int, tuple[float, float]]) -> dict:
    """:func:`~attn_course.ram.glimpse_paths` where some glimpses are placed by hand and the policy's mean
    mu_t is followed elsewhere (the package's model, run one glimpse longer each time)."""
    from .ram import glimpse_paths
    batch, steps = len(images), model.config.num_glimpses
    locations = [images.new_zeros(batch, 2)]
    for t in range(1, steps):
        if t in placed:
            locations.append(torch.tensor(placed[t], dtype=images.dtype).expand(batch, 2))
            continue
        with torch.no_grad():  # mu_t from the glimpses so far; the placeholder last location is never read
            out = model(images, sample=False, num_glimpses=t + 1,
                        locations=torch.stack(locations + [locations[-1]]))
        locations.append(out["means"][-1])
    return glimpse_paths(model, images, locations=torch.stack(locations))


def _mnist_images(count: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from .data.mnist import load_mnist
    images, labels = load_mnist("test")
    return images[offset:offset + count].float()[:, None] / 255, labels[offset:offset + count]


def _demo_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first MNIST test digit of each class, uint8 (10, 28, 28), and the classes."""
    from .data.mnist import load_mnist
    images, labels = load_mnist("test")
    rows = [int(torch.nonzero(labels == c)[0]) for c in range(10)]
    return images[rows], labels[rows]


# Filterbank reads the browser test repeats: (g_X, g_Y, delta, sigma^2, gamma, N) in pixels, on digit 0 of the demo.
FILTERBANK_CASES = ((14.5, 14.5, 3.0, 1.0, 1.0, 5), (9.0, 20.0, 1.5, 0.5, 2.0, 12), (20.0, 8.0, 0.8, 4.0, 0.5, 3),
                    (1.0, 28.0, 6.0, 9.0, 1.0, 8))


def _filterbank_reference(digit: torch.Tensor) -> list[dict]:
    """gamma F_Y x F_X^T of (2.8) and (2.10) for each of :data:`FILTERBANK_CASES`."""
    from .draw import filterbank
    x = digit.double()[None] / 255
    rows = []
    for g_X, g_Y, delta, sigma2, gamma, N in FILTERBANK_CASES:
        as_batch = [torch.tensor([v], dtype=torch.float64) for v in (g_X, g_Y, delta, sigma2)]
        F_X, F_Y = filterbank(*as_batch, N, 28, 28)
        patch = gamma * (F_Y @ x @ F_X.transpose(1, 2))[0]
        rows.append({"g_X": g_X, "g_Y": g_Y, "delta": delta, "sigma2": sigma2, "gamma": gamma, "N": N,
                     "patch": patch.tolist()})
    return rows


# --------------------------------------------------------------------------- export


def export_web(out: str | os.PathLike) -> dict[str, dict]:
    """Write the web models and ``demos.json`` into ``out`` from the shipped checkpoints; returns each file's
    ``bytes`` and ``sha256``. Every file is written to a temporary name and renamed when complete."""
    from torch.export import Dim

    from .data.sequences import BOS, EOS, FIRST_YEAR, ISO_LENGTH, LAST_YEAR, PAD, VOCAB, encode_batch
    from .registry import load_pretrained
    out = Path(out)
    dates = load_pretrained("transformer", "dates", device="cpu").eval()
    ram = load_pretrained("ram", "mnist28", device="cpu").eval()
    if dates.config.max_len < ISO_LENGTH + 2:
        raise ValueError(f"the dates model reads {dates.config.max_len} positions, fewer than an ISO date needs")
    src = encode_batch(["March 3, 2021"])
    with torch.no_grad():
        memory = dates.encode(src)[0]
    S, T = Dim("S", min=1, max=dates.config.max_len), Dim("T", min=1, max=dates.config.max_len)
    _export(DatesEncoder(dates), (src,), out / "dates-encoder.onnx", ["src"], ["memory"], {"src": {1: S}})
    _export(DatesDecoderStep(dates), (torch.tensor([[BOS, 5, 6]]), memory, src), out / "dates-decoder.onnx",
            ["tgt", "memory", "src"], ["logits", "cross"], {"tgt": {1: T}, "memory": {1: S}, "src": {1: S}})
    c = ram.config
    _export(RAMGlimpseStep(ram), (torch.rand(1, 1, c.image_size, c.image_size), torch.zeros(1, 2),
                                  torch.zeros(1, c.hidden)), out / "ram-mnist28-step.onnx", ["image", "l", "h"],
            ["h_next", "probabilities", "mu"])
    digits, labels = _demo_digits()
    placed = {1: (0.5, -0.5)}
    default = glimpse_paths_for(ram, digits)
    by_hand = _placed_path(ram, digits.float()[:, None] / 255, placed)
    files = {name: {"bytes": (out / name).stat().st_size, "sha256": sha256_of(out / name)} for name in FILES[:3]}
    demos = {
        "format": "attn_course.web_demos/1",
        "models": dict(files),
        "dates": {"vocab": list(VOCAB), "pad": PAD, "bos": BOS, "eos": EOS, "max_output": ISO_LENGTH + 1,
                  "max_len": dates.config.max_len, "layers": dates.config.decoder_layers, "heads": dates.config.heads,
                  "first_year": FIRST_YEAR, "last_year": LAST_YEAR,
                  "examples": _date_reference(dates, DATE_EXAMPLES)},
        "ram": {"image_size": c.image_size, "glimpse_size": c.glimpse_size, "num_scales": c.num_scales,
                "num_glimpses": c.num_glimpses, "hidden": c.hidden, "digits": digits.tolist(),
                "labels": labels.tolist(), "paths": default,
                "placed": {"at": {str(t): list(v) for t, v in placed.items()},
                           "locations": by_hand["locations"].tolist(),
                           "probabilities": by_hand["probabilities"].tolist(),
                           "predicted": by_hand["predicted"].tolist()}},
        "filterbank": {"A": 28, "B": 28, "digit": 0, "cases": _filterbank_reference(digits[0])},
    }
    atomic_write_bytes(json.dumps(demos, separators=(",", ":")).encode(), out / "demos.json")
    demos_json = out / "demos.json"
    files["demos.json"] = {"bytes": demos_json.stat().st_size, "sha256": sha256_of(demos_json)}
    return files


def glimpse_paths_for(model, digits: torch.Tensor) -> dict:
    """:func:`~attn_course.ram.glimpse_paths` from the centre on uint8 ``digits`` (B, 28, 28), as lists."""
    from .ram import glimpse_paths
    paths = glimpse_paths(model, digits.float()[:, None] / 255)
    return {"locations": paths["locations"].tolist(), "probabilities": paths["probabilities"].tolist(),
            "predicted": paths["predicted"].tolist()}


def _date_reference(model, texts) -> list[dict]:
    """What the page must print for each text: the package's plain greedy reading (``greedy``,
    :func:`~attn_course.transformer.predict`) and the calendar-constrained answer of
    :func:`~attn_course.experiments.transformer.translate_dates` (``output``, always a real day)."""
    from .data.sequences import ISO_LENGTH, decode, encode_batch
    from .experiments.transformer import translate_dates
    from .transformer import predict
    rows = []
    for text, reading in zip(texts, translate_dates(model, list(texts))):
        greedy = decode(predict(model, encode_batch([text]), ISO_LENGTH + 1)[0])
        assert greedy == reading.greedy, (text, greedy, reading.greedy)
        rows.append({"text": text, "output": reading.iso, "greedy": greedy, "corrected": reading.corrected})
    return rows


# --------------------------------------------------------------------------- parity


def parity(directory: str | os.PathLike, dates: int = 300, digits: int = 500) -> dict:
    """onnxruntime on the exported files against PyTorch on held-out inputs.

    Dates: the first ``dates`` test-set strings of the generator and as many written in forms it never
    writes (:func:`~attn_course.data.sequences.off_generator_dates`), plus :data:`DATE_EXAMPLES`,
    greedy-decoded both ways: ``dates_same`` of ``dates_total`` identical strings, and the largest
    difference of the last step's cross-attention (``cross_max_abs``). Digits: the first ``digits``
    MNIST test digits, the deterministic policy from the centre: ``digits_same`` identical classes,
    and the largest difference of a location (``location_max_abs``) and of a probability.
    """
    import numpy as np
    import onnxruntime as ort

    from .data.sequences import ISO_LENGTH, PAD, SequenceTask, decode, encode_batch, off_generator_dates
    from .ram import glimpse_paths
    from .registry import load_pretrained
    from .transformer import predict
    directory = Path(directory)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {missing}: run python -m attn_course export-web --out {directory}")
    session = {name: ort.InferenceSession(str(directory / name), providers=["CPUExecutionProvider"])
               for name in FILES[:3]}
    model = load_pretrained("transformer", "dates", device="cpu").eval()
    texts = list(DATE_EXAMPLES)
    for source in (SequenceTask("dates").test_set()["src"][:dates], off_generator_dates(dates)["src"]):
        texts += [decode(row[row != PAD]) for row in source]
    same, cross_error = 0, 0.0
    for text in texts:
        src = encode_batch([text])
        ours = greedy_date(session["dates-encoder.onnx"], session["dates-decoder.onnx"], text)
        theirs = decode(predict(model, src, ISO_LENGTH + 1)[0])
        same += ours["output"] == theirs
        tgt = torch.tensor([[1] + ours["ids"][:-1]])
        reference = model.attention(src, tgt)["cross"][:, 0]
        cross_error = max(cross_error, float(np.abs(ours["cross"] - reference.numpy()).max()))
    ram = load_pretrained("ram", "mnist28", device="cpu").eval()
    images, _ = _mnist_images(digits)
    paths = glimpse_paths(ram, images)
    same_class, location_error, probability_error = 0, 0.0, 0.0
    for b in range(len(images)):
        ours = glimpse_path(session["ram-mnist28-step.onnx"], images[b, 0].numpy(), ram.config.num_glimpses)
        same_class += ours["predicted"] == int(paths["predicted"][b])
        location_error = max(location_error, float(np.abs(ours["locations"] - paths["locations"][b].numpy()).max()))
        probability_error = max(probability_error,
                                float(np.abs(ours["probabilities"] - paths["probabilities"][b].numpy()).max()))
    return {"dates_same": same, "dates_total": len(texts), "cross_max_abs": cross_error,
            "digits_same": same_class, "digits_total": len(images), "location_max_abs": location_error,
            "probability_max_abs": probability_error}


# --------------------------------------------------------------------------- the blocks in the chapters

# Where the book build puts the demos' files (book/_ext/live_demos.py), relative to a chapter page (notebooks/*.html).
LIVE_PATH = "../_live/"
DEMOS = {
    "dates": "type a date and the trained model (chapter 5) writes it as YYYY-MM-DD in your browser, kept to real "
             "days by the calendar, with the cross-attention of any layer and head",
    "ram": "pick a digit, step through the trained RAM's glimpses (chapter 1) with its class probabilities, and "
           "click the digit to place the next glimpse yourself",
    "filterbank": "move g_X, g_Y, delta, sigma^2, gamma and N and watch DRAW's read (2.8), (2.10) change",
}


def live_demo(name: str):
    """The HTML block of a live demo for a chapter: its static figure, the line that says how to get the live
    version, and the page script that replaces the figure with the demo where the book is served over http."""
    import base64
    import io

    import matplotlib.pyplot as plt
    from IPython.display import HTML
    if name not in DEMOS:
        raise ValueError(f"unknown live demo {name!r}; choose one of: {', '.join(DEMOS)}")
    figure = _FALLBACKS[name]()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    return HTML(
        f'<div class="live-demo" data-demo="{name}">'
        f'<link rel="stylesheet" href="{LIVE_PATH}live.css">'
        f'<div class="live-demo-fallback"><img src="data:image/png;base64,{image}" alt="the {name} demo, static">'
        f'<p class="live-demo-note">Live version: in the book served over http (<code>make serve</code>) you can '
        f'{DEMOS[name]}; a page opened from a file shows this static figure.</p></div>'
        f'<div class="live-demo-app"></div></div>'
        f'<script type="module" src="{LIVE_PATH}{name}.js"></script>')


def _dates_figure():
    import matplotlib.pyplot as plt

    from .data.sequences import EOS, VOCAB, encode_batch
    from .registry import load_pretrained
    from .transformer import attention_maps
    model = load_pretrained("transformer", "dates", device="cpu")
    text = DATE_EXAMPLES[0]
    maps = attention_maps(model, encode_batch([text]), 11)
    output = [VOCAB[i] if i != EOS else "</s>" for i in maps["output"][0].tolist()]
    T = output.index("</s>") + 1 if "</s>" in output else len(output)
    weights = maps["cross"][-1, 0].mean(0)[:T].numpy()
    figure, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.imshow(weights, cmap="inferno", vmin=0, vmax=1)
    ax.set_xticks(range(len(text)), [c if c != " " else "\u2423" for c in text])
    ax.set_yticks(range(T), output[:T])
    ax.set_title(f"{text!r}: last decoder layer, mean of the heads", fontsize=9)
    return figure


def _ram_figure():
    import matplotlib.pyplot as plt

    from .ram import glimpse_paths
    from .registry import load_pretrained
    from .viz import draw_box, draw_trajectory, show_image
    model = load_pretrained("ram", "mnist28", device="cpu")
    digits, _ = _demo_digits()
    image = digits[3:4].float()[:, None] / 255
    paths = glimpse_paths(model, image)
    figure, ax = plt.subplots(figsize=(3.2, 3.2))
    show_image(ax, image[0, 0], f"RAM reads a 3: class {int(paths['predicted'][0])}, "
                                f"p = {float(paths['probabilities'][0, -1].max()):.2f}")
    g = model.config.glimpse_size
    for column, row in paths["pixels"][0].tolist():  # pixel centres; the box's edges lie half a pixel further
        x0, y0 = column + 0.5 - g / 2, row + 0.5 - g / 2
        draw_box(ax, (x0, y0, x0 + g, y0 + g), linewidth=1)
    draw_trajectory(ax, paths["pixels"][0].tolist())
    return figure


def _filterbank_figure():
    import matplotlib.pyplot as plt

    from .viz import show_image
    digits, _ = _demo_digits()
    case = _filterbank_reference(digits[0])[0]
    figure, (left, right) = plt.subplots(1, 2, figsize=(5, 2.6))
    show_image(left, digits[0].float() / 255, "the digit")
    N, delta = case["N"], case["delta"]
    centres = [(i - N / 2 - 0.5) * delta for i in range(1, N + 1)]
    for dy in centres:  # the grid points, in 0-based pixel coordinates (pixels are counted from 1 in (2.7))
        left.plot([case["g_X"] + dx - 1 for dx in centres], [case["g_Y"] + dy - 1] * N, ".", color="tab:orange")
    show_image(right, torch.tensor(case["patch"]), f"read, N = {N}")
    return figure


_FALLBACKS = {"dates": _dates_figure, "ram": _ram_figure, "filterbank": _filterbank_figure}
