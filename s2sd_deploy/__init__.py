"""s2sd-deploy: train S2SD embeddings, export the low-dimensional student, serve it.

>>> import s2sd_deploy
>>> s2sd_deploy.__version__
'0.1.0'
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily so ``import s2sd_deploy`` stays cheap and needs neither onnxruntime nor faiss.
    if name == "Embedder":
        from .serving.embedder import Embedder

        return Embedder
    if name == "Searcher":
        from .serving.search import Searcher

        return Searcher
    raise AttributeError(f"module 's2sd_deploy' has no attribute {name!r}")


__all__ = ["Embedder", "Searcher", "__version__"]
