"""The parity source ``--reference nnunet:FOLDER``: nnU-Net's own ``nnUNetPredictor`` on a case, in seg-edge terms.

The model folder is trained by nnU-Net itself (tools/fixtures/nnunet_fixture.py, tiny: two folds,
a few minutes on two cores the first time, then cached under .cache/fixtures/). What the source
returns is checked against nnU-Net's own file output (``predict_from_files_sequential`` writing
NIfTI through the plans' reader/writer, labels turned back by Dataset137's
``convert_labels_back_to_BraTS``), so the grid and label mapping are nnU-Net's, not ours.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 (extra 'nnunet') is not installed")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools.fixtures.nnunet_fixture import CHANNELS, build_nnunet_fixture  # noqa: E402

from seg_edge.card import Channel, Inference, Inputs, ModelCard, Outputs  # noqa: E402
from seg_edge.errors import InputError  # noqa: E402
from seg_edge.evaluation.sources import nnunet as source  # noqa: E402
from seg_edge.evaluation.sources.nnunet import NnunetSource  # noqa: E402

CACHE = ROOT / ".cache" / "fixtures" / "nnunet-tiny"
DATASET137 = {"1": "ED", "2": "NCR", "3": "ET"}
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def nnunet_card(channels=("WT", "TC", "ET"), source_labels=DATASET137, **provenance) -> ModelCard:
    """The card parts the source reads, as ``seg-edge import nnunet`` writes them for the fixture."""
    inputs = Inputs(tuple(Channel(m) for m, _ in CHANNELS))
    order = tuple((c, {"WT": "ED", "TC": "NCR", "ET": "ET"}[c]) for c in ("WT", "TC", "ET"))
    outputs = Outputs(kind="sigmoid", channels=tuple(channels), thresholds=(0.5,) * 3, rule="sequential",
                      order=order, source_labels=dict(source_labels))
    return ModelCard(name="nnunet-fixture", preset="nnunet", inputs=inputs, outputs=outputs,
                     inference=Inference(patch_size=(40, 48, 32), size_divisor=8, overlap=0.5, tta_axes=(0, 1, 2)),
                     provenance=dict(provenance))


def paint(probs: np.ndarray) -> np.ndarray:
    """nnU-Net's rule for regions (WT, TC, ET): each region > 0.5 paints its label over the previous."""
    labels = np.zeros(probs.shape[1:], dtype=np.uint8)
    for prob, value in zip(probs, (2, 1, 4)):
        labels[prob > 0.5] = value
    return labels


# --------------------------------------------------------------------------- no trained model needed


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIO", "NibabelIOWithReorient"])
def test_each_readers_view_maps_back_to_the_file_grid(case_dir, reader):
    """nnU-Net's readers give (z, y, x) (NibabelIOWithReorient: of the RAS-reoriented image); back to nibabel's."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    files = source.find_modalities(case_dir, ("flair",))
    image, _ = recursive_find_reader_writer_by_name(reader)().read_images([str(files["flair"])])
    img = nib.load(files["flair"])
    back = source.to_case_grid(image[0], source._reorientation(reader, img.affine))
    assert np.array_equal(back, np.asanyarray(img.dataobj).astype(np.float32))
    both = source.to_case_grid(np.stack([image[0], image[0]]), source._reorientation(reader, img.affine))
    assert both.shape == (2, *img.shape) and np.array_equal(both[1], back)


def test_region_channels_are_found_by_their_brats_labels():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager({"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3),
                            "enhancing tumor": (3,)}, regions_class_order=(1, 2, 3))
    folder = Path("model")
    assert source.channel_order(manager, nnunet_card(), folder) == [0, 1, 2]
    assert source.channel_order(manager, nnunet_card(("ET", "WT", "TC")), folder) == [2, 0, 1]
    assert source.label_lut(nnunet_card(), folder, 4).tolist() == [0, 2, 1, 4]
    with pytest.raises(InputError, match="lack nnU-Net label 3"):
        source.channel_order(manager, nnunet_card(source_labels={"1": "ED", "2": "NCR"}), folder)
    softmax = LabelManager({"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}, None)
    card = nnunet_card(("background", "NCR", "ED", "ET"))
    assert source.channel_order(softmax, card, folder) == [0, 2, 1, 3]


def test_a_folder_without_what_nnunet_needs_is_one_line(tmp_path):
    card = nnunet_card()
    with pytest.raises(InputError, match="no such nnU-Net model folder"):
        NnunetSource(tmp_path / "absent", card, tta=False, threads=1)
    with pytest.raises(InputError, match="not an nnU-Net model folder.*no dataset.json"):
        NnunetSource(tmp_path, card, tta=False, threads=1)
    for name in ("dataset.json", "plans.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "fold_0").mkdir()
    with pytest.raises(InputError, match=r"no fold_\*/checkpoint_final.pth") as err:
        NnunetSource(tmp_path, card, tta=False, threads=1)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_without_nnunetv2_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2.inference.predict_from_raw_data", None)
    with pytest.raises(InputError, match=r"nnU-Net v2 is not installed.*pip install 'seg-edge\[nnunet\]'"):
        NnunetSource(tmp_path, nnunet_card(), tta=False, threads=1)


# --------------------------------------------------------------------------- nnU-Net-trained fixture


@pytest.fixture(scope="module")
def nn_model() -> Path:
    return build_nnunet_fixture(CACHE, "tiny")


@pytest.fixture(scope="module")
def held_out(nn_model) -> Path:
    return sorted(p for p in (CACHE / "cases").iterdir() if p.is_dir())[0]


@pytest.fixture(scope="module")
def no_tta(nn_model, held_out):
    card = nnunet_card(folds=[0, 1], checkpoint="checkpoint_final.pth", configuration="3d_fullres")
    return NnunetSource(nn_model, card, tta=False, threads=2).predict(held_out)


@pytest.mark.slow
def test_source_gives_brats_labels_painted_from_its_probabilities(no_tta, held_out):
    shape = nib.load(next(held_out.glob("*_flair.nii.gz"))).shape
    assert no_tta.labels.dtype == np.uint8 and no_tta.labels.shape == shape
    assert set(np.unique(no_tta.labels).tolist()) <= {0, 1, 2, 4}
    assert (no_tta.labels > 0).any(), "the fixture predicts no tumour"
    probs = no_tta.probabilities
    assert probs.shape == (3, *shape) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert np.array_equal(no_tta.labels, paint(probs))
    assert no_tta.seconds > 0


@pytest.mark.slow
def test_source_equals_nnunets_own_file_output(nn_model, no_tta, held_out, tmp_path):
    """nnU-Net writes its prediction as NIfTI itself; read back with nibabel, in BraTS labels, it is ours."""
    import torch
    from nnunetv2.dataset_conversion.Dataset137_BraTS21 import convert_labels_back_to_BraTS
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(2)  # as the source runs it: same threads, same float rounding
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(nn_model), (0, 1), "checkpoint_final.pth")
    files = [str(next(held_out.glob(f"*_{m}.nii.gz"))) for m, _ in CHANNELS]
    predictor.predict_from_files_sequential([files], [str(tmp_path / "pred")], save_probabilities=True)
    written = nib.load(tmp_path / "pred.nii.gz")
    ours = nib.load(files[0])
    assert np.allclose(written.affine, ours.affine) and written.shape == ours.shape
    assert np.array_equal(convert_labels_back_to_BraTS(np.asanyarray(written.dataobj)), no_tta.labels)
    saved = np.load(tmp_path / "pred.npz")["probabilities"]  # nnU-Net's (regions, z, y, x)
    assert np.array_equal(saved.transpose(0, 3, 2, 1), no_tta.probabilities)


@pytest.mark.slow
def test_mirroring_changes_what_the_source_predicts(nn_model, no_tta, held_out):
    """Mirroring averages 8 flipped passes (axes from the checkpoint): a briefly trained net is not flip-invariant."""
    card = nnunet_card(folds=[0, 1], checkpoint="checkpoint_final.pth")
    tta = NnunetSource(nn_model, card, tta=True, threads=2)
    assert tta.predictor.allowed_mirroring_axes == (0, 1, 2)
    mirrored = tta.predict(held_out)
    diff = np.abs(mirrored.probabilities - no_tta.probabilities)
    print(f"mirroring on vs off: max |dp| {diff.max():.3f}, labels differ in {(mirrored.labels != no_tta.labels).sum()}"
          f" voxels; {mirrored.seconds:.1f} s vs {no_tta.seconds:.1f} s")
    assert diff.max() > 1e-3
    assert np.array_equal(mirrored.labels, paint(mirrored.probabilities))


@pytest.mark.slow
def test_folds_checkpoint_and_configuration_are_checked(nn_model):
    with pytest.raises(InputError, match=r"fold\(s\) \[3\] have no checkpoint_final.pth \(folds with one: \[0, 1\]\)"):
        NnunetSource(nn_model, nnunet_card(folds=[0, 3]), tta=False, threads=1)
    with pytest.raises(InputError, match="have no checkpoint_latest.pth"):  # nnU-Net deletes it after training
        NnunetSource(nn_model, nnunet_card(), tta=False, threads=1, folds=[0], checkpoint="checkpoint_latest.pth")
    with pytest.raises(InputError, match="holds configuration 3d_fullres; the card was imported from 3d_lowres"):
        NnunetSource(nn_model, nnunet_card(configuration="3d_lowres"), tta=False, threads=1)
    one = NnunetSource(nn_model, nnunet_card(folds=[1]), tta=False, threads=1)
    assert one.folds == (1,) and len(one.predictor.list_of_parameters) == 1
    marker = json.loads((CACHE / "fixture.json").read_text())
    assert marker["folds"] == [0, 1] and marker["trainer"] == "nnUNetTrainer"
