"""Deployment: fixed-shape modules of the models for torch.export, ONNX and AOTInductor."""
