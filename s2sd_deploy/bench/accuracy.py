"""What each dimension buys: Recall@k / mAP@R of the student and every teacher of a trained run on its test
split, and of the cascade (student shortlist re-ranked by the largest teacher)."""

from __future__ import annotations

from ..metrics import evaluate_embeddings, recall_at_k
from ..training.datasets import splits_for
from ..training.evaluation import embed_heads
from ..training.run_dir import RunDir
from .kernels import Cascade, ExactSearch


def accuracy_part(run: RunDir, cfg) -> dict:
    """Recall@k / mAP@R of the student and every teacher on the run's test split, and the cascade."""
    model, _ = run.load_model()
    _, test = splits_for(run.config)
    heads = embed_heads(model, test, run.config)
    student = next(e for name, e in heads.items() if name.startswith("student-"))
    ks = run.config.recall_ks
    result = {
        "run": str(run.path),
        "dataset": run.config.dataset,
        "test_images": len(test),
        "heads": {name: evaluate_embeddings(e, test.labels, ks) for name, e in heads.items()},
    }
    if model.largest_teacher is not None:
        largest = heads[f"teacher-{model.largest_teacher[-1].out_features}"]
        cascade = Cascade(ExactSearch(student), largest)
        for shortlist in cfg.shortlists:
            ids = cascade.search(student, largest, min(shortlist, len(student) - 2), max(ks), exclude_self=True)
            recalls = recall_at_k(test.labels[ids], test.labels, ks)
            result["heads"][f"cascade-{student.shape[1]}>{largest.shape[1]}@{shortlist}"] = {
                f"recall@{k}": v for k, v in recalls.items()
            }
    return result
