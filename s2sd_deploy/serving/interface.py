"""The contract between an exported model and its clients: tensor names and metadata keys.

The ONNX model has one input ``images`` (float32 [batch, 3, H, W], dynamic batch) and one output
``embeddings`` (float32 [batch, d], L2-normalised inside the graph); with the largest teacher exported
a second output ``teacher_embeddings``. Its ``metadata_props`` (all strings; lists and dicts as JSON)
tell a client how to preprocess and whether to trust the file:

==================== ===========================================================
``s2sd_format``      ``s2sd-onnx/1``
``embedding_dim``    d of ``embeddings`` (``teacher_dim`` for the teacher output)
``image_size``       side of the square crop fed to the network
``resize_size``      shorter side after resizing, before the centre crop
``interpolation``    PIL resampling filter of the resize, e.g. ``bilinear``
``mean``, ``std``    per-channel normalisation of [0, 1] pixels, JSON lists
``channel_order``    ``RGB``; ``layout`` ``NCHW``; ``pixel_scale`` 255
``normalized``       ``true``: rows of the output have unit L2 norm
``input_name`` ...   ``images`` / ``embeddings`` / ``teacher_embeddings``
``run_id`` ...       source run, ``config_hash``, ``checkpoint``, ``checkpoint_epoch``,
                     ``selection_rule``, ``package_version``, ``dataset``, ``backbone``
                     and ``test_metrics`` (JSON)
==================== ===========================================================
"""

from __future__ import annotations

ONNX_FORMAT = "s2sd-onnx/1"
INPUT, OUTPUT, TEACHER_OUTPUT = "images", "embeddings", "teacher_embeddings"
