"""Deployment: the teacher-free ONNX export and its proof, TensorRT engines, Triton repositories."""
