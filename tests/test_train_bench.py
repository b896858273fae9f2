"""The overhead benchmark's parts run and report what they measured (no timing assertions)."""

from s2sd_deploy.train_bench import OverheadConfig, loss_overhead, step_overhead


def test_loss_and_step_overhead_on_tiny_sizes():
    cfg = OverheadConfig(batch=8, embed_dim=4, feature_dim=16, target_dims=[8, 16], backbone="resnet18",
                         image_size=32, loss_repeats=2, step_repeats=1)
    loss = loss_overhead(cfg)
    assert loss["plain_ms"] > 0 and loss["s2sd_ms"] > 0
    step = step_overhead(cfg)
    assert step["plain_s"] > 0 and step["s2sd_s"] > 0 and step["overhead"] == step["s2sd_s"] / step["plain_s"] - 1
