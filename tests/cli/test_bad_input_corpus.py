"""The bad-input corpus of issue 10: every class of defect a scan, a model or an option can have.

Each builder ``(tmp, src_case_dir, model) -> Spec`` makes one real, different defect from the
fixture case (byte edits with gzip/struct where nibabel refuses to write the value) and says
what the single error line must contain. The check (``badfiles.check_bad_input``) is the one
``test_bad_input.py`` runs: exit 2 (3), one line with its label, the culprit and a keyword, no
traceback, empty stdout, and nothing created or changed under ``tmp`` (folders included).

The positive controls at the end (not counted in the corpus) keep the checks honest: unusual
but valid input (NIfTI-2, other voxel types, an upper-case output suffix) must still work.
"""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from badfiles import (MODALITIES, Spec, check_bad_input, copy_case, decompress_to_nii, explicit_args, flip_stored,
                      labels_file, load, nifti_bytes, patch_header, registry, replace, runner, save, stack4d,
                      with_card)
from seg_edge.cli.app import app

CORPUS: list = []
case = registry(CORPUS)

NAN, INF = float("nan"), float("inf")
CORRUPT = "corrupt"
SHORT = ("declares", "truncated")  # data shorter than the header says


# ----------------------------------------------------------------------------- corrupt gzip streams

@case("gz-crc-mismatch")
def _(tmp, src, model):
    """Stored deflate blocks with one payload byte flipped: the stream decodes, its CRC-32 does not match."""
    folder, files = copy_case(tmp, src)
    centre = 352 + 2 * (32 + 64 * (36 + 72 * 24))  # voxel (32, 36, 24), inside the brain
    files["flair"].write_bytes(flip_stored(bytes(nifti_bytes(files["flair"])), centre))  # int16 low byte
    return Spec([str(folder)], [str(files["flair"]), CORRUPT])


@case("gz-bytes-flipped")
def _(tmp, src, model):
    """Bytes flipped in the middle of a compressed (deflate) stream."""
    folder, files = copy_case(tmp, src)
    stream = bytearray(files["t1"].read_bytes())
    mid = len(stream) // 2
    for i in range(mid, mid + 16, 3):
        stream[i] ^= 0xA5
    files["t1"].write_bytes(stream)
    return Spec([str(folder)], [str(files["t1"]), CORRUPT])


@case("gz-trailer-cut")
def _(tmp, src, model):
    """The 8-byte gzip trailer (CRC-32 and length) cut off: all data there, no end of stream."""
    folder, files = copy_case(tmp, src)
    files["t1ce"].write_bytes(files["t1ce"].read_bytes()[:-8])
    return Spec([str(folder)], [str(files["t1ce"]), CORRUPT])


@case("gz-length-mismatch")
def _(tmp, src, model):
    """The trailer's ISIZE (uncompressed length mod 2**32) does not match the data."""
    folder, files = copy_case(tmp, src)
    stream = bytearray(files["t2"].read_bytes())
    stream[-4:] = (int.from_bytes(stream[-4:], "little") + 2).to_bytes(4, "little")
    files["t2"].write_bytes(stream)
    return Spec([str(folder)], [str(files["t2"]), CORRUPT])


@case("gz-second-member-truncated")
def _(tmp, src, model):
    """A two-member gzip file (as pigz/bgzip write) whose second member stops mid-stream."""
    folder, files = copy_case(tmp, src)
    raw = bytes(nifti_bytes(files["flair"]))
    half = len(raw) // 2
    second = gzip.compress(raw[half:], mtime=0)
    files["flair"].write_bytes(gzip.compress(raw[:half], mtime=0) + second[: len(second) // 2])
    return Spec([str(folder)], [str(files["flair"]), CORRUPT])


@case("gz-of-text")
def _(tmp, src, model):
    """Valid gzip holding text, named like a NIfTI."""
    path = tmp / "scan.nii.gz"
    path.write_bytes(gzip.compress(b"patient scan exported as text\n" * 40, mtime=0))
    return Spec([str(path)], [str(path), "NIfTI"])


@case("empty-file")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    files["t2"].write_bytes(b"")
    return Spec([str(folder)], [str(files["t2"]), ("empty", "0 bytes")])


# ----------------------------------------------------------------------------- sizes the file cannot hold

@case("dims-1280-cubed-in-a-small-gz")
def _(tmp, src, model):
    """A 4 GiB volume declared by a ~42 KB .nii.gz (gzip can shrink at most ~1032:1)."""
    folder, files = copy_case(tmp, src)
    patch_header(files["flair"], dim=[3, 1280, 1280, 1280, 1, 1, 1, 1])
    assert files["flair"].stat().st_size < 100_000
    # in a memory-limited subprocess: reading 4 GiB to find out must fail there, not strain the host
    return Spec([str(folder)], [str(files["flair"]), "declares"], process=True)


@case("dims-32767-cubed-nii")
def _(tmp, src, model):
    """An uncompressed .nii declaring 32767³ voxels (70 TB of int16)."""
    folder, files = copy_case(tmp, src)
    path = patch_header(decompress_to_nii(files["t1"]), dim=[3, 32767, 32767, 32767, 1, 1, 1, 1])
    return Spec([str(folder)], [str(path), "declares"])


@case("nii-data-truncated")
def _(tmp, src, model):
    """Header intact, the voxel data of an uncompressed .nii cut to two thirds."""
    folder, files = copy_case(tmp, src)
    path = decompress_to_nii(files["t1ce"])
    raw = path.read_bytes()
    path.write_bytes(raw[: 352 + (len(raw) - 352) * 2 // 3])
    return Spec([str(folder)], [str(path), SHORT])


@case("vox-offset-past-end")
def _(tmp, src, model):
    """vox_offset points 10 MB into a 0.4 MB file."""
    folder, files = copy_case(tmp, src)
    path = patch_header(decompress_to_nii(files["t2"]), vox_offset=10_000_000.0)
    return Spec([str(folder)], [str(path), SHORT + ("vox_offset",)])


@case("npy-declares-14-tib")
def _(tmp, src, model):
    """A .npy header declaring (4, 10000, 10000, 10000) float32 = 14.5 TiB, followed by 1 KB."""
    path = tmp / "stack.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (4, 10000, 10000, 10000)})
        fh.write(b"\0" * 1024)
    return Spec([str(path)], [str(path), "declares"])


@case("npy-truncated")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    path = tmp / "stack.npy"
    np.save(path, np.stack([load(files[m])[0] for m in MODALITIES]).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return Spec([str(path)], [str(path), SHORT])


# ----------------------------------------------------------------------------- not regular files

@case("fifo-named-stack-npy")
def _(tmp, src, model):
    path = tmp / "stack.npy"
    os.mkfifo(path)
    return Spec([str(path)], [str(path), "not a regular file"], process=True)


@case("fifo-as-flair-in-case-folder")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    files["flair"].unlink()
    os.mkfifo(files["flair"])
    return Spec([str(folder)], [str(files["flair"]), "not a regular file"], process=True)


@case("symlink-to-dev-zero")
def _(tmp, src, model):
    path = tmp / "scan.nii"
    path.symlink_to("/dev/zero")
    return Spec([str(path)], [str(path), "not a regular file"], process=True)


@case("npy-name-on-a-folder")
def _(tmp, src, model):
    path = tmp / "stack.npy"
    path.mkdir()
    return Spec([str(path)], [str(path), ("folder", "directory", "not a regular file")])


@case("explicit-flair-is-a-folder")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    files["flair"].unlink()
    files["flair"].mkdir()
    return Spec(explicit_args(files), [str(files["flair"]), ("not a regular file", "folder")])


@case("case-folder-dangling-link")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    files["t1"].unlink()
    files["t1"].symlink_to(tmp / "moved_away" / "case_t1.nii.gz")
    return Spec([str(folder)], [str(folder), "t1", ("not found", "broken", "dangling", "lacks", "missing")])


# ----------------------------------------------------------------------------- geometry

@case("affine-singular")
def _(tmp, src, model):
    """sform (code 1, no qform) with two equal rows: determinant 0."""
    _, files = copy_case(tmp, src)
    path = patch_header(stack4d(files, MODALITIES, tmp / "four.nii.gz"), qform_code=0, sform_code=1,
                        srow_x=[-1.0, 0.0, 0.0, 0.0], srow_y=[-1.0, 0.0, 0.0, 71.0], srow_z=[0.0, 0.0, 1.0, 0.0])
    return Spec([str(path)], [str(path), "affine"])


@case("affine-nan-in-sform")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    path = patch_header(stack4d(files, MODALITIES, tmp / "four.nii.gz"), qform_code=0, srow_x={3: NAN})
    return Spec([str(path)], [str(path), "affine"])


@case("affine-inf-in-qform")
def _(tmp, src, model):
    """sform unset, the qform's x offset infinite."""
    _, files = copy_case(tmp, src)
    path = patch_header(stack4d(files, MODALITIES, tmp / "four.nii.gz"), sform_code=0, qoffset={0: INF})
    return Spec([str(path)], [str(path), "affine"])


@case("pixdim-nan")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["flair"], pixdim={1: NAN})
    return Spec([str(folder)], [str(files["flair"]), "pixdim"])


@case("pixdim-zero")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["flair"], pixdim={2: 0.0})
    return Spec([str(folder)], [str(files["flair"]), "pixdim"])


@case("pixdim-negative")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["flair"], pixdim={3: -1.0})
    return Spec([str(folder)], [str(files["flair"]), "pixdim"])


# ----------------------------------------------------------------------------- intensity scaling

@case("scl-slope-inf")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["flair"], scl_slope=INF)
    return Spec([str(folder)], [str(files["flair"]), "scl_"])


@case("scl-slope-minus-inf")
def _(tmp, src, model):
    # (a NaN slope is not a defect: nibabel writes NaN/NaN for "no scaling", and the NIfTI rule ignores it)
    folder, files = copy_case(tmp, src)
    patch_header(files["t1"], scl_slope=-np.inf)
    return Spec([str(folder)], [str(files["t1"]), "scl_"])


@case("scl-inter-inf")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["t1ce"], scl_slope=1.0, scl_inter=-INF)
    return Spec([str(folder)], [str(files["t1ce"]), "scl_"])


@case("scl-inter-nan")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["t2"], scl_slope=2.0, scl_inter=NAN)
    return Spec([str(folder)], [str(files["t2"]), "scl_"])


# ----------------------------------------------------------------------------- dimensions

@case("dim0-is-9")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["flair"], dim={0: 9})  # little-endian like the rest of the header: it is 9, not 2304
    return Spec([str(folder)], [str(files["flair"]), "dim", ("dim[0]=9", "dim[0] = 9", "dim[0] 9", "dim[0] is 9")])


@case("dim0-is-0")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["t1"], dim={0: 0})
    return Spec([str(folder)], [str(files["t1"]), "dim", ("dim[0]=0", "dim[0] = 0", "dim[0] 0", "dim[0] is 0")])


@case("dim-zero-extent")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["t1ce"], dim={3: 0})
    return Spec([str(folder)], [str(files["t1ce"]), "dim"])


@case("dim-negative-extent")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["t2"], dim={2: -72})
    return Spec([str(folder)], [str(files["t2"]), "dim"])


@case("single-3d-file-as-input")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    return Spec([str(files["flair"])], [str(files["flair"]), "3D", "expected 4D"])


@case("4d-with-2-volumes")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    path = stack4d(files, ("flair", "t1"), tmp / "two.nii.gz")
    return Spec([str(path)], [str(path), "2 volumes", "expected 4"])


@case("4d-volumes-along-5th-dim")
def _(tmp, src, model):
    """The four modalities along dim 5 (X, Y, Z, 1, 4), as vector-valued NIfTI stores them."""
    _, files = copy_case(tmp, src)
    vols = np.stack([load(files[m])[0] for m in MODALITIES], axis=-1)[:, :, :, None, :]
    path = save(vols, load(files["flair"])[1], tmp / "vector.nii.gz")
    return Spec([str(path)], [str(path), "5D"])


# ----------------------------------------------------------------------------- voxel types

@case("datatype-unknown-code")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    patch_header(files["flair"], datatype=9999)
    return Spec([str(folder)], [str(files["flair"]), ("datatype", "data type", "data code")])


def _with_structured(files, modality, dtype):
    data, affine = load(files[modality])
    scaled = (np.clip(data, 0, None) * (255.0 / max(int(data.max()), 1))).astype(np.uint8)
    rgb = np.zeros(data.shape, dtype=dtype)
    for name in dtype.names:
        rgb[name] = scaled
    return save(rgb, affine, files[modality])


@case("rgb24-data")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    path = _with_structured(files, "t1", np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]))
    return Spec([str(folder)], [str(path), "RGB"])


@case("rgba32-data")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    path = _with_structured(files, "t1ce", np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")]))
    return Spec([str(folder)], [str(path), "RGB"])


@case("complex64-data")
def _(tmp, src, model):
    folder, files = copy_case(tmp, src)
    path = replace(files, "t2", lambda d, a: (d.astype(np.complex64) * (1 + 1j), a))
    return Spec([str(folder)], [str(path), "complex"])


# ----------------------------------------------------------------------------- folders and stacks

@case("case-folder-with-derivatives-missing-t1ce")
def _(tmp, src, model):
    """A case folder with a subfolder is still one case: its missing modality is the error, not a batch."""
    folder, files = copy_case(tmp, src)
    (folder / "derivatives").mkdir()
    (folder / "derivatives" / "notes.txt").write_text("skull-stripped with tool X\n")
    files["t1ce"].unlink()
    return Spec([str(folder)], [str(folder), "t1ce"])


@case("case-folder-two-flair-files")
def _(tmp, src, model):
    """flair both as .nii.gz and, decompressed beside it, as .nii."""
    folder, files = copy_case(tmp, src)
    (folder / "case_flair.nii").write_bytes(bytes(nifti_bytes(files["flair"])))
    return Spec([str(folder)], [str(folder), "flair"])


@case("npy-one-channel-all-zero")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    stack = np.stack([load(files[m])[0] for m in MODALITIES]).astype(np.float32)
    stack[2] = 0
    path = tmp / "stack.npy"
    np.save(path, stack)
    return Spec([str(path)], [str(path), "all zero"])


@case("batch-with-output-file-name")
def _(tmp, src, model):
    batch = tmp / "batch"
    batch.mkdir()
    copy_case(batch, src, "a")
    copy_case(batch, src, "b")
    out = tmp / "preds.nii.gz"
    return Spec([str(batch), "--out", str(out)], [str(out), "folder"])


# ----------------------------------------------------------------------------- model files

@case("model-is-a-folder")
def _(tmp, src, model):
    path = tmp / "models"
    path.mkdir()
    return Spec([str(src)], [str(path), "folder"], label="model error", model=path)


@case("card-size-divisor-0")
def _(tmp, src, model):
    path = with_card(model, tmp / "m.onnx", lambda c: c["inference"].update(size_divisor=0))
    return Spec([str(src)], [str(path), "inference.size_divisor"], label="model error", model=path)


@case("card-schema-a-string")
def _(tmp, src, model):
    path = with_card(model, tmp / "m.onnx", lambda c: c.update(schema="2"))
    return Spec([str(src)], [str(path), "schema"], label="model error", model=path)


@case("card-input-name-not-in-graph")
def _(tmp, src, model):
    path = with_card(model, tmp / "m.onnx", lambda c: c["inputs"].update(tensor="volume_in"))
    return Spec([str(src)], [str(path), "inputs.tensor", "volume_in"], label="model error", model=path)


@case("card-channels-disagree-with-graph")
def _(tmp, src, model):
    """The card drops the mask channel (4 inputs); the graph takes 5 channels."""
    def drop_mask(card):
        card["inputs"]["channels"] = [c for c in card["inputs"]["channels"] if not c.get("derived")]
    path = with_card(model, tmp / "m.onnx", drop_mask)
    return Spec([str(src)], [str(path), "channel"], label="model error", model=path)


@case("card-order-region-not-an-output")
def _(tmp, src, model):
    """outputs.order paints a region the outputs do not have (a typo: 'EH' for 'ET')."""
    path = with_card(model, tmp / "m.onnx", lambda c: c["outputs"].update(order=[["WT", "ED"], ["TC", "NCR"],
                                                                                 ["EH", "ET"]]))
    return Spec([str(src)], [str(path), "outputs.order", "EH"], label="model error", model=path)


@case("card-softmax-classes-not-distinct")
def _(tmp, src, model):
    """A softmax card whose three classes name ET twice: two arg-max indices would mean one label."""
    path = with_card(model, tmp / "m.onnx", lambda c: c["outputs"].update(kind="softmax",
                                                                          channels=["background", "ET", "ET"]))
    return Spec([str(src)], [str(path), "outputs.channels", "distinct"], label="model error", model=path)


@case("card-2d-without-slice")
def _(tmp, src, model):
    """A card saying the network is 2D, with a 2D patch, but no slice spec (axis, size)."""
    def flatten(card):
        card["inputs"].update(spatial_dims=2, slice=None)
        card["inference"]["patch_size"] = card["inference"]["patch_size"][:2]
    path = with_card(model, tmp / "m.onnx", flatten)
    return Spec([str(src)], [str(path), "inputs.slice", "2D"], label="model error", model=path)


# ----------------------------------------------------------------------------- options

@case("modalities-for-a-case-folder")
def _(tmp, src, model):
    return Spec([str(src), "--modalities", "t1,t1ce,t2,flair"], ["--modalities"])


@case("modalities-for-explicit-files")
def _(tmp, src, model):
    _, files = copy_case(tmp, src)
    return Spec([*explicit_args(files), "--modalities", "t1,t1ce,t2,flair"], ["--modalities"])


@case("batch-size-0")
def _(tmp, src, model):
    return Spec([str(src), "--batch-size", "0"], ["--batch-size"])


@case("threads-0")
def _(tmp, src, model):
    return Spec([str(src), "--threads", "0"], ["--threads"])


@case("threads-negative")
def _(tmp, src, model):
    return Spec([str(src), "--threads", "-1"], ["--threads"])


@case("overlap-negative")
def _(tmp, src, model):
    return Spec([str(src), "--overlap", "-0.1"], ["--overlap"])


@case("overlap-1")
def _(tmp, src, model):
    return Spec([str(src), "--overlap", "1"], ["--overlap"])


@case("overlap-nan")
def _(tmp, src, model):
    return Spec([str(src), "--overlap", "nan"], ["--overlap"])


# ----------------------------------------------------------------------------- output naming

@case("out-png")
def _(tmp, src, model):
    out = tmp / "result.png"
    return Spec([str(src), "--out", str(out)], [str(out), ".nii.gz"])


@case("out-is-a-folder-named-nii-gz")
def _(tmp, src, model):
    out = tmp / "x.nii.gz"
    out.mkdir()
    return Spec([str(src), "--out", str(out)], [str(out), "folder"])


@case("out-report-exists-label-map-missing")
def _(tmp, src, model):
    out = tmp / "preds" / "r.nii.gz"
    out.parent.mkdir()
    report = out.parent / "r.json"
    report.write_text('{"from": "an earlier run"}\n')
    return Spec([str(src), "--out", str(out)], [str(report), "exists"])


@case("out-probabilities-exist-label-map-missing")
def _(tmp, src, model):
    out = tmp / "preds" / "r.nii.gz"
    out.parent.mkdir()
    probs = out.parent / "r_probabilities.nii.gz"
    probs.write_bytes(b"an earlier run's probabilities")
    return Spec([str(src), "--out", str(out), "--probabilities"], [str(probs), "exists"])


@case("out-folder-is-a-file")
def _(tmp, src, model):
    blocker = tmp / "preds"
    blocker.write_text("a file where the output folder should be\n")
    return Spec([str(src), "--out", str(blocker)], [str(blocker), ("folder", "not a directory")])


@case("out-name-too-long")
def _(tmp, src, model):
    out = tmp / ("a" * 250 + ".nii.gz")  # 257 bytes: over NAME_MAX (255)
    return Spec([str(src), "--out", str(out)], [str(out), "too long"])


@case("out-probabilities-name-too-long")
def _(tmp, src, model):
    """The label map's name fits (247 bytes), its probabilities' name (261) does not."""
    out = tmp / ("b" * 240 + ".nii.gz")
    probs = tmp / ("b" * 240 + "_probabilities.nii.gz")
    return Spec([str(src), "--out", str(out), "--probabilities"], [str(probs), "too long"])


# ----------------------------------------------------------------------------- evaluate

@case("evaluate-csv-into-missing-folder")
def _(tmp, src, model):
    pred, truth = labels_file(src, tmp / "p.nii.gz"), labels_file(src, tmp / "t.nii.gz")
    folder = tmp / "reports"
    return Spec([str(pred), str(truth), "--csv", str(folder / "rows.csv")], [str(folder)], command="evaluate")


@case("evaluate-label-5")
def _(tmp, src, model):
    def five(d):
        d = d.copy()
        d[10, 10, 10] = 5
        return d

    pred, truth = labels_file(src, tmp / "p.nii.gz", five), labels_file(src, tmp / "t.nii.gz")
    return Spec([str(pred), str(truth)], [str(pred), "5", "expected"], command="evaluate")


@case("evaluate-non-integer-labels")
def _(tmp, src, model):
    def half(d):
        d = d.astype(np.float32)
        d[d == 2] = 1.5
        return d

    pred, truth = labels_file(src, tmp / "p.nii.gz"), labels_file(src, tmp / "t.nii.gz", half)
    return Spec([str(pred), str(truth)], [str(truth), "integer"], command="evaluate")


@case("evaluate-truth-crc-mismatch")
def _(tmp, src, model):
    pred, truth = labels_file(src, tmp / "p.nii.gz"), labels_file(src, tmp / "t.nii.gz")
    truth.write_bytes(flip_stored(bytes(nifti_bytes(truth)), 160))  # a byte of the descrip text
    return Spec([str(pred), str(truth)], [str(truth), CORRUPT], command="evaluate")


# ----------------------------------------------------------------------------- the test

@pytest.mark.parametrize("build", CORPUS)
def test_corpus_is_one_line_and_writes_nothing(build, tmp_path, case_dir, edge_onnx):
    check_bad_input(build, tmp_path, case_dir, edge_onnx)


# ----------------------------------------------------------------------------- positive controls

def _ok(result) -> None:
    assert result.exit_code == 0, (f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
                                   f"\nexception: {result.exception!r}")


def _label_map(raw: bytes) -> np.ndarray:
    return np.asanyarray(nib.Nifti1Image.from_bytes(raw).dataobj)


def test_nifti2_case_segments_without_header_chatter(tmp_path, case_dir, edge_onnx):
    folder, files = copy_case(tmp_path, case_dir)
    for m in MODALITIES:
        data, affine = load(files[m])
        img = nib.Nifti2Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, str(files[m]))
        assert nifti_bytes(files[m])[:4] == (540).to_bytes(4, "little")
    out = tmp_path / "out" / "case.nii.gz"
    result = runner.invoke(app, ["predict", str(folder), "--model", str(edge_onnx), "--out", str(out)])
    _ok(result)
    assert "sizeof_hdr" not in result.stderr, result.stderr
    labels = np.asanyarray(nib.load(str(out)).dataobj)
    assert labels.dtype == np.uint8 and labels.shape == load(files["flair"])[0].shape


def test_upper_case_output_suffix_writes_gzip(tmp_path, case_dir, edge_onnx):
    out = tmp_path / "RESULT.NII.GZ"
    result = runner.invoke(app, ["predict", str(case_dir), "--model", str(edge_onnx), "--out", str(out)])
    _ok(result)
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b", f"{out} is not gzip-compressed (starts {raw[:4].hex()})"
    labels = _label_map(gzip.decompress(raw))
    assert labels.dtype == np.uint8 and labels.shape == load(case_dir / f"{case_dir.name}_flair.nii.gz")[0].shape
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    report = tmp_path / "RESULT.json"
    assert json.loads(report.read_text())["case_id"]


def test_other_voxel_types_segment(tmp_path, case_dir, edge_onnx):
    """int16 (as shipped), float64, uint16 and int8 modalities in one case: all valid NIfTI types."""
    folder, files = copy_case(tmp_path, case_dir)
    replace(files, "t1", lambda d, a: (d.astype(np.float64) * 1.25, a))
    replace(files, "t1ce", lambda d, a: (np.clip(d, 0, None).astype(np.uint16), a))
    replace(files, "t2", lambda d, a: ((np.clip(d, 0, None) * (127.0 / max(int(d.max()), 1))).astype(np.int8), a))
    kinds = {m: nib.load(str(files[m])).get_data_dtype() for m in MODALITIES}
    assert kinds == {"flair": np.int16, "t1": np.float64, "t1ce": np.uint16, "t2": np.int8}, kinds
    out = tmp_path / "out" / "case.nii.gz"
    result = runner.invoke(app, ["predict", str(folder), "--model", str(edge_onnx), "--out", str(out)])
    _ok(result)
    labels = np.asanyarray(nib.load(str(out)).dataobj)
    assert labels.dtype == np.uint8 and labels.shape == load(files["flair"])[0].shape


def test_corpus_builders_make_their_defects(tmp_path, case_dir, edge_onnx):
    """A few defects read back independently of seg-edge: the builders do what they say."""
    import zlib

    def build(name):
        sub = tmp_path / name
        sub.mkdir()
        return next(p.values[0] for p in CORPUS if p.id == name)(sub, case_dir, edge_onnx), sub

    _, sub = build("gz-crc-mismatch")
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        gzip.decompress((sub / "case" / "case_flair.nii.gz").read_bytes())
    _, sub = build("gz-trailer-cut")
    with pytest.raises(EOFError):
        gzip.decompress((sub / "case" / "case_t1ce.nii.gz").read_bytes())
    _, sub = build("gz-length-mismatch")
    with pytest.raises(gzip.BadGzipFile, match="length"):
        gzip.decompress((sub / "case" / "case_t2.nii.gz").read_bytes())
    _, sub = build("gz-bytes-flipped")
    with pytest.raises((zlib.error, gzip.BadGzipFile, EOFError)):
        gzip.decompress((sub / "case" / "case_t1.nii.gz").read_bytes())
    _, sub = build("gz-second-member-truncated")
    with pytest.raises(EOFError):
        gzip.decompress((sub / "case" / "case_flair.nii.gz").read_bytes())
    _, sub = build("pixdim-zero")
    raw = nifti_bytes(sub / "case" / "case_flair.nii.gz")
    assert np.frombuffer(bytes(raw[76:108]), "<f4")[2] == 0.0
    _, sub = build("affine-singular")
    assert abs(np.linalg.det(nib.load(str(sub / "four.nii.gz")).affine)) == 0.0
    _, sub = build("rgb24-data")
    assert nib.load(str(sub / "case" / "case_t1.nii.gz")).header["datatype"] == 128
    _, sub = build("rgba32-data")
    assert nib.load(str(sub / "case" / "case_t1ce.nii.gz")).header["datatype"] == 2304
    _, sub = build("complex64-data")
    assert nib.load(str(sub / "case" / "case_t2.nii.gz")).header["datatype"] == 32
    _, sub = build("evaluate-truth-crc-mismatch")
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        gzip.decompress((sub / "t.nii.gz").read_bytes())
