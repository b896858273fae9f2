"""Ablation aggregation, and one real (tiny) arm."""

from __future__ import annotations

import json

import pytest

from s2sd_deploy.ablation import AblationConfig, aggregate, markdown, run_ablation


def test_aggregate_mean_and_sample_std():
    records = [{"dim": 8, "arm": "msd", "seed": s, "recall@1": r, "nmi": 0.5} for s, r in enumerate((0.5, 0.7, 0.9))]
    records.append({"dim": 8, "arm": "baseline", "seed": 0, "recall@1": 0.4, "nmi": 0.3})
    table = aggregate(records)
    assert [(r["arm"], r["seeds"]) for r in table] == [("msd", 3), ("baseline", 1)]
    assert table[0]["recall@1_mean"] == pytest.approx(0.7) and table[0]["recall@1_std"] == pytest.approx(0.2)
    assert table[1]["recall@1_std"] == 0.0
    text = markdown({"config": {}, "table": table}, "cmd")
    assert "| 8 | msd | 3 | 70.00 ± 20.00 | 50.00 ± 0.00 |" in text


def test_tiny_real_ablation_reuses_finished_runs(tmp_path):
    cfg = AblationConfig(dims=[4], seeds=[0], arms=["baseline", "dsd"], epochs=1, out=str(tmp_path / "out"),
                         runs_dir=str(tmp_path / "runs"))
    first = run_ablation(cfg, progress=lambda m: None)
    assert [r["arm"] for r in first["table"]] == ["baseline", "dsd"]
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0
    mtime = (tmp_path / "runs" / "d4-dsd-seed0" / "summary.json").stat().st_mtime
    second = run_ablation(cfg, progress=lambda m: None)
    assert (tmp_path / "runs" / "d4-dsd-seed0" / "summary.json").stat().st_mtime == mtime
    assert second["runs"] == first["runs"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["table"] == second["table"]
