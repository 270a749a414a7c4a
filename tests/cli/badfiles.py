"""Shared pieces of the bad-input corpus: the ``Spec`` of one bad invocation, the registries,
builders of defective files (every one made here from the fixture case with numpy, nibabel,
gzip and struct byte edits: nothing binary is committed), and the checks every case runs.

The promise under test (README): bad input gives ONE line on stderr that starts with its label
and names the culprit and what was expected, exit code 2 (3 for a backend that cannot load),
no traceback, nothing on stdout, and nothing created or changed in the output location
(folders included).
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from seg_edge.cli.app import app

MODALITIES = ("flair", "t1", "t1ce", "t2")
CARD_KEY = "seg_edge.card"
PROCESS_TIMEOUT_S = 120
PROCESS_MEMORY_LIMIT = 3 << 30  # address space of a subprocess case: an absurd allocation fails, not the host

runner = CliRunner()


@dataclass
class Spec:
    """One bad invocation: its arguments and what the single error line must contain.

    Each entry of ``expect`` is a substring of the line, or a tuple of alternatives of which
    one must be in it.
    """

    args: list[str]
    expect: list[str | tuple[str, ...]]  # the culprit and what was expected
    label: str = "input error"  # the line's prefix
    code: int = 2
    model: Path | None = None  # default: the fixture model
    command: str = "predict"  # predict gets --model (and --out unless given); other commands nothing
    process: bool = False  # run the console script in a subprocess (a FIFO read would block the test run)


def registry(cases: list) -> Callable[..., Callable]:
    """``@case(name, *marks)`` decorator that appends a builder to ``cases`` as a pytest param."""

    def case(name: str, *marks):
        def register(fn):
            if any(p.id == name for p in cases):
                raise ValueError(f"duplicate bad-input case {name!r}")
            cases.append(pytest.param(fn, id=name, marks=marks))
            return fn
        return register

    return case


# ----------------------------------------------------------------------------- case files

def copy_case(tmp: Path, case: Path, name: str = "case") -> tuple[Path, dict[str, Path]]:
    """The fixture case's four modalities (no seg) copied into ``tmp/name`` under a new id."""
    folder = tmp / name
    folder.mkdir()
    files = {}
    for m in MODALITIES:
        files[m] = folder / f"{name}_{m}.nii.gz"
        shutil.copyfile(case / f"{case.name}_{m}.nii.gz", files[m])
    return folder, files


def explicit_args(files: dict[str, Path], modalities: Sequence[str] = MODALITIES) -> list[str]:
    return [a for m in modalities for a in (f"--{m}", str(files[m]))]


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def stack4d(files: dict[str, Path], order, path: Path) -> Path:
    vols = [load(files[m])[0] for m in order]
    return save(np.stack(vols, axis=-1), load(files[order[0]])[1], path)


def replace(files: dict[str, Path], modality: str, fn: Callable[[np.ndarray, np.ndarray], tuple]) -> Path:
    """Rewrite one modality file with ``fn(data, affine) -> (data, affine)``."""
    data, affine = fn(*load(files[modality]))
    return save(data, affine, files[modality])


def labels_file(src: Path, path: Path, fn: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """The fixture case's ground truth saved at ``path``, optionally changed by ``fn``."""
    seg = nib.load(str(src / f"{src.name}_seg.nii.gz"))
    data = np.asanyarray(seg.dataobj)
    return save(fn(data) if fn else data, seg.affine, path)


# ----------------------------------------------------------------------------- raw NIfTI-1 bytes

# name → (byte offset, struct code, count) in a NIfTI-1 header (little-endian, as nibabel writes)
NIFTI1_FIELDS = {
    "sizeof_hdr": (0, "i", 1),
    "dim": (40, "h", 8),
    "datatype": (70, "h", 1),
    "bitpix": (72, "h", 1),
    "pixdim": (76, "f", 8),
    "vox_offset": (108, "f", 1),
    "scl_slope": (112, "f", 1),
    "scl_inter": (116, "f", 1),
    "qform_code": (252, "h", 1),
    "sform_code": (254, "h", 1),
    "quatern": (256, "f", 3),  # b, c, d
    "qoffset": (268, "f", 3),  # x, y, z
    "srow_x": (280, "f", 4),
    "srow_y": (296, "f", 4),
    "srow_z": (312, "f", 4),
}


def is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def nifti_bytes(path: Path) -> bytearray:
    """The uncompressed bytes of a NIfTI file (header + data)."""
    raw = path.read_bytes()
    return bytearray(gzip.decompress(raw) if is_gz(path) else raw)


def write_nifti_bytes(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(bytes(raw), mtime=0) if is_gz(path) else bytes(raw))
    return path


def header_field(raw: bytes, name: str) -> tuple:
    offset, code, count = NIFTI1_FIELDS[name]
    return struct.unpack_from(f"<{count}{code}", raw, offset)


def set_field(raw: bytearray, name: str, value) -> None:
    """Set a whole field (a sequence of its length) or items of it ({index: value}, or a scalar
    for index 0) in a raw NIfTI-1 header."""
    offset, code, count = NIFTI1_FIELDS[name]
    values = list(header_field(raw, name))
    if isinstance(value, dict):
        for i, v in value.items():
            values[i] = v
    elif isinstance(value, (list, tuple)):
        assert len(value) == count, (name, value)
        values = list(value)
    else:
        values[0] = value
    struct.pack_into(f"<{count}{code}", raw, offset, *values)


def patch_header(path: Path, **fields) -> Path:
    """Rewrite raw header fields of a NIfTI-1 file in place (also values nibabel refuses to
    write): ``patch_header(p, dim=[3, 1280, 1280, 1280, 1, 1, 1, 1], pixdim={2: 0.0})``."""
    raw = nifti_bytes(path)
    assert header_field(raw, "sizeof_hdr") == (348,), f"{path} is not a little-endian NIfTI-1 file"
    for name, value in fields.items():
        set_field(raw, name, value)
    return write_nifti_bytes(path, raw)


def decompress_to_nii(path: Path) -> Path:
    """Replace ``x.nii.gz`` by the uncompressed ``x.nii``; returns the new path."""
    out = path.with_name(path.name[: -len(".gz")])
    out.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return out


def gzip_stored(raw: bytes) -> bytes:
    """A gzip stream of stored (level 0) deflate blocks: its payload holds ``raw`` verbatim."""
    co = zlib.compressobj(0, zlib.DEFLATED, 31)
    return co.compress(raw) + co.flush()


def flip_stored(raw: bytes, offset: int) -> bytes:
    """``raw`` as stored-block gzip with the low bit of byte ``offset`` flipped in the payload:
    the deflate stream still decodes, to data whose CRC-32 does not match the trailer's."""
    stream = bytearray(gzip_stored(raw))
    for before in range(32, offset + 1, 32):  # the shortest window around the byte that occurs once
        window = raw[max(offset - before, 0): offset + 32]
        if stream.count(window) == 1:
            break
    else:
        raise AssertionError(f"no unique bytes around offset {offset} (a stored-block boundary?)")
    stream[stream.find(window) + min(before, offset)] ^= 0x01
    return bytes(stream)


# ----------------------------------------------------------------------------- model files

def identity_onnx(path: Path, metadata: dict[str, str] | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    shape = [1, 5, None, None, None]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "plain",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if metadata:
        helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    return path


def card_of(model: Path) -> dict:
    """The card ``model`` stores, as a schema-2 dict (a schema-1 card is migrated as seg-edge reads it)."""
    import onnx

    from seg_edge.card import ModelCard

    proto = onnx.load(str(model), load_external_data=False)
    raw = json.loads(next(p.value for p in proto.metadata_props if p.key == CARD_KEY))
    if raw.get("schema", 1) == 1:
        raw = json.loads(ModelCard.from_json(json.dumps(raw), str(model)).to_json())
    return raw


def with_card(model: Path, path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of ``model`` (graph and weights unchanged) storing its schema-2 card as ``edit`` changed it."""
    import onnx

    card = card_of(model)
    edit(card)
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            prop.value = json.dumps(card)
            break
    else:
        raise AssertionError(f"{model} has no {CARD_KEY}")
    onnx.save(proto, str(path))
    return path


# ----------------------------------------------------------------------------- checks

def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: folders, hidden files, links (not followed) and special files
    (never opened: a FIFO would block), files with their bytes."""
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                entries[rel] = ("folder",)
            elif stat.S_ISREG(mode):
                entries[rel] = ("file", path.read_bytes())
            else:
                entries[rel] = ("special", stat.S_IFMT(mode))
    return entries


def console_script() -> Path:
    exe = Path(sys.executable).parent / "seg-edge"
    if not exe.is_file():
        pytest.skip("the seg-edge console script is not installed beside this interpreter")
    return exe


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (PROCESS_MEMORY_LIMIT, PROCESS_MEMORY_LIMIT))


def run_process(args: list[str], cwd: Path):
    """The console script with ``args`` (time- and memory-limited), as a CliRunner-like result."""
    try:
        proc = subprocess.run([str(console_script()), *args], capture_output=True, text=True, cwd=cwd,
                              timeout=PROCESS_TIMEOUT_S, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"seg-edge {' '.join(args)} still running after {PROCESS_TIMEOUT_S} s "
                    f"(blocked reading a FIFO or device?)\nstderr so far:\n{exc.stderr}")
    return SimpleNamespace(exit_code=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                           output=proc.stdout + proc.stderr, exception=None)


def invoke(spec: Spec, tmp: Path, model: Path, *pre: str):
    args = [spec.command, *spec.args]
    if spec.command == "predict":
        args += ["--model", str(spec.model or model)]
        if "--out" not in spec.args and "-o" not in spec.args:
            args += ["--out", str(tmp / "out")]
    if spec.process:
        return run_process([*pre, *args], cwd=tmp)
    return runner.invoke(app, [*pre, *args])


def assert_one_line_error(result, spec: Spec) -> str:
    assert result.exit_code == spec.code, (f"exit {result.exit_code} (expected {spec.code})\n{result.output}"
                                           f"\nexception: {result.exception!r}")
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"exception escaped the CLI: {result.exception!r}"
    assert "Traceback" not in result.output
    assert result.stdout.strip() == "", f"stdout should be empty:\n{result.stdout}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith(f"{spec.label}: "), line
    for text in spec.expect:
        options = text if isinstance(text, tuple) else (text,)
        assert any(t in line for t in options), f"{' or '.join(map(repr, options))} not in the error line:\n{line}"
    return line


def check_bad_input(build, tmp: Path, case_dir: Path, model: Path) -> None:
    """Build one bad input, run it, and check the line, the exit code and that ``tmp`` is unchanged."""
    spec = build(tmp, case_dir, model)
    before = snapshot(tmp)
    try:
        result = invoke(spec, tmp, model)
    finally:
        for dirpath, _, _ in os.walk(tmp):  # let pytest clean up read-only folders
            os.chmod(dirpath, 0o700)
    assert_one_line_error(result, spec)
    after = snapshot(tmp)
    appeared, vanished = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    assert not appeared and not vanished, f"appeared: {appeared}; vanished: {vanished}"
    changed = [name for name in before if after[name] != before[name]]
    assert changed == [], f"changed: {changed}"
