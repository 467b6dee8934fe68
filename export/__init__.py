"""Export stage: PyTorch checkpoints -> verified ONNX versions in the model store.

Only `export.synthetic` may be imported without torch (the service's tests and the
load tests draw weld images from it); every other module here imports torch.
"""
