"""Captions as token ids: a vocabulary, and a loader for real image-caption data in COCO format.

The chapter's default data are the generated shape scenes of :mod:`attn_course.data.scenes`;
this module is for readers who have a real data set on disk. COCO's caption files (and
Flickr8k/Flickr30k converted to the same layout, as in Karpathy's splits) are one JSON file::

    {"images": [{"id": 1, "file_name": "dog.jpg"}, ...],
     "annotations": [{"image_id": 1, "caption": "A dog runs on the grass."}, ...]}

and a folder of images. :func:`load_coco_captions` reads both into tensors: images resized
to a square (centre crop, then resize), captions lower-cased, split into words, and
encoded with a :class:`Vocabulary` built from the training captions. Nothing here is used
by default, and nothing is downloaded.

Every vocabulary starts with the same three special tokens, so that a model can rely on
their ids: PAD = 0, BOS = 1 (``<s>``), EOS = 2 (``</s>``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>")
UNK_TOKEN = "<unk>"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(caption: str) -> list[str]:
    """Lower-cased words of ``caption``: ``"A dog's ball."`` -> ``["a", "dog's", "ball"]``."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    return _WORD.findall(caption.lower())


class Vocabulary:
    """Words <-> ids. ``words`` are the ordinary words; the specials come first (PAD, BOS, EOS).

    With ``unk`` an unknown word maps to ``<unk>`` (id 3); without it (the shape scenes,
    whose grammar is closed) an unknown word is a ``ValueError`` that names it.
    """

    def __init__(self, words: Iterable[str], unk: bool = False):
        words = list(words)
        specials = SPECIALS + ((UNK_TOKEN,) if unk else ())
        clash = sorted(set(words) & set(specials))
        if clash:
            raise ValueError(f"words {clash} clash with the special tokens {specials}")
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary's words must be distinct")
        self.itos: tuple[str, ...] = specials + tuple(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.unk = self.stoi.get(UNK_TOKEN)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens{', with <unk>' if self.unk is not None else ''})"

    def encode(self, caption: str | Sequence[str]) -> list[int]:
        """Word ids of ``caption`` (a string, split with :func:`tokenize`, or a list of words), without BOS/EOS."""
        words = tokenize(caption) if isinstance(caption, str) else list(caption)
        if not words:
            raise ValueError(f"the caption {caption!r} has no words")
        unknown = sorted({w for w in words if w not in self.stoi or self.stoi[w] < len(SPECIALS)})
        if unknown and self.unk is None:
            raise ValueError(f"unknown words {unknown}; the vocabulary has: {' '.join(self.itos[len(SPECIALS):])}")
        return [self.stoi.get(w, self.unk) if w not in unknown else self.unk for w in words]

    def encode_batch(self, captions: Sequence[str | Sequence[str]], device=None) -> torch.Tensor:
        """Captions as (B, T) ids: BOS, the words, EOS, then PAD."""
        if isinstance(captions, str):
            raise TypeError(f"captions must be a list of captions, not one string ({captions!r})")
        if not captions:
            raise ValueError("encode_batch needs at least one caption")
        rows = [[BOS, *self.encode(c), EOS] for c in captions]
        out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
        for r, row in enumerate(rows):
            out[r, :len(row)] = torch.tensor(row)
        return out.to(device) if device is not None else out

    def decode(self, ids) -> str:
        """The words of a row of ids up to the first EOS; BOS and PAD are skipped."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if not 0 <= i < len(self.itos):
                raise ValueError(f"ids must lie in [0, {len(self.itos) - 1}] (this vocabulary), got {i}")
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(self.itos[i])
        return " ".join(out)

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        """The words of every row of ``ids`` (B, T)."""
        if torch.as_tensor(ids).dim() != 2:
            raise ValueError(f"expected ids of shape (B, T), got {tuple(torch.as_tensor(ids).shape)}")
        return [self.decode(row) for row in ids]

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """A vocabulary with ``<unk>`` of the words seen at least ``min_count`` times, most frequent first."""
        if min_count < 1:
            raise ValueError(f"min_count must be positive, got {min_count}")
        if isinstance(captions, str):
            raise TypeError(f"captions must be a list of captions, not one string ({captions!r})")
        counts = Counter(w for c in captions for w in tokenize(c))
        return cls([w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count], unk=True)


@dataclass
class CaptionData:
    """Images with several reference captions each, as tensors.

    ``images`` (N, 3, S, S) floats in [0, 1]; ``captions`` (N, R, T) ids (BOS, words, EOS,
    PAD), every image's references repeated cyclically up to the largest count R (a repeated
    reference changes no BLEU score); ``num_references`` (N,) how many are distinct.
    """

    images: torch.Tensor
    captions: torch.Tensor
    num_references: torch.Tensor
    vocabulary: Vocabulary
    file_names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, generator: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        """A training batch: random images, one of each image's references at random (``caption`` (B, T))."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        index = torch.randint(len(self), (batch_size,), generator=generator)
        pick = (torch.rand(batch_size, generator=generator) * self.num_references[index]).long()
        device = self.images.device
        index, pick = index.to(device, non_blocking=True), pick.to(device, non_blocking=True)
        return {"images": self.images[index], "captions": self.captions[index, pick]}

    def batches(self, batch_size: int = 250) -> Iterator[dict[str, torch.Tensor]]:
        """Every image in order with all its references (``references`` (B, R, T))."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield {"images": self.images[start:start + batch_size],
                   "references": self.captions[start:start + batch_size]}


def _load_image(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).float() / 255.0


def load_coco_captions(annotation_file: str | Path, image_dir: str | Path, image_size: int = 64,
                       vocabulary: Vocabulary | None = None, min_count: int = 1, max_words: int = 30,
                       device=None) -> CaptionData:
    """Read a COCO-format caption file and its images (see the module docstring).

    Images are centre-cropped to a square and resized to ``image_size``; captions longer
    than ``max_words`` words are cut. Without ``vocabulary`` one is built from these
    captions (words seen at least ``min_count`` times; the rest become ``<unk>``): pass the
    training split's vocabulary when loading its validation or test split. Images without
    a caption are skipped. Clear errors name a missing file, a malformed JSON layout, or
    an annotation that points at an unknown image id.
    """
    for name, value in (("image_size", image_size), ("min_count", min_count), ("max_words", max_words)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"no caption file at {annotation_file}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"no image folder at {image_dir}")
    data = json.loads(annotation_file.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{annotation_file} is not in COCO caption format: expected an object with lists "
                         "'images' (id, file_name) and 'annotations' (image_id, caption)")
    names = {entry["id"]: entry["file_name"] for entry in data["images"]}
    captions: dict[int, list[str]] = {}
    for note in data["annotations"]:
        if note["image_id"] not in names:
            raise ValueError(f"annotation {note.get('id', '?')} refers to image id {note['image_id']}, "
                             f"which is not among the {len(names)} images of {annotation_file.name}")
        if tokenize(note["caption"]):
            captions.setdefault(note["image_id"], []).append(note["caption"])
    ids = [i for i in names if i in captions]
    if not ids:
        raise ValueError(f"{annotation_file} has no image with a non-empty caption")
    vocabulary = vocabulary or Vocabulary.build((c for i in ids for c in captions[i]), min_count)
    R = max(len(captions[i]) for i in ids)
    rows = [[tokenize(captions[i][r % len(captions[i])])[:max_words] for r in range(R)] for i in ids]
    T = max(len(words) for row in rows for words in row) + 2
    tokens = torch.full((len(ids), R, T), PAD, dtype=torch.long)
    for n, row in enumerate(rows):
        for r, words in enumerate(row):
            tokens[n, r, :len(words) + 2] = torch.tensor([BOS, *vocabulary.encode(words), EOS])
    missing = [names[i] for i in ids if not (image_dir / names[i]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {annotation_file.name} are not in {image_dir}, "
                                f"e.g. {missing[0]}")
    images = torch.stack([_load_image(image_dir / names[i], image_size) for i in ids])
    counts = torch.tensor([len(captions[i]) for i in ids])
    move = (lambda t: t.to(device)) if device is not None else (lambda t: t)
    return CaptionData(move(images), move(tokens), move(counts), vocabulary, [names[i] for i in ids])
