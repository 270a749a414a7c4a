# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
EXAMPLE := examples/SynBraTS_3007_000
MODEL := src/seg_edge/assets/seg-edge-edge.onnx
SE := $(VENV)/bin/seg-edge

.PHONY: demo test test-all lint reduced-precision install-runtime install-dev install-pytriton install-brats-eval eval-synthetic bench bench-vs-monai bench-gpu figures clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install-runtime: $(PY)
	$(PIP) install -q .

# The pinned CPU torch goes in first, and every later install is held to it (constraints.txt), so that
# no extra (nnunetv2 asks for torch>=2.1) pulls a CUDA build. nnunetv2 brings timm and torchvision;
# PyPI's torchvision does not load beside the CPU torch, and seg-edge never imports either.
install-dev: $(PY)
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -c constraints.txt -e '.[export,dev,nnunet]'

# A real Triton server for the --backend triton tests and benchmarks: NVIDIA's PyTriton (its wheel ships the
# tritonserver binary) with ONNX Runtime, in a venv of its own because PyTriton pins numpy<2
# (tools/pytriton_server.py). No CUDA wheels: the server runs the model on the CPU.
PYTRITON_VENV ?= .venv-pytriton
install-pytriton: $(PYTRITON_VENV)/.installed
$(PYTRITON_VENV)/.installed:
	$(PYTHON) -m venv $(PYTRITON_VENV)
	$(PYTRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton>=0.7" onnxruntime
	touch $@

# The official BraTS evaluation (brats-evaluation on PyPI, built on panoptica) as a test oracle for
# seg-edge evaluate --challenge (tools/brats_eval_oracle.py, tests/evaluation_oracle/). A venv of its own: the
# package is AGPL and pins numpy<2.3 and rich<14 through panoptica; seg-edge never imports it. Pinned so the
# figures compared are always the same code's.
BRATS_EVAL_VENV ?= .venv-brats-eval
install-brats-eval: $(BRATS_EVAL_VENV)/.installed
$(BRATS_EVAL_VENV)/.installed:
	$(PYTHON) -m venv $(BRATS_EVAL_VENV)
	$(BRATS_EVAL_VENV)/bin/python -m pip install -q "brats-evaluation==0.0.10" "panoptica==2.1.7"
	touch $@

demo: install-runtime
	$(VENV)/bin/seg-edge predict $(EXAMPLE) --out out/demo/ --overwrite
	$(VENV)/bin/seg-edge evaluate out/demo/ examples/

# ruff (pyflakes, pycodestyle, bugbear), mypy (strict on the card, its checks and the runtime) and the import
# layers (.importlinter); settings in pyproject.toml. make test runs it first and stops when it fails.
lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: install-dev install-pytriton install-brats-eval
	$(MAKE) lint
	$(PY) -m pytest -q

test-all: install-dev install-pytriton install-brats-eval
	$(MAKE) lint
	$(PY) -m pytest -q -m ''

# Accuracy of the shipped model on synthetic cases from seeds never used in training
# (2000: MNI152 anatomy, 2100: procedural anatomy). Synthetic data, not patients.
eval-synthetic: install-dev
	$(SE) synth --out data/eval_mni --n 20 --seed 2000 --anatomy mni152 --workers 2
	$(SE) synth --out data/eval_proc --n 20 --seed 2100 --workers 2
	$(SE) predict data/eval_mni --out out/eval_mni/ --overwrite
	$(SE) predict data/eval_proc --out out/eval_proc/ --overwrite
	$(SE) evaluate out/eval_mni/ data/eval_mni --json > docs/eval_synthetic_mni152.json
	$(SE) evaluate out/eval_proc/ data/eval_proc --json > docs/eval_synthetic_procedural.json
	$(SE) evaluate out/eval_mni/ data/eval_mni
	$(SE) evaluate out/eval_proc/ data/eval_proc

bench: install-dev
	$(SE) bench $(MODEL) --case $(EXAMPLE)

bench-vs-monai: install-dev
	$(PY) benchmarks/vs_monai.py --case $(EXAMPLE)

# On a machine with an NVIDIA GPU, TensorRT and cuda-python (see docs/JETSON.md); not run in CI.
bench-gpu:
	$(PY) -m pytest -q -m "gpu or tensorrt" tests/gpu
	$(SE) build-engine $(MODEL) --out out/engines/edge_fp32.plan --precision fp32 --timing-cache out/engines/timing.cache
	$(SE) build-engine $(MODEL) --out out/engines/edge_fp16.plan --precision fp16 --timing-cache out/engines/timing.cache
	$(SE) bench out/engines/edge_fp32.plan out/engines/edge_fp16.plan --backend tensorrt --case $(EXAMPLE) --compare

# The shipped INT8 and FP16 files and their cards, from the shipped FP32 ONNX, with the calibration and held-out
# cases the INT8 card records (synthetic: seeds 4000 MNI152 + 4100 procedural, 4 each; 5000 + 5100, 5 each); the
# reports are the figures docs/MODEL_CARD.md quotes; parity on the example against the shipped .pt is what
# tests/parity/test_shipped_model.py holds each file to. Rerun after a change to quantize or the FP16 converter.
ASSETS := src/seg_edge/assets
QDATA := data/quantize
reduced-precision:
	$(SE) synth --out $(QDATA)/calib --n 4 --seed 4000 --anatomy mni152 --workers 2
	$(SE) synth --out $(QDATA)/calib --n 4 --seed 4100 --workers 2
	$(SE) synth --out $(QDATA)/qeval --n 5 --seed 5000 --anatomy mni152 --workers 2
	$(SE) synth --out $(QDATA)/qeval --n 5 --seed 5100 --workers 2
	$(SE) quantize $(MODEL) --calibration $(QDATA)/calib --eval $(QDATA)/qeval \
	    --out $(ASSETS)/seg-edge-edge-int8.onnx --json > docs/quantize_int8.json
	$(SE) quantize $(MODEL) --calibration $(QDATA)/calib --eval $(QDATA)/qeval \
	    --out $(ASSETS)/seg-edge-edge-fp16.onnx --precision fp16 --json > docs/quantize_fp16.json
	$(SE) parity $(ASSETS)/seg-edge-edge-fp16.onnx $(EXAMPLE) --reference $(ASSETS)/seg-edge-edge.pt \
	    --json > docs/parity_example_fp16.json
	$(SE) parity $(ASSETS)/seg-edge-edge-int8.onnx $(EXAMPLE) --reference $(ASSETS)/seg-edge-edge.pt \
	    --backend onnxruntime --backend openvino --precision-hint f32 --precision-hint bf16 --json > docs/parity_example_int8.json

figures: install-dev
	$(PY) -m seg_edge.evaluation.report $(EXAMPLE) --out docs/synthetic_case.png

clean:
	rm -rf out build *.egg-info src/*.egg-info .pytest_cache
