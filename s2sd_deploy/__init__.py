"""s2sd-deploy: train S2SD embeddings, export the low-dimensional student, serve it.

>>> import s2sd_deploy
>>> s2sd_deploy.__version__
'0.1.0'
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily so ``import s2sd_deploy`` stays cheap and needs no onnxruntime.
    if name == "Embedder":
        from .serving.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 's2sd_deploy' has no attribute {name!r}")


__all__ = ["Embedder", "__version__"]
