"""``seg-edge import monai-bundle`` (issue 12), proven against the bundle's own inference.

The fixture (tools/fixtures/monai_bundle_fixture.py, cached under .cache/fixtures/) is a bundle in
MONAI's layout with the BraTS bundle's network and transforms at CPU sizes, trained briefly on
synthetic cases. The reference is ``BundleSource``: the bundle's own instantiated preprocessing,
network, inferer and postprocessing run through ``monai.bundle``. Variants of the bundle (one
edit to its JSON each) check what is mapped and what is refused.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from importer_fixtures import files_in, run_ok
from seg_edge.cli.app import app
from seg_edge.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / ".cache" / "fixtures" / "monai_bundle"
runner = CliRunner()


def _fixture_module():
    spec = importlib.util.spec_from_file_location("monai_bundle_fixture", ROOT / "tools" / "fixtures" /
                                                  "monai_bundle_fixture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fixture = _fixture_module()


@pytest.fixture(scope="module")
def bundle() -> Path:
    return fixture.build_bundle_fixture(FIXTURES, "tiny")


@pytest.fixture(scope="module")
def imported(bundle, tmp_path_factory) -> tuple[Path, dict]:
    """The fixture imported through the CLI: (model path, the --json report)."""
    model = tmp_path_factory.mktemp("monai_bundle") / "brats.onnx"
    result = run_ok("import", "monai-bundle", bundle, "--out", model, "--json")
    return model, json.loads(result.stdout)


def variant(bundle: Path, folder: Path, config=None, metadata=None, weights: bool = True) -> Path:
    """A copy of the bundle with ``config(dict)`` / ``metadata(dict)`` editing its JSON in place."""
    for part in ("configs", "models"):
        (folder / part).mkdir(parents=True)
    for name, edit in (("inference.json", config), ("metadata.json", metadata)):
        data = json.loads((bundle / "configs" / name).read_text())
        if edit:
            edit(data)
        (folder / "configs" / name).write_text(json.dumps(data, indent=2))
    if weights:
        (folder / "models" / "model.pt").symlink_to(bundle / "models" / "model.pt")
    return folder


def pre(config: dict) -> list:
    return config["preprocessing"]["transforms"]


def post(config: dict) -> list:
    return config["postprocessing"]["transforms"]


def compare(source_result, segmentation) -> dict:
    """Label agreement, max |Δp| and region Dice (WT, TC, ET) of seg-edge against the bundle."""
    from seg_edge.runtime.regions import dice, labels_to_regions

    ours, theirs = labels_to_regions(segmentation.labels, 4), labels_to_regions(source_result.labels, 4)
    return {"label_agreement": float((segmentation.labels == source_result.labels).mean()),
            "max_abs": float(np.abs(segmentation.probabilities - source_result.probabilities).max()),
            "dice": {name: dice(a, b) for name, a, b in zip(("WT", "TC", "ET"), ours, theirs)},
            "bundle_voxels": {name: int(m.sum()) for name, m in zip(("WT", "TC", "ET"), theirs)}}


def test_card_states_what_the_bundle_says(imported, bundle):
    _, report = imported
    card = report["card"]
    assert [(c["name"], c["normalization"]) for c in card["inputs"]["channels"]] == [
        ("t1ce", "zscore_nonzero"), ("t1", "zscore_nonzero"), ("t2", "zscore_nonzero"), ("flair", "zscore_nonzero")]
    assert card["inputs"]["crop"] == "none" and card["inputs"]["axes"] == [0, 1, 2]
    assert card["inputs"]["spacing"] is None and card["inputs"]["orientation"] is None  # no Orientationd/Spacingd
    out = card["outputs"]
    assert (out["kind"], out["channels"], out["thresholds"]) == ("sigmoid", ["TC", "WT", "ET"], [0.5, 0.5, 0.5])
    # the bundle's Lambdad "ET → 4, else TC → 1, else WT → 2"
    assert out["rule"] == "sequential" and out["order"] == [["WT", "ED"], ["TC", "NCR"], ["ET", "ET"]]
    assert out["source_labels"] == {"1": "NCR", "2": "ED", "4": "ET"} and card["label_scheme"] == "brats2021"
    inf = card["inference"]
    assert (inf["patch_size"], inf["overlap"], inf["blend"], inf["size_divisor"]) == ([32, 32, 32], 0.5, "constant", 8)
    assert inf["et_rule"]["enabled"] is False and inf["tta_axes"] == []
    prov = card["provenance"]
    from seg_edge.artifact import file_sha256

    assert prov["source_framework"] == "monai-bundle" and prov["source_sha256"] == file_sha256(
        bundle / "models" / "model.pt")
    assert prov["preprocessing"] == ["LoadImaged", "NormalizeIntensityd"]
    assert report["max_abs_logit_error"] < 1e-3


def test_parity_with_the_bundles_own_inference(imported, bundle):
    """seg-edge predict on the import vs the bundle's inference config run through monai.bundle."""
    from seg_edge.evaluation.sources.monai_bundle import BundleSource
    from seg_edge.runtime.io import load_case
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions

    model, report = imported
    source = BundleSource(bundle, load_card(model), threads=2)
    cases = fixture.held_out_cases(bundle)
    assert len(cases) >= 3
    with Segmenter.open(model, threads=2, options=SegmenterOptions(probabilities=True)) as seg:
        for case in cases:
            row = compare(source.predict(case), seg.predict(load_case(case, seg.card.modalities)))
            print(f"{case.name}: {row}")  # shown with -s; the closing note quotes these
            assert row["bundle_voxels"]["WT"] > 100, row  # the bundle finds tumour: Dice means something
            assert row["label_agreement"] >= 0.999 and min(row["dice"].values()) >= 0.999, row
            assert row["max_abs"] < 1e-4, row


def load_card(model: Path):
    from seg_edge.artifact import load_artifact

    return load_artifact(model).card


def _full_chain(config: dict, codes: str = "LPS") -> None:
    """LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd 1 mm, CropForegroundd, NormalizeIntensityd."""
    pre(config)[1:1] = [{"_target_": "EnsureChannelFirstd", "keys": "image"},
                        {"_target_": "Orientationd", "keys": "image", "axcodes": codes},
                        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 1.0]},
                        {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}]


def test_orientation_spacing_and_crop_become_card_fields_and_match(imported, bundle, tmp_path):
    """Orientationd/Spacingd → the card's orientation/spacing (the runtime checks inputs against them, so they
    are identities); CropForegroundd inverted by Invertd → crop nonzero. Same graph, the variant's card."""
    from seg_edge.artifact import load_artifact
    from seg_edge.evaluation.sources.monai_bundle import BundleSource
    from seg_edge.importers.monai_bundle import open_bundle
    from seg_edge.runtime.io import load_case
    from seg_edge.runtime.segmenter import Segmenter, SegmenterOptions
    from seg_edge.runtime.sessions.base import open_session

    folder = variant(bundle, tmp_path / "lps", config=_full_chain)
    card = open_bundle(folder).card
    assert (card.inputs.orientation, card.inputs.spacing, card.inputs.crop) == ("LPS", (1.0, 1.0, 1.0), "nonzero")
    model, _ = imported
    artifact = load_artifact(model)
    case = fixture.held_out_cases(bundle)[0]  # synthetic cases are LPS at 1 mm, as BraTS volumes load
    with open_session(artifact, threads=2) as session:
        seg = Segmenter(dataclasses.replace(artifact, card=card), session, SegmenterOptions(probabilities=True))
        reference = BundleSource(folder, card, threads=2).predict(case)
        row = compare(reference, seg.predict(load_case(case, card.modalities)))
        print(f"{case.name} (Orientationd LPS, Spacingd 1 mm, CropForegroundd): {row}")
        assert row["label_agreement"] >= 0.999 and min(row["dice"].values()) >= 0.999 and row["max_abs"] < 1e-4, row
        ras = open_bundle(variant(bundle, tmp_path / "ras", config=lambda c: _full_chain(c, "RAS"))).card
        with pytest.raises(InputError, match="RAS|orientation"):  # never reoriented silently
            Segmenter(dataclasses.replace(artifact, card=ras), session).predict(load_case(case, ras.modalities))


def test_mapped_variants(bundle, tmp_path):
    """Whole-volume z-score per channel, anisotropic spacing, no label Lambdad (region masks), softmax."""
    import torch
    from monai.networks.nets import SegResNet

    from seg_edge.importers.monai_bundle import open_bundle

    def zscore(config):
        pre(config)[1].update(nonzero=False)
        pre(config).insert(1, {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 2.0]})

    card = open_bundle(variant(bundle, tmp_path / "z", config=zscore)).card
    assert {c.normalization for c in card.inputs.channels} == {"zscore"} and card.inputs.spacing == (1.0, 1.0, 2.0)
    card = open_bundle(variant(bundle, tmp_path / "m", config=lambda c: post(c).pop(3))).card
    assert (card.outputs.rule, card.provenance["labels_from"]) == ("sequential", "masks")

    def softmax(config):
        config["network_def"]["out_channels"] = 4
        post(config)[0] = {"_target_": "Activationsd", "keys": "pred", "softmax": True}
        post(config)[2] = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
        post(config).pop(3)

    def classes(metadata):
        out = metadata["network_data_format"]["outputs"]["pred"]
        out.update(num_channels=4, channel_def={"0": "background", "1": "necrosis", "2": "edema",
                                                "3": "enhancing tumor"})

    folder = variant(bundle, tmp_path / "s", config=softmax, metadata=classes, weights=False)
    torch.manual_seed(0)
    kwargs = {k: v for k, v in json.loads((folder / "configs" / "inference.json").read_text())["network_def"].items()
              if k != "_target_"}
    torch.save(SegResNet(**kwargs).state_dict(), folder / "models" / "model.pt")
    card = open_bundle(folder).card
    assert (card.outputs.kind, card.outputs.channels) == ("softmax", ("background", "NCR", "ED", "ET"))


def _insert_pre(transform):
    return lambda c: pre(c).insert(1, transform)


def _set_inferer(**changes):
    return lambda c: c["inferer"].update(changes)


def _no_invert_crop(config):
    pre(config).insert(1, {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"})
    post(config).pop(1)


def _channel(name):
    return lambda m: m["network_data_format"]["inputs"]["image"]["channel_def"].update({"3": name})


REFUSALS = {  # name → (variant arguments, the one line must match)
    "unknown preprocessing": (dict(config=_insert_pre({"_target_": "ScaleIntensityd", "keys": "image"})),
                              r"inference\.json: preprocessing transform ScaleIntensityd is not supported"),
    "unknown postprocessing": (dict(config=lambda c: post(c).insert(
        4, {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]})),
        r"postprocessing transform KeepLargestConnectedComponentd is not supported"),
    "orientation labels": (dict(config=_insert_pre({"_target_": "Orientationd", "keys": "image", "axcodes": "RAS",
                                                    "labels": [["R", "L"], ["A", "P"], ["S", "I"]]})),
                           r"Orientationd labels"),
    "normalise across channels": (dict(config=lambda c: pre(c)[1].update(channel_wise=False)),
                                  r"NormalizeIntensityd channel_wise=False"),
    "sigma_scale": (dict(config=_set_inferer(mode="gaussian", sigma_scale=0.25)),
                    r"SlidingWindowInferer sigma_scale 0\.25 \(expected 0\.125"),
    "whole-volume inferer": (dict(config=lambda c: c.update(inferer={"_target_": "SimpleInferer"})),
                             r"inferer SimpleInferer is not supported"),
    "unknown channel": (dict(metadata=_channel("PD")), r"metadata\.json: .*channel_def\[\"3\"\] is 'PD'"),
    "missing weights": (dict(weights=False), r"models/model\.pt: file not found"),
    "crop not inverted": (dict(config=_no_invert_crop), r"CropForegroundd is not undone"),
    "label function": (dict(config=lambda c: post(c)[3].update(func="$lambda x: x[[0]] * 7")),
                       r"Lambdad's function writes labels \[0, 7\]"),
}


def test_refusals_are_one_line_and_write_nothing(bundle, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (kwargs, expected) in REFUSALS.items():
        folder = variant(bundle, tmp_path / re.sub(r"\W", "_", name), **kwargs)
        result = runner.invoke(app, ["import", "monai-bundle", str(folder), "--out", str(out_dir / "m.onnx")])
        line = result.stderr.strip()
        assert result.exit_code == 2, (name, result.output)
        assert line.startswith("input error:") and len(line.splitlines()) == 1, (name, line)
        assert "Traceback" not in result.output and re.search(expected, line), (name, line)
    assert files_in(out_dir) == []


@pytest.mark.parametrize("broken", ["inference.json", "metadata.json"])
def test_malformed_json_is_refused_naming_the_file(bundle, tmp_path, broken):
    folder = variant(bundle, tmp_path / "b")
    (folder / "configs" / broken).write_text('{"network_def": {"_target_": "SegResNet",}')
    result = runner.invoke(app, ["import", "monai-bundle", str(folder), "--out", str(tmp_path / "m.onnx")])
    line = result.stderr.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1, result.output
    assert re.search(rf"{re.escape(broken)}: not valid JSON \(.* at line 1 column \d+\)", line), line
    assert not (tmp_path / "m.onnx").exists()
