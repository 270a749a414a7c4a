"""Importers: bring a model trained elsewhere into a seg-edge artifact (one ONNX file with its card).

One module per source — ``nvidia`` (DeepLearningExamples nnU-Net BraTS21/22 Lightning
checkpoints), ``torch`` (any ``nn.Module`` + weights-only state dict + a card JSON), ``onnx``
(attach a card to an ONNX file made elsewhere). Each reads its source into a torch network and a
``ModelCard``; ``seg_edge.export.onnx.export_network`` exports and verifies them. The runtime
never learns where a model came from: everything it needs is in the card.
"""
