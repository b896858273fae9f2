"""Everything production code needs to embed and search: no torch, no torchvision, no training code.

A test imports every module here in a fresh interpreter and checks that neither torch nor torchvision
was loaded, so a serving image can install onnxruntime, faiss, numpy and Pillow only.
"""
