"""The service itself: /health, /ready, /admin/reload and /metrics."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import generate_latest

from api.deps import ERRORS, AdminDep, EngineDep, PrincipalDep, SettingsDep
from api.errors import scrub_paths
from api.schemas import (
    ErrorBody,
    Health,
    ModelInUse,
    Ready,
    Reembedding,
    Reloaded,
)
from rag.collections import DEFAULT
from rag.encoders.pool import rss_mb
from rag.portable.reembed import under_way

router = APIRouter()


@router.get("/health", tags=["service"])
def health() -> Health:
    """The process is alive (no key needed)."""
    return Health(status="ok")


@router.get("/ready", responses={503: {"model": ErrorBody}}, tags=["service"])
def ready(engine: EngineDep, settings: SettingsDep, principal: PrincipalDep) -> Ready:
    """The index is loaded and the model warmed; 503 with the reason otherwise. What the
    built corpus holds is told only to keys that can read it."""
    store = engine.live().store
    models = [ModelInUse(**m) for m in engine.models.loaded()] if engine.models is not None else []
    reembeds = [Reembedding(**r) for r in under_way(settings.index_dir) if principal.reads(r["collection"])]
    extra = {"models": models, "rss_mb": round(rss_mb(), 1), "reembeds": reembeds}
    if not principal.reads(DEFAULT):
        return Ready(status="ready", build_id="", model=settings.model, documents=0, chunks=0, reload_error=None,
                     **extra)
    reload_error = scrub_paths(engine.reload_error) if engine.reload_error else None
    return Ready(status="ready", build_id=store.build_id, model=settings.model,
                 documents=len(store.documents), chunks=store.count(), reload_error=reload_error, **extra)


@router.post("/admin/reload", responses={**ERRORS, 403: {"model": ErrorBody}, 409: {"model": ErrorBody}},
             tags=["service"])
async def reload(engine: EngineDep, admin: AdminDep) -> Reloaded:
    """Load the newest build now instead of at the next poll."""
    swapped = await engine.reload(explicit=True)
    return Reloaded(reloaded=swapped, build_id=engine.live().store.build_id)


@router.get("/metrics", tags=["service"], response_class=PlainTextResponse)
def metrics(request: Request, engine: EngineDep, admin: AdminDep) -> PlainTextResponse:
    """Prometheus text format: request counts, latency histograms, index size."""
    m = request.app.state.metrics
    if engine.retriever is not None:
        m.index_chunks.set(engine.retriever.store.count())
        m.index_documents.set(len(engine.retriever.store.documents))
    return PlainTextResponse(generate_latest(m.registry), media_type="text/plain; version=0.0.4")
