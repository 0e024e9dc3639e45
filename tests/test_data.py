"""MNIST loading, verification, download and the RAM variants."""

import gzip
import hashlib
import os
import urllib.error
from pathlib import Path

import pytest
import torch

from attn_course.data import mnist as m
from attn_course.data import cluttered_mnist, load_mnist, make_variant, translated_mnist, verify_mnist

DATA = os.environ.get("ATTN_COURSE_DATA")
HAVE_MNIST = bool(DATA) and all((Path(DATA) / "mnist" / f.name).is_file() for f in m.MNIST_FILES.values())
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="set ATTN_COURSE_DATA to a folder holding mnist/*.gz")


def fake_idx(shape, fill=7):
    header = bytes([0, 0, 8, len(shape)]) + b"".join(s.to_bytes(4, "big") for s in shape)
    count = 1
    for s in shape:
        count *= s
    return header + bytes([fill]) * count


def fake_spec(name, payload):
    raw = gzip.compress(payload)
    return m.MNISTFile(name, hashlib.md5(raw).hexdigest(), hashlib.sha256(payload).hexdigest()), raw


# --------------------------------------------------------------------------- loading


@needs_mnist
def test_load_shapes_types_and_counts():
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = load_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert int(images.max()) == 255 and int(images.min()) == 0
        assert set(labels.tolist()) == set(range(10))
    assert torch.bincount(load_mnist("test")[1]).tolist()[:2] == [980, 1135]  # the well-known test counts
    with pytest.raises(ValueError, match="unknown MNIST split 'val'"):
        load_mnist("val")


@needs_mnist
def test_verify_reports_ok():
    assert set(verify_mnist().values()) == {"ok"}


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_COURSE_DATA", str(tmp_path / "env"))
    assert m.data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
    assert m.data_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv("ATTN_COURSE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert m.data_root() == (tmp_path / "home" / ".cache" / "attn_course").resolve()


# --------------------------------------------------------------------------- verification errors


def test_checksum_mismatch_names_the_file(tmp_path):
    spec, _ = fake_spec("x.gz", fake_idx((3,)))
    wrong = gzip.compress(fake_idx((3,), fill=9))
    with pytest.raises(m.MNISTChecksumError, match=r"x\.gz.*expected .gz MD5.*delete it"):
        m.verified_payload(wrong, spec, str(tmp_path / "x.gz"))


def test_truncated_gzip_is_a_clear_error(tmp_path):
    spec, raw = fake_spec("x.gz", fake_idx((50, 28, 28)))
    with pytest.raises(m.MNISTChecksumError, match="not a complete gzip file"):
        m.verified_payload(raw[: len(raw) // 2], spec, "x.gz")


def test_truncated_file_under_its_real_name_is_refused(tmp_path):
    directory = tmp_path / "mnist"
    directory.mkdir()
    for spec in m.MNIST_FILES.values():
        (directory / spec.name).write_bytes(gzip.compress(fake_idx((2,)))[:-6])
    status = verify_mnist(tmp_path)
    assert all(s.startswith("corrupt:") and "not a complete gzip file" in s for s in status.values())
    with pytest.raises(m.MNISTChecksumError, match=r"t10k-images-idx3-ubyte\.gz.*delete it"):
        load_mnist("test", root=tmp_path, download=False)


def test_verify_reports_missing_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(m, "_fetch", lambda url, timeout=30.0: pytest.fail("verify_mnist must not download"))
    assert verify_mnist(tmp_path) == {spec.name: "missing" for spec in m.MNIST_FILES.values()}


def test_corrupt_real_file_is_reported_and_refused(tmp_path, monkeypatch):
    directory = tmp_path / "mnist"
    directory.mkdir()
    for spec in m.MNIST_FILES.values():
        (directory / spec.name).write_bytes(gzip.compress(fake_idx((2,))))
    status = verify_mnist(tmp_path)
    assert all(s.startswith("corrupt:") for s in status.values())
    with pytest.raises(m.MNISTChecksumError, match="train-images-idx3-ubyte.gz"):
        load_mnist("train", root=tmp_path)


def test_idx_parser_checks_magic_and_length():
    assert m.parse_idx(fake_idx((2, 3)), "t").shape == (2, 3)
    with pytest.raises(m.MNISTChecksumError, match="magic"):
        m.parse_idx(b"\x00\x00\x0d\x01" + bytes(8), "t")
    with pytest.raises(m.MNISTChecksumError, match="bytes follow"):
        m.parse_idx(fake_idx((2, 3))[:-1], "t")


# --------------------------------------------------------------------------- download


def test_missing_and_offline_gives_one_clear_error(tmp_path, monkeypatch):
    def offline(url, timeout=30.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(m, "_fetch", offline)
    with pytest.raises(m.MNISTNotFoundError) as info:
        load_mnist("test", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mnist") in message and "ATTN_COURSE_DATA" in message
    for spec in m.MNIST_FILES.values():
        assert spec.name in message
    assert not any((tmp_path / "mnist").glob("*")) if (tmp_path / "mnist").exists() else True


def test_download_falls_back_to_the_next_mirror_and_writes_atomically(tmp_path, monkeypatch):
    payload = fake_idx((4,))
    spec, raw = fake_spec("t10k-labels-idx1-ubyte.gz", payload)
    calls = []

    def fetch(url, timeout=30.0):
        calls.append(url)
        return b"<html>not the file</html>" if url.startswith(m.MIRRORS[0]) else raw

    monkeypatch.setattr(m, "_fetch", fetch)
    assert m._download(spec, tmp_path) == []
    assert calls == [m.MIRRORS[0] + spec.name, m.MIRRORS[1] + spec.name]
    assert (tmp_path / spec.name).read_bytes() == raw
    assert [p.name for p in tmp_path.iterdir()] == [spec.name]  # no temporary file left behind


@needs_mnist
def test_load_downloads_verifies_and_caches(tmp_path, monkeypatch):
    shared = Path(DATA) / "mnist"
    calls = []

    def fetch(url, timeout=30.0):  # the first mirror serves garbage, the second the real files
        calls.append(url)
        if url.startswith(m.MIRRORS[0]):
            return gzip.compress(b"not mnist")
        return (shared / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(m, "_fetch", fetch)
    images, labels = load_mnist("test", root=tmp_path)
    assert len(calls) == 2 * len(m.MNIST_FILES)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(f.name for f in m.MNIST_FILES.values())
    reference_images, reference_labels = load_mnist("test")
    assert torch.equal(images, reference_images) and torch.equal(labels, reference_labels)
    assert set(verify_mnist(tmp_path).values()) == {"ok"}

    # A second call neither downloads nor verifies again: the parsed tensors are cached.
    monkeypatch.setattr(m, "_fetch", lambda url, timeout=30.0: pytest.fail("downloaded again"))
    monkeypatch.setattr(m, "verified_payload", lambda *a: pytest.fail("verified again"))
    again, _ = load_mnist("test", root=tmp_path, device="cpu")
    assert torch.equal(again, images)


def test_download_of_bad_bytes_everywhere_leaves_nothing(tmp_path, monkeypatch):
    spec, raw = fake_spec("t10k-labels-idx1-ubyte.gz", fake_idx((4,)))
    monkeypatch.setattr(m, "_fetch", lambda url, timeout=30.0: raw[:-5])
    failures = m._download(spec, tmp_path)
    assert len(failures) == len(m.MIRRORS)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- RAM variants


def digits(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 28, 28, generator=g) * 255).to(torch.uint8)
    images[:, :4] = 0  # a blank band, like real digits' margins
    return images, torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", ["translated60", "cluttered60", "cluttered100"])
def test_variants_are_deterministic_per_seed_and_chunking(name):
    images, labels = digits()
    a = make_variant(name, images, labels, seed=5)
    b = make_variant(name, images, labels, seed=5, chunk_size=7)
    c = make_variant(name, images, labels, seed=6)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["boxes"], b["boxes"])
    assert not torch.equal(a["images"], c["images"])
    size = {"translated60": 60, "cluttered60": 60, "cluttered100": 100}[name]
    assert a["images"].shape == (64, 1, size, size) and a["images"].dtype == torch.float32
    assert 0.0 <= float(a["images"].min()) and float(a["images"].max()) <= 1.0
    assert torch.equal(a["labels"], labels)


def test_translated_boxes_hold_the_digit_and_nothing_else():
    images, labels = digits()
    out = translated_mnist(images, labels, size=60, seed=1)
    for n in range(len(images)):
        x0, y0, x1, y1 = out["boxes"][n].long().tolist()
        assert x1 - x0 == 28 and y1 - y0 == 28 and 0 <= x0 and x1 <= 60 and 0 <= y0 and y1 <= 60
        canvas = out["images"][n, 0].clone()
        assert torch.equal(canvas[y0:y1, x0:x1], images[n].float() / 255)
        canvas[y0:y1, x0:x1] = 0
        assert canvas.abs().sum() == 0


def test_positions_cover_the_canvas():
    images, labels = digits(n=2000)
    boxes = translated_mnist(images, labels, size=60, seed=2)["boxes"]
    assert int(boxes[:, 0].min()) == 0 and int(boxes[:, 0].max()) == 32


def test_clutter_adds_distractors_outside_the_box():
    images, labels = digits()
    clean = translated_mnist(images, labels, size=60, seed=1)
    clutter = cluttered_mnist(images, labels, size=60, num_distractors=4, seed=1)
    assert torch.equal(clean["boxes"], clutter["boxes"])  # the same draws place the digit
    inside = outside = 0
    for n in range(len(images)):
        x0, y0, x1, y1 = clutter["boxes"][n].long().tolist()
        canvas = clutter["images"][n, 0].clone()
        assert torch.all(canvas[y0:y1, x0:x1] >= images[n].float() / 255)  # combined by max
        canvas[y0:y1, x0:x1] = 0
        outside += int((canvas > 0).sum())
    assert outside > 0.3 * len(images) * 4 * 8 * 8 * 0.5  # distractors left plenty of pixels outside the boxes


def test_plain_mnist_variant_and_errors():
    images, labels = digits(n=4)
    out = make_variant("mnist28", images, labels)
    assert torch.equal(out["images"][:, 0], images.float() / 255)
    assert out["boxes"].tolist() == [[0, 0, 28, 28]] * 4
    with pytest.raises(ValueError, match="unknown variant 'mnist64'.*translated60"):
        make_variant("mnist64", images, labels)
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        make_variant("translated60", images[:, :20], labels)
    with pytest.raises(ValueError, match="labels of shape"):
        make_variant("translated60", images, labels[:2])
    with pytest.raises(ValueError, match="at least 28"):
        translated_mnist(images, labels, size=20)
    with pytest.raises(ValueError, match="distractor_size"):
        cluttered_mnist(images, labels, distractor_size=40)
    with pytest.raises(ValueError, match="at least 2 images"):
        cluttered_mnist(images[:1], labels[:1])
    with pytest.raises(ValueError, match="num_distractors"):
        cluttered_mnist(images, labels, num_distractors=-1)
    with pytest.raises(ValueError, match="uint8"):
        translated_mnist(images.int(), labels)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        translated_mnist(images.float(), labels)  # 0..255 floats: not divided by 255
    with pytest.raises(ValueError, match="chunk_size"):
        translated_mnist(images, labels, chunk_size=0)
    assert translated_mnist(images[:1], labels[:1])["images"].shape == (1, 1, 60, 60)  # no distractors: 1 is fine


def test_float_input_and_label_dtype_match_the_uint8_path():
    images, labels = digits(n=16)
    a = cluttered_mnist(images, labels.int(), size=40, num_distractors=3, distractor_size=10, seed=3)
    b = cluttered_mnist(images.float() / 255, labels, size=40, num_distractors=3, distractor_size=10, seed=3)
    assert torch.equal(a["images"], b["images"]) and a["labels"].dtype == torch.int64
    assert a["images"].shape == (16, 1, 40, 40) and a["boxes"].dtype == torch.float32


def test_generation_is_vectorised_over_images():
    """The number of tensor operations must not grow with the number of images."""
    dispatch = pytest.importorskip("torch.utils._python_dispatch")

    class Count(dispatch.TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for n in (10, 300):
        images, labels = digits(n=n)
        with Count() as mode:
            make_variant("cluttered100", images, labels, seed=0)
        counts.append(mode.ops)
    assert counts[0] == counts[1], counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images, labels = digits()
    cpu = make_variant("cluttered60", images, labels, seed=4)
    gpu = make_variant("cluttered60", images, labels, seed=4, device="cuda")
    assert gpu["images"].is_cuda and gpu["boxes"].is_cuda and gpu["labels"].is_cuda
    assert torch.equal(cpu["boxes"], gpu["boxes"].cpu()) and torch.equal(cpu["labels"], gpu["labels"].cpu())
    # The same pixels; CUDA's division by 255 may round the last bit differently.
    assert torch.equal((cpu["images"] * 255).round(), (gpu["images"].cpu() * 255).round())
    assert torch.allclose(cpu["images"], gpu["images"].cpu(), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- bad input to the batch makers (binarised
# MNIST, the RAM variants, the variant tasks): a clear error naming the argument


def _bad_batch_maker_calls():
    from attn_course.data.binarized import BinarizedMNIST, binarize
    from attn_course.data.tasks import MNISTVariantTask

    g = torch.Generator().manual_seed(0)
    images, labels = torch.zeros(4, 28, 28, dtype=torch.uint8), torch.arange(4)
    return [
        (ValueError, "floating images must lie in", lambda: binarize(torch.full((2, 28, 28), 255.0))),
        (TypeError, "images must be uint8", lambda: binarize(torch.zeros(2, 28, 28, dtype=torch.long))),
        (TypeError, "images", lambda: binarize([[0.5]])),
        (ValueError, "size", lambda: translated_mnist(images, labels, size=20)),
        (ValueError, "num_distractors", lambda: cluttered_mnist(images, labels, num_distractors=-1)),
        (ValueError, "variant 'mnist64'.*translated60", lambda: make_variant("mnist64", images, labels)),
        (ValueError, "labels", lambda: make_variant("mnist28", images, labels.float())),
        (ValueError, "variant 'mnist64'", lambda: MNISTVariantTask("mnist64")),
        pytest.param(ValueError, "batch_size", lambda: MNISTVariantTask("mnist28", test_size=10).sample(g, 0),
                     marks=needs_mnist),
        pytest.param(ValueError, "batch_size", lambda: next(MNISTVariantTask("mnist28", test_size=10).test_batches(0)),
                     marks=needs_mnist),
        pytest.param(ValueError, "test_size", lambda: MNISTVariantTask("mnist28", test_size=0), marks=needs_mnist),
        pytest.param(ValueError, "batch_size", lambda: BinarizedMNIST(test_size=10).sample(g, 0), marks=needs_mnist),
        pytest.param(ValueError, "batch_size", lambda: next(BinarizedMNIST(test_size=10).test_batches(0)),
                     marks=needs_mnist),
    ]


@pytest.mark.parametrize("error, match, call", _bad_batch_maker_calls())
def test_bad_batch_maker_input_gets_a_clear_error_naming_the_argument(error, match, call):
    with pytest.raises(error, match=match):
        call()
