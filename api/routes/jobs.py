"""Jobs over HTTP (rag.jobs; run by api.engine.jobs): what long work is doing, and what failed.

Who sees what (api.deps' rule, for jobs): the service's admin every job; a collection's
admin that collection's; any other key the jobs it started (its key id, not its name, which
a later key may reuse) on collections it can still read. Any other job is a 404, word for
word a missing one's. Cancelling, deleting and retrying change a collection: they need a key
that may write the job's collection (else 403), and a service that takes writes.

Messages and reasons are shown without the server's paths (api.errors.scrub_paths), as
every error is; `params` (what a runner needs, paths included) is not shown.

Left out: paging (`limit` bounds the listing: newest first) and filters beyond kind and state.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from api.deps import ERRORS, WRITE_ERRORS, EngineDep, PrincipalDep
from api.engine.jobs import registered
from api.engine.writes import writes_allowed
from api.errors import scrub_paths
from rag.access.gate import Principal
from rag.errors import ConflictError, ForbiddenError, NotFoundError
from rag.jobs import Job

router = APIRouter(tags=["jobs"])


class ItemError(BaseModel):
    item: str = Field(description="the document (an upload's doc_id, a synced file's name)")
    reason: str
    at: float = Field(description="when it failed (Unix time, s)")


class JobInfo(BaseModel):
    id: str
    kind: str = Field(description="upload, import, export, reembed or sync")
    target: str = Field(description="the collection")
    owner: str = Field(description="the key's name that started it, or cli")
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    unit: str = Field(description="what done and total count: documents or chunks")
    done: int
    total: int | None
    rate: float | None = Field(description="units a second, this run")
    seconds_left: float | None = Field(description="at this rate; null when unknown or not running")
    created_at: float
    started_at: float | None
    finished_at: float | None
    message: str | None
    error: str | None = Field(description="why the job failed")
    errors: list[ItemError] = Field(description="the items that failed, until retried or the job is deleted "
                                    "(the first 1,000)")
    errors_count: int = Field(description="items failed, those not listed included")
    runs: int = Field(description="1, plus one a retry")
    retrying: list[str] | None = Field(description="the items this run retries; null: the whole job")
    cancel_requested: bool
    stalled: bool = Field(description="unfinished and its process is gone: the next start resumes it")


def info(job: Job) -> JobInfo:
    data: dict[str, Any] = job.as_dict()
    for field in ("message", "error"):
        if data[field] is not None:
            data[field] = scrub_paths(str(data[field]))
    data["errors"] = [{**e, "reason": scrub_paths(e["reason"])} for e in data["errors"]]
    return JobInfo.model_validate({name: data[name] for name in JobInfo.model_fields})


def sees(principal: Principal, job: Job) -> bool:
    return principal.admin or principal.manages(job.target) or (
        job.owner_id == principal.id and principal.reads(job.target))


def visible(engine: EngineDep, principal: Principal, job_id: str) -> Job:
    job = engine.jobs.get(job_id)
    if not sees(principal, job):
        raise NotFoundError(f"no job with id '{job_id}'")
    return job


def changeable(engine: EngineDep, principal: Principal, job_id: str) -> Job:
    writes_allowed(engine.settings)
    job = visible(engine, principal, job_id)
    if not (principal.admin or principal.writes(job.target)):
        raise ForbiddenError(f"key '{principal.name}' ({principal.role}) may not change jobs on collection "
                             f"'{job.target}'")
    return job


@router.get("/jobs", responses=ERRORS)
def list_jobs(engine: EngineDep, principal: PrincipalDep,
              kind: Annotated[str | None, Query(max_length=32)] = None,
              state: Annotated[str | None, Query(max_length=16)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobInfo]:
    """The jobs the key may see, newest first: kind, state, progress, rate, time left and the
    items that failed."""
    jobs = [job for job in engine.jobs.list() if sees(principal, job)
            and (kind is None or job.kind == kind) and (state is None or job.state == state)]
    return [info(job) for job in jobs[:limit]]


@router.get("/jobs/{job_id}", responses=ERRORS)
def get_job(job_id: str, engine: EngineDep, principal: PrincipalDep) -> JobInfo:
    return info(visible(engine, principal, job_id))


@router.delete("/jobs/{job_id}", response_model=None, responses={
    **WRITE_ERRORS, 200: {"model": JobInfo, "description": "the job, its cancel asked for"},
    204: {"description": "the finished job's record is deleted"}})
def delete_job(job_id: str, engine: EngineDep, principal: PrincipalDep) -> Response:
    """A queued or running job: cancelled (200, the job: its runner stops at its next
    check, so it may still say running); a finished one: its record and its failed items
    deleted (204)."""
    job = changeable(engine, principal, job_id)
    if not job.finished:
        return Response(info(engine.jobs.cancel(job.id)).model_dump_json(), media_type="application/json")
    try:
        engine.jobs.delete(job.id)
    except ConflictError:  # it was retried meanwhile: cancel that run
        return Response(info(engine.jobs.cancel(job.id)).model_dump_json(), media_type="application/json")
    return Response(status_code=204)


@router.post("/jobs/{job_id}/retry", status_code=202, responses=WRITE_ERRORS)
def retry_job(job_id: str, engine: EngineDep, principal: PrincipalDep) -> JobInfo:
    """Run a finished job's failed items again (or the whole job, if it failed or was
    cancelled), as a new run of the same job: 202 with the job; 409 while it runs, if
    nothing failed, or if jobs of its kind are not run by this service."""
    job = changeable(engine, principal, job_id)
    if not registered(job.kind):
        raise ConflictError(f"this service does not run jobs of kind '{job.kind}'" + (
            ": run `rag build --collection` with its folder again" if job.kind == "sync" else ""))
    engine.live_collections()  # not ready (the model not loaded): 503 now, not a failed run
    job = engine.jobs.retry(job.id)
    engine.runner.submit(job)
    return info(job)
