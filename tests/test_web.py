"""The live demos' models: the export, its parity with PyTorch, demos.json, and the chapters' blocks."""

import json

import pytest
import torch

from attn_course import web
from attn_course.__main__ import main
from attn_course.data.sequences import ISO_LENGTH, decode, encode_batch
from attn_course.experiments.transformer import translate_dates
from attn_course.registry import load_pretrained
from attn_course.transformer import predict

from mnist_files import needs_mnist

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("web")
    return out, web.export_web(out)


@needs_mnist
@pytest.mark.slow
def test_onnxruntime_decodes_and_classifies_exactly_as_pytorch(exported):
    out, files = exported
    assert set(files) == set(web.FILES) and all(about["bytes"] > 0 for about in files.values())
    figures = web.parity(out, dates=60, digits=200)
    assert figures["dates_total"] == 2 * 60 + len(web.DATE_EXAMPLES)
    assert figures["dates_same"] == figures["dates_total"], figures
    assert figures["digits_same"] == figures["digits_total"] == 200, figures
    assert figures["cross_max_abs"] < 1e-4, figures  # measured 2.6e-6
    assert figures["location_max_abs"] < 1e-3 and figures["probability_max_abs"] < 1e-3, figures  # 3e-5, 7e-5


@needs_mnist
@pytest.mark.slow
def test_demos_json_holds_the_packages_answers(exported):
    out, files = exported
    demos = json.loads((out / "demos.json").read_text())
    assert demos["models"] == {name: files[name] for name in web.FILES[:3]}
    model = load_pretrained("transformer", "dates", device="cpu")
    readings = translate_dates(model, list(web.DATE_EXAMPLES))
    for example, reading in zip(demos["dates"]["examples"], readings):
        assert example["greedy"] == decode(predict(model, encode_batch([example["text"]]), ISO_LENGTH + 1)[0])
        assert example["output"] == reading.iso and example["corrected"] == reading.corrected
    assert [e["text"] for e in demos["dates"]["examples"]] == list(web.DATE_EXAMPLES)
    corrected = [e for e in demos["dates"]["examples"] if e["corrected"]]
    assert corrected and all(e["greedy"] != e["output"] for e in corrected), "the page must show a correction"
    ram = demos["ram"]
    assert sorted(ram["labels"]) == list(range(10)) and len(ram["paths"]["locations"]) == 10
    assert len(ram["paths"]["locations"][0]) == ram["num_glimpses"]
    placed = torch.tensor(ram["placed"]["locations"])
    assert torch.allclose(placed[:, 1], torch.tensor([0.5, -0.5]))  # the glimpse placed by hand
    assert not torch.allclose(placed, torch.tensor(ram["paths"]["locations"]), atol=1e-3)
    case = demos["filterbank"]["cases"][0]
    assert len(case["patch"]) == case["N"]


@needs_mnist
def test_a_placed_glimpse_is_followed_by_the_policy():
    model = load_pretrained("ram", "mnist28", device="cpu")
    digits, _ = web._demo_digits()
    images = digits[:3].float()[:, None] / 255
    free = web.glimpse_paths_for(model, digits[:3])
    same = web._placed_path(model, images, {})  # nothing placed: the policy's own path
    assert torch.allclose(same["locations"], torch.tensor(free["locations"]), atol=1e-6)
    placed = web._placed_path(model, images, {2: (-0.25, 0.75)})
    assert torch.allclose(placed["locations"][:, :2], same["locations"][:, :2])
    assert torch.allclose(placed["locations"][:, 2], torch.tensor([-0.25, 0.75]))
    assert not torch.allclose(placed["locations"][:, 3:], same["locations"][:, 3:], atol=1e-3)


def test_the_unchecked_inner_functions_compute_what_the_checked_ones_do():
    model = load_pretrained("transformer", "dates", device="cpu").eval()
    src = encode_batch(["March 3, 2021", "1/2/1903"])
    memory, mask, _ = model.encode(src)
    assert torch.equal(model._encode(src)[0], memory)
    tgt = torch.tensor([[1, 5, 6], [1, 7, 8]])
    assert torch.equal(model._decode(tgt, memory, mask)[0], model.decode(tgt, memory, mask)[0])
    with pytest.raises(ValueError, match="ids must lie in"):
        model.encode(torch.tensor([[999]]))


@needs_mnist
def test_a_live_demo_block_has_its_figure_its_note_and_its_script():
    for name in web.DEMOS:
        html = web.live_demo(name).data
        assert f'data-demo="{name}"' in html and "data:image/png;base64," in html
        assert f'src="{web.LIVE_PATH}{name}.js"' in html and 'type="module"' in html
        assert "make serve" in html
    with pytest.raises(ValueError, match="unknown live demo 'nope'; choose one of: dates, ram, filterbank"):
        web.live_demo("nope")


def test_parity_names_the_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="export-web"):
        web.parity(tmp_path)


def test_the_export_command_refuses_a_missing_out(capsys):
    assert main(["export-web"]) == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
