"""Ablation aggregation, and one real (tiny) arm on digits."""

from __future__ import annotations

import json

import pytest

from s2sd_deploy.bench.ablation import AblationConfig, aggregate, markdown, run_ablation


def heads(student, teacher=None):
    result = {"student-8": {"recall@1": student, "nmi": 0.5, "map@r": 0.2}}
    if teacher is not None:
        result["teacher-32"] = {"recall@1": teacher, "nmi": 0.6, "map@r": 0.3}
    return result


def test_aggregate_means_stds_and_the_paired_gap():
    records = [
        {"dim": 8, "arm": "dsd", "seed": s, "heads": heads(r, t)}
        for s, (r, t) in enumerate([(0.5, 0.6), (0.7, 0.9), (0.9, 1.0)])
    ]
    records.append({"dim": 8, "arm": "baseline", "seed": 0, "heads": heads(0.4)})
    table = aggregate(records)
    assert [(r["arm"], r["seeds"]) for r in table] == [("dsd", 3), ("baseline", 1)]
    assert table[0]["student-8"] == pytest.approx({"mean": 0.7, "std": 0.2})
    assert (
        table[0]["gap"]["mean"] == pytest.approx((0.1 + 0.2 + 0.1) / 3) and table[0]["largest_teacher"] == "teacher-32"
    )
    assert table[1]["student-8"]["std"] == 0.0 and "gap" not in table[1]
    cfg = {"dataset": "digits", "selection_metric": "recall@1", "validation_classes": 2}
    selection = [{"dim": 8, "arm": "dsd", "lr": 1e-3, "chosen": True, "val_recall@1_mean": 0.5}]
    text = markdown({"config": cfg, "table": table, "selection": selection}, "cmd")
    assert "| 8 | dsd |  | 3 | 70.00 ± 20.00 | 83.33 ± 20.82 | 13.33 ± 5.77 |" in text and "**50.00**" in text


def test_tiny_real_ablation_chooses_lr_on_held_out_classes_and_reuses_runs(tmp_path):
    cfg = AblationConfig(
        dataset="digits",
        overrides={"batch_size": 48},  # 3 classes x 16: the 3 digits the held-out validation leaves
        dims=[4],
        seeds=[0],
        arms=["dsd"],
        epochs=1,
        lrs=[1e-4, 1e-3],
        validation_classes=2,
        out=str(tmp_path / "out"),
        runs_dir=str(tmp_path / "runs"),
    )
    first = run_ablation(cfg, progress=lambda m: None)
    row = first["table"][0]
    assert (row["arm"], row["seeds"]) == ("dsd", 1) and set(first["runs"][0]["heads"]) == {"student-4", "teacher-2048"}
    candidates = first["selection"]  # the chosen lr is the best on validation, and the final run used it
    assert row["lr"] == max(candidates, key=lambda s: s["val_recall@1_mean"])["lr"]
    test_run = tmp_path / "runs" / "test" / f"d4-dsd-lr{row['lr']:g}-seed0"
    assert json.loads((test_run / "config.json").read_text())["config"]["lr"] == row["lr"]
    selection_run = json.loads((tmp_path / "runs" / "select" / "d4-dsd-lr0.001-seed0" / "config.json").read_text())
    assert selection_run["num_train_classes"] == 3 and selection_run["num_test_classes"] == 2  # digits 0-2 / 3-4
    assert not list((tmp_path / "runs").glob("*/*/*.safetensors"))  # recorded, then the weights go
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0
    assert "Learning-rate choice" in (tmp_path / "out" / "results.md").read_text()
    heads = test_run / "heads.json"
    mtime = heads.stat().st_mtime
    second = run_ablation(cfg, progress=lambda m: None)
    assert heads.stat().st_mtime == mtime  # reused, not trained again
    assert second["runs"] == first["runs"] and second["selection"] == first["selection"]
