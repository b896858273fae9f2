"""Ablation aggregation, and one real (tiny) arm."""

from __future__ import annotations

import json
import shutil

import pytest

from s2sd_deploy.bench.ablation import AblationConfig, aggregate, markdown, run_ablation


def test_aggregate_mean_and_sample_std():
    records = [{"dim": 8, "arm": "msd", "seed": s, "recall@1": r, "nmi": 0.5} for s, r in enumerate((0.5, 0.7, 0.9))]
    records.append({"dim": 8, "arm": "baseline", "seed": 0, "recall@1": 0.4, "nmi": 0.3})
    table = aggregate(records)
    assert [(r["arm"], r["seeds"]) for r in table] == [("msd", 3), ("baseline", 1)]
    assert table[0]["recall@1_mean"] == pytest.approx(0.7) and table[0]["recall@1_std"] == pytest.approx(0.2)
    assert table[1]["recall@1_std"] == 0.0
    text = markdown({"config": {}, "table": table}, "cmd")
    assert "| 8 | msd |  | 3 | 70.00 ± 20.00 | 50.00 ± 0.00 |" in text


def test_tiny_real_ablation_chooses_lr_on_held_out_classes_and_reuses_runs(tmp_path):
    cfg = AblationConfig(
        dims=[4],
        seeds=[0],
        arms=["dsd"],
        epochs=1,
        lrs=[1e-4, 1e-3],
        selection_seeds=[0],
        out=str(tmp_path / "out"),
        runs_dir=str(tmp_path / "runs"),
    )
    first = run_ablation(cfg, progress=lambda m: None)
    assert [(r["arm"], r["seeds"]) for r in first["table"]] == [("dsd", 1)]
    for row in first["table"]:  # the chosen lr is the best on validation, and the final run used it
        candidates = [s for s in first["selection"] if s["arm"] == row["arm"]]
        assert row["lr"] == max(candidates, key=lambda s: s["val_map@r_mean"])["lr"]
        config = json.loads(
            (tmp_path / "runs" / "test" / f"d4-{row['arm']}-lr{row['lr']:g}-seed0" / "config.json").read_text()
        )
        assert config["config"]["lr"] == row["lr"]
    selection_run = json.loads((tmp_path / "runs" / "select" / "d4-dsd-lr0.001-seed0" / "config.json").read_text())
    assert selection_run["num_train_classes"] == 3 and selection_run["num_test_classes"] == 2  # digits 0-2 / 3-4
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0
    # Finished runs keep no resume point; selection runs keep no weights, test runs their best.
    assert not list((tmp_path / "runs" / "select").glob("*/*.safetensors"))
    assert [p.name for p in (tmp_path / "runs" / "test").glob("*/*.safetensors")] == ["best.safetensors"]
    assert "Learning-rate choice" in (tmp_path / "out" / "results.md").read_text()
    summary = tmp_path / "runs" / "test" / f"d4-dsd-lr{first['table'][0]['lr']:g}-seed0" / "summary.json"
    mtime = summary.stat().st_mtime
    second = run_ablation(cfg, progress=lambda m: None)
    assert summary.stat().st_mtime == mtime
    assert second["runs"] == first["runs"] and second["selection"] == first["selection"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["table"] == second["table"]
    # Interrupted runs: one after its last epoch (no summary yet) resumes; one before any epoch restarts.
    shutil.copy(summary.parent / "best.safetensors", summary.parent / "last.safetensors")  # its only epoch
    summary.unlink()
    unfinished = tmp_path / "runs" / "select" / "d4-dsd-lr0.0001-seed0"
    (unfinished / "summary.json").unlink()  # and, finished, it has no last.safetensors left
    third = run_ablation(cfg, progress=lambda m: None)
    assert summary.is_file() and (unfinished / "summary.json").is_file()
    assert third["selection"] == first["selection"] and third["runs"] == first["runs"]  # seeded: same numbers
