"""Scenes of shapes with captions, object masks and the object every word names, for Show, Attend and Tell (chapter 3).

An image (3, S, S), S = 64 by default, holds one to three objects on a dark background:
a circle, square, triangle or diamond, in one of five colours and two sizes, never
overlapping. Its reference captions come from a small grammar::

    a small red circle                                              (one object)
    a small red circle above a large blue square                    (two: both orders)
    a large blue square below a small red circle
    a small red circle left of a green triangle and a large ...     (three: all six orders)

For every word of every caption we know the object it names (``referents``: the object's
index for its size, colour and shape words, -1 for "a", "and" and the relation words),
and every object comes with its mask: the ground truth that attention maps can be
checked against. Two objects stand in exactly one relation, read off the larger of the
two displacements (rows grow downwards, so "above" means a smaller row), and the
generator only places objects where that reading is clear.

Splits. A scene is a handful of integers (count; shape, colour, size, x, y of each object,
in a canonical order), and a fixed hash of them puts it in a bucket: one in ten for the
test split, one in ten for validation, the rest for training. No image can be in two
splits. On top of that, a few *compositions* (:data:`HELD_OUT`, e.g. a circle above a
triangle, with their inverses) never occur in a training or validation scene; the test
split adds scenes that contain them (``novel``), to ask whether the model composes what
it has learned.

Generation is vectorised: the random numbers come from the caller's CPU
``torch.Generator`` (so a seed gives the same scenes on every device), rejection
sampling loops over rounds, never over scenes, and images and masks are rendered on the
dataset's device in one pass per batch. Only the integers are stored; images are drawn
when a batch is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch

from .captions import BOS, EOS, PAD, Vocabulary
from .sequences import source_hash

# --------------------------------------------------------------------------- A. the vocabulary

SIZES = ("small", "large")
COLOURS = ("red", "green", "blue", "yellow", "white")
SHAPES = ("circle", "square", "triangle", "diamond")
RELATIONS = ("above", "below", "left of", "right of")
INVERSE = (1, 0, 3, 2)  # above <-> below, left of <-> right of
FUNCTION_WORDS = ("a", "and", "above", "below", "left", "right", "of")
VOCAB = Vocabulary(FUNCTION_WORDS + SIZES + COLOURS + SHAPES)
CONTENT_KINDS = ("size", "colour", "shape")  # the words that name one object

RGB = torch.tensor([[0.90, 0.15, 0.15], [0.20, 0.80, 0.20], [0.20, 0.35, 1.00], [0.95, 0.85, 0.10],
                    [0.95, 0.95, 0.95]])
BACKGROUND = 0.1
MAX_OBJECTS = 3
COUNT_PROBABILITIES = (0.2, 0.4, 0.4)  # of one, two and three objects: most captions are relational
RADII = (5, 9)  # half-widths of a small and a large object at S = 64 (scaled with S)
CLEARANCE = 2  # pixels between the boxes of two objects along their relation's axis (at S = 64)
AMBIGUITY_MARGIN = 4  # the larger displacement exceeds the smaller by at least this (at S = 64)
CAPTION_SLOTS = 15  # a S C Sh | rel rel | a S C Sh | and | a S C Sh
MAX_CAPTION_LENGTH = CAPTION_SLOTS + 2  # with BOS and EOS
NUM_REFERENCES = 6

# The held-out compositions: (shape, relation, shape) triples that no training or validation
# scene contains; their inverses (a triangle below a circle, ...) are held out with them.
HELD_OUT = (("circle", "above", "triangle"), ("square", "left of", "diamond"), ("diamond", "above", "circle"))
TEST_BUCKET, VALIDATION_BUCKET, BUCKETS = 0, 1, 10


def _word_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """For every token id: its kind (0 none, 1 size, 2 colour, 3 shape) and the attribute value it names."""
    kind = torch.zeros(len(VOCAB), dtype=torch.long)
    value = torch.full((len(VOCAB),), -1, dtype=torch.long)
    for k, words in enumerate((SIZES, COLOURS, SHAPES), start=1):
        for v, word in enumerate(words):
            kind[VOCAB.stoi[word]], value[VOCAB.stoi[word]] = k, v
    return kind, value


WORD_KIND, WORD_VALUE = _word_tables()
_REL_WORDS = torch.tensor([[VOCAB.stoi["above"], PAD], [VOCAB.stoi["below"], PAD],
                           [VOCAB.stoi["left"], VOCAB.stoi["of"]], [VOCAB.stoi["right"], VOCAB.stoi["of"]]])


def _held_out_table() -> torch.Tensor:
    """(shapes, relations, shapes) boolean: True for a held-out triple or the inverse of one."""
    table = torch.zeros(len(SHAPES), len(RELATIONS), len(SHAPES), dtype=torch.bool)
    for a, relation, b in HELD_OUT:
        i, r, j = SHAPES.index(a), RELATIONS.index(relation), SHAPES.index(b)
        table[i, r, j] = table[j, INVERSE[r], i] = True
    return table


HELD_OUT_TABLE = _held_out_table()

# --------------------------------------------------------------------------- B. layouts: the integers of a scene


@dataclass
class Layout:
    """N scenes as integers, each (N, 3) but ``count`` (N,); absent objects (index >= count) hold -1.

    Objects are in a canonical order (by row, then column), so that one image has one layout.
    """

    count: torch.Tensor
    shape: torch.Tensor
    colour: torch.Tensor
    size: torch.Tensor
    x: torch.Tensor  # column of the centre
    y: torch.Tensor  # row of the centre

    def __len__(self) -> int:
        return len(self.count)

    @property
    def present(self) -> torch.Tensor:
        return torch.arange(MAX_OBJECTS, device=self.count.device) < self.count[:, None]

    def select(self, index) -> "Layout":
        return Layout(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device) -> "Layout":
        return Layout(*(getattr(self, f.name).to(device) for f in fields(self)))

    @staticmethod
    def cat(layouts: list["Layout"]) -> "Layout":
        return Layout(*(torch.cat([getattr(l, f.name) for l in layouts]) for f in fields(Layout)))


def radii(size: torch.Tensor, image_size: int) -> torch.Tensor:
    """Half-widths in pixels of objects of ``size`` (0 small, 1 large) in an image of side ``image_size``."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    table = torch.tensor([max(2, round(r * image_size / 64)) for r in RADII], device=size.device)
    return table[size.clamp(min=0)]


def relations(layout: Layout) -> torch.Tensor:
    """(N, 3, 3): the relation of object i to object j (an index into :data:`RELATIONS`), -1 if i == j or absent.

    The larger displacement decides the axis: i is "above" j when it is further from j
    vertically than horizontally and its row is smaller.
    """
    dx = layout.x[:, :, None] - layout.x[:, None, :]
    dy = layout.y[:, :, None] - layout.y[:, None, :]
    vertical = dy.abs() > dx.abs()
    relation = torch.where(vertical, torch.where(dy < 0, 0, 1), torch.where(dx < 0, 2, 3))
    present = layout.present
    valid = present[:, :, None] & present[:, None, :] & ~torch.eye(MAX_OBJECTS, dtype=torch.bool,
                                                                    device=dx.device)
    return torch.where(valid, relation, -1)


def triples(layout: Layout) -> torch.Tensor:
    """(N, 3, 3) ids shape_i * 16 + relation * 4 + shape_j of every ordered pair of objects, -1 if none."""
    rel = relations(layout)
    ids = (layout.shape[:, :, None] * len(RELATIONS) + rel) * len(SHAPES) + layout.shape[:, None, :]
    return torch.where(rel >= 0, ids, -1)


def is_novel(layout: Layout) -> torch.Tensor:
    """(N,) whether a scene contains a held-out composition (:data:`HELD_OUT` or an inverse)."""
    ids = triples(layout)
    table = HELD_OUT_TABLE.to(ids.device).flatten()
    return (table[ids.clamp(min=0)] & (ids >= 0)).flatten(1).any(1)


def layout_hash(layout: Layout) -> torch.Tensor:
    """(N,) a fixed hash of the integers of each scene, the same on every platform."""
    columns = [layout.count[:, None]] + [torch.stack([layout.shape[:, k], layout.colour[:, k], layout.size[:, k],
                                                      layout.x[:, k], layout.y[:, k]], 1)
                                         for k in range(MAX_OBJECTS)]
    return source_hash(torch.cat(columns, 1) + 1)  # +1: absent objects (-1) become 0, which the hash skips


def bucket(layout: Layout) -> torch.Tensor:
    """(N,) the split bucket: :data:`TEST_BUCKET`, :data:`VALIDATION_BUCKET`, or another value (training)."""
    return layout_hash(layout) % BUCKETS


def _valid(layout: Layout, image_size: int) -> torch.Tensor:
    """(N,) no two objects overlap, and every pair's relation reads clearly (absent objects are ignored)."""
    r = radii(layout.size, image_size)
    adx = (layout.x[:, :, None] - layout.x[:, None, :]).abs()
    ady = (layout.y[:, :, None] - layout.y[:, None, :]).abs()
    major, minor = torch.maximum(adx, ady), torch.minimum(adx, ady)
    scale = image_size / 64
    clear = major >= r[:, :, None] + r[:, None, :] + round(CLEARANCE * scale)
    unambiguous = major - minor >= round(AMBIGUITY_MARGIN * scale)
    present = torch.arange(MAX_OBJECTS, device=r.device) < layout.count[:, None]
    pair = present[:, :, None] & present[:, None, :]
    pair &= ~torch.eye(MAX_OBJECTS, dtype=torch.bool)
    return ((clear & unambiguous) | ~pair).flatten(1).all(1)


def _draw_candidates(generator: torch.Generator, n: int, image_size: int, rounds: int = 50) -> Layout:
    """``n`` random layouts (CPU) in canonical order; a few may still overlap (see :func:`_valid`).

    The number of objects and their looks are drawn first; positions are then redrawn for
    the scenes whose objects overlap, for up to ``rounds`` rounds (a loop over rounds, not
    scenes), so that crowded scenes are not rejected more often than sparse ones and the
    object counts keep :data:`COUNT_PROBABILITIES`.
    """
    if n == 0:  # torch.multinomial refuses to draw no samples
        none = torch.zeros(0, MAX_OBJECTS, dtype=torch.long)
        return Layout(torch.zeros(0, dtype=torch.long), none, none.clone(), none.clone(), none.clone(), none.clone())
    count = torch.multinomial(torch.tensor(COUNT_PROBABILITIES), n, replacement=True, generator=generator) + 1
    shape = torch.randint(len(SHAPES), (n, MAX_OBJECTS), generator=generator)
    colour = torch.randint(len(COLOURS), (n, MAX_OBJECTS), generator=generator)
    size = torch.randint(len(SIZES), (n, MAX_OBJECTS), generator=generator)
    present = torch.arange(MAX_OBJECTS) < count[:, None]
    r = radii(size, image_size)
    span = image_size - 2 * r  # centres in [r, S - 1 - r]
    x = r + (torch.rand(n, MAX_OBJECTS, generator=generator) * span).long()
    y = r + (torch.rand(n, MAX_OBJECTS, generator=generator) * span).long()
    for _ in range(rounds):
        bad = ~_valid(Layout(count, shape, colour, size, x, y), image_size)
        if not bool(bad.any()):
            break
        redo = bad[:, None].expand(-1, MAX_OBJECTS)
        x = torch.where(redo, r + (torch.rand(n, MAX_OBJECTS, generator=generator) * span).long(), x)
        y = torch.where(redo, r + (torch.rand(n, MAX_OBJECTS, generator=generator) * span).long(), y)
    order = torch.where(present, y * image_size + x, image_size ** 2 + 1).argsort(1)  # canonical: by row, then column
    pick = lambda t: torch.where(present, t.gather(1, order), -1)  # noqa: E731 (present is sorted first)
    return Layout(count, pick(shape), pick(colour), pick(size), pick(x), pick(y))


def sample_layouts(generator: torch.Generator, n: int, image_size: int = 64, keep=None) -> Layout:
    """``n`` valid layouts (CPU) for which ``keep(layout)`` (a (N,) boolean function) holds, by rejection.

    Candidates are drawn in rounds of a few times ``n``; the loop runs over rounds, never over scenes.
    """
    if n < 0:
        raise ValueError(f"n (the number of scenes) must be >= 0, got {n}")
    if image_size < 24:
        raise ValueError(f"image_size must be at least 24 pixels, got {image_size}")
    kept, have = [], 0
    for _ in range(10_000):
        if have >= n:
            break
        candidates = _draw_candidates(generator, max(4 * (n - have), 256), image_size)
        ok = _valid(candidates, image_size)
        if keep is not None:
            ok &= keep(candidates)
        kept.append(candidates.select(ok))
        have += int(ok.sum())
    else:
        raise RuntimeError("the scene filter rejects (nearly) every candidate")
    return Layout.cat(kept).select(slice(0, n)) if kept else _draw_candidates(generator, 0, image_size)


# --------------------------------------------------------------------------- C. captions and the object every word names


def _orders() -> torch.Tensor:
    """(4, R, 3): for a scene of c objects, the objects X, Y, Z of each of its R references (-1: none)."""
    table = torch.full((MAX_OBJECTS + 1, NUM_REFERENCES, 3), -1, dtype=torch.long)
    table[1, :, 0] = 0
    table[2, :, :2] = torch.tensor([[0, 1], [1, 0]]).repeat(NUM_REFERENCES // 2, 1)
    table[3] = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    return table


ORDERS = _orders()
DISTINCT_REFERENCES = torch.tensor([0, 1, 2, 6])  # by object count


def captions(layout: Layout) -> dict[str, torch.Tensor]:
    """Every scene's references: ``captions`` (N, R, T) ids (BOS, words, EOS, PAD), ``referents`` (N, R, T)
    (the object index each token names, -1 for BOS, EOS, PAD and function words) and
    ``num_references`` (N,) (how many of the R are distinct; the rest repeat them).

    Reference r reads "X rel Y and Z" with (X, Y, Z) = :data:`ORDERS` [count, r], shorter
    for fewer objects. The fixed slots of the template are filled by gathers, then the
    empty slots are squeezed out by a stable sort: no loop over scenes.
    """
    device = layout.count.device
    N = len(layout)
    order = ORDERS.to(device)[layout.count]  # (N, R, 3)
    exists = order >= 0
    idx = order.clamp(min=0)

    def attribute(t: torch.Tensor, words: tuple[str, ...]) -> torch.Tensor:  # (N, R, 3) token ids
        ids = torch.tensor([VOCAB.stoi[w] for w in words], device=device)
        return ids[t.gather(1, idx.flatten(1)).view_as(idx).clamp(min=0)]

    size, colour, shape = attribute(layout.size, SIZES), attribute(layout.colour, COLOURS), attribute(layout.shape,
                                                                                                      SHAPES)
    rel = relations(layout)  # (N, 3, 3)
    x_y = rel.flatten(1).gather(1, (idx[..., 0] * MAX_OBJECTS + idx[..., 1])).clamp(min=0)  # (N, R)
    rel_words = _REL_WORDS.to(device)[x_y]  # (N, R, 2)
    a = torch.full((N, NUM_REFERENCES), VOCAB.stoi["a"], device=device)
    and_ = torch.full((N, NUM_REFERENCES), VOCAB.stoi["and"], device=device)
    none = torch.full((N, NUM_REFERENCES), -1, device=device)

    def phrase(k: int):  # "a SIZE COLOUR SHAPE" of object k of the reference, and who each word names
        return [a, size[..., k], colour[..., k], shape[..., k]], [none] + [order[..., k]] * 3

    slots, names, used = [], [], []
    for k, lead in ((0, []), (1, [rel_words[..., 0], rel_words[..., 1]]), (2, [and_])):
        words, refs = phrase(k)
        slots += lead + words
        names += [none] * len(lead) + refs
        used += [exists[..., k]] * (len(lead) + len(words))
    tokens = torch.stack(slots, -1)  # (N, R, 15)
    referent = torch.stack(names, -1)
    tokens = torch.where(torch.stack(used, -1) & (tokens != PAD), tokens, PAD)
    squeeze = (tokens == PAD).long().argsort(dim=-1, stable=True)  # words first, in order
    tokens, referent = tokens.gather(-1, squeeze), referent.gather(-1, squeeze)
    referent = torch.where(tokens == PAD, -1, referent)
    lengths = (tokens != PAD).sum(-1)  # (N, R)
    out = torch.full((N, NUM_REFERENCES, MAX_CAPTION_LENGTH), PAD, dtype=torch.long, device=device)
    out[..., 0] = BOS
    out[..., 1:CAPTION_SLOTS + 1] = tokens
    out.scatter_(-1, (lengths + 1)[..., None], EOS)
    refs = torch.full_like(out, -1)
    refs[..., 1:CAPTION_SLOTS + 1] = referent
    return {"captions": out, "referents": refs, "num_references": DISTINCT_REFERENCES.to(device)[layout.count]}


def caption_referents(tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
    """For (possibly generated) captions ``tokens`` (N, T), the object each content word names; -1 if none.

    A content word (size, colour or shape) belongs to the noun phrase that starts at the last
    "a" before it. The phrase names object k when every content word of the phrase agrees
    with k's attributes and k is the only present object that does. Words whose phrase
    names no object, or more than one, get -1 (they cannot be checked). For the generator's
    own captions this gives back ``referents``.
    """
    if tokens.dim() != 2 or tokens.shape[0] != len(layout):
        raise ValueError(f"expected tokens of shape (N, T) with N = {len(layout)} scenes, got {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= len(VOCAB)):
        raise ValueError(f"tokens must be ids in [0, {len(VOCAB) - 1}] of the scenes' vocabulary, got ids from "
                         f"{int(tokens.min())} to {int(tokens.max())}")
    device = tokens.device
    kind, value = WORD_KIND.to(device)[tokens], WORD_VALUE.to(device)[tokens]  # (N, T)
    attributes = torch.stack([layout.size, layout.colour, layout.shape], 1)  # (N, 3 kinds, 3 objects)
    wanted = attributes.gather(1, (kind - 1).clamp(min=0)[:, :, None].expand(-1, -1, MAX_OBJECTS))  # (N, T, 3)
    disagree = (kind[..., None] > 0) & (wanted != value[..., None])  # (N, T, objects)
    phrase = (tokens == VOCAB.stoi["a"]).long().cumsum(1)  # (N, T): 0 before the first "a"
    bad = torch.zeros(tokens.shape[0], tokens.shape[1] + 1, MAX_OBJECTS, dtype=torch.long, device=device)
    bad.scatter_add_(1, phrase[..., None].expand(-1, -1, MAX_OBJECTS), disagree.long())
    fits = (bad.gather(1, phrase[..., None].expand(-1, -1, MAX_OBJECTS)) == 0) & layout.present[:, None, :]
    unique = fits.sum(-1) == 1
    return torch.where(unique & (kind > 0) & (phrase > 0), fits.long().argmax(-1), -1)


def relation_words_correct(tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
    """For (possibly generated) captions ``tokens`` (N, T): 1 where a relation word ("above", "below", "left",
    "right") is true of the objects named just before and just after it, 0 where it is false, -1 where it
    cannot be checked (not a relation word, or a neighbouring phrase names no single object)."""
    referents = caption_referents(tokens, layout)
    N, T = tokens.shape
    device = tokens.device
    position = torch.arange(T, device=device).expand(N, T)
    known = torch.where(referents >= 0, position, T)
    after = known.flip(1).cummin(1).values.flip(1)  # the first position >= t that names an object (T: none)
    after = torch.cat([after[:, 1:], torch.full((N, 1), T, device=device)], 1).clamp(max=T - 1)  # first > t
    x = torch.cat([torch.full((N, 1), -1, device=device), referents[:, :-1]], 1)  # the word before names X
    y = torch.where(after < T - 1, referents.gather(1, after), referents[:, -1:].expand(N, T))
    relation_ids = {VOCAB.stoi[w]: RELATIONS.index(r) for w, r in
                    (("above", "above"), ("below", "below"), ("left", "left of"), ("right", "right of"))}
    said = torch.full_like(tokens, -1)
    for word, index in relation_ids.items():
        said = torch.where(tokens == word, index, said)
    rel = relations(layout)  # (N, 3, 3)
    true = rel.flatten(1).gather(1, (x.clamp(min=0) * MAX_OBJECTS + y.clamp(min=0)))
    checkable = (said >= 0) & (x >= 0) & (y >= 0) & (x != y)
    return torch.where(checkable, (said == true).long(), -1)


# --------------------------------------------------------------------------- D. rendering images and masks


def _inside(shape: int, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Pixels of a shape of half-width ``r`` at offsets (dx, dy) from its centre (rows grow downwards)."""
    if shape == 0:  # circle
        return dx ** 2 + dy ** 2 <= r ** 2 + r
    if shape == 1:  # square
        return (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r)
    if shape == 2:  # triangle, apex up
        return (dy <= 0.8 * r) & (dy >= -r) & (dx.abs() <= 0.6 * (dy + r))
    return dx.abs() + dy.abs() <= r  # diamond


def draw_specks(generator: torch.Generator, n: int, count: int, image_size: int = 64) -> torch.Tensor:
    """(n, count, 3) random specks for :func:`render`: column, row (of the top-left pixel) and colour index."""
    for name, value in (("n", n), ("count", count)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if image_size < 2:
        raise ValueError(f"image_size must be at least 2 (a speck is 2 x 2 pixels), got {image_size}")
    return torch.stack([torch.randint(image_size - 1, (n, count), generator=generator),
                        torch.randint(image_size - 1, (n, count), generator=generator),
                        torch.randint(len(COLOURS), (n, count), generator=generator)], -1)


def _speck_colours(specks: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, 3, S, S): the colour that 2 x 2-pixel specks (N, K, 3) add to the background (0 elsewhere)."""
    pixels = torch.arange(image_size, device=specks.device)
    dx = pixels[None, None, None, :] - specks[..., 0, None, None]  # (N, K, 1, S)
    dy = pixels[None, None, :, None] - specks[..., 1, None, None]  # (N, K, S, 1)
    on = ((dx == 0) | (dx == 1)) & ((dy == 0) | (dy == 1))
    paint = RGB.to(specks.device, non_blocking=True)[specks[..., 2]] - BACKGROUND  # (N, K, 3)
    return torch.einsum("nkhw,nkc->nchw", on.float(), paint).clamp(max=1 - BACKGROUND)


def render(layout: Layout, image_size: int = 64, device=None, specks: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) in [0, 1] and object masks (N, 3, S, S) (False for absent objects), on ``device``.

    ``specks`` (N, K, 3) from :func:`draw_specks` add clutter: 2 x 2-pixel dots in the
    objects' colours, behind the objects. A glance at the background can then mislead,
    which gives a captioner a reason to look at the object it names.
    """
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a Layout, got {type(layout).__name__}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    device = torch.device(device) if device is not None else layout.count.device
    layout = layout.to(device)
    pixels = torch.arange(image_size, device=device, dtype=torch.float32)
    dx = pixels[None, None, None, :] - layout.x[..., None, None]  # (N, 3, 1, S)
    dy = pixels[None, None, :, None] - layout.y[..., None, None]  # (N, 3, S, 1)
    r = radii(layout.size, image_size)[..., None, None].float()
    masks = torch.zeros(len(layout), MAX_OBJECTS, image_size, image_size, dtype=torch.bool, device=device)
    for k in range(len(SHAPES)):  # a loop over the four shapes, never over scenes
        masks |= (layout.shape == k)[..., None, None] & _inside(k, dx, dy, r)
    colour = RGB.to(device, non_blocking=True)[layout.colour.clamp(min=0)] - BACKGROUND  # (N, 3 objects, 3 channels)
    images = BACKGROUND + torch.einsum("nkhw,nkc->nchw", masks.float(), colour)
    if specks is not None and specks.shape[1]:
        if specks.shape[:1] != (len(layout),) or specks.dim() != 3 or specks.shape[2] != 3:
            raise ValueError(f"expected specks of shape ({len(layout)}, K, 3), got {tuple(specks.shape)}")
        images = images + _speck_colours(specks.to(device), image_size) * ~masks.any(1, keepdim=True)
    return images, masks


def compose_scene(objects: list[tuple[str, str, str, int, int]], image_size: int = 64) -> torch.Tensor:
    """An image (3, S, S) with up to three objects given as (size, colour, shape, column, row) of their centres."""
    if image_size < 24:
        raise ValueError(f"image_size must be at least 24 pixels, got {image_size}")
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    columns = {name: [-1] * MAX_OBJECTS for name in ("shape", "colour", "size", "x", "y")}
    for k, spec in enumerate(objects):
        if len(spec) != 5:
            raise ValueError(f"objects[{k}] must be (size, colour, shape, column, row), got {spec!r}")
        size, colour, shape, x, y = spec
        for name, value, choices in (("size", size, SIZES), ("colour", colour, COLOURS), ("shape", shape, SHAPES)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
            columns[name][k] = choices.index(value)
        if not (0 <= x < image_size and 0 <= y < image_size):
            raise ValueError(f"object centres must lie inside the {image_size} x {image_size} image, got ({x}, {y})")
        columns["x"][k], columns["y"][k] = int(x), int(y)
    layout = Layout(torch.tensor([len(objects)]), *(torch.tensor([columns[n]]) for n in ("shape", "colour", "size",
                                                                                         "x", "y")))
    images, _ = render(layout, image_size)
    return images[0]


# --------------------------------------------------------------------------- E. the data set and its splits


@dataclass
class SceneSplit:
    """One split: its layouts, every reference caption and referent, and which scenes are novel."""

    layout: Layout
    captions: torch.Tensor  # (N, R, T)
    referents: torch.Tensor  # (N, R, T)
    num_references: torch.Tensor  # (N,)
    novel: torch.Tensor  # (N,) bool: contains a held-out composition
    specks: torch.Tensor  # (N, K, 3) background clutter (K = 0: none), see :func:`draw_specks`

    def __len__(self) -> int:
        return len(self.layout)


TRAINING_ORDERS = ("any", "left_to_right")


def left_to_right_reference(layout: Layout) -> torch.Tensor:
    """(N,): for every scene, the reference that names its objects from left to right (by the column of
    their centres; at equal columns, top first). The centres of non-overlapping objects differ, so
    there is exactly one such reference."""
    order = ORDERS.to(layout.count.device)[layout.count]  # (N, R, 3): objects X, Y, Z of each reference
    key = layout.x.double() * 2 ** 20 + layout.y.double()  # (N, MAX_OBJECTS): column first, then row
    keys = key.gather(1, order.clamp(min=0).flatten(1)).view_as(order)
    keys = torch.where(order >= 0, keys, torch.full_like(keys, float("inf")))
    increasing = (keys[..., 1:] > keys[..., :-1]) | torch.isinf(keys[..., 1:])
    return increasing.all(-1).float().argmax(-1)


class ShapeScenes:
    """Training, validation and test scenes, fixed by ``seed``, kept as integers on ``device``.

    ``train`` holds ``train_size`` scenes; ``val`` ``val_size``; ``test`` ``test_size``
    scenes of which a share ``novel_fraction`` contain a held-out composition (first the
    ordinary ones, then the novel ones). Batches are dicts of tensors on ``device``:
    ``images`` (B, 3, S, S), ``masks`` (B, 3, S, S), and the captions (see
    :meth:`sample` and :meth:`batches`).
    """

    vocabulary = VOCAB

    def __init__(self, seed: int = 0, train_size: int = 10_000, val_size: int = 1_000, test_size: int = 1_000,
                 novel_fraction: float = 0.25, image_size: int = 64, device: torch.device | str = "cpu",
                 clutter: int = 0, training_order: str = "any"):
        if min(train_size, val_size, test_size) < 1:
            raise ValueError(f"every split needs at least one scene, got {train_size}, {val_size}, {test_size}")
        if not 0.0 <= novel_fraction <= 1.0:
            raise ValueError(f"novel_fraction must be in [0, 1], got {novel_fraction}")
        if image_size < 24:
            raise ValueError(f"image_size must be at least 24 pixels, got {image_size}")
        if clutter < 0:
            raise ValueError(f"clutter must be a number of specks >= 0, got {clutter}")
        if training_order not in TRAINING_ORDERS:
            raise ValueError(f"training_order must be one of {TRAINING_ORDERS}, got {training_order!r}")
        self.training_order = training_order
        self.seed, self.image_size, self.device, self.clutter = seed, image_size, torch.device(device), clutter
        self.novel_fraction = novel_fraction
        generator = torch.Generator().manual_seed(seed)
        S = image_size
        novel_size = round(test_size * novel_fraction)
        layouts = {
            "train": sample_layouts(generator, train_size, S, lambda l: (bucket(l) > VALIDATION_BUCKET) & ~is_novel(l)),
            "val": sample_layouts(generator, val_size, S, lambda l: (bucket(l) == VALIDATION_BUCKET) & ~is_novel(l)),
            "test": Layout.cat([
                sample_layouts(generator, test_size - novel_size, S, lambda l: (bucket(l) == TEST_BUCKET) & ~is_novel(l)),
                sample_layouts(generator, novel_size, S, is_novel),
            ]),
        }
        self.splits: dict[str, SceneSplit] = {}
        clutter_generator = torch.Generator().manual_seed(seed * 7_919 + 17)  # the layouts do not depend on clutter
        for name, layout in layouts.items():
            specks = draw_specks(clutter_generator, len(layout), clutter, S).to(self.device)
            layout = layout.to(self.device)
            text = captions(layout)
            self.splits[name] = SceneSplit(layout, text["captions"], text["referents"], text["num_references"],
                                           is_novel(layout), specks)
        self._left_to_right = (left_to_right_reference(self.splits["train"].layout)
                               if training_order == "left_to_right" else None)

    def split(self, name: str) -> SceneSplit:
        if name not in self.splits:
            raise ValueError(f"unknown split {name!r}; choose one of: {', '.join(self.splits)}")
        return self.splits[name]

    def batch(self, name: str, index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """Scenes ``index`` of split ``name``, rendered, with all their references.

        ``images``, ``masks``; ``references`` and ``referents`` (B, R, T); ``num_references``,
        ``novel`` (B,); ``layout`` (a :class:`Layout`).
        """
        split = self.split(name)
        layout = split.layout.select(index)
        images, masks = render(layout, self.image_size, self.device, split.specks[index])
        return {"images": images, "masks": masks, "references": split.captions[index],
                "referents": split.referents[index], "num_references": split.num_references[index],
                "novel": split.novel[index], "layout": layout}

    def batches(self, name: str = "test", batch_size: int = 250) -> Iterator[dict[str, torch.Tensor]]:
        """The whole split in order, in batches of :meth:`batch`."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self.split(name)), batch_size):
            yield self.batch(name, slice(start, start + batch_size))

    def sample(self, generator: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        """A training batch: random training scenes, each with one of its distinct references.

        With ``training_order`` "any", the reference is drawn at random; with "left_to_right",
        it is the one that names the objects from left to right (:func:`left_to_right_reference`).
        ``images``, ``masks``; ``captions`` (B, T) and their ``referents`` (B, T).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        split = self.splits["train"]
        index = torch.randint(len(split), (batch_size,), generator=generator)
        which = torch.rand(batch_size, generator=generator)
        index = index.to(self.device, non_blocking=True)
        if self.training_order == "left_to_right":
            pick = self._left_to_right[index]
        else:
            pick = (which.to(self.device, non_blocking=True) * split.num_references[index]).long()
        images, masks = render(split.layout.select(index), self.image_size, self.device, split.specks[index])
        return {"images": images, "masks": masks, "captions": split.captions[index, pick],
                "referents": split.referents[index, pick]}

    def describe(self) -> str:
        held = "; ".join(f"a {a} {r} a {b}" for a, r, b in HELD_OUT)
        return (f"generated shape scenes (seed {self.seed}), {self.image_size}x{self.image_size} RGB, 1-3 objects "
                f"({len(SHAPES)} shapes, {len(COLOURS)} colours, 2 sizes), up to {NUM_REFERENCES} reference captions "
                f"each; splits by a fixed hash of the scene: train {len(self.splits['train']):,}, val "
                f"{len(self.splits['val']):,}, test {len(self.splits['test']):,} (of which "
                f"{int(self.splits['test'].novel.sum()):,} contain a composition never seen in training: {held}, "
                "or the inverse)" + ("; trained on the reference that names the objects from left to right"
                                     if self.training_order == "left_to_right" else ""))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"ShapeScenes(seed={self.seed}, {sizes}, image_size={self.image_size}, device={str(self.device)!r})"
