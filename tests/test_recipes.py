"""Every recipe in train/ builds a valid configuration that matches its name and pins the reference's protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2sd_deploy.training.config import build_train_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "train").glob("*.toml"))
# The paper's best S2SD variant per (dataset, criterion) at 128-d (SPEC.md).
BEST_VARIANT = {
    ("cub200", "margin"): "msdf",
    ("cub200", "multisimilarity"): "msdfa",
    ("cars196", "margin"): "msdfa",
    ("cars196", "multisimilarity"): "msdfa",
    ("sop", "margin"): "msdf",
    ("sop", "multisimilarity"): "msdf",
}


def test_every_cell_of_the_papers_table_has_a_recipe():
    names = {p.stem for p in RECIPES}
    for (dataset, criterion), best in BEST_VARIANT.items():
        for dim in (128, 512):
            assert {f"{dataset}-r50-{dim}-{criterion}-{best}", f"{dataset}-r50-{dim}-{criterion}-baseline"} <= names
    readme = (RECIPES[0].parent / "README.md").read_text()
    assert all(f"`{p.name}`" in readme for p in RECIPES)
    assert len(RECIPES) == 28


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_and_matches_its_name(recipe):
    dataset, backbone, dim, criterion, method = recipe.stem.split("-")
    cfg = build_train_config({"data_root": "/data"}, recipe)
    assert (cfg.dataset, cfg.embed_dim, cfg.criterion) == (dataset, int(dim), criterion)
    assert backbone == "r50" and cfg.backbone == "resnet50" and cfg.pretrained == "IMAGENET1K_V1" and cfg.freeze_bn
    assert (cfg.lr, cfg.weight_decay, cfg.teacher_weight_decay) == (1e-5, 4e-4, 0.0)
    assert (cfg.batch_size, cfg.samples_per_class, cfg.sampler, cfg.epochs, cfg.amp) == (
        112,
        2,
        "replacement",
        150,
        False,
    )
    assert (cfg.image_size, cfg.resize_size) == (224, 256)
    if method == "baseline":
        assert cfg.s2sd is False and cfg.criterion_lr == 5e-4
    else:
        assert cfg.s2sd and cfg.variant == method and cfg.target_dims == [512, 1024, 1536, 2048]
        assert cfg.feature_distill and cfg.pool_aggregation == (method == "msdfa")
        assert cfg.feature_weight == (5.0 if (dataset, criterion) == ("sop", "margin") else 50.0)
        assert cfg.criterion_lr == 1e-5  # the reference: criterion parameters at the network's lr under S2SD
