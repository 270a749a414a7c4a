"""The runtime and `seg-edge predict` must import and run without torch."""

from __future__ import annotations

import json
import subprocess
import sys

BLOCK_TORCH = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.') or name == 'monai' or name.startswith('monai.'):\n"
    "            raise ImportError('blocked for this test: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def test_runtime_import_leaves_torch_out():
    code = "import sys, seg_edge, seg_edge.runtime, seg_edge.cli.app; print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] in ('torch', 'monai', 'onnx')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_predict_runs_with_torch_blocked(case_dir, edge_onnx, tmp_path):
    code = BLOCK_TORCH + (
        "from seg_edge.cli.app import main\n"
        f"sys.argv = ['seg-edge', 'predict', {str(case_dir)!r}, '--model', {str(edge_onnx)!r},"
        f" '--out', {str(tmp_path)!r}, '--json']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["model"]["backend"] == "onnxruntime"
    assert (tmp_path / f"{case_dir.name}.nii.gz").is_file()
