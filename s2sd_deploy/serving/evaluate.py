"""``s2sd eval``: how an exported model retrieves on a user's own labelled images, without the training code.

Labels are folders: ``--data-root`` holds one folder per class and every image is a query against all the
others (leave-one-out, as the paper evaluates); or ``--query-root`` and ``--gallery-root`` each hold class
folders (same names, same class) and queries are searched in the gallery. Reported for the student, for the
teacher output when the model has one, and for the cascade (the student's top K re-ranked by the teacher).

Recall@k and mAP@R are undefined for a query with no other image of its class to find (a class folder with one
image, leave-one-out; a query class the gallery lacks). Such queries are left out of them, and say so: the results
carry ``queries`` (how many counted) and a note naming how many were left out; they stay in the gallery as
distractors, as they would be in production. Data on which no query counts, k larger than what a query is compared
with, or fewer than 2 classes (NMI is then degenerate) are refused before anything is embedded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import S2SDError
from ..metrics import drop_self, evaluate_embeddings, evaluate_query_gallery, recall_at_k, with_positives
from .embedder import Embedder, embed_files
from .images import IMAGE_SUFFIXES
from .knn import inner_products_by_id, rerank


@dataclass
class LabelledFiles:
    paths: list[Path]
    labels: np.ndarray  # (N,) int64
    classes: list[str]


def class_folders(root: Path, classes: list[str] | None = None) -> LabelledFiles:
    """Images under ``root/<class>/``; with ``classes``, labels follow that list (for a query set; a query class
    not in it gets a label of its own after them, so its queries have nothing to find)."""
    root = Path(root)
    if not root.is_dir():
        raise S2SDError(f"{root} not found; expected one folder per class with its images")
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    names = list(classes) if classes is not None else [d.name for d in folders]
    paths, labels = [], []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files and folder.name not in names:
            names.append(folder.name)
        if files:
            paths += files
            labels += [names.index(folder.name)] * len(files)
    if len({*labels}) < 2:
        raise S2SDError(
            f"{root} has {len({*labels})} class folder(s) with images; evaluation needs at least 2 (with one class "
            f"every neighbour is a match and NMI is degenerate)"
        )
    return LabelledFiles(paths, np.array(labels, dtype=np.int64), names)


def check_defined(query_labels: np.ndarray, gallery_labels: np.ndarray | None, ks: list[int], where: str) -> str | None:
    """Refuse data on which Recall@k is undefined for every query, or k beyond what a query is compared with;
    otherwise the note on the queries left out (None when every query counts). ``gallery_labels`` None means
    leave-one-out."""
    queries = with_positives(query_labels, gallery_labels)
    compared = len(query_labels) - 1 if gallery_labels is None else len(gallery_labels)
    if not queries.any():
        alone = "is alone in its class" if gallery_labels is None else "has a class that the gallery lacks"
        raise S2SDError(
            f"every one of the {len(query_labels)} images in {where} {alone}: no query has another image of its "
            f"class to find, so Recall@k and mAP@R are undefined; put at least 2 images in some class folders"
        )
    if max(ks) > compared:
        raise S2SDError(
            f"--recall-ks {max(ks)} is more than the {compared} images each query is compared with in {where}; "
            f"use smaller k or more images"
        )
    left_out = int((~queries).sum())
    if not left_out:
        return None
    classes = len(np.unique(query_labels[~queries]))
    why = "alone in their class" if gallery_labels is None else "of classes the gallery lacks"
    return (
        f"{left_out} of {len(query_labels)} queries ({classes} class{'es' if classes > 1 else ''}) are {why}: they "
        f"have nothing to find, so "
        f"they are left out of Recall@k and mAP@R{' (they stay in the gallery)' if gallery_labels is None else ''}"
    )


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
    ks = list(recall_ks)
    if data_root is not None:
        labelled = [class_folders(data_root)]
        where = str(data_root)
    else:
        gallery = class_folders(gallery_root)
        labelled = [class_folders(query_root, gallery.classes), gallery]
        where = f"{query_root} against {gallery_root}"
    check_defined(
        labelled[0].labels, labelled[-1].labels if len(labelled) == 2 else None, ks, where
    )  # before embedding
    embedder = Embedder(model)
    with_teacher = embedder.teacher_dim is not None
    sets = [embed_labelled(embedder, f, workers, skip_bad_images, with_teacher, progress) for f in labelled]
    note = check_defined(sets[0][2], sets[-1][2] if len(sets) == 2 else None, ks, where)  # bad images skipped
    results = {
        "format": RESULTS_FORMAT,
        "model": str(model),
        "run_id": embedder.metadata.get("run_id"),
        "images": sum(len(s[0]) for s in sets),
        "queries": int(with_positives(sets[0][2], sets[-1][2] if len(sets) == 2 else None).sum()),
        "skipped": sum(s[3] for s in sets),
        "notes": [note] if note else [],
        "heads": {},
    }
    results["heads"][f"student-{embedder.dim}"] = head_metrics([(s[0], s[2]) for s in sets], ks)
    if with_teacher:
        results["heads"][f"teacher-{embedder.teacher_dim}"] = head_metrics([(s[1], s[2]) for s in sets], ks)
        compared = len(sets[-1][2]) - int(len(sets) == 1)
        for shortlist in shortlists:
            if shortlist > compared:
                results["notes"].append(
                    f"--rerank {shortlist}: a query is compared with only {compared} images, so the cascade re-ranks "
                    f"them all"
                )
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
    queries = with_positives(query_labels, None if leave_one_out else gallery_labels)
    return {f"recall@{k}": v for k, v in recall_at_k(gallery_labels[ids][queries], query_labels[queries], ks).items()}


RESULTS_FORMAT = "s2sd-eval/1"
RESULTS_KEYS = {"model", "run_id", "images", "skipped", "heads"}  # what results written before the format key held


def is_results_file(path: Path) -> bool:
    """Whether ``path`` is a JSON file ``s2sd eval --out`` wrote."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("format") == RESULTS_FORMAT or set(data) == RESULTS_KEYS)
