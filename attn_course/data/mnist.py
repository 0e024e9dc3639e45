"""MNIST as uint8 tensors: located, downloaded, verified, parsed.

The four files live under ``root/mnist/`` where ``root`` is the argument, else
``$ATTN_COURSE_DATA``, else ``~/.cache/attn_course``. A missing file is downloaded
from the canonical mirrors in turn, into a temporary file that is renamed into place
only once verified. A file is accepted when its ``.gz`` MD5 matches the mirrors' file
or the SHA-256 of its decompressed bytes matches the canonical payload; anything
else (corrupt, truncated, a different file) is an error, never silently used.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_ENV = "ATTN_COURSE_DATA"
DEFAULT_ROOT = Path("~/.cache/attn_course")
SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT = 30.0  # seconds, per request

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


@dataclass(frozen=True)
class MNISTFile:
    name: str
    gz_md5: str  # of the .gz the canonical mirrors serve
    sha256: str  # of the decompressed IDX bytes


MNIST_FILES = {
    "train-images": MNISTFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                              "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels": MNISTFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                              "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test-images": MNISTFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                             "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test-labels": MNISTFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                             "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}


class MNISTChecksumError(ValueError):
    """A file is present but is not the MNIST file it is named after."""


class MNISTNotFoundError(FileNotFoundError):
    """Files are missing and could not be downloaded."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``, else ``$ATTN_COURSE_DATA``, else ``~/.cache/attn_course``."""
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ENV) or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def mnist_dir(root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / "mnist"


# --------------------------------------------------------------------------- verification


def _decompress(raw: bytes, where: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:  # truncated or not gzip at all
        raise MNISTChecksumError(
            f"{where} is not a complete gzip file ({error.__class__.__name__}: {error}); "
            "it may be truncated or corrupt: delete it so that it is downloaded again, or replace it"
        ) from error


def verified_payload(raw: bytes, spec: MNISTFile, where: str) -> bytes:
    """The decompressed bytes of ``raw`` if it is ``spec``'s file, else :class:`MNISTChecksumError`."""
    md5 = hashlib.md5(raw).hexdigest()
    payload = _decompress(raw, where)
    if md5 == spec.gz_md5:
        return payload
    sha = hashlib.sha256(payload).hexdigest()
    if sha != spec.sha256:
        raise MNISTChecksumError(
            f"{where} does not match {spec.name}: expected .gz MD5 {spec.gz_md5} or decompressed SHA-256 "
            f"{spec.sha256}, found MD5 {md5} and SHA-256 {sha}; delete it so that it is downloaded again"
        )
    return payload


# --------------------------------------------------------------------------- download


def _fetch(url: str, timeout: float = 30.0) -> bytes:
    """The bytes at ``url`` (tests replace this to simulate mirrors and being offline)."""
    request = urllib.request.Request(url, headers={"User-Agent": "attn_course"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _download(spec: MNISTFile, directory: Path) -> list[str]:
    """Try every mirror for ``spec``; place the first verified copy atomically. Returns the failures."""
    return _download_from(MIRRORS, spec, directory)[1]


def _download_from(mirrors: tuple[str, ...], spec: MNISTFile, directory: Path) -> tuple[bool, list[str], list[str]]:
    """Try ``mirrors`` in turn for ``spec``; place the first verified copy atomically.

    Returns ``(done, failures, silent)``: whether a verified copy is in place, what each
    failed mirror said, and the mirrors that did not answer at all (no connection, a timeout).
    """
    failures, silent = [], []
    for mirror in mirrors:
        url = mirror + spec.name
        try:
            print(f"downloading {url}", file=sys.stderr, flush=True)
            raw = _fetch(url, timeout=DOWNLOAD_TIMEOUT)
            verified_payload(raw, spec, url)  # nothing is written unless it is the right file
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            failures.append(f"{url}: {error}")
            answered = isinstance(error, (urllib.error.HTTPError, http.client.HTTPException, ValueError))
            if not answered:
                silent.append(mirror)
            continue
        directory.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=directory)
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / spec.name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True, [], silent
    return False, failures, silent


def _not_found_message(directory: Path, missing: list[str], failures: list[str]) -> str:
    names = "\n".join(f"  {spec.name}" for spec in MNIST_FILES.values())
    env = os.environ.get(DATA_ENV)
    where = f"{DATA_ENV}={env}" if env else f"{DATA_ENV} is not set, so the data root is {DEFAULT_ROOT}"
    lines = [
        f"MNIST files missing from {directory}: {', '.join(missing)} ({where}).",
        "The course needs these four files there:",
        names,
        "They could not be downloaded (no network?). Copy the four .gz files into "
        f"{directory}{os.sep}, or set {DATA_ENV} to a folder that holds them as mnist/<file>.gz "
        f"(e.g. {DATA_ENV}=../shared/data for ../shared/data/mnist/{MNIST_FILES['train-images'].name}).",
    ]
    if failures:
        lines.append("Download attempts:\n" + "\n".join(f"  {f}" for f in failures[:6]))
    return "\n".join(lines)


def ensure_mnist(root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Make sure the four files are present under ``root/mnist`` (downloading them if allowed).

    On a network that swallows connections every attempt waits for its timeout, so a
    mirror that did not answer is tried last for the files after, and when every mirror
    fails for a file the remaining files are not tried at all: one round of failures
    gives the error, which says where to put the files.
    """
    directory = mnist_dir(root)
    missing = [spec for spec in MNIST_FILES.values() if not (directory / spec.name).exists()]
    if not missing:
        return directory
    if not download:
        raise MNISTNotFoundError(_not_found_message(directory, [spec.name for spec in missing], ["download=False"]))
    mirrors = MIRRORS
    for index, spec in enumerate(missing):
        done, failures, silent = _download_from(mirrors, spec, directory)
        if not done:
            raise MNISTNotFoundError(_not_found_message(directory, [s.name for s in missing[index:]], failures))
        mirrors = (*(m for m in mirrors if m not in silent), *(m for m in mirrors if m in silent))
    return directory


def verify_mnist(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Status of each file: ``ok``, ``missing`` or ``corrupt: ...``; never raises, never downloads."""
    directory = mnist_dir(root)
    status = {}
    for spec in MNIST_FILES.values():
        path = directory / spec.name
        if not path.is_file():
            status[spec.name] = "missing" if not path.exists() else f"unreadable: {path} is not a file"
            continue
        try:
            verified_payload(path.read_bytes(), spec, str(path))
            status[spec.name] = "ok"
        except MNISTChecksumError as error:
            status[spec.name] = f"corrupt: {error}"
        except OSError as error:  # a folder by that name, no permission, an I/O error
            status[spec.name] = f"unreadable: {path}: {error.strerror or error}"
    return status


# --------------------------------------------------------------------------- parsing


def parse_idx(payload: bytes, where: str) -> np.ndarray:
    """Parse IDX bytes (unsigned-byte data) into an array, checking magic number and size."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0 or payload[2] != 0x08:
        raise MNISTChecksumError(f"{where} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = payload[3]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise MNISTChecksumError(f"{where}: IDX header truncated")
    shape = tuple(int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(payload) - header != expected:
        raise MNISTChecksumError(
            f"{where}: IDX header says shape {shape} ({expected} bytes) but {len(payload) - header} bytes follow"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(shape)


_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _read(path: Path, spec: MNISTFile) -> np.ndarray:
    try:
        raw = path.read_bytes()
    except OSError as error:  # no permission, an I/O error: an error that names the file
        raise MNISTChecksumError(f"cannot read {path}: {error.strerror or error}") from error
    return parse_idx(verified_payload(raw, spec, str(path)), str(path))


def load_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` as ``(images, labels)``: uint8 (N, 28, 28) and int64 (N,), on ``device``.

    Files are verified once per process; the parsed tensors are kept in memory, so a
    second call is cheap. Without ``device`` (or with ``"cpu"``) the cached tensors
    themselves are returned: treat them as read-only.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; choose one of: {', '.join(SPLITS)}")
    directory = ensure_mnist(root, download=download)
    image_spec, label_spec = MNIST_FILES[f"{split}-images"], MNIST_FILES[f"{split}-labels"]
    image_path, label_path = directory / image_spec.name, directory / label_spec.name
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (image_path, label_path))
    if key not in _CACHE:
        images = _read(image_path, image_spec)
        labels = _read(label_path, label_spec)
        if images.shape != (SPLIT_SIZES[split], 28, 28) or labels.shape != (SPLIT_SIZES[split],):
            raise MNISTChecksumError(f"unexpected shapes {images.shape} and {labels.shape} in {directory}")
        _CACHE[key] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    images, labels = _CACHE[key]
    if device is not None:
        images, labels = images.to(device), labels.to(device)
    return images, labels
