"""`rag jobs`, `rag jobs show ID`, `rag jobs cancel ID`: the jobs of the index folder
(rag.jobs) from the command line: kind, state, progress, rate, time left and failed items.
They read and write only `<index_dir>/jobs/`, so they work beside a running service, which
sees a cancel within a second.

Left out: retrying (the service runs an upload's retry: `POST /jobs/{id}/retry`; a folder
sync is retried by running `rag build --collection` again) and following a job as it goes
(`watch rag jobs`).
"""

import json
import time
from typing import Annotated

import typer

from rag.cli.base import IndexOpt, load_settings, user_errors
from rag.jobs import Job, Jobs

app = typer.Typer(help="Long work (uploads, imports, exports, re-embeds, folder syncs): list, show, cancel.",
                  invoke_without_command=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
IdArg = Annotated[str, typer.Argument(help="the job's id (job-...)")]


def _jobs(index: IndexOpt) -> Jobs:
    return Jobs(load_settings(index=index).index_dir)


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _progress(job: Job) -> str:
    return f"{job.done}/{job.total if job.total is not None else '?'} {job.unit}"


def _state(job: Job) -> str:
    if job.orphaned:
        return f"{job.state} (stopped: its process is gone)"
    return f"{job.state} (cancelling)" if job.cancel_requested and not job.finished else job.state


def _line(job: Job) -> str:
    rate = job.rate
    errors = len(job.errors) + job.errors_dropped
    return (f"{job.id}  {job.kind:<8} {job.target:<20} {_state(job):<10} {_progress(job):<22} "
            f"{f'{rate:.1f}/s' if rate is not None else '-':>9} {_span(job.seconds_left):>7} "
            f"{errors:>6} errors  {_span(time.time() - job.created_at)} ago by {job.owner}")


@app.callback()
@user_errors
def list_jobs(ctx: typer.Context, as_json: JsonOpt = False, index: IndexOpt = None) -> None:
    """List the jobs, newest first: kind, collection, state, progress, rate, time left, failed items."""
    if ctx.invoked_subcommand is not None:
        return
    jobs = _jobs(index).list()
    if as_json:
        typer.echo(json.dumps([job.as_dict() for job in jobs]))
        return
    if not jobs:
        typer.echo("no jobs")
        return
    typer.echo(f"{'ID':<28}  {'KIND':<8} {'COLLECTION':<20} {'STATE':<10} {'PROGRESS':<22} {'RATE':>9} "
               f"{'LEFT':>7} {'FAILED':>6}")
    for job in jobs:
        typer.echo(_line(job))


def _show(job: Job) -> None:
    typer.echo(f"{job.id}  {job.kind} on {job.target}, by {job.owner}\n"
               f"  state:    {_state(job)}" + (f" (run {job.runs})" if job.runs > 1 else "") + "\n"
               f"  progress: {_progress(job)}, rate {f'{job.rate:.2f}/s' if job.rate is not None else '-'}, "
               f"left {_span(job.seconds_left)}")
    if job.message:
        typer.echo(f"  message:  {job.message}")
    if job.error:
        typer.echo(f"  error:    {job.error}")
    if job.errors or job.errors_dropped:
        typer.echo(f"  failed items ({len(job.errors) + job.errors_dropped}):")
        for entry in job.errors:
            typer.echo(f"    {entry['item']}: {entry['reason']}")
        if job.errors_dropped:
            typer.echo(f"    ... and {job.errors_dropped} more, not listed")


@app.command("show")
@user_errors
def show(job_id: IdArg, as_json: JsonOpt = False, index: IndexOpt = None) -> None:
    """One job, with its failed items and their reasons."""
    job = _jobs(index).get(job_id)
    if as_json:
        typer.echo(json.dumps(job.as_dict()))
    else:
        _show(job)


@app.command("cancel")
@user_errors
def cancel(job_id: IdArg, as_json: JsonOpt = False, index: IndexOpt = None) -> None:
    """Ask a queued or running job to stop (its runner stops at its next check, within a
    second); one whose process is gone is cancelled at once."""
    job = _jobs(index).cancel(job_id)
    if as_json:
        typer.echo(json.dumps(job.as_dict()))
    elif job.finished and not job.cancel_requested:
        typer.echo(f"{job.id} is already {job.state}: nothing to cancel")
    else:
        typer.echo(f"{job.id}: " + ("cancelled" if job.state == "cancelled" else "cancel asked; it stops at its next "
                                   "check"))
