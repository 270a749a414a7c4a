"""``seg-edge evaluate --challenge gli|mets`` against the official BraTS evaluation, figure by figure.

The oracle is the package the challenges publish (``brats-evaluation`` 0.0.10 on panoptica 2.1.7), run in a venv
of its own (``make install-brats-eval``: it is AGPL and pins numpy<2.3 and rich<14; seg-edge never imports it)
through ``tools/brats_eval_oracle.py``, which runs its ``brats-evaluate`` and ``brats-parse-metrics`` steps and
prints its CSV. Both read the same files: 26 ground truths on a 104×104×72 1 mm grid (isotropic, as BraTS's own
grid) — 22 multifocal phantoms (2-3 tumours and 2-4 satellites each, near and far; some with a resection cavity
labelled 4) with predictions made from them by known mistakes (false-positive specks of 5, 15, 30 and 80 voxels:
either side of the metastasis challenge's 20 mm³ and of BraTS 2023's 50-voxel thresholds; a missed lesion or core;
a lesion split by a 2- or 8-voxel cut (one lesion, and two, under BraTS 2023's dilation); boundaries grown,
shrunk or shifted; NETC/ET swapped, NETC called RC), an empty prediction, an empty truth, both empty, and a
truth without a prediction (the official 373 penalty row). Every column of every row (cases, then mean, std,
median) must agree to 4 decimals; empty fields (NaN) and ``inf`` must agree exactly. Skips, saying why, where
the oracle venv is absent.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app
from seg_edge.synth import make_phantom
from seg_edge.synth.perturb import add_speck, empty_like, remove_lesion, shift_boundary, split_lesion, swap_labels

ROOT = Path(__file__).resolve().parents[2]
ORACLE_PY = Path(os.environ.get("SEG_EDGE_BRATS_EVAL_PYTHON", ROOT / ".venv-brats-eval" / "bin" / "python"))
RUNNER = ROOT / "tools" / "brats_eval_oracle.py"
SHAPE = (104, 104, 72)
SEED = 2500
N_MULTIFOCAL = 22
SPECKS = (5, 15, 30, 80)  # voxels (= mm³ here): below/above 20 (mets), below/above 50 (BraTS 2023 glioma)
TOLERANCE = 5e-5  # "equal to 4 decimals"


@pytest.fixture(scope="module")
def oracle_python() -> Path:
    """The oracle venv's python, or a skip naming how to make it."""
    if not ORACLE_PY.is_file() or subprocess.run([str(ORACLE_PY), "-c", "import brats_evaluation"],
                                                 capture_output=True).returncode != 0:
        pytest.skip(f"no brats-evaluation at {ORACLE_PY} (make install-brats-eval, or set SEG_EDGE_BRATS_EVAL_PYTHON)")
    return ORACLE_PY


def _prediction(truth: np.ndarray, i: int, rng: np.random.Generator) -> np.ndarray:
    """Case ``i``'s prediction: one or two known mistakes by ``i % 8``, and a speck of ``SPECKS[i % 4]`` voxels."""
    kind = i % 8
    p = truth.copy()
    if kind == 0:
        p = shift_boundary(p, rng, mode="grow")
    elif kind == 1:
        p = remove_lesion(p, rng, region=(1, 3))  # a core missed, its oedema kept
    elif kind == 2:
        p = split_lesion(p, rng, gap=2)
    elif kind == 3:
        p = split_lesion(p, rng, gap=8)
    elif kind == 4:
        p = swap_labels(shift_boundary(p, rng, mode="shift"), rng, pairs=((1, 3),))
    elif kind == 5:
        p = add_speck(shift_boundary(p, rng, mode="shrink"), rng, voxels=30, label=1)
    elif kind == 6:
        p = swap_labels(remove_lesion(p, rng), rng, pairs=((1, 4),))  # a lesion missed, NETC called RC
    else:
        p = remove_lesion(p, rng, region=(3,))
    return add_speck(p, rng, voxels=SPECKS[i % 4], label=3 if i % 2 else 2)


def _pairs(n_multifocal: int, shape: tuple[int, int, int] = SHAPE) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(truth, prediction) label maps: the multifocal cases, then the edge cases (prediction None: missing)."""
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for i in range(n_multifocal):
        phantom = make_phantom(np.random.default_rng([SEED, i]), shape, 3, tumours=2 + i % 2, satellites=2 + i % 3)
        rng = np.random.default_rng([SEED, i, 1])
        truth = phantom.labels
        if i % 5 == 4:  # a resection cavity in the truth: one lesion's NETC labelled 4
            truth = swap_labels(truth, rng, pairs=((1, 4),))
        out.append((truth, _prediction(truth, i, rng)))
    base = out[0][0]
    rng = np.random.default_rng([SEED, 99])
    out.append((base, empty_like(base)))  # empty prediction
    out.append((empty_like(base), add_speck(empty_like(base), rng, voxels=30, label=3)))  # empty truth
    out.append((empty_like(base), empty_like(base)))  # both empty
    out.append((out[1][0], None))  # no prediction for this truth
    return out


def _save(labels: np.ndarray, path: Path, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
    img = nib.Nifti1Image(labels.astype(np.uint8), np.diag([*spacing, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, path)


def _write(root: Path, pairs: list[tuple[np.ndarray, np.ndarray | None]],
           spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[Path, Path]:
    """Flat folders in the challenges' naming: truth/BraTS-GLI-0NNNN-000-seg.nii.gz, pred/BraTS-GLI-0NNNN-000.nii.gz."""
    pred_dir, truth_dir = root / "pred", root / "truth"
    pred_dir.mkdir(parents=True)
    truth_dir.mkdir(parents=True)
    for i, (truth, pred) in enumerate(pairs):
        name = f"BraTS-GLI-{i:05d}-000"
        _save(truth, truth_dir / f"{name}-seg.nii.gz", spacing)
        if pred is not None:
            _save(pred, pred_dir / f"{name}.nii.gz", spacing)
    return pred_dir, truth_dir


@pytest.fixture(scope="module")
def challenge_files(tmp_path_factory) -> tuple[Path, Path]:
    return _write(tmp_path_factory.mktemp("challenge_oracle"), _pairs(N_MULTIFOCAL))


def _read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    return header, {row[0]: dict(zip(header, row)) for row in rows[1:]}


def _agree(ours: str, official: str) -> bool:
    if ours == "" or official == "":
        return ours == official
    a, b = float(ours), float(official)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= TOLERANCE


def _run_oracle(python: Path, challenge: str, pred: Path, truth: Path, out: Path, *extra: str) -> Path:
    ran = subprocess.run([str(python), str(RUNNER), "--challenge", challenge, str(pred), str(truth),
                          "--csv", str(out), "--json", str(out.with_suffix(".json")), *extra],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def official(oracle_python, challenge_files, tmp_path_factory):
    """challenge → the oracle's CSV path, run once per challenge for the module."""
    done: dict[str, Path] = {}

    def run(challenge: str) -> Path:
        if challenge not in done:
            out = tmp_path_factory.mktemp(f"official_{challenge}") / "official.csv"
            done[challenge] = _run_oracle(oracle_python, challenge, *challenge_files, out)
        return done[challenge]
    return run


def _ours(challenge: str, pred: Path, truth: Path, out: Path) -> Path:
    result = CliRunner().invoke(app, ["evaluate", str(pred), str(truth), "--challenge", challenge, "--csv", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _differences(ours_csv: Path, official_csv: Path) -> list[tuple[str, str, str, str]]:
    """(row, column, ours, official) for every cell that differs; the headers and row ids must be the same."""
    official_header, reference = _read_csv(official_csv)
    header, ours = _read_csv(ours_csv)
    assert header == official_header
    assert list(ours) == list(reference)
    return [(row, col, ours[row][col], reference[row][col])
            for row in reference for col in header[1:] if not _agree(ours[row][col], reference[row][col])]


@pytest.mark.parametrize("challenge", ["gli", "mets"])
def test_every_figure_equals_the_official_evaluation(challenge, official, challenge_files, tmp_path):
    reference = official(challenge)
    differ = _differences(_ours(challenge, *challenge_files, tmp_path / "ours.csv"), reference)
    assert len(_read_csv(reference)[1]) == N_MULTIFOCAL + 4 + 3  # cases, the missing one, mean/std/median
    assert not differ, f"{len(differ)} figures differ, e.g.\n" + "\n".join(
        f"{row} {col}: ours {a!r}, official {b!r}" for row, col, a, b in differ[:25])


@pytest.mark.slow
@pytest.mark.parametrize("challenge", ["gli", "mets"])
def test_full_size_cases_equal_the_official_evaluation(challenge, oracle_python, tmp_path):
    """The same comparison on BraTS's own 240 x 240 x 155 grid: 8 multifocal cases (the first 8 mistakes) and the
    edge cases (2 min of CPU; 10 min wall on the shared 2-core machine)."""
    files = _write(tmp_path / "files", _pairs(8, (240, 240, 155)))
    differ = _differences(_ours(challenge, *files, tmp_path / "ours.csv"),
                          _run_oracle(oracle_python, challenge, *files, tmp_path / "official.csv"))
    assert not differ, f"{len(differ)} figures differ, e.g. {differ[:10]}"


# The other challenges' label sets, from the glioma cases: men and goat know no RC (4 → background), men-rt one
# label (GTV: the whole tumour); ped's labels are other names for the same numbers (1 ET, 2 NETC, 3 CC, 4 ED).
RELABEL = {"ped": None, "men": {4: 0}, "goat": {4: 0}, "men-rt": {1: 1, 2: 1, 3: 1, 4: 1}}


@pytest.mark.slow
@pytest.mark.parametrize("challenge", sorted(RELABEL))
def test_the_other_challenges_equal_the_official_evaluation(challenge, oracle_python, tmp_path):
    """The comparison for ped, men, men-rt and goat on the same 26 cases in each challenge's label set."""
    mapping = RELABEL[challenge]
    pairs = _pairs(N_MULTIFOCAL)
    if mapping is not None:
        lut = np.arange(256, dtype=np.uint8)
        for old, new in mapping.items():
            lut[old] = new
        pairs = [(lut[t], None if p is None else lut[p]) for t, p in pairs]
    files = _write(tmp_path / "files", pairs)
    differ = _differences(_ours(challenge, *files, tmp_path / "ours.csv"),
                          _run_oracle(oracle_python, challenge, *files, tmp_path / "official.csv"))
    assert not differ, f"{len(differ)} figures differ, e.g. {differ[:10]}"


ANISOTROPIC = (0.8, 1.0, 1.5)  # mm; a voxel is 1.2 mm³, so the 15- and 20-voxel specks sit either side of 20 mm³


@pytest.fixture(scope="module")
def anisotropic_files(tmp_path_factory) -> tuple[Path, Path]:
    """4 multifocal cases and the edge cases on 0.8 x 1.0 x 1.5 mm voxels."""
    return _write(tmp_path_factory.mktemp("anisotropic"), _pairs(4), spacing=ANISOTROPIC)


@pytest.mark.parametrize("challenge", ["gli", "mets"])
def test_anisotropic_voxels_equal_the_official_definitions_with_the_spacing_on_the_right_axes(
        challenge, oracle_python, anisotropic_files, tmp_path):
    """Every figure equals the package's own evaluator given (x, y, z) arrays with their spacing (the runner's
    --physical-spacing): per-lesion HD95 and NSD in mm, the metastasis size split in mm³."""
    ours = _ours(challenge, *anisotropic_files, tmp_path / "ours.csv")
    physical = _run_oracle(oracle_python, challenge, *anisotropic_files, tmp_path / "physical.csv",
                           "--physical-spacing")
    differ = _differences(ours, physical)
    assert not differ, f"{len(differ)} figures differ, e.g. {differ[:10]}"


def test_the_package_as_published_mixes_the_axes_on_anisotropic_voxels(oracle_python, anisotropic_files, tmp_path):
    """What the docs say of the package: through file paths it reads (z, y, x) arrays with (x, y, z) spacing, so
    on anisotropic voxels its lesion-wise HD95/NSD differ from seg-edge's — and nothing else does (its global
    HD95/NSD ignore the spacing either way, as seg-edge's do to match)."""
    ours = _ours("gli", *anisotropic_files, tmp_path / "ours.csv")
    as_published = _differences(ours, _run_oracle(oracle_python, "gli", *anisotropic_files, tmp_path / "plain.csv"))
    assert as_published
    assert {col.rsplit("_", 1)[0] for _, col, _, _ in as_published} <= {
        "lesionwise_hd95_mean", "lesionwise_hd95_std", "lesionwise_nsd_mean", "lesionwise_nsd_std"}


def test_the_cases_hold_what_the_comparison_needs(challenge_files):
    """Guards the comparison's reach: several lesions per truth, specks either side of both thresholds, misses,
    splits, a resection cavity, the four edge cases; a comparison on easier cases could agree by luck."""
    from seg_edge.synth.perturb import lesions

    pred_dir, truth_dir = challenge_files
    counts, rc = [], 0
    for i in range(N_MULTIFOCAL):
        truth = np.asarray(nib.load(truth_dir / f"BraTS-GLI-{i:05d}-000-seg.nii.gz").dataobj)
        counts.append(lesions(truth, (1, 3))[1])
        rc += int((truth == 4).any())
    assert min(counts) >= 3, counts  # main tumour + foci + satellites, as tumour cores
    assert rc >= 3
    assert not (pred_dir / f"BraTS-GLI-{N_MULTIFOCAL + 3:05d}-000.nii.gz").exists()
    empty_pred = np.asarray(nib.load(pred_dir / f"BraTS-GLI-{N_MULTIFOCAL:05d}-000.nii.gz").dataobj)
    assert not empty_pred.any()


def test_the_oracle_reports_the_official_columns(official):
    """The runner gives the package's own CSV: per region of the gli config, the 15 columns of its seg parser,
    one row per case and the missing one, and mean/std/median; a missing prediction gets its 373 row."""
    header, rows = _read_csv(official("gli"))
    regions = ("snfh", "et", "netc", "rc", "tc", "wt")
    assert len(header) == 1 + 15 * len(regions)
    assert [h[len("all_instance_tp_"):] for h in header if h.startswith("all_instance_tp_")] == list(regions)
    missing = rows[f"BraTS-GLI-{N_MULTIFOCAL + 3:05d}-000-seg.nii.gz"]
    assert float(missing["global_hd95_wt"]) == 373 and float(missing["global_dsc_wt"]) == 0
    assert list(rows)[-3:] == ["mean", "std", "median"]


if __name__ == "__main__":  # write the files for a look by hand: python tests/.../test_challenge_oracle.py DIR
    target = Path(sys.argv[1])
    for sub in ("pred", "truth"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for k, (t, p) in enumerate(_pairs(N_MULTIFOCAL)):
        _save(t, target / "truth" / f"BraTS-GLI-{k:05d}-000-seg.nii.gz")
        if p is not None:
            _save(p, target / "pred" / f"BraTS-GLI-{k:05d}-000.nii.gz")
