"""Every recipe in train/ builds a valid configuration that matches its name (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2sd_deploy.config import build_train_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "train").glob("*.toml"))


def test_every_setup_has_a_recipe():
    names = {p.stem for p in RECIPES}
    for dataset in ("cub200", "cars196", "sop"):
        for dim in (128, 512):
            for criterion in ("multisimilarity", "margin"):
                variant = "msdf" if (dataset, criterion) == ("sop", "margin") else "msdfa"
                assert {f"{dataset}-r50-{dim}-{criterion}-{variant}", f"{dataset}-r50-{dim}-{criterion}-baseline"} <= names
    assert len(RECIPES) == 24


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_and_matches_its_name(recipe):
    dataset, backbone, dim, criterion, method = recipe.stem.split("-")
    cfg = build_train_config({"data_root": "/data"}, recipe)
    assert (cfg.dataset, cfg.embed_dim, cfg.criterion) == (dataset, int(dim), criterion)
    assert backbone == "r50" and cfg.backbone == "resnet50" and cfg.pretrained and cfg.freeze_bn
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.samples_per_class, cfg.epochs) == (1e-5, 4e-4, 112, 2, 150)
    assert (cfg.image_size, cfg.resize_size) == (224, 256)
    if method == "baseline":
        assert cfg.s2sd is False
    else:
        assert cfg.s2sd and cfg.variant == method and cfg.target_dims == [512, 1024, 1536, 2048]
        assert cfg.feature_distill and cfg.pool_aggregation == (method == "msdfa")
        assert cfg.feature_weight == (5.0 if (dataset, criterion) == ("sop", "margin") else 50.0)
