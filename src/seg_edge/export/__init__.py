"""Torch → ONNX export with a model card, plus (later) TensorRT builds and graph lint."""
