"""Export stage: PyTorch checkpoints -> verified ONNX versions in the model store.

`export.synthetic` and `export.samples` import no torch (the service's tests, the
load tests and QA engineers' sample sets draw weld images from them); the CLI
imports torch only for the commands that need it.
"""
