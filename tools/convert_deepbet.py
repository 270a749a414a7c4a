"""Convert deepbet's two TorchScript networks to ONNX for seg_edge.preprocess.skullstrip, once, and check them.

    .venv/bin/python tools/convert_deepbet.py --head /tmp/pydeface/pydeface/data/mean_reg2mean.nii.gz

Needs the dev extra (deepbet, torch, onnx, onnxruntime). ``--head`` is a T1-weighted head with skull (NIfTI); it
defaults to nilearn's MNI152 2009 T1 template (a brain without skull, always in the dev extra); the shipped files
were checked on pydeface's whole-head template (pip install --target /tmp/pydeface --no-deps pydeface).

Writes, into src/seg_edge/assets/skullstrip/ (``--out``), each file through a temporary file and a rename:
  deepbet_bbox.onnx, deepbet_mask.onnx   the networks, FP32, static shapes 1×1×128³ and 1×1×256³, opset 17,
                                         exported by torch's TorchScript exporter (torch.export cannot take a
                                         TorchScript module) with constant folding
  LICENSE.deepbet                        deepbet's MIT licence, from its installed distribution
  PROVENANCE.json, PROVENANCE.md         versions, sha256 of the sources and outputs, this command, and parity:
                                         each network's softmax in ONNX Runtime against torch on the inputs
                                         deepbet's own pipeline gives it for the head, and the brain mask of
                                         seg_edge.preprocess.skullstrip against deepbet's own (Dice)
The export is deterministic for a given torch: running this again writes the same ONNX bytes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np

OPSET = 17
SHAPES = {"bbox": (128, 128, 128), "mask": (256, 256, 256)}
SOURCES = {"bbox": "bbox_model.pt", "mask": "model.pt"}
OUT = Path(__file__).resolve().parent.parent / "src" / "seg_edge" / "assets" / "skullstrip"
NILEARN_T1 = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=Path, help="a T1-weighted head (NIfTI) to check the conversion on")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    head = args.head or _nilearn_template()
    if not head.is_file():
        print(f"{head}: no such file (expected a NIfTI head for --head)", file=sys.stderr)
        return 2
    import torch

    from deepbet.utils import DATA_PATH

    args.out.mkdir(parents=True, exist_ok=True)
    record: dict = {"deepbet": metadata.version("deepbet"), "licence": "MIT",
                    "upstream": "https://github.com/wwu-mmll/deepbet", "networks": {},
                    "converted_with": {"torch": torch.__version__, "onnx": _version("onnx"),
                                       "onnxruntime": _version("onnxruntime"), "python": platform.python_version(),
                                       "opset": OPSET, "exporter": "torch.onnx.export(dynamo=False)",
                                       "constant_folding": True},
                    "command": "python tools/convert_deepbet.py " + shlex.join(sys.argv[1:]),
                    "converted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    networks = {}
    for name, shape in SHAPES.items():
        source = Path(DATA_PATH) / "models" / SOURCES[name]
        networks[name] = torch.jit.load(str(source)).eval()
        target = args.out / f"deepbet_{name}.onnx"
        _atomic(target, lambda tmp, n=networks[name], s=shape: _export(n, s, tmp))
        record["networks"][name] = {"source": f"deepbet/data/models/{SOURCES[name]}", "source_sha256": _sha(source),
                                    "file": target.name, "sha256": _sha(target), "bytes": target.stat().st_size,
                                    "input": [1, 1, *shape]}
    record["check"] = _check(head, networks, args.out)
    _atomic(args.out / "LICENSE.deepbet", lambda tmp: tmp.write_text(_licence()))
    _atomic(args.out / "PROVENANCE.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    _atomic(args.out / "PROVENANCE.md", lambda tmp: tmp.write_text(_markdown(record)))
    print(json.dumps(record, indent=2))
    return 0


def _export(network, shape: tuple[int, ...], path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of torch.export, which cannot take a ScriptModule;
        # InstanceNorm "train=True" means statistics of the input, which is what eval mode does too
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.zeros((1, 1, *shape)),), str(path), dynamo=False, opset_version=OPSET,
                          do_constant_folding=True, input_names=["image"], output_names=["probabilities"])


def _check(head: Path, networks: dict, folder: Path) -> dict:
    """Run deepbet's own pipeline on ``head`` with the torch networks wrapped so that their inputs are kept; run
    the ONNX files on the same inputs; and compare seg-edge's mask with deepbet's."""
    import onnxruntime as ort
    import torch

    from deepbet import BrainExtraction

    class Keep(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network, self.inputs = network, []

        def forward(self, x):
            self.inputs.append(x.clone())
            return self.network(x)

    bet = BrainExtraction(no_gpu=True)
    bet.bbox_model, bet.model = Keep(networks["bbox"]), Keep(networks["mask"])
    image = nib.load(str(head))
    _, reference, _ = bet.run(image)
    figures: dict = {"head": str(head), "head_shape": list(image.shape), "networks": {}}
    for name, kept in (("bbox", bet.bbox_model), ("mask", bet.model)):
        x = kept.inputs[0]
        with torch.no_grad():
            expected = networks[name](x).numpy()
        got = ort.InferenceSession(str(folder / f"deepbet_{name}.onnx"),
                                   providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
        figures["networks"][name] = {
            "max_abs_difference": float(np.abs(got - expected).max()),
            "voxels_deciding_differently": int(((got[0, 1] > 0.5) != (expected[0, 1] > 0.5)).sum()),
            "voxels": int(expected[0, 1].size)}
    figures["pipeline"] = _pipeline_dice(head, np.asarray(reference.dataobj) > 0)
    return figures


def _pipeline_dice(head: Path, reference: np.ndarray) -> dict:
    """seg-edge's numpy + ONNX Runtime pipeline against deepbet's torch one on the same file (both on its grid)."""
    import SimpleITK as sitk

    from seg_edge.preprocess.skullstrip import brain_mask

    result = brain_mask(sitk.ReadImage(str(head)), threads=2, source=str(head))
    ours = sitk.GetArrayFromImage(result.mask).transpose(2, 1, 0) > 0
    overlap = 2.0 * np.logical_and(ours, reference).sum() / (ours.sum() + reference.sum())
    return {"dice_vs_deepbet": float(overlap), "voxels_differing": int((ours != reference).sum()),
            "brain_ml": round(result.volume_ml, 1), "seconds_2_threads": round(result.seconds, 1)}


def _markdown(record: dict) -> str:
    lines = [f"# deepbet {record['deepbet']} as ONNX (seg_edge.preprocess.skullstrip)", "",
             f"Source: {record['upstream']} ({record['licence']} licence: LICENSE.deepbet). Converted by "
             f"`{record['command']}` on {record['converted_at']} with "
             + ", ".join(f"{k} {v}" for k, v in record["converted_with"].items()) + ".", "",
             "| network | source (sha256) | file (sha256) | bytes | input |", "| --- | --- | --- | --- | --- |"]
    for name, net in record["networks"].items():
        lines.append(f"| {name} | {net['source']} ({net['source_sha256'][:16]}…) | "
                     f"{net['file']} ({net['sha256'][:16]}…) | {net['bytes']} | {'×'.join(map(str, net['input']))} |")
    check = record["check"]
    lines += ["", f"Checked on `{check['head']}` ({'×'.join(map(str, check['head_shape']))}): each network's softmax "
              "in ONNX Runtime against torch, on the inputs deepbet's own pipeline gave it:", ""]
    for name, fig in check["networks"].items():
        lines.append(f"- {name}: max |difference| {fig['max_abs_difference']:.2e}; "
                     f"{fig['voxels_deciding_differently']} of {fig['voxels']} voxels on the other side of 0.5")
    pipe = check["pipeline"]
    lines += [f"- the whole mask, seg-edge (numpy + ONNX Runtime) against deepbet (torch): Dice "
              f"{pipe['dice_vs_deepbet']:.6f}, {pipe['voxels_differing']} voxels differ; brain "
              f"{pipe['brain_ml']} mL; {pipe['seconds_2_threads']} s on 2 threads", ""]
    return "\n".join(lines)


def _nilearn_template() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / NILEARN_T1


def _licence() -> str:
    dist = metadata.distribution("deepbet")
    text = dist.read_text("LICENSE") or dist.read_text("licenses/LICENSE")
    if not text:
        raise SystemExit("deepbet's distribution has no LICENSE file (expected its MIT licence)")
    return text


def _version(package: str) -> str:
    return metadata.version(package)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic(target: Path, write) -> None:
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
