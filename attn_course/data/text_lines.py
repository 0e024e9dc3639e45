"""Text lines with ground truth: grayscale 32 x 100 images of words, rendered in batches from fonts.

Chapter 4 reads a line of text one character at a time and needs to know where each
character is, so that it can check the attention. Real scene-text data cannot be
downloaded here, and rendered lines come with that ground truth for free.

How a batch is made (all of it vectorised over the batch, on any device):

1. **Strings.** Dictionary words from a word list (:func:`load_words`, by default the
   52,271 words of 3-10 letters of Debian's ``wamerican``, shipped in ``wordlist/``) or
   random strings of letters and digits. A string belongs to the test split when a
   checksum of it is divisible by 10 (:func:`is_test_string`), so held-out words are never
   seen in training, whatever the seed. Each string is shown in lower case, Capitalised or
   UPPER case; the label is the lower-case string (the task is case-insensitive, as in
   Lee & Osindero's evaluation).
2. **Glyphs.** Every character of every font is rasterised once with FreeType (the
   ``FT2Font`` that matplotlib ships) into an atlas: (fonts, characters, 48, 40) coverage
   in [0, 1], with each glyph's advance and left offset in pixels.
3. **Canvas.** The glyphs are placed on a line at their advances plus a random letter
   spacing, one character index at a time for the whole batch (``scatter_reduce`` with
   ``amax``).
4. **Camera.** An affine map per line (scale so that the text fits, a small rotation and
   shear, a random offset that pads or slightly crops) takes the canvas to the 32 x 100
   image, sampled at twice the resolution and averaged down (anti-aliasing).
5. **Appearance.** Ink and background intensities, Gaussian blur and pixel noise.

The ground truth for attention is each character's centre, mapped through the same affine
map to image coordinates: ``centres`` (B, max_length) in pixels from the left.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

PAD, BOS, EOS = 0, 1, 2  # as in attn_course.data.captions
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"  # 36 classes; token id = 3 + index
VOCAB_SIZE = 3 + len(ALPHABET)
HEIGHT, WIDTH = 32, 100  # R2AM's input size
MIN_LENGTH, MAX_LENGTH = 3, 10

FONTS = {  # name: file in matplotlib's mpl-data/fonts/ttf
    "DejaVu Sans": "DejaVuSans.ttf",
    "DejaVu Sans Bold": "DejaVuSans-Bold.ttf",
    "DejaVu Sans Oblique": "DejaVuSans-Oblique.ttf",
    "DejaVu Sans Mono": "DejaVuSansMono.ttf",
    "DejaVu Serif": "DejaVuSerif.ttf",
    "DejaVu Serif Bold": "DejaVuSerif-Bold.ttf",
    "DejaVu Serif Italic": "DejaVuSerif-Italic.ttf",
    "STIX": "STIXGeneral.ttf",
    "STIX Bold": "STIXGeneralBol.ttf",
    "STIX Italic": "STIXGeneralItalic.ttf",
    "Computer Modern Roman": "cmr10.ttf",
    "Computer Modern Sans": "cmss10.ttf",
    "Computer Modern Typewriter": "cmtt10.ttf",
    "Computer Modern Bold": "cmb10.ttf",
}
GLYPH_PIXELS = 32  # the atlas renders an em of 32 pixels
ATLAS_HEIGHT, ATLAS_WIDTH, BASELINE = 48, 40, 36  # atlas cell; the baseline is row 36
CASES = ("lower", "capitalised", "upper")


# --------------------------------------------------------------------------- strings and labels


def encode(text: str, max_length: int = MAX_LENGTH) -> list[int]:
    """Token ids of ``text`` (case-insensitive) followed by EOS; clear errors for bad strings."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a non-empty string, got {text!r}")
    if len(text) > max_length:
        raise ValueError(f"string {text!r} has {len(text)} characters; at most {max_length} fit a 32 x 100 line")
    lower = text.lower()
    bad = sorted({c for c in lower if c not in ALPHABET})
    if bad:
        raise ValueError(f"string {text!r} has characters outside the alphabet (a-z, 0-9): {bad}")
    return [3 + ALPHABET.index(c) for c in lower] + [EOS]


def encode_batch(texts: Sequence[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """(B, max_length + 2): BOS, the characters, EOS, then PAD."""
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, not one string ({texts!r})")
    out = torch.full((len(texts), max_length + 2), PAD, dtype=torch.long)
    out[:, 0] = BOS
    for row, text in enumerate(texts):
        ids = encode(text, max_length)
        out[row, 1:1 + len(ids)] = torch.tensor(ids)
    return out


def decode(ids: Sequence[int]) -> str:
    """The string of token ids, up to the first EOS (PAD and BOS skipped)."""
    chars = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i >= 3:
            chars.append(ALPHABET[i - 3])
    return "".join(chars)


def is_test_string(text: str) -> bool:
    """The split rule: a string is held out for testing when its CRC-32 is divisible by 10."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return zlib.crc32(text.lower().encode()) % 10 == 0


def default_word_list() -> Path:
    return Path(os.environ.get("ATTN_COURSE_WORDS") or Path(__file__).with_name("wordlist") / "american-english-3-10.txt")


@lru_cache(maxsize=4)
def load_words(path: str | Path | None = None) -> tuple[str, ...]:
    """The usable words of a word list (one per line): lower-cased, only a-z and 0-9, 3-10 characters, unique."""
    path = Path(path) if path is not None else default_word_list()
    if not path.is_file():
        raise FileNotFoundError(f"no word list at {path}; pass a file with one word per line, or set ATTN_COURSE_WORDS")
    seen, words = set(), []
    for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
        word = line.strip().lower()
        if MIN_LENGTH <= len(word) <= MAX_LENGTH and all(c in ALPHABET for c in word) and word not in seen:
            seen.add(word)
            words.append(word)
    if len(words) < 100:
        raise ValueError(f"the word list {path} has only {len(words)} usable words (3-10 characters of a-z, 0-9)")
    return tuple(words)


def split_words(words: Sequence[str]) -> dict[str, list[str]]:
    """{"train": [...], "test": [...]} by :func:`is_test_string`."""
    out = {"train": [], "test": []}
    for word in words:
        out["test" if is_test_string(word) else "train"].append(word)
    return out


def random_strings(generator: torch.Generator, n: int, split: str = "train", letters: str = ALPHABET) -> list[str]:
    """``n`` random strings of 3-10 characters drawn uniformly from ``letters``, all in ``split``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n < 0:
        raise ValueError(f"n (the number of strings) must be >= 0, got {n}")
    if not letters:
        raise ValueError("letters must hold at least one character")
    out: list[str] = []
    while len(out) < n:
        m = 2 * (n - len(out)) + 16
        lengths = torch.randint(MIN_LENGTH, MAX_LENGTH + 1, (m,), generator=generator).tolist()
        chars = torch.randint(len(letters), (m, MAX_LENGTH), generator=generator).tolist()
        for length, row in zip(lengths, chars):
            text = "".join(letters[c] for c in row[:length])
            if is_test_string(text) == (split == "test"):
                out.append(text)
    return out[:n]


def apply_case(texts: Sequence[str], cases: torch.Tensor) -> list[str]:
    """Show each text in lower case (0), Capitalised (1) or UPPER case (2)."""
    cases = torch.as_tensor(cases)
    if cases.shape != (len(texts),) or (len(texts) and not bool(((cases >= 0) & (cases <= 2)).all())):
        raise ValueError(f"cases must hold one of 0, 1, 2 per text ({len(texts)}), got {cases.tolist()}")
    show = (str.lower, str.capitalize, str.upper)
    return [show[int(c)](t) for t, c in zip(texts, cases)]


# --------------------------------------------------------------------------- the glyph atlas


def font_path(name: str) -> Path:
    import matplotlib

    if name not in FONTS:
        raise ValueError(f"unknown font {name!r}; choose one of: {', '.join(FONTS)}")
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONTS[name]


CHARSET = ALPHABET + ALPHABET[10:].upper()  # what the atlas holds: digits, a-z, A-Z


@lru_cache(maxsize=None)
def _atlas_cpu(fonts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from matplotlib.ft2font import FT2Font

    glyphs = torch.zeros(len(fonts), len(CHARSET) + 1, ATLAS_HEIGHT, ATLAS_WIDTH)  # last: blank
    advance = torch.zeros(len(fonts), len(CHARSET) + 1)
    offset = torch.zeros(len(fonts), len(CHARSET) + 1)
    # matplotlib < 3.11 hints glyphs 8x wider by default; hinting_factor=1 is what 3.11 does (and deprecates).
    import matplotlib

    older = tuple(int(part) for part in matplotlib.__version__.split(".")[:2]) < (3, 11)
    for f, name in enumerate(fonts):
        font = FT2Font(str(font_path(name)), **({"hinting_factor": 1} if older else {}))
        font.set_size(GLYPH_PIXELS, 72)  # 72 dpi: one point is one pixel
        for k, char in enumerate(CHARSET):
            if font.get_char_index(ord(char)) == 0:
                raise ValueError(f"font {name!r} has no glyph for {char!r}")
            font.set_text(char, 0.0)
            font.draw_glyphs_to_bitmap(antialiased=True)
            image = torch.as_tensor(font.get_image().__array__(), dtype=torch.float32) / 255
            h, w = image.shape
            bottom = BASELINE + round(font.get_descent() / 64)  # the bitmap's last row
            top = bottom - h
            if top < 0 or bottom > ATLAS_HEIGHT or w > ATLAS_WIDTH:
                raise ValueError(f"glyph {char!r} of font {name!r} ({h} x {w}) does not fit the atlas cell")
            glyphs[f, k, top:bottom, :w] = image
            advance[f, k] = font.load_char(ord(char)).horiAdvance / 64
            offset[f, k] = math.floor(font.get_bitmap_offset()[0] / 64)
        advance[f, -1] = GLYPH_PIXELS / 3  # the blank: a thin space
    return {"glyphs": glyphs, "advance": advance, "offset": offset}


@lru_cache(maxsize=None)
def _atlas_on(fonts: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in _atlas_cpu(fonts).items()}


def glyph_atlas(fonts: Sequence[str] = tuple(FONTS), device=None) -> dict[str, torch.Tensor]:
    """``glyphs`` (fonts, len(CHARSET) + 1, 48, 40) coverage in [0, 1] (the last glyph is blank), ``advance`` and
    ``offset`` (fonts, len(CHARSET) + 1) in pixels, for an em of :data:`GLYPH_PIXELS` pixels.

    The tensors are made once per device and shared by every call (every training batch
    renders with them): treat them as read-only.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    return dict(_atlas_on(tuple(fonts), device))


def glyph_indices(shown: Sequence[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """(B, max_length) atlas indices of the shown (cased) strings; the blank glyph pads."""
    blank = len(CHARSET)
    out = torch.full((len(shown), max_length), blank, dtype=torch.long)
    for row, text in enumerate(shown):
        if len(text) > max_length:
            raise ValueError(f"string {text!r} is longer than {max_length} characters")
        for col, char in enumerate(text):
            k = CHARSET.find(char)
            if k < 0:
                raise ValueError(f"character {char!r} of {text!r} is not in the alphabet (a-z, A-Z, 0-9)")
            out[row, col] = k
    return out


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Style:
    """Ranges of the random rendering parameters (each drawn uniformly per line)."""

    text_height: tuple[float, float] = (0.55, 0.95)  # the em as a share of the image height
    fill_width: tuple[float, float] = (0.7, 0.98)  # at most this share of the width (long words shrink)
    rotation_degrees: float = 4.0  # +-
    shear: float = 0.25  # +- horizontal shear (x += shear * y)
    spacing: tuple[float, float] = (-0.04, 0.12)  # extra letter spacing, in ems
    crop: float = 0.03  # the text may shift this share of the image size past an edge (a slight crop)
    ink: tuple[float, float] = (0.6, 1.0)  # |ink - background|
    background: tuple[float, float] = (0.0, 0.35)
    blur: tuple[float, float] = (0.0, 1.0)  # Gaussian sigma in output pixels
    noise: tuple[float, float] = (0.0, 0.08)  # std of the pixel noise
    cases: tuple[float, float, float] = (0.7, 0.15, 0.15)  # lower, Capitalised, UPPER
    shift: bool = True  # place the text anywhere the free space allows (else centred)

    def __post_init__(self):
        for name in ("text_height", "fill_width", "spacing", "ink", "background", "blur", "noise"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"Style.{name} must be a finite range (low, high), low <= high, got {(low, high)}")
        for name, least in (("text_height", 1e-3), ("fill_width", 1e-3), ("blur", 0.0), ("noise", 0.0)):
            if getattr(self, name)[0] < least:
                raise ValueError(f"Style.{name} must lie above {least:g}, got {getattr(self, name)}")
        for name in ("rotation_degrees", "shear", "crop"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"Style.{name} (a +- range) must be >= 0, got {getattr(self, name)}")
        if len(self.cases) != 3 or min(self.cases) < 0 or not sum(self.cases) > 0:
            raise ValueError(f"Style.cases must be 3 weights >= 0 (lower, Capitalised, UPPER), not all 0, "
                             f"got {self.cases}")

    @classmethod
    def clean(cls) -> "Style":
        """No randomness beyond the font: centred, upright, sharp, white on black, lower case."""
        return cls(text_height=(0.75, 0.75), fill_width=(0.9, 0.9), rotation_degrees=0.0, shear=0.0,
                   spacing=(0.0, 0.0), ink=(1.0, 1.0), background=(0.0, 0.0), blur=(0.0, 0.0),
                   noise=(0.0, 0.0), cases=(1.0, 0.0, 0.0), crop=0.0, shift=False)


def _uniform(generator, n, bounds, device):
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator).to(device, non_blocking=True)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image (B, 1, H, W) with its own sigma (B,) in pixels (separable, 7 taps)."""
    taps = torch.arange(-3, 4, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 7)
    B, _, H, W = images.shape
    x = images.reshape(1, B, H, W)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=B)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), kernel[:, None, :, None], groups=B)
    return x.reshape(B, 1, H, W)


def render(texts: Sequence[str], fonts: torch.Tensor, generator: torch.Generator, style: Style = Style(),
           device=None, cases: torch.Tensor | None = None, font_names: Sequence[str] = tuple(FONTS),
           angles: torch.Tensor | None = None) -> dict:
    """Render the lines ``texts`` (labels, lower case) in the fonts ``fonts`` (B,) (indices into ``font_names``).

    Returns ``images`` (B, 1, 32, 100) in [0, 1], ``centres`` (B, MAX_LENGTH) the characters'
    centres in pixels from the left (NaN past the end), ``shown`` the strings as drawn (their
    case), and ``tokens`` (B, MAX_LENGTH + 2) (BOS, characters, EOS, PAD). ``cases`` (B,) and
    ``angles`` (B,) in degrees, when given, replace the random case and rotation.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    B = len(texts)
    if B == 0:
        raise ValueError("expected at least one string to render")
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of strings, not one string ({texts!r})")
    fonts = torch.as_tensor(fonts, dtype=torch.long)
    if fonts.shape != (B,) or fonts.min() < 0 or fonts.max() >= len(font_names):
        raise ValueError(f"fonts must hold one font index in [0, {len(font_names)}) per string ({B}), got shape "
                         f"{tuple(fonts.shape)}" + (f", values {int(fonts.min())} to {int(fonts.max())}"
                                                    if fonts.numel() else ""))
    if cases is not None and torch.as_tensor(cases).shape != (B,):
        raise ValueError(f"cases must have shape ({B},), one per string, got {tuple(torch.as_tensor(cases).shape)}")
    if angles is not None:
        angles = torch.as_tensor(angles, dtype=torch.float32)
        if angles.shape not in ((), (1,), (B,)):
            raise ValueError(f"angles must hold one angle per string ({B},) or one for all, got {tuple(angles.shape)}")
        if not torch.isfinite(angles).all():
            raise ValueError("angles must be finite (degrees), got NaN or infinity")
    tokens = encode_batch(texts).to(device, non_blocking=True)
    if cases is None:
        cases = torch.multinomial(torch.tensor(style.cases), B, replacement=True, generator=generator)
    shown = apply_case(texts, cases)
    atlas = glyph_atlas(font_names, device)
    index = glyph_indices(shown).to(device, non_blocking=True)  # (B, L)
    fonts = fonts.to(device, non_blocking=True)
    L = index.shape[1]
    lengths = torch.tensor([len(t) for t in texts]).to(device, non_blocking=True)
    present = torch.arange(L, device=device)[None] < lengths[:, None]

    # 3. the canvas: pen positions from the advances plus letter spacing
    u = lambda bounds: _uniform(generator, B, bounds, device)  # noqa: E731
    glyph_advance = atlas["advance"][fonts[:, None], index] * present
    advance = (glyph_advance + u(style.spacing)[:, None] * GLYPH_PIXELS) * present
    pen = 4 + torch.cumsum(advance, 1) - advance  # left edge of each character
    text_width = advance.sum(1)
    canvas_width = int(text_width.max().ceil()) + ATLAS_WIDTH + 8
    canvas = torch.zeros(B, ATLAS_HEIGHT, canvas_width, device=device)
    columns = torch.arange(ATLAS_WIDTH, device=device)
    for j in range(L):
        glyph = atlas["glyphs"][fonts, index[:, j]]  # (B, 48, 40)
        start = (pen[:, j] + atlas["offset"][fonts, index[:, j]]).round().long().clamp(min=0)
        where = (start[:, None] + columns[None]).clamp(max=canvas_width - 1)  # (B, 40)
        canvas.scatter_reduce_(2, where[:, None, :].expand(-1, ATLAS_HEIGHT, -1), glyph, reduce="amax")

    # 4. the camera: canvas -> image, out = O + s R Sh (p - C)
    centre_x = 4 + text_width / 2
    centre_y = torch.full_like(centre_x, BASELINE - 0.3 * GLYPH_PIXELS)  # between the baseline and the x-height
    scale = torch.minimum(u(style.text_height) * HEIGHT / GLYPH_PIXELS,
                          u(style.fill_width) * WIDTH / (text_width + 0.2 * GLYPH_PIXELS))
    angle = u((-style.rotation_degrees, style.rotation_degrees))
    if angles is not None:
        angle = torch.as_tensor(angles, dtype=angle.dtype).to(device).expand(B)
    angle = angle * math.pi / 180
    shear = u((-style.shear, style.shear))
    cos, sin = angle.cos(), angle.sin()
    # forward linear part A = s R Sh, Sh = [[1, shear], [0, 1]]
    A = torch.stack([torch.stack([cos, cos * shear - sin], 1), torch.stack([sin, sin * shear + cos], 1)], 1)
    A = A * scale[:, None, None]  # (B, 2, 2)
    free_x = (WIDTH - scale * text_width).clamp(min=0) / 2
    free_y = (HEIGHT - scale * GLYPH_PIXELS).clamp(min=0) / 2
    shift = float(style.shift)
    O = torch.stack([WIDTH / 2 + u((-1, 1)) * (free_x + style.crop * WIDTH) * shift,
                     HEIGHT / 2 + u((-1, 1)) * (free_y + style.crop * HEIGHT) * shift], 1)
    C = torch.stack([centre_x, centre_y], 1)
    A_inv = torch.linalg.inv(A)
    # sample at twice the resolution: sub-pixel centres (i + 0.5) / 2, in output pixels
    sub_y = (torch.arange(2 * HEIGHT, device=device) + 0.5) / 2
    sub_x = (torch.arange(2 * WIDTH, device=device) + 0.5) / 2
    gy, gx = torch.meshgrid(sub_y, sub_x, indexing="ij")
    out_points = torch.stack([gx, gy], -1).reshape(1, -1, 2) - O[:, None, :]  # (B, P, 2), relative to O
    canvas_points = out_points @ A_inv.transpose(1, 2) + C[:, None, :]  # (B, P, 2), canvas pixels
    size = torch.tensor([canvas_width, ATLAS_HEIGHT], device=device, dtype=canvas_points.dtype)
    grid = (canvas_points + 0.5) / size * 2 - 1  # grid_sample, align_corners=False
    grid = grid.reshape(B, 2 * HEIGHT, 2 * WIDTH, 2)
    coverage = F.grid_sample(canvas[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    coverage = F.avg_pool2d(coverage, 2)  # (B, 1, 32, 100)

    # the ground truth: each character's centre through the same map
    char_centres = torch.stack([pen + glyph_advance / 2, centre_y[:, None].expand(-1, L)], -1) - C[:, None, :]
    centres = (char_centres @ A.transpose(1, 2) + O[:, None, :])[..., 0]
    centres = centres.masked_fill(~present, float("nan"))

    # 5. appearance
    background = u(style.background)
    ink = u(style.ink)
    images = background[:, None, None, None] + ink[:, None, None, None] * coverage
    sigma = u(style.blur)
    if float(sigma.max()) > 0.05:
        images = torch.where((sigma > 0.05)[:, None, None, None], _gaussian_blur(images, sigma), images)
    noise = u(style.noise)
    pixel_noise = torch.randn(images.shape, generator=generator).to(device, non_blocking=True)
    images = images + noise[:, None, None, None] * pixel_noise
    return {"images": images.clamp(0, 1), "centres": centres, "shown": shown, "tokens": tokens}


def render_line(text: str, font: str = "DejaVu Sans", noise: float = 0.0, rotation: float = 0.0, blur: float = 0.0,
                seed: int = 0) -> dict:
    """One 32 x 100 text line of ``text`` in ``font``: centred, rotated by ``rotation`` degrees, with pixel
    ``noise`` (std) and ``blur`` (sigma in pixels). Returns render's dict (images, centres, shown, tokens)."""
    if font not in FONTS:
        raise ValueError(f"unknown font {font!r}; choose one of: {', '.join(FONTS)}")
    for name, value in (("noise", noise), ("blur", blur)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if not math.isfinite(rotation):
        raise ValueError(f"rotation must be finite (degrees), got {rotation!r}")
    style = replace(Style.clean(), noise=(noise, noise), blur=(blur, blur))
    fonts = torch.tensor([list(FONTS).index(font)])
    out = render([text.lower()], fonts, torch.Generator().manual_seed(seed), style, angles=torch.tensor([rotation]))
    out["shown"] = [text.lower()]
    return out


# --------------------------------------------------------------------------- the data set


@dataclass(frozen=True)
class TextLineConfig:
    """What :class:`TextLines` draws. ``random_fraction``: share of random strings in training batches."""

    seed: int = 0
    random_fraction: float = 0.2
    test_size: int = 1000  # per kind: dictionary words and random strings
    val_size: int = 500
    fonts: tuple[str, ...] = tuple(FONTS)

    def __post_init__(self):
        if self.test_size < 1 or self.val_size < 1:
            raise ValueError(f"test_size and val_size must be positive, got {self.test_size} and {self.val_size}")
        if not 0.0 <= self.random_fraction <= 1.0:
            raise ValueError(f"random_fraction must lie in [0, 1], got {self.random_fraction}")
        unknown = [f for f in self.fonts if f not in FONTS]
        if unknown or not self.fonts:
            raise ValueError(f"unknown fonts {unknown}; choose from: {', '.join(FONTS)}")


class TextLines:
    """Training batches drawn afresh at every step; validation and test lines fixed by the seed.

    Test words come only from the held-out part of the word list (:func:`is_test_string`),
    test random strings likewise; validation lines are drawn from the training strings.
    ``batches(split)`` with split "test_words", "test_random", "val_words" or "val_random"
    yields dicts of ``images``, ``tokens``, ``centres``, ``texts`` and ``fonts``.
    """

    def __init__(self, config: TextLineConfig = TextLineConfig(), device=None, words: Sequence[str] | None = None,
                 style: Style = Style()):
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.style = style
        self.words = split_words(words if words is not None else load_words())
        if not self.words["train"] or not self.words["test"]:
            raise ValueError("the word list needs both training and held-out words")
        self._fixed: dict[str, dict] = {}

    def draw_texts(self, generator: torch.Generator, n: int, split: str, random_fraction: float) -> list[str]:
        """``n`` strings of ``split`` ("train" or "test"), a share ``random_fraction`` of them random."""
        if split not in self.words:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 0.0 <= random_fraction <= 1.0:
            raise ValueError(f"random_fraction must lie in [0, 1], got {random_fraction}")
        is_random = (torch.rand(n, generator=generator) < random_fraction).tolist()
        pool = self.words[split]
        picks = torch.randint(len(pool), (n,), generator=generator).tolist()
        randoms = iter(random_strings(generator, sum(is_random), split))
        return [next(randoms) if r else pool[p] for r, p in zip(is_random, picks)]

    def make(self, generator: torch.Generator, texts: Sequence[str]) -> dict:
        fonts = torch.randint(len(self.config.fonts), (len(texts),), generator=generator)
        out = render(texts, fonts, generator, self.style, self.device, font_names=self.config.fonts)
        out["texts"] = list(texts)
        out["fonts"] = fonts
        return out

    def sample(self, generator: torch.Generator, batch_size: int) -> dict:
        """A fresh training batch (the training loop's ``sample_batch``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        texts = self.draw_texts(generator, batch_size, "train", self.config.random_fraction)
        return self.make(generator, texts)

    SPLITS = ("val_words", "val_random", "test_words", "test_random")

    def split(self, name: str) -> dict:
        """All lines of a fixed split (rendered once, then kept)."""
        if name not in self.SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of: {', '.join(self.SPLITS)}")
        if name not in self._fixed:
            part, kind = name.split("_")
            n = self.config.test_size if part == "test" else self.config.val_size
            offset = {"val_words": 1, "val_random": 2, "test_words": 3, "test_random": 4}[name]
            generator = torch.Generator().manual_seed(1_000_003 * self.config.seed + offset)
            source = "test" if part == "test" else "train"
            texts = self.draw_texts(generator, n, source, 1.0 if kind == "random" else 0.0)
            self._fixed[name] = self.make(generator, texts)
        return self._fixed[name]

    def batches(self, name: str, batch_size: int = 500) -> Iterator[dict]:
        """The lines of split ``name`` in order, ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        data = self.split(name)
        n = len(data["texts"])
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            yield {k: (v[start:stop]) for k, v in data.items()}

    def describe(self) -> str:
        c = self.config
        return (f"rendered text lines 32 x 100, seed {c.seed}, {len(c.fonts)} fonts, training strings: "
                f"{len(self.words['train'])} dictionary words and {c.random_fraction:.0%} random strings; test: "
                f"{c.test_size} held-out words and {c.test_size} held-out random strings; style {asdict(self.style)}")
