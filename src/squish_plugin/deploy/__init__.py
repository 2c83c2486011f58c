"""Deployment: ONNX export for TensorRT 8.2, throughput backends (PyTorch, ONNX Runtime,
TensorRT, trtexec) and the Jetson TX1 kit. Heavy dependencies load only when used."""
