"""The PyTorch + MONAI baseline: NVIDIA's BraTS21 inference recipe on one case, timed by stage.

crop to the non-zero box (CropForeground), z-score non-zero voxels (NormalizeIntensity), NVIDIA's
mask channel, sliding_window_inference (window from the model card, overlap 0.5, gaussian),
sigmoid > 0.5, nested regions → labels, paste back, save. Prints one JSON line of timings.
``--bf16``: the network under ``torch.autocast("cpu", torch.bfloat16)`` (only meaningful where the CPU
has BF16 instructions; elsewhere PyTorch emulates it and it is far slower).
Run as its own process so that its imports and start-up are timed like `seg-edge predict`'s.
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.transforms import CropForeground, NormalizeIntensity  # noqa: E402

from seg_edge.artifact import load_artifact  # noqa: E402  (reads the card: patch size, preset
from seg_edge.model.checkpoints import load_network  # noqa: E402
from seg_edge.runtime.io import find_modalities  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", required=True)
    parser.add_argument("--model", required=True, help="ONNX model: its card gives preset and window")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_import = time.perf_counter() - T0
    card = load_artifact(args.model).card
    net = load_network(__import__("pathlib").Path(args.checkpoint), card.preset)[0].eval()
    t = {"imports": t_import}
    s = time.perf_counter()
    files = find_modalities(__import__("pathlib").Path(args.case))
    imgs = [nib.load(str(files[m])) for m in card.modalities]
    image = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs])
    t["load"] = time.perf_counter() - s
    s = time.perf_counter()
    cropper = CropForeground(select_fn=lambda x: x > 0, return_coords=True)
    cropped, start, end = cropper(torch.from_numpy(image))
    x = torch.as_tensor(NormalizeIntensity(nonzero=True, channel_wise=True)(cropped))
    x = torch.cat([x, (x > 0).all(0, keepdim=True).float()])
    if tuple(card.inputs.axes) == (2, 1, 0):
        x = x.permute(0, 3, 2, 1)
    t["preprocess"] = time.perf_counter() - s
    s = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
        logits = sliding_window_inference(x[None].contiguous(), list(card.patch_size), 1, net, overlap=0.5,
                                          mode="gaussian", sigma_scale=0.125)[0].float()
    t["inference"] = time.perf_counter() - s
    s = time.perf_counter()
    if tuple(card.inputs.axes) == (2, 1, 0):
        logits = logits.permute(0, 3, 2, 1)
    wt, tc, et = (torch.sigmoid(logits) > 0.5).numpy()
    lab = np.zeros(wt.shape, np.uint8)
    lab[wt] = 2
    lab[wt & tc] = 1
    lab[wt & et] = 4
    full = np.zeros(image.shape[1:], np.uint8)
    full[tuple(slice(int(a), int(b)) for a, b in zip(start, end))] = lab
    t["postprocess"] = time.perf_counter() - s
    s = time.perf_counter()
    nib.save(nib.Nifti1Image(full, imgs[0].affine, imgs[0].header), args.out)
    t["write"] = time.perf_counter() - s
    t["pipeline"] = sum(v for k, v in t.items() if k != "imports")
    print(json.dumps(t))


if __name__ == "__main__":
    main()
