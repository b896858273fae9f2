"""Shared fixtures: a tiny trained digits run that export, embed and bench tests build on."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: one intra-op thread per test process keeps runs predictable and parallel-safe.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = dict(
    dataset="digits",
    backbone="resnet18",
    image_size=32,
    resize_size=36,
    epochs=1,
    batch_size=40,
    samples_per_class=8,
    target_dims=[64, 128],
    embed_dim=16,
    eval_every=1,
)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A one-epoch S2SD run on digits (resnet18, 16-d student, teachers 64/128); returns its path."""
    from s2sd_deploy.training.config import build_train_config
    from s2sd_deploy.training.trainer import train

    out = tmp_path_factory.mktemp("runs")
    cfg = build_train_config({**TINY, "out_dir": str(out), "run_name": "tiny"})
    summary = train(cfg)
    return out / "tiny" if summary else None


@pytest.fixture(scope="session")
def exported_model(trained_run, tmp_path_factory):
    """The tiny run exported once with its largest teacher (verified on 16 test images); returns model.onnx."""
    from s2sd_deploy.deploy.config import ExportConfig
    from s2sd_deploy.deploy.export import export_run

    out = tmp_path_factory.mktemp("exported")
    export_run(ExportConfig(run=str(trained_run), out=str(out), with_teacher=True, verify_limit=16))
    return out / "model.onnx"
