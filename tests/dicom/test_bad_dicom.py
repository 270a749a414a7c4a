"""Bad DICOM (issue 23, scope 5): every case of ``bad_dicom`` refused in one line (an InputError, which the CLI
renders as one line, exit 2) naming what was found, never a traceback or a hang: through what a study goes
through before segmentation (scan, select, read every chosen series)."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

import bad_dicom  # noqa: E402
from seg_edge.dicom.rules import load_rules  # noqa: E402
from seg_edge.dicom.select import select  # noqa: E402
from seg_edge.dicom.series import scan, scan_study  # noqa: E402
from seg_edge.dicom.volume import read_series  # noqa: E402
from seg_edge.errors import InputError  # noqa: E402

FAST = [name for name in bad_dicom.CASES if name not in ("unrelated_instances", "many_series")]  # test_large_folders


def refusal(folder: Path) -> str:
    """What a study goes through before segmentation: scan, select with the shipped rules, read each chosen
    series. The InputError's message; fails when the study passes."""
    try:
        selection = select(scan(folder), load_rules())
        for info in selection.chosen.values():
            read_series(info)
    except InputError as error:
        return str(error)
    raise AssertionError(f"{folder}: accepted (expected a refusal)")


def test_the_good_study_passes(tmp_path):
    """The builders' study without a defect is read whole: the refusals below are the defects'."""
    files = bad_dicom.good_study(tmp_path)
    selection = select(scan(tmp_path), load_rules())
    assert {m: s.description for m, s in selection.chosen.items()} == \
        {role: bad_dicom.SERIES[role][1] for role in ("t1ce", "t1", "t2", "flair")}
    for info in selection.chosen.values():
        volume = read_series(info)
        assert volume.image.shape == (bad_dicom.SIZE, bad_dicom.SIZE, bad_dicom.N_SLICES)
        assert abs(volume.image.header.get_zooms()[2] - bad_dicom.SLICE_MM) < 1e-6
    assert sum(len(f) for f in files.values()) == 4 * bad_dicom.N_SLICES


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS:UserWarning")  # non_finite writes DS "inf"
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")  # truncated_compressed
@pytest.mark.parametrize("case", FAST)
def test_bad_study_refused_in_one_line(tmp_path, case):
    fragment = bad_dicom.CASES[case](tmp_path)
    message = refusal(tmp_path)
    assert fragment in message and "\n" not in message
    assert "BAD^DICOM" not in message and bad_dicom.PATIENT_ID not in message  # never the patient


@pytest.mark.parametrize("case", ["truncated_pixels", "missing_slice", "inconsistent_orientation",
                                  "no_pixel_data", "two_patients", "dicomdir_only"])
def test_refusal_names_the_series_and_the_file(tmp_path, case):
    bad_dicom.CASES[case](tmp_path)
    message = refusal(tmp_path)
    if case in ("two_patients", "dicomdir_only"):  # the folder's problem, not a series'
        assert message.startswith(f"{tmp_path}: ")
    else:
        assert message.startswith("#4 't2_tirm_tra_dark-fluid': ") and f"{tmp_path}/04_" in message


def test_a_zipped_study_is_read_from_its_members(tmp_path):
    bad_dicom.good_study(tmp_path / "study")
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as archive:
        for path in sorted((tmp_path / "study").iterdir()):
            archive.write(path, f"nested/{path.name}")
    selection = select(scan(tmp_path / "study.zip"), load_rules())
    flair = read_series(selection["flair"])
    assert flair.image.shape == (bad_dicom.SIZE, bad_dicom.SIZE, bad_dicom.N_SLICES)
    assert flair.datasets[0].filename == f"{tmp_path / 'study.zip'}:nested/04_001.dcm"


@pytest.mark.parametrize("n_slices", [1, 2])
def test_read_series_refuses_one_or_two_slices(tmp_path, n_slices):
    """Chosen by hand (--series), a 1- or 2-slice series reaches the reader, which refuses it."""
    bad_dicom.good_study(tmp_path, flair=lambda d: d[:n_slices])
    (flair,) = [s for s in scan(tmp_path) if s.number == 4]
    with pytest.raises(InputError, match=rf"^#4 't2_tirm_tra_dark-fluid': .*: {n_slices} slices? \(expected at "
                                         r"least 3: a 3D volume"):
        read_series(flair)


def test_spacing_within_tolerance_accepted(tmp_path):
    """Slice positions rounded as scanners write them (here 0.01 mm off) are one regular grid."""
    def jitter(datasets):
        for k, ds in enumerate(datasets):
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + (0.01 if k % 2 else -0.01)]
        return datasets
    bad_dicom.good_study(tmp_path, flair=jitter)
    (flair,) = [s for s in scan(tmp_path) if s.number == 4]
    assert read_series(flair).image.shape[2] == bad_dicom.N_SLICES



@pytest.mark.parametrize("case", ["unrelated_instances", "many_series"])
@pytest.mark.parametrize("count", [2000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_large_folders_end_in_one_line(tmp_path, case, count):
    """A folder of thousands of instances is refused in one line, in bounded time: unrelated instances at the
    second patient, one study of many series after reading every header (measured: see the report)."""
    fragment = bad_dicom.CASES[case](tmp_path, count)
    start = time.perf_counter()
    with pytest.raises(InputError) as error:
        scan_study(tmp_path)
    seconds = time.perf_counter() - start
    assert fragment in str(error.value) and "\n" not in str(error.value)
    print(f"{case} {count} files: scan refused in {seconds:.2f} s")
    # generous: ~1 ms a header on a loaded 2-core machine; a hang or a quadratic step would pass it
    assert seconds < 0.01 * count + 5
