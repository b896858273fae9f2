"""Configuration layering and atomic, pickle-free checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from s2sd_deploy.atomic_files import atomic_path
from s2sd_deploy.errors import S2SDError
from s2sd_deploy.training.config import TrainConfig, build_train_config
from s2sd_deploy.training.model import EmbeddingModel, build_model
from s2sd_deploy.training.run_dir import load_checkpoint, save_checkpoint


def test_layers_defaults_preset_file_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("epochs = 3\nlr = 0.01\n[s2sd]\ndistill-weight = 10.0\n")
    cfg = build_train_config({"lr": 0.5}, toml)
    assert cfg.backbone == "resnet18"  # digits preset over the paper default
    assert cfg.epochs == 3 and cfg.distill_weight == 10.0  # file over preset/defaults
    assert cfg.lr == 0.5  # flag over file
    assert cfg.target_dims == [512, 1024, 1536, 2048] and cfg.pool_aggregation  # msdfa


def test_paper_defaults_for_real_datasets():
    cfg = build_train_config({"dataset": "cub200", "data_root": "/data"})
    assert (cfg.backbone, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.samples_per_class) == (
        "resnet50",
        1e-5,
        4e-4,
        112,
        2,
    )
    assert (cfg.distill_weight, cfg.feature_weight, cfg.feature_delay, cfg.temperature) == (50.0, 50.0, 1000, 1.0)
    assert cfg.freeze_bn is True and cfg.image_size == 224 and cfg.resize_size == 256


@pytest.mark.parametrize(
    "variant,dims,feature,pool",
    [
        ("dsd", [2048], False, False),
        ("msd", [512, 1024, 1536, 2048], False, False),
        ("msdf", [512, 1024, 1536, 2048], True, False),
        ("msdfa", [512, 1024, 1536, 2048], True, True),
    ],
)
def test_variants(variant, dims, feature, pool):
    cfg = build_train_config({"variant": variant})
    assert (cfg.target_dims, cfg.feature_distill, cfg.pool_aggregation) == (dims, feature, pool)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"criterion": "arcface"}, "choose one of: multisimilarity, margin, triplet"),
        ({"dataset": "cub200"}, "--data-root is required"),
        ({"batch_size": 81}, "multiple of --samples-per-class"),
        ({"samples_per_class": 1, "batch_size": 5}, "at least 2"),
    ],
)
def test_invalid_options_name_the_problem(overrides, message):
    with pytest.raises(S2SDError, match=message):
        build_train_config(overrides)


def test_unknown_key_in_file_is_rejected(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("learning_rate = 1\n")
    with pytest.raises(S2SDError, match="unknown option.*learning_rate"):
        build_train_config({}, toml)


def test_config_round_trips_through_json():
    cfg = build_train_config({"seed": 3})
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.hash() == cfg.hash()


def test_checkpoint_round_trip_with_optimizer(tmp_path):
    cfg = build_train_config({"target_dims": [8], "embed_dim": 4})
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3, 32, 32)).embeddings.sum().backward()
    optimizer.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model.state_dict(), {"beta": torch.ones(3)}, optimizer.state_dict(), {"epoch": 2})
    loaded = load_checkpoint(path)
    assert loaded["training_state"] == {"epoch": 2}
    assert torch.equal(loaded["criterion"]["beta"], torch.ones(3))
    assert all(k.startswith(("backbone.", "student.", "teachers.")) for k in loaded["model"])
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    for a, b in zip(fresh.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_failed_write_leaves_previous_file_intact(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_foreign_file_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"not safetensors")
    with pytest.raises(S2SDError, match="not a readable safetensors"):
        load_checkpoint(bogus)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(bogus))
    with pytest.raises(S2SDError, match="not an s2sd checkpoint"):
        load_checkpoint(bogus)


def test_frozen_batchnorm_stays_in_eval_mode():
    cfg = build_train_config({"freeze_bn": True, "target_dims": [8]})
    model = build_model(cfg).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert model.student.training


def test_model_parts_have_separate_prefixes():
    model = EmbeddingModel(torch.nn.Conv2d(3, 6, 3), 6, 4, target_dims=[8, 16])
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"backbone", "student", "teachers"}
    out = model(torch.randn(2, 3, 9, 9))
    assert out.embeddings.shape == (2, 4) and [t.shape[1] for t in out.teacher_embeddings] == [8, 16]
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(2))
    assert torch.allclose(model.deployed()(torch.randn(2, 3, 9, 9)).norm(dim=1), torch.ones(2))


def test_local_weights_file(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from s2sd_deploy.training.model import build_backbone

    reference = torchvision.models.resnet18()
    save_file(reference.state_dict(), str(tmp_path / "r18.safetensors"))
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    for name in ("r18.safetensors", "r18.pt"):
        backbone = build_backbone("resnet18", weights_file=str(tmp_path / name))
        assert torch.equal(backbone[0].weight, reference.conv1.weight)
    with pytest.raises(S2SDError, match="weights file not found"):
        build_backbone("resnet18", weights_file=str(tmp_path / "missing.pt"))
    with pytest.raises(S2SDError, match="unknown --backbone 'resnet5'"):
        build_backbone("resnet5")


def test_pretrained_offline_names_the_file_torch_expects(monkeypatch, tmp_path):
    import urllib.error

    from s2sd_deploy.training.model import build_backbone

    requested = []

    def offline(url, *args, **kwargs):
        requested.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # what torchvision downloads with
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"  # IMAGENET1K_V1, the reference's
    with pytest.raises(
        S2SDError, match=f"place .*resnet50-0676ba61.pth at {expected}, or pass a local file with --weights"
    ):
        build_backbone("resnet50", pretrained="IMAGENET1K_V1")
    assert requested == ["https://download.pytorch.org/models/resnet50-0676ba61.pth"]


def test_pretrained_takes_a_torchvision_weights_name():
    from s2sd_deploy.training.model import build_backbone, pretrained_weights

    assert pretrained_weights("resnet50", "IMAGENET1K_V1").url.endswith("resnet50-0676ba61.pth")
    assert pretrained_weights("resnet50", "DEFAULT") is pretrained_weights(
        "resnet50", "IMAGENET1K_V2"
    )  # not the paper's
    with pytest.raises(
        S2SDError,
        match="invalid --pretrained 'IMAGENET' for resnet50; choose one of: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT",
    ):
        build_backbone("resnet50", pretrained="IMAGENET")


def test_step_schedule_scales_every_group():
    from s2sd_deploy.training.losses import build_loss
    from s2sd_deploy.training.optim import build_optimizer, set_epoch_lr

    cfg = build_train_config(
        {"criterion": "margin", "lr": 1e-3, "lr_steps": [2, 4], "lr_gamma": 0.5, "target_dims": [8]}
    )
    model = EmbeddingModel(torch.nn.Conv2d(3, 4, 3), 4, 4, target_dims=[8])
    optimizer = build_optimizer(cfg, model, build_loss(cfg, 3))
    for epoch, factor in ((0, 1.0), (1, 1.0), (2, 0.5), (3, 0.5), (4, 0.25), (9, 0.25)):
        assert set_epoch_lr(optimizer, cfg, epoch) == pytest.approx(1e-3 * factor)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
            [g["base_lr"] * factor for g in optimizer.param_groups]
        )


def test_run_directories_of_format_1_still_load(tmp_path):
    from s2sd_deploy.errors import S2SDError
    from s2sd_deploy.training.run_dir import RunDir

    old = {**TrainConfig().to_dict(), "margin_beta_lr": 5e-4, "dw_upper_cutoff": 1.4, "pretrained": True, "amp": True}
    for key in ("criterion_lr", "teacher_weight_decay", "sampler"):
        old.pop(key)
    (tmp_path / "config.json").write_text(json.dumps({"format": "s2sd-run/1", "run_id": "old", "config": old}))
    (tmp_path / "summary.json").write_text(json.dumps({"best": {"recall@1": 0.5}, "final": {"recall@1": 0.4}}))
    cfg = RunDir.open(tmp_path).config  # what that run did, in today's fields
    assert (cfg.criterion_lr, cfg.dw_upper_cutoff, cfg.sampler, cfg.pretrained, cfg.amp) == (
        5e-4,
        1.4,
        "distinct",
        "DEFAULT",
        True,
    )
    assert cfg.teacher_weight_decay == cfg.weight_decay
    with pytest.raises(S2SDError, match="run format s2sd-run/1.*pass --checkpoint last or --checkpoint best"):
        RunDir.open(tmp_path).select_checkpoint("shipped")
    (tmp_path / "config.json").write_text(json.dumps({"format": "s2sd-run/0", "config": old}))
    with pytest.raises(S2SDError, match="not an s2sd run of format s2sd-run/2 \\(found 's2sd-run/0'\\)"):
        RunDir.open(tmp_path)


def test_hflip_records_what_the_augmentation_does(tmp_path):
    from s2sd_deploy.training.run_dir import RunDir

    assert build_train_config().hflip is False  # glyphs: the affine augmentation never flips
    assert build_train_config({"dataset": "cub200", "data_root": "/d"}).hflip is True  # crop: flips
    assert build_train_config({"dataset": "digits"}).hflip is False  # the digits preset turns them off
    with pytest.raises(S2SDError, match="--hflip works with --augmentation crop only"):
        build_train_config({"hflip": True})
    old = {**build_train_config().to_dict(), "hflip": True}  # what earlier versions recorded for glyphs runs
    (tmp_path / "config.json").write_text(json.dumps({"format": "s2sd-run/2", "run_id": "old", "config": old}))
    assert RunDir.open(tmp_path).config.hflip is False


UMASK_SCRIPT = """
import os, sys
os.umask(int(sys.argv[2], 8))
from pathlib import Path
import torch
from s2sd_deploy.atomic_files import write_json_atomic
from s2sd_deploy.training.run_dir import RunDir, save_checkpoint
folder = Path(sys.argv[1])
run = RunDir(folder / "run")
run.claim()
run.save_checkpoint("last.safetensors", model_state={"w": torch.zeros(3)})
run.copy_checkpoint("last.safetensors", "best.safetensors")
run.write_metrics([{"epoch": 1, "loss": 1.0, "recall@1": 0.5, "nmi": 0.5, "map@r": 0.5}])
run.write_summary({})
run.write_curves([{"epoch": 1, "loss": 1.0, "recall@1": 0.5, "nmi": 0.5, "map@r": 0.5}])
write_json_atomic(folder / "run" / "config.json", {})
"""


@pytest.mark.parametrize("umask", ["022", "077"])
def test_every_file_a_run_writes_follows_the_umask(tmp_path, umask):
    """0666 less the umask, as a plain open() gives; safetensors alone would write 0600 whatever the umask."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", UMASK_SCRIPT, str(tmp_path), umask], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    names = {"last.safetensors", "best.safetensors", "metrics.jsonl", "summary.json", "curves.png", "config.json"}
    assert names <= set(modes) and not [n for n in modes if n.endswith(".tmp")]
    assert {name: modes[name] for name in names} == {name: 0o666 & ~int(umask, 8) for name in names}


def test_the_trained_run_follows_the_umask(trained_run):
    import os

    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in trained_run.iterdir() if p.is_file() and p.name != ".lock"]
    assert len(files) >= 6 and {p.name: p.stat().st_mode & 0o777 for p in files} == {
        p.name: 0o666 & ~umask for p in files
    }
