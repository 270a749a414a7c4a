"""Multifocal phantoms (``--tumours``, ``--satellites``): several tumours, satellites near and far as promised,
deterministic; without the options a case is byte for byte the one earlier versions wrote."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from seg_edge.cli.app import app
from seg_edge.errors import InputError
from seg_edge.synth import make_phantom
from seg_edge.synth.multifocal import FAR_GAP, NEAR_GAP

SHAPE = (96, 96, 64)
S26 = np.ones((3, 3, 3), dtype=bool)


def test_without_the_options_the_case_is_unchanged():
    """sha256 of seed (5, 1) on 96x104x72 as written before multifocal phantoms existed (labels, images)."""
    p = make_phantom(np.random.default_rng([5, 1]), (96, 104, 72))
    assert hashlib.sha256(p.labels.tobytes()).hexdigest() == (
        "3da249f80a1433f4e2763e8d5376efd3390f14134b98431654e61dc97e21e98c")
    assert hashlib.sha256(p.images.tobytes()).hexdigest() == (
        "80cc5fc214431d4423e9402d51308b6ccb8561082be4a9ca27e185fb454f993d")
    assert p.lesions == ()


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom(np.random.default_rng([31, i]), SHAPE, 3, tumours=3, satellites=4) for i in range(3)]


def test_multifocal_cases_are_deterministic(phantoms):
    again = make_phantom(np.random.default_rng([31, 0]), SHAPE, 3, tumours=3, satellites=4)
    assert np.array_equal(again.labels, phantoms[0].labels)
    assert np.array_equal(again.images, phantoms[0].images)
    assert again.lesions == phantoms[0].lesions


def test_tumours_and_satellites_are_separate_lesions(phantoms):
    for p in phantoms:
        kinds = [lesion.kind for lesion in p.lesions]
        assert kinds == ["focus", "focus", "near", "far", "near", "far"]
        _, n_core = ndimage.label(np.isin(p.labels, (1, 3)), structure=S26)
        assert n_core >= 1 + 2 + 4  # the main tumour's core(s), two foci, four satellites
        for lesion in p.lesions:  # every added lesion is drawn where it says, enhancing at its centre
            assert p.labels[lesion.centre] in (1, 3)


def _satellite_and_rest(labels: np.ndarray, centre: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    components, _ = ndimage.label(labels > 0, structure=S26)
    satellite = components == components[centre]
    return satellite, (labels > 0) & ~satellite


def test_near_satellites_join_their_lesion_under_brats2023_and_far_ones_do_not(phantoms):
    """Measured on the labels alone: nearest-voxel distance to the rest of the tumour, and BraTS 2023's rule
    (the whole tumour dilated 3 times with the 18-connected structure, then 26-connected components): a near
    satellite shares its component with the rest, a far one keeps its own."""
    dilation = ndimage.generate_binary_structure(3, 2)
    for p in phantoms:
        merged, _ = ndimage.label(ndimage.binary_dilation(p.labels > 0, structure=dilation, iterations=3),
                                  structure=S26)
        for lesion in (x for x in p.lesions if x.kind != "focus"):
            satellite, rest = _satellite_and_rest(p.labels, lesion.centre)
            assert satellite.sum() < 150  # a satellite, not a tumour it touched
            distance = float(ndimage.distance_transform_edt(~rest)[satellite].min())
            joined = bool((merged[rest] == merged[lesion.centre]).any())
            if lesion.kind == "near":
                assert NEAR_GAP[0] <= distance <= NEAR_GAP[1] and joined
            else:
                assert distance >= FAR_GAP[0] and not joined


def test_cli_writes_multifocal_cases_and_refuses_them_with_raw(tmp_path):
    runner = CliRunner()
    done = runner.invoke(app, ["synth", "--out", str(tmp_path / "mf"), "--n", "1", "--shape", "96,96,64",
                               "--tumours", "2", "--satellites", "2", "--seed", "4"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "mf" / "SynBraTS_0004_000" / "SynBraTS_0004_000_seg.nii.gz").is_file()
    refused = runner.invoke(app, ["synth", "--out", str(tmp_path / "raw"), "--n", "1", "--raw", "--satellites", "2"])
    assert refused.exit_code == 2
    assert "--satellites with --raw" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "raw").exists()


def test_no_room_is_a_one_line_error_and_nothing_is_written(tmp_path):
    with pytest.raises(InputError, match="no room for another tumour"):
        make_phantom(np.random.default_rng([31, 0]), (64, 64, 48), 3, tumours=40)
    refused = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "c"), "--n", "1", "--shape", "64,64,48",
                                       "--tumours", "40"])
    assert refused.exit_code == 2 and "no room" in refused.output
    assert not any((tmp_path / "c").glob("*/*.nii.gz"))
