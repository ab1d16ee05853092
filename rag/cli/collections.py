"""`rag collections`, `rag add` and `rag rm`: live collections from the command line, the
same writes the service makes (a running service sees them at its next query).

Left out: moving documents between collections (remove, then add).
"""

from pathlib import Path
from typing import Annotated

import typer

from rag.cli.base import IndexOpt, fail, load_settings, user_errors
from rag.errors import RagError


@user_errors
def list_collections(index: IndexOpt = None) -> None:
    """List the collections: `default` (the built corpus) and the live ones."""
    from rag.collections import DEFAULT, Collections
    from rag.portable.reembed import under_way

    settings = load_settings(index=index)
    moving = {r["collection"]: r for r in under_way(settings.index_dir)}
    with Collections(settings, embedder=None) as collections:  # listing embeds nothing
        for name in collections.names(every_store=True):
            if name == DEFAULT:
                typer.echo(f"{name:<24} the built corpus ({settings.corpus_dir}; `rag build`)")
                continue
            if (store := collections.store_of(name)) != settings.vector_store:
                typer.echo(f"{name:<24} in the {store or 'unknown'} store (RAG_VECTOR_STORE={store or '?'} serves it)")
                continue
            kb = collections.get(name)
            model = kb.manifest["model"]
            typer.echo(f"{name:<24} {len(kb.documents):>6} documents {kb.count():>8} chunks  "
                       f"{model['name']} ({model.get('backend', '?')})")
            if (r := moving.get(name)) is not None:
                left = f", ~{r['seconds_left']:.0f} s left" if r["seconds_left"] is not None else ""
                rate = f", {r['rate']:.1f}/s" if r["rate"] is not None else ""
                typer.echo(f"{'':<24} re-embedding to {r['model']} ({r['backend']}): {r['state']}, "
                           f"{r['done']}/{r['total'] if r['total'] is not None else '?'} documents{rate}{left}")


@user_errors
def add(
    paths: Annotated[list[Path], typer.Argument(help="files to add: .txt, .md, .html, .pdf")],
    collection: Annotated[str, typer.Option(help="the live collection (made if missing)")] = "notes",
    index: IndexOpt = None,
) -> None:
    """Add or replace files in a live collection (a running service sees them at its next query)."""
    from rag.collections import Collections
    from rag.ingest.build import embedder_from
    from rag.ingest.sandbox import parse_limits
    from rag.ingest.uploads import uploaded_document

    settings = load_settings(index=index)
    with Collections(settings, embedder_from(settings)) as collections:
        if collections.ensure(collection)[1]:
            typer.echo(f"made collection {collection}", err=True)
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                fail(f"cannot read {path}: {exc.strerror}")
            try:
                doc, is_pdf = uploaded_document(path.name, data, limits=parse_limits(settings))
            except RagError as exc:  # a damaged PDF's message does not name the file
                fail(str(exc) if path.name in str(exc) else f"{path}: {exc}")
            written = collections.upsert(collection, doc, replace=True, origin="cli", clean=not is_pdf)
            typer.echo(str(written))


@user_errors
def rm(
    doc_ids: Annotated[list[str], typer.Argument(help="documents to remove")],
    collection: Annotated[str, typer.Option(help="the live collection")] = "notes",
    index: IndexOpt = None,
) -> None:
    """Remove documents from a live collection."""
    from rag.collections import Collections

    settings = load_settings(index=index)
    with Collections(settings, embedder=None) as collections:  # removing embeds nothing
        for doc_id in doc_ids:
            collections.remove(collection, doc_id)
            typer.echo(f"removed {doc_id}")
