"""The MNIST downloader gives up after one round of failed mirrors, and says where to put the files.

No network and no waiting: ``urllib.request.urlopen`` is replaced by one that times out at once.
"""

import gzip
import hashlib
import socket
import urllib.error
import urllib.request

import pytest

from attn_course.data import mnist as m


@pytest.fixture
def urlopen_calls(monkeypatch):
    """Every call of urlopen, each timing out immediately (a network that swallows connections)."""
    calls = []

    def swallowed(request, timeout=None):
        calls.append((request.full_url, timeout))
        raise socket.timeout("timed out")  # what urlopen raises when the read times out

    monkeypatch.setattr(urllib.request, "urlopen", swallowed)
    return calls


def test_offline_gives_up_after_one_round_of_mirrors(tmp_path, monkeypatch, urlopen_calls, capsys):
    monkeypatch.setenv("ATTN_COURSE_DATA", str(tmp_path))
    with pytest.raises(m.MNISTNotFoundError) as info:
        m.load_mnist("train")
    # one attempt per mirror in all: the three files after the first are not tried against dead mirrors
    assert [url for url, _ in urlopen_calls] == [mirror + m.MNIST_FILES["train-images"].name for mirror in m.MIRRORS]
    assert all(timeout == m.DOWNLOAD_TIMEOUT for _, timeout in urlopen_calls)
    message = str(info.value)
    directory = tmp_path / "mnist"
    assert str(directory) in message and f"ATTN_COURSE_DATA={tmp_path}" in message
    for spec in m.MNIST_FILES.values():  # every file the course needs is named, with where it goes
        assert spec.name in message
    for mirror in m.MIRRORS:  # and what each mirror answered
        assert mirror in message and "timed out" in message
    assert not directory.exists() or not any(directory.iterdir())  # nothing half-written


def test_offline_message_names_the_default_root_when_the_variable_is_unset(tmp_path, monkeypatch, urlopen_calls):
    monkeypatch.delenv("ATTN_COURSE_DATA", raising=False)
    with pytest.raises(m.MNISTNotFoundError) as info:
        m.ensure_mnist(tmp_path)
    assert len(urlopen_calls) == len(m.MIRRORS)
    assert "ATTN_COURSE_DATA is not set" in str(info.value) and str(tmp_path / "mnist") in str(info.value)


def test_a_mirror_that_does_not_answer_is_tried_last_for_the_later_files(tmp_path, monkeypatch):
    """A silent first mirror costs one timeout, not one per file; the files still arrive, verified."""
    payloads = {spec.name: bytes([0, 0, 8, 1, 0, 0, 0, 1, 7]) for spec in m.MNIST_FILES.values()}
    raws = {name: gzip.compress(payload) for name, payload in payloads.items()}
    files = {key: m.MNISTFile(spec.name, hashlib.md5(raws[spec.name]).hexdigest(),
                              hashlib.sha256(payloads[spec.name]).hexdigest())
             for key, spec in m.MNIST_FILES.items()}
    monkeypatch.setattr(m, "MNIST_FILES", files)
    calls = []

    def fetch(url, timeout=30.0):
        calls.append(url)
        if url.startswith(m.MIRRORS[0]):
            raise urllib.error.URLError(socket.timeout("timed out"))
        return raws[url.rsplit("/", 1)[1]]

    monkeypatch.setattr(m, "_fetch", fetch)
    directory = m.ensure_mnist(tmp_path)
    assert sum(url.startswith(m.MIRRORS[0]) for url in calls) == 1
    assert len(calls) == len(files) + 1
    assert all(url.startswith(m.MIRRORS[1]) for url in calls[1:])
    assert sorted(p.name for p in directory.iterdir()) == sorted(payloads)  # no .part files left
    for name, raw in raws.items():
        assert (directory / name).read_bytes() == raw


def test_download_false_tries_no_mirror(tmp_path, urlopen_calls):
    with pytest.raises(m.MNISTNotFoundError, match="download=False"):
        m.ensure_mnist(tmp_path, download=False)
    assert urlopen_calls == []


def test_verify_reports_an_unreadable_file_and_goes_on(tmp_path, monkeypatch):
    directory = tmp_path / "mnist"
    directory.mkdir()
    (directory / m.MNIST_FILES["train-images"].name).mkdir()  # a folder where a file should be
    (directory / m.MNIST_FILES["train-labels"].name).write_bytes(b"not gzip at all")
    status = m.verify_mnist(tmp_path)
    assert status[m.MNIST_FILES["train-images"].name].startswith("unreadable: ")
    assert status[m.MNIST_FILES["train-labels"].name].startswith("corrupt: ")
    assert status[m.MNIST_FILES["test-images"].name] == "missing"


def test_load_names_a_file_it_cannot_read(tmp_path, monkeypatch):
    directory = tmp_path / "mnist"
    directory.mkdir()
    for spec in m.MNIST_FILES.values():
        (directory / spec.name).mkdir()  # present, but cannot be read as a file
    monkeypatch.setattr(m, "_fetch", lambda url, timeout=30.0: pytest.fail("a present file is not downloaded"))
    with pytest.raises(m.MNISTChecksumError, match=r"cannot read .*t10k-images-idx3-ubyte\.gz"):
        m.load_mnist("test", root=tmp_path)


def test_a_mirror_that_answers_wrongly_keeps_its_place(tmp_path, monkeypatch):
    """An HTTP error or a wrong file is an answer: that mirror may have the next file, so it is asked first again."""
    payload = bytes([0, 0, 8, 1, 0, 0, 0, 1, 7])
    raw = gzip.compress(payload)
    files = {key: m.MNISTFile(spec.name, hashlib.md5(raw).hexdigest(), hashlib.sha256(payload).hexdigest())
             for key, spec in m.MNIST_FILES.items()}
    monkeypatch.setattr(m, "MNIST_FILES", files)
    calls = []

    def fetch(url, timeout=30.0):
        calls.append(url)
        if url.startswith(m.MIRRORS[0]):
            raise urllib.error.HTTPError(url, 503, "Service Unavailable", {}, None)
        return raw

    monkeypatch.setattr(m, "_fetch", fetch)
    m.ensure_mnist(tmp_path)
    assert sum(url.startswith(m.MIRRORS[0]) for url in calls) == len(files)
