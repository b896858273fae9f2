"""``s2sd search``: the top-k gallery images of each query image, optionally re-ranked by the teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def search(
    index: Annotated[Path, typer.Argument(help="An index directory written by `s2sd index build`.")],
    queries: Annotated[list[Path], typer.Argument(help="Query image files and/or folders.")],
    k: Annotated[int, typer.Option("--k", help="Results per query.", min=1)] = 10,
    rerank: Annotated[
        Optional[int],
        typer.Option(
            help="Re-rank the student's top K with the teacher (models exported --with-teacher).",
            min=1,
            show_default="no re-rank",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    from ..serving.images import list_images
    from ..serving.search import Searcher

    paths = list_images(queries)
    result = Searcher(index).search(paths, k=k, rerank=rerank)
    if as_json:
        typer.echo(json.dumps(result.to_json(paths), indent=1))
        return
    for entry in result.to_json(paths):
        typer.echo(entry["query"])
        for rank, hit in enumerate(entry["results"], 1):
            typer.echo(f"  {rank:>3}  {hit['score']:.4f}  {hit['path']}")


def register(app: typer.Typer) -> None:
    app.command(
        help="Search an index with query images; print each query's top-k paths and scores.\n\n"
        "Examples:\n\n  s2sd search photos-index query.jpg --k 5\n\n"
        "  s2sd search photos-index queries/ --k 10 --rerank 50 --json"
    )(search)
