"""``s2sd index build | add | merge | verify``: a searchable index of a gallery, on one machine (faiss) or in
Milvus."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import Interrupted
from ..serving.index_config import IndexConfig
from .embed import parse_shard

DEFAULTS = IndexConfig()  # the one source of the defaults below
index_app = typer.Typer(
    help="Build, extend and merge searchable indexes of image galleries (then: s2sd search).", no_args_is_help=True
)

IndexKind = Annotated[
    str,
    typer.Option(
        "--index",
        help="flat (exact), ivf-pq, ivf-sq8, hnsw, or auto (flat up to 2e5 images when it fits --memory-budget-mb, "
        "else hnsw when it fits, else ivf-pq).",
    ),
]
MinRecall = Annotated[
    float, typer.Option(help="Refuse an approximate index whose measured recall@10 against exact search is lower.")
]
SkipBad = Annotated[bool, typer.Option("--skip-bad-images", help="Skip (and list) files that do not decode.")]
Workers = Annotated[int, typer.Option(help="Threads decoding images ahead of the model.", min=1)]
BatchSize = Annotated[int, typer.Option(help="Images per model call.", min=1)]
Force = Annotated[
    bool, typer.Option("--force", help="Replace the index already in this folder (never a folder s2sd did not write).")
]
Dedupe = Annotated[
    str,
    typer.Option(
        help="Leave out images already in the gallery: path (same resolved file), content (same bytes), "
        "or none (keep duplicates)."
    ),
]


def progress_bar(total: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=description)


@contextmanager
def nothing_written_on_ctrl_c(out: Path):
    """Ctrl-C before the library's own handlers (loading the model, listing files): nothing was written yet."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {out} is unchanged; run the same command again") from None


def build(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    model: Annotated[Path, typer.Option(help="Exported model.onnx (--with-teacher to re-rank).", show_default=False)],
    out: Annotated[Path, typer.Option(help="The index directory to write.", show_default=False)],
    index: IndexKind = DEFAULTS.index,
    min_recall: MinRecall = DEFAULTS.min_recall,
    memory_budget_mb: Annotated[int, typer.Option(help="auto: the largest index it may choose.", min=1)] = (
        DEFAULTS.memory_budget_mb
    ),
    shard: Annotated[
        Optional[str], typer.Option(help="K/N: index only the K-th of N slices.", show_default="all")
    ] = None,
    skip_bad_images: SkipBad = DEFAULTS.skip_bad_images,
    chunk_size: Annotated[
        int, typer.Option(help="Images embedded between resume points.", min=1)
    ] = DEFAULTS.chunk_size,
    batch_size: BatchSize = DEFAULTS.batch_size,
    workers: Workers = DEFAULTS.workers,
    backend: Annotated[str, typer.Option(help="faiss (one machine) or milvus (--uri).")] = DEFAULTS.backend,
    uri: Annotated[
        Optional[str],
        typer.Option(help="Milvus: a Milvus Lite file (gallery.db) or http://host:19530.", show_default=False),
    ] = None,
    collection: Annotated[
        Optional[str],
        typer.Option(
            help="Milvus: an alias that names the index's current collection, for other clients (the collection "
            "itself is named from the index's id).",
            show_default="none",
        ),
    ] = DEFAULTS.collection,
    dedupe: Dedupe = DEFAULTS.dedupe,
    force: Force = False,
) -> None:
    cfg = IndexConfig(
        index=index,
        min_recall=min_recall,
        memory_budget_mb=memory_budget_mb,
        chunk_size=chunk_size,
        batch_size=batch_size,
        workers=workers,
        skip_bad_images=skip_bad_images,
        backend=backend,
        uri=uri,
        collection=collection,
        dedupe=dedupe,
    )
    parsed = parse_shard(shard)
    cfg.validate(parsed)
    with nothing_written_on_ctrl_c(out):
        from ..serving.indexing import build_index

        manifest = build_index(images, model, out, cfg, parsed, progress=progress_bar, force=force)
    report(manifest, out)


def add(
    index_dir: Annotated[Path, typer.Argument(help="An index directory written by `s2sd index build`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders to add.")],
    min_recall: MinRecall = DEFAULTS.min_recall,
    skip_bad_images: SkipBad = DEFAULTS.skip_bad_images,
    batch_size: BatchSize = DEFAULTS.batch_size,
    workers: Workers = DEFAULTS.workers,
    dedupe: Dedupe = DEFAULTS.dedupe,
) -> None:
    cfg = IndexConfig(
        min_recall=min_recall, skip_bad_images=skip_bad_images, batch_size=batch_size, workers=workers, dedupe=dedupe
    )
    cfg.validate()
    with nothing_written_on_ctrl_c(index_dir):
        from ..serving.indexing import add_to_index

        manifest = add_to_index(index_dir, images, cfg, progress=progress_bar)
    report(manifest, index_dir)


def merge(
    out: Annotated[Path, typer.Argument(help="The merged index directory to write.")],
    shards: Annotated[list[Path], typer.Argument(help="Shard indexes, in order (--shard 1/N, 2/N, ...).")],
    index: IndexKind = DEFAULTS.index,
    min_recall: MinRecall = DEFAULTS.min_recall,
    memory_budget_mb: Annotated[int, typer.Option(help="auto: the largest index it may choose.", min=1)] = (
        DEFAULTS.memory_budget_mb
    ),
    dedupe: Dedupe = DEFAULTS.dedupe,
    force: Force = False,
) -> None:
    cfg = IndexConfig(index=index, min_recall=min_recall, memory_budget_mb=memory_budget_mb, dedupe=dedupe)
    cfg.validate()
    with nothing_written_on_ctrl_c(out):
        from ..serving.indexing import merge_indexes

        manifest = merge_indexes(out, shards, cfg, force=force)
    report(manifest, out)


def verify(
    index_dir: Annotated[Path, typer.Argument(help="An index directory written by `s2sd index build`.")],
) -> None:
    from ..serving.index_verify import verify_index

    typer.echo(verify_index(index_dir))


def report(manifest: dict, out: Path) -> None:
    counts, described = manifest["counts"], manifest["index"]
    recall = described.get("recall@10_vs_exact")
    measured = (
        ""
        if recall is None
        else (
            f", recall@10 {recall:.3f} against exact search ({described['recall_queries']} gallery vectors as queries)"
            if described["kind"] != "flat"
            else ", exact"
        )
    )
    parameter = f" ({described['search_parameter']})" if described.get("search_parameter") else ""
    skipped = f"; skipped {counts['skipped']} that did not decode" if counts["skipped"] else ""
    duplicates = manifest["added"][-1].get("duplicates_skipped") if manifest.get("added") else None
    if duplicates is None:
        duplicates = manifest.get("duplicates_skipped", 0)
    if duplicates:
        skipped += f"; left out {duplicates} already in the gallery (--dedupe none keeps them)"
    typer.echo(f"indexed {counts['images']} images{skipped}: {described['kind']}{parameter}{measured} -> {out}")


def register(app: typer.Typer) -> None:
    epilog = (
        "Examples:\n\n  s2sd index build photos/ --model runs/RUN/export/model.onnx --out photos-index\n\n"
        "  s2sd index build /data --model model.onnx --out part-3 --shard 3/8 && s2sd index merge all part-*\n\n"
        "  s2sd index build photos/ --model model.onnx --out photos-index --backend milvus --uri gallery.db\n\n"
        "  s2sd index build part-*.npz --model model.onnx --out photos-index   # the output of s2sd embed"
    )
    index_app.command(
        help="Embed a gallery (or read the .npz files of `s2sd embed`) and write an index directory: vectors, "
        "a faiss index (or a Milvus collection), teacher vectors for re-ranking, paths and a manifest with "
        "checksums. An interrupted build resumes from its last completed chunk. --out must be new, empty, or an "
        "index (replaced with --force).",
        epilog=epilog,
    )(build)
    index_app.command(
        help="Add images to an index (embedded with the index's own model); images already in it are left out.",
        epilog="Example:\n\n  s2sd index add photos-index new-photos/",
    )(add)
    index_app.command(
        help="Merge shard indexes into the index a single build would have made (images in two shards kept once).",
        epilog="Example:\n\n  s2sd index merge all part-1 part-2 part-3",
    )(merge)
    index_app.command(
        help="Check every byte of an index against the checksums its manifest records, and that its files agree; "
        "names every damaged file (exit 2).",
        epilog="Example:\n\n  s2sd index verify photos-index",
    )(verify)
    app.add_typer(index_app, name="index")
