"""OpenAI's Embeddings API (stub: to be built)."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["openai embeddings"])
