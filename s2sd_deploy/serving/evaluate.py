"""``s2sd eval``: how an exported model retrieves on a user's own labelled images, without the training code.

Labels are folders: ``--data-root`` holds one folder per class and every image is a query against all the
others (leave-one-out, as the paper evaluates); or ``--query-root`` and ``--gallery-root`` each hold class
folders (same names, same class) and queries are searched in the gallery. Reported for the student, for the
teacher output when the model has one, and for the cascade (the student's top K re-ranked by the teacher).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import S2SDError
from ..metrics import drop_self, evaluate_embeddings, evaluate_query_gallery, recall_at_k
from .embedder import Embedder, embed_files
from .images import IMAGE_SUFFIXES
from .knn import inner_products_by_id, rerank


@dataclass
class LabelledFiles:
    paths: list[Path]
    labels: np.ndarray  # (N,) int64
    classes: list[str]


def class_folders(root: Path, classes: list[str] | None = None) -> LabelledFiles:
    """Images under ``root/<class>/``; with ``classes``, labels follow that list (for a query set)."""
    root = Path(root)
    if not root.is_dir():
        raise S2SDError(f"{root} not found; expected one folder per class with its images")
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    names = classes if classes is not None else [d.name for d in folders]
    paths, labels = [], []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files and folder.name in names:
            paths += files
            labels += [names.index(folder.name)] * len(files)
    if len({*labels}) < 2:
        raise S2SDError(f"{root} has {len({*labels})} class folder(s) with images; evaluation needs at least 2")
    return LabelledFiles(paths, np.array(labels, dtype=np.int64), names)


def evaluate(
    model: Path,
    data_root: Path | None = None,
    query_root: Path | None = None,
    gallery_root: Path | None = None,
    recall_ks=(1, 2, 4, 8),
    shortlists=(50,),
    skip_bad_images=False,
    workers: int = 4,
    progress=None,
) -> dict:
    """Metrics of the student, the teacher and the cascades on the user's data (see the module docstring)."""
    check_options(list(recall_ks), list(shortlists))
    if (data_root is None) == (query_root is None or gallery_root is None):
        raise S2SDError("pass either --data-root, or both --query-root and --gallery-root")
    embedder = Embedder(model)
    with_teacher = embedder.teacher_dim is not None
    if data_root is not None:
        files = class_folders(data_root)
        sets = [embed_labelled(embedder, files, workers, skip_bad_images, with_teacher, progress)]
    else:
        gallery = class_folders(gallery_root)
        queries = class_folders(query_root, gallery.classes)
        sets = [
            embed_labelled(embedder, f, workers, skip_bad_images, with_teacher, progress) for f in (queries, gallery)
        ]
    results = {
        "model": str(model),
        "run_id": embedder.metadata.get("run_id"),
        "images": sum(len(s[0]) for s in sets),
        "skipped": sum(s[3] for s in sets),
        "heads": {},
    }
    ks = list(recall_ks)
    results["heads"][f"student-{embedder.dim}"] = head_metrics([(s[0], s[2]) for s in sets], ks)
    if with_teacher:
        results["heads"][f"teacher-{embedder.teacher_dim}"] = head_metrics([(s[1], s[2]) for s in sets], ks)
        for shortlist in shortlists:
            results["heads"][f"cascade-{embedder.dim}>{embedder.teacher_dim}@{shortlist}"] = cascade_recall(
                sets, shortlist, ks
            )
    return results


def check_options(recall_ks: list[int], shortlists: list[int]) -> None:
    """Refuse k and K values before any image is embedded."""
    for option, values, example in (("--recall-ks", recall_ks, "1,2,4,8"), ("--rerank", shortlists, "20,50")):
        if not values or min(values) < 1:
            raise S2SDError(f"{option} takes one or more positive whole numbers, e.g. {example}; got {values!r}")
    if min(shortlists) < max(recall_ks):  # recall@k of fewer than k candidates would be recall@K
        raise S2SDError(f"--rerank {min(shortlists)} must be at least the largest --recall-ks {max(recall_ks)}")


def embed_labelled(embedder, files: LabelledFiles, workers, skip_bad_images, with_teacher, progress):
    """(student, teacher or None, labels, skipped count) of the files that decoded."""
    result = embed_files(embedder, files.paths, workers, skip_bad_images, progress, with_teacher)
    kept = {str(p): i for i, p in enumerate(files.paths)}
    labels = files.labels[[kept[str(p)] for p in result.paths]]
    return result.embeddings, result.teacher, labels, len(result.skipped)


def head_metrics(sets: list[tuple[np.ndarray, np.ndarray]], ks: list[int]) -> dict[str, float]:
    if len(sets) == 1:
        return evaluate_embeddings(sets[0][0], sets[0][1], ks)
    (queries, query_labels), (gallery, gallery_labels) = sets
    return evaluate_query_gallery(queries, query_labels, gallery, gallery_labels, ks)


def cascade_recall(sets, shortlist: int, ks: list[int]) -> dict[str, float]:
    """Recall@k of the student's top-``shortlist`` re-ranked by the teacher (leave-one-out on one set)."""
    leave_one_out = len(sets) == 1
    query_student, query_teacher, query_labels, _ = sets[0]
    gallery_student, gallery_teacher, gallery_labels, _ = sets[-1]
    shortlist = min(shortlist, len(gallery_labels) - int(leave_one_out))
    index = faiss.IndexFlatIP(gallery_student.shape[1])
    index.add(np.ascontiguousarray(gallery_student))
    _, candidates = index.search(np.ascontiguousarray(query_student), shortlist + int(leave_one_out))
    if leave_one_out:
        candidates = drop_self(candidates)
    scores = inner_products_by_id(np.ascontiguousarray(gallery_teacher, dtype=np.float32), query_teacher, candidates)
    _, ids = rerank(candidates, scores, max(ks))
    return {f"recall@{k}": v for k, v in recall_at_k(gallery_labels[ids], query_labels, ks).items()}
