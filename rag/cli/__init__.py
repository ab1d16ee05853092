"""The `rag` command, assembled here from one module per command group: the built index
(`index`: build, migrate, query), live collections (`collections`), evaluation
(`evaluate`), benchmarks (`bench`), API keys with the audit log (`keys`), jobs (`jobs`), and export,
import, backup and restore (`portable`); what they
share is `base`.

Left out: `rag serve`, which starts the service: `api.cli` adds it, and the `rag` script
runs `api.cli.main`, so that the library never imports the service.
"""

import sys

import typer

from rag.cli import bench, collections, evaluate, index, jobs, keys, portable
from rag.cli.base import app, load_settings, unknown_settings

__all__ = ["app", "load_settings", "main", "unknown_settings"]

app.command()(index.build)
app.command()(index.migrate)
app.command("collections")(collections.list_collections)
app.command()(collections.add)
app.command()(collections.rm)
app.command()(index.query)
app.add_typer(bench.app, name="bench")
app.command("eval")(evaluate.eval_command)
app.add_typer(keys.app, name="keys")
app.command("audit")(keys.audit)
app.add_typer(jobs.app, name="jobs")
app.command()(portable.export)
app.command("import")(portable.import_command)
app.command()(portable.backup)
app.command()(portable.restore)
app.command()(portable.reembed)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
