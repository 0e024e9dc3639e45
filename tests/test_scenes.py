"""Shape scenes and captions: determinism, disjoint splits, held-out compositions, masks and referents; the COCO loader."""

import json

import pytest
import torch

from attn_course.data.captions import BOS, EOS, PAD, Vocabulary, load_coco_captions, tokenize
from attn_course.data.scenes import (COLOURS, HELD_OUT, HELD_OUT_TABLE, MAX_OBJECTS, RELATIONS, RGB, SHAPES, SIZES,
                                     VOCAB, ShapeScenes, caption_referents, captions, is_novel, layout_hash,
                                     relations, render, sample_layouts, triples)


@pytest.fixture(scope="module")
def scenes():
    return ShapeScenes(seed=5, train_size=3000, val_size=300, test_size=400)


def test_the_same_seed_gives_the_same_scenes_and_another_seed_others(scenes):
    again = ShapeScenes(seed=5, train_size=3000, val_size=300, test_size=400)
    other = ShapeScenes(seed=6, train_size=3000, val_size=300, test_size=400)
    for name in ("train", "val", "test"):
        a, b = scenes.split(name), again.split(name)
        assert torch.equal(layout_hash(a.layout), layout_hash(b.layout)) and torch.equal(a.captions, b.captions)
    assert not torch.equal(layout_hash(scenes.split("train").layout), layout_hash(other.split("train").layout))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x, y = scenes.sample(g1, 8), again.sample(g2, 8)
    assert torch.equal(x["images"], y["images"]) and torch.equal(x["captions"], y["captions"])


def test_splits_share_no_image(scenes):
    hashes = {name: set(layout_hash(scenes.split(name).layout).tolist()) for name in ("train", "val", "test")}
    assert not hashes["train"] & hashes["val"] and not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    # and by pixels: a canonical layout is one image, so compare the rendered images themselves
    images = {name: render(scenes.split(name).layout)[0].flatten(1) for name in ("val", "test")}
    train = render(scenes.split("train").layout.select(slice(0, 1500)))[0].flatten(1)
    for name, other in images.items():
        assert torch.cdist(train, other).min() > 0, name


def test_held_out_compositions_are_never_seen_in_training(scenes):
    seen = set(triples(scenes.split("train").layout).flatten().tolist()) - {-1}
    held = set(HELD_OUT_TABLE.flatten().nonzero()[:, 0].tolist())
    assert len(held) == 2 * len(HELD_OUT) and not seen & held
    assert not is_novel(scenes.split("val").layout).any()
    test = scenes.split("test")
    assert test.novel.sum() == 100 and torch.equal(test.novel, is_novel(test.layout))
    novel_triples = set(triples(test.layout.select(test.novel)).flatten().tolist())
    assert novel_triples & held and not (novel_triples & held) & seen
    # the held-out words still appear, just never in this combination
    assert {"circle", "triangle", "above"} <= {VOCAB.itos[i] for i in scenes.split("train").captions.unique().tolist()}


def test_objects_do_not_overlap_and_masks_match_the_pixels(scenes):
    batch = scenes.batch("train", slice(0, 200))
    layout, masks, images = batch["layout"], batch["masks"], batch["images"]
    assert images.shape == (200, 3, 64, 64) and masks.shape == (200, MAX_OBJECTS, 64, 64)
    assert masks.sum(1).max() <= 1  # no pixel belongs to two objects
    assert torch.equal(masks.flatten(2).any(-1), layout.present)  # every object, and only those, has pixels
    colours = RGB[layout.colour.clamp(min=0)]  # (N, 3, 3)
    for k in range(MAX_OBJECTS):
        on = masks[:, k]  # (N, S, S)
        pixels = images.permute(0, 2, 3, 1)[on]
        expected = colours[:, k][:, None, None, :].expand(-1, 64, 64, -1)[on]
        assert torch.allclose(pixels, expected)
    background = ~masks.any(1)
    assert torch.allclose(images.permute(0, 2, 3, 1)[background], torch.tensor(0.1))
    large = masks.sum((2, 3))[layout.size == 1].float().mean()
    small = masks.sum((2, 3))[layout.size == 0].float().mean()
    assert large > 2 * small


def test_captions_name_the_objects_and_their_relation(scenes):
    split = scenes.split("train")
    layout = split.layout.select(slice(0, 300))
    caps, refs = split.captions[:300], split.referents[:300]
    rel = relations(layout)
    for n in range(300):
        count = int(layout.count[n])
        assert int(split.num_references[n]) == {1: 1, 2: 2, 3: 6}[count]
        texts = {VOCAB.decode(c) for c in caps[n]}
        looks = {(int(layout.size[n, k]), int(layout.colour[n, k]), int(layout.shape[n, k])) for k in range(count)}
        if len(looks) == count:  # R references: the distinct ones, repeated (two identical objects give fewer)
            assert len(texts) == int(split.num_references[n])
        for r in range(caps.shape[1]):
            words = VOCAB.decode(caps[n, r]).split()
            row = refs[n, r, 1:1 + len(words)].tolist()
            assert caps[n, r, 0] == BOS and caps[n, r, len(words) + 1] == EOS
            for word, k in zip(words, row):
                if word in SIZES:
                    assert SIZES[layout.size[n, k]] == word
                elif word in COLOURS:
                    assert COLOURS[layout.colour[n, k]] == word
                elif word in SHAPES:
                    assert SHAPES[layout.shape[n, k]] == word
                else:
                    assert k == -1
            if count >= 2:  # "a S C Sh REL a S C Sh ...": REL is the relation of X to Y
                x, y = row[2], row[-1] if count == 2 else row[words.index("and") - 1]
                relation = " ".join(words[4:words.index("a", 4)])
                assert RELATIONS[rel[n, x, y]] == relation
    # the referents of a generated caption are recovered from its words (unless two objects look alike)
    recovered = caption_referents(caps[:, 0], layout)
    known = recovered >= 0
    assert torch.equal(recovered[known], refs[:, 0][known]) and known.sum() > 0.9 * (refs[:, 0] >= 0).sum()


def test_generation_batches_are_well_formed():
    # how fast generation runs is measured in benchmarks/, not asserted here
    layout = sample_layouts(torch.Generator().manual_seed(0), 10_000)
    text = captions(layout)
    assert text["captions"].shape == (10_000, 6, 17)
    counts = torch.bincount(layout.count, minlength=4)[1:].float() / 10_000
    assert torch.allclose(counts, torch.tensor([0.2, 0.4, 0.4]), atol=0.05)
    data = ShapeScenes(seed=1, train_size=50, val_size=10, test_size=10)
    batch = data.sample(torch.Generator().manual_seed(0), 16)
    assert batch["captions"].shape == (16, 17) and batch["referents"].shape == (16, 17)
    assert (batch["captions"][:, 0] == BOS).all() and (batch["captions"][:, 1] != PAD).all()
    assert "held out" not in repr(data) and "never seen in training" in data.describe()


def test_vocabulary_errors_and_round_trip():
    ids = VOCAB.encode("a small red circle above a large blue square")
    assert VOCAB.decode([BOS, *ids, EOS, PAD]) == "a small red circle above a large blue square"
    with pytest.raises(ValueError, match=r"unknown words \['purple'\]"):
        VOCAB.encode("a small purple circle")
    with pytest.raises(ValueError, match="no words"):
        VOCAB.encode("  ...")
    with pytest.raises(ValueError, match="clash"):
        Vocabulary(["a", "<s>"])
    with pytest.raises(ValueError, match="unknown split"):
        ShapeScenes(seed=0, train_size=5, val_size=5, test_size=5).split("dev")
    assert tokenize("A dog's ball, RED!") == ["a", "dog's", "ball", "red"]


def _write_fixture(root):
    from PIL import Image

    images = root / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(images / "red.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(images / "blue.png")
    annotations = {
        "images": [{"id": 7, "file_name": "red.png"}, {"id": 9, "file_name": "blue.png"},
                   {"id": 11, "file_name": "uncaptioned.png"}],
        "annotations": [{"id": 1, "image_id": 7, "caption": "A red picture."},
                        {"id": 2, "image_id": 7, "caption": "All red"},
                        {"id": 3, "image_id": 7, "caption": "a red, red square"},
                        {"id": 4, "image_id": 9, "caption": "A blue picture"}],
    }
    (root / "captions.json").write_text(json.dumps(annotations))
    return root / "captions.json", images


def test_coco_loader_on_a_tiny_fixture(tmp_path):
    annotation_file, image_dir = _write_fixture(tmp_path)
    data = load_coco_captions(annotation_file, image_dir, image_size=16)
    assert data.file_names == ["red.png", "blue.png"] and len(data) == 2
    assert data.images.shape == (2, 3, 16, 16)
    assert torch.allclose(data.images[0, :, 8, 8], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(data.images[1, :, 8, 8], torch.tensor([0.0, 0.0, 1.0]))
    assert data.captions.shape == (2, 3, 6) and data.num_references.tolist() == [3, 1]
    v = data.vocabulary
    assert v.itos[:4] == ("<pad>", "<s>", "</s>", "<unk>") and v.itos[4] == "red"  # most frequent first
    assert [v.decode(c) for c in data.captions[0]] == ["a red picture", "all red", "a red red square"]
    assert v.decode(data.captions[1, 2]) == "a blue picture"  # repeated up to R references
    assert v.encode("a green picture")[1] == v.unk  # unknown words become <unk> here
    batch = data.sample(torch.Generator().manual_seed(0), 5)
    assert batch["images"].shape == (5, 3, 16, 16) and batch["captions"].shape == (5, 6)
    # validation data with the training vocabulary
    again = load_coco_captions(annotation_file, image_dir, image_size=8, vocabulary=v)
    assert again.vocabulary is v and torch.equal(again.captions, data.captions)


def test_coco_loader_errors(tmp_path):
    annotation_file, image_dir = _write_fixture(tmp_path)
    with pytest.raises(FileNotFoundError, match="no caption file"):
        load_coco_captions(tmp_path / "missing.json", image_dir)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="COCO caption format"):
        load_coco_captions(bad, image_dir)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "red.png"}],
                               "annotations": [{"id": 5, "image_id": 2, "caption": "x"}]}))
    with pytest.raises(ValueError, match="refers to image id 2"):
        load_coco_captions(bad, image_dir)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.png"}],
                               "annotations": [{"id": 5, "image_id": 1, "caption": "a picture"}]}))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_coco_captions(bad, image_dir)


def test_relation_words_are_checked_against_the_layout(scenes):
    from attn_course.data.scenes import relation_words_correct

    split = scenes.split("train")
    layout = split.layout.select(slice(0, 300))
    tokens = split.captions[:300, 0, 1:]
    correct = relation_words_correct(tokens, layout)
    checked = correct >= 0
    relational = layout.count >= 2
    assert (correct[checked] == 1).all() and checked.any(1)[relational].float().mean() > 0.9
    assert not checked[~relational].any()
    swapped = tokens.clone()
    above, below = VOCAB.stoi["above"], VOCAB.stoi["below"]
    swapped[tokens == above], swapped[tokens == below] = below, above
    flipped = relation_words_correct(swapped, layout)
    is_vertical = (tokens == above) | (tokens == below)
    assert (flipped[is_vertical & checked] == 0).all() and is_vertical.any()


def test_clutter_adds_specks_behind_the_objects_and_changes_nothing_else():
    from attn_course.data.scenes import RGB, render

    plain = ShapeScenes(seed=3, train_size=40, val_size=8, test_size=8)
    cluttered = ShapeScenes(seed=3, train_size=40, val_size=8, test_size=8, clutter=12)
    assert torch.equal(plain.split("train").captions, cluttered.split("train").captions)  # same scenes and captions
    a, b = plain.batch("test", slice(0, 8)), cluttered.batch("test", slice(0, 8))
    assert torch.equal(a["masks"], b["masks"])
    inside = a["masks"].any(1, keepdim=True).expand_as(a["images"])
    assert torch.equal(a["images"][inside], b["images"][inside])  # the objects are untouched
    changed = (a["images"] != b["images"]).any(1)  # (N, S, S) pixels that a speck painted
    assert changed.any() and not (changed & a["masks"].any(1)).any()
    colours = b["images"].permute(0, 2, 3, 1)[changed]  # every painted pixel has an object colour
    assert (colours[:, None, :] - RGB[None]).abs().amax(-1).min(1).values.max() < 1e-6
    with pytest.raises(ValueError, match="specks of shape"):
        render(cluttered.split("test").layout.select(slice(0, 2)), 64, specks=torch.zeros(3, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="clutter"):
        ShapeScenes(seed=0, train_size=4, val_size=4, test_size=4, clutter=-1)


def test_left_to_right_training_names_the_objects_from_left_to_right():
    from attn_course.data.scenes import ORDERS, left_to_right_reference

    data = ShapeScenes(seed=4, train_size=600, val_size=10, test_size=10, training_order="left_to_right")
    layout = data.split("train").layout
    pick = left_to_right_reference(layout)
    objects = ORDERS[layout.count].gather(1, pick[:, None, None].expand(-1, 1, 3))[:, 0]  # (N, 3), -1: none
    xs = layout.x.gather(1, objects.clamp(min=0))
    both = (objects[:, 1:] >= 0)
    assert bool((xs[:, 1:] >= xs[:, :-1])[both].all())
    assert bool((layout.count == 3).any()) and bool((pick > 1).any())  # three-object scenes need all six orders
    # the same scenes as random-order training, one fixed reference each; captions agree with it
    anyway = ShapeScenes(seed=4, train_size=600, val_size=10, test_size=10)
    a, b = (d.sample(torch.Generator().manual_seed(1), 64) for d in (data, anyway))
    assert torch.equal(a["images"], b["images"])
    first = data.sample(torch.Generator().manual_seed(1), 64)["captions"]
    assert torch.equal(a["captions"], first)  # deterministic, unlike "any"
    assert "left to right" in data.describe() and "left to right" not in anyway.describe()
    with pytest.raises(ValueError, match="training_order"):
        ShapeScenes(seed=4, train_size=10, val_size=1, test_size=1, training_order="top_down")


# --------------------------------------------------------------------------- bad input: a clear error naming the argument


def _bad_scene_calls():
    from attn_course.data import scenes as sc
    from attn_course.data.captions import CaptionData

    g = torch.Generator().manual_seed(0)
    layout = sample_layouts(torch.Generator().manual_seed(0), 2)
    data = ShapeScenes(seed=0, train_size=4, val_size=4, test_size=4)
    pairs = CaptionData(torch.rand(2, 3, 8, 8), torch.ones(2, 1, 3, dtype=torch.long), torch.ones(2).long(), VOCAB,
                        ["a.png", "b.png"])
    return [
        (ValueError, "image_size", lambda: sc.radii(torch.zeros(2).long(), 0)),
        (ValueError, "n ", lambda: sample_layouts(g, -1)),
        (ValueError, "image_size", lambda: sample_layouts(g, 2, image_size=8)),
        (ValueError, "count", lambda: sc.draw_specks(g, 2, -1)),
        (ValueError, "image_size", lambda: sc.draw_specks(g, 2, 3, image_size=1)),
        (TypeError, "layout", lambda: render({"count": 1})),
        (ValueError, "image_size", lambda: render(layout, image_size=0)),
        (ValueError, "specks", lambda: render(layout, specks=torch.zeros(3, 2, 3).long())),
        (ValueError, "tokens", lambda: caption_referents(torch.zeros(3, 4).long(), layout)),
        (ValueError, "tokens must be ids", lambda: caption_referents(torch.full((2, 4), len(VOCAB)), layout)),
        (ValueError, "every split", lambda: ShapeScenes(train_size=0)),
        (ValueError, "image_size", lambda: ShapeScenes(train_size=4, val_size=4, test_size=4, image_size=16)),
        (ValueError, "split 'dev'", lambda: data.split("dev")),
        (ValueError, "batch_size", lambda: next(data.batches("test", batch_size=0))),
        (ValueError, "batch_size", lambda: data.sample(g, 0)),
        (TypeError, "caption", lambda: tokenize(None)),
        (ValueError, r"ids must lie in \[0, 20\]", lambda: VOCAB.decode([1, 99])),
        (ValueError, "ids", lambda: VOCAB.decode_batch(torch.zeros(3).long())),
        (TypeError, "captions", lambda: VOCAB.encode_batch("a red circle")),
        (ValueError, "min_count", lambda: Vocabulary.build(["a dog"], min_count=0)),
        (TypeError, "captions", lambda: Vocabulary.build("a dog")),
        (ValueError, "batch_size", lambda: pairs.sample(g, 0)),
        (ValueError, "batch_size", lambda: next(pairs.batches(0))),
        (ValueError, "image_size", lambda: load_coco_captions("none.json", ".", image_size=0)),
        (ValueError, "max_words", lambda: load_coco_captions("none.json", ".", max_words=0)),
    ]


BAD_SCENE_CALLS = _bad_scene_calls()


@pytest.mark.parametrize("error, match, call", BAD_SCENE_CALLS,
                         ids=[f"{i}-{c[1].split()[0]}" for i, c in enumerate(BAD_SCENE_CALLS)])
def test_bad_scene_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("test_size, novel", [(1, 0), (2, 0), (3, 1)])
def test_a_test_split_too_small_for_a_novel_scene_has_none(test_size, novel):
    data = ShapeScenes(seed=0, train_size=20, val_size=2, test_size=test_size)
    test = data.split("test")
    assert len(test) == test_size and int(test.novel.sum()) == novel == round(0.25 * test_size)
    assert data.batch("test", torch.arange(test_size))["images"].shape[0] == test_size
