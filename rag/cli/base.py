"""What every `rag` command shares: the Typer app, its common options, and how mistakes
are reported. Domain errors (`rag.errors`) and invalid settings become one line on stderr
and exit status 2; nothing prints a traceback for a mistake the user can fix. A `RAG_*`
variable that sets nothing gets a warning.

Left out: colour and rich formatting (plain lines read well in logs).
"""

import difflib
import os
from collections.abc import Callable, Mapping
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from rag.errors import RagError
from rag.settings import Settings

app = typer.Typer(
    help="Cited-passage retrieval over a folder of articles.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])

CorpusOpt = Annotated[Path | None, typer.Option("--corpus", help="corpus folder [RAG_CORPUS_DIR]")]
IndexOpt = Annotated[Path | None, typer.Option("--index", help="index folder [RAG_INDEX_DIR]")]


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command: F) -> F:
    """Turn domain errors and bad settings into a one-line message and exit status 2."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RagError as exc:
            fail(str(exc))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            fail(f"invalid settings: {problems}")
        except SettingsError as exc:  # a value pydantic-settings cannot even parse
            fail(f"invalid settings: {exc}")

    return wrapper  # type: ignore[return-value]


def load_settings(corpus: Path | None = None, index: Path | None = None, **overrides: Any) -> Settings:
    given = {"corpus_dir": corpus, "index_dir": index, **overrides}
    for line in unknown_settings(os.environ):
        typer.echo(f"warning: {line}", err=True)
    return Settings(**{k: v for k, v in given.items() if v is not None})


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """RAG_* variables that set nothing (a typo is otherwise silently ignored), with the
    closest setting: "RAG_CHUNK_TOKEN is not a setting; did you mean RAG_CHUNK_TOKENS?"."""
    known = {f"RAG_{name.upper()}" for name in Settings.model_fields}
    out = []
    for name in sorted(n for n in environ if n.startswith("RAG_") and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        out.append(f"{name} is not a setting" + (f"; did you mean {close[0]}?" if close else ""))
    return out
