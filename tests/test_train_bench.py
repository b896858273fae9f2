"""The overhead benchmark's parts run and report what they measured (no timing assertions)."""

import pytest

from s2sd_deploy.bench.overhead import OverheadConfig, objective_overhead, step_overhead


@pytest.mark.parametrize("criterion", ["multisimilarity", "margin", "triplet"])
def test_objective_against_its_floor_on_tiny_sizes(criterion):
    cfg = OverheadConfig(batch=8, embed_dim=4, feature_dim=16, target_dims=[8, 16], loss_repeats=2)
    result = objective_overhead(cfg, criterion)
    assert result["floor_ms"] > 0 and result["objective_ms"] > 0 and result["rounds"] == 2
    assert result["ratio"] == result["objective_ms"] / result["floor_ms"] and result["criterion"] == criterion


def test_step_overhead_on_tiny_sizes():
    cfg = OverheadConfig(
        batch=8, embed_dim=4, feature_dim=16, target_dims=[8, 16], backbone="resnet18", image_size=32, step_repeats=1
    )
    step = step_overhead(cfg)
    assert step["plain_s"] > 0 and step["s2sd_s"] > 0 and step["overhead"] == step["s2sd_s"] / step["plain_s"] - 1
