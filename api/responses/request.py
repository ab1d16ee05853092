"""What `POST /v1/responses` accepts: the request body, the checks a model cannot make,
and the conversation read out of `input`.

Honoured: `model` (`rag`, `rag:<collection>`: the collection answered from when no
file_search runs), `input` (a string, or messages: `{"role", "content"}` with a string or
`input_text` / `output_text` parts; earlier `file_search_call` items are skipped),
`instructions` (given to an upstream model), one `file_search` tool (`vector_store_ids`,
`max_num_results`, `filters`, `ranking_options.score_threshold`), `tool_choice` (auto,
required, none, file_search), `include: ["file_search_call.results"]`, `stream`, `store`,
`previous_response_id`, `metadata`, `max_output_tokens`, and `temperature` / `top_p`
(passed to an upstream model).

Accepted as hints and not acted on: `parallel_tool_calls`, `truncation` (history is
always trimmed), `user`, `safety_identifier`, `service_tier`, `prompt_cache_*`,
`stream_options`, `max_tool_calls`, `text.verbosity`.

Refused with a 400 naming it (`UnsupportedError`): any other tool (function, web_search, ...),
a `tool_choice` naming one, `text.format` other than text, reasoning settings, logprobs,
`background`, `conversation`, `prompt`, images, files or audio in `input`, any `include`
but file search results, and unknown parameters. A malformed value of a known parameter
is a 422, as everywhere in this service.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api.openai.filters import check_filter
from rag.errors import BadQueryError, UnsupportedError

INCLUDABLE = ("file_search_call.results",)
REFUSED = {  # parameters OpenAI knows that change what an answer is: refused when set
    "conversation": "conversations are not kept here; chain responses with previous_response_id",
    "prompt": "stored prompt templates are not kept here; send input and instructions",
    "context_management": "context management is not supported",
    "moderation": "moderation is not supported",
    "image": "image settings are not supported",
    "access_programs": "access programs are not supported",
    "background_options": "background responses are not supported",
}
FILE_SEARCH_KEYS = {"type", "vector_store_ids", "max_num_results", "filters", "ranking_options"}
TEXT_PARTS = ("input_text", "output_text", "text")
ROLES = ("user", "assistant", "system", "developer")


class ResponseRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown names are refused by plan_of, naming them
    model: str = Field("rag", description="`rag` or `rag:<collection>`: where to answer from without file_search")
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    include: list[str] | None = None
    stream: StrictBool | None = None
    store: StrictBool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_output_tokens: int | None = Field(None, ge=1)
    max_tool_calls: int | None = Field(None, ge=1)
    parallel_tool_calls: StrictBool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = None
    background: StrictBool | None = None


@dataclass(frozen=True)
class FileSearch:
    vector_store_ids: list[str]
    max_num_results: int = 10  # as POST /v1/vector_stores/{id}/search
    filters: dict[str, Any] | None = None
    score_threshold: float | None = None

    def echo(self) -> dict[str, Any]:
        """The tool as the Response object lists it."""
        return {"type": "file_search", "vector_store_ids": self.vector_store_ids, "filters": self.filters,
                "max_num_results": self.max_num_results,
                "ranking_options": {"ranker": "auto", "score_threshold": self.score_threshold or 0.0}}


@dataclass(frozen=True)
class Plan:
    file_search: FileSearch | None  # None: answer from the model's collection, no tool call
    tools: list[dict[str, Any]] = field(default_factory=list)  # as the Response object lists them
    tool_choice: Any = "auto"
    include_results: bool = False


def plan_of(body: ResponseRequest) -> Plan:
    """What the request asks for, or UnsupportedError (400) naming what cannot be honoured."""
    for name, value in (body.model_extra or {}).items():
        if value is not None:
            raise UnsupportedError(f"{name}: {REFUSED[name]}" if name in REFUSED else f"unknown parameter '{name}'")
    _check_options(body)
    tools = body.tools or []
    file_search = None
    for i, tool in enumerate(tools):
        if tool.get("type") != "file_search":
            kind = tool.get("type")
            raise UnsupportedError(f"tools[{i}].type '{kind}' is not supported: this service runs the file_search "
                              "tool only (function and other tools need a model that calls them)")
        if file_search is not None:
            raise UnsupportedError(f"tools[{i}]: one file_search tool at most")
        file_search = _file_search(tool, f"tools[{i}]")
    choice = body.tool_choice if body.tool_choice is not None else "auto"
    kind = choice.get("type") if isinstance(choice, dict) else choice
    if kind not in ("auto", "required", "none", "file_search"):
        raise UnsupportedError(f"tool_choice '{kind}' is not supported: auto, required, none or file_search")
    if kind in ("required", "file_search") and file_search is None:
        raise UnsupportedError(f"tool_choice '{kind}' needs a file_search tool in tools")
    include = body.include or []
    for value in include:
        if value not in INCLUDABLE:
            raise UnsupportedError(f"include '{value}' is not supported: only {', '.join(INCLUDABLE)}")
    return Plan(file_search if kind != "none" else None, [file_search.echo()] if file_search else [], choice,
                "file_search_call.results" in include)


def _check_options(body: ResponseRequest) -> None:
    text = body.text or {}
    if unknown := set(text) - {"format", "verbosity"}:
        raise UnsupportedError(f"text.{sorted(unknown)[0]} is not supported")
    form = text.get("format") or {"type": "text"}
    if not isinstance(form, dict) or form.get("type") != "text":
        kind = form.get("type") if isinstance(form, dict) else form
        raise UnsupportedError(f"text.format.type '{kind}' is not supported: answers are plain text with citations")
    for key, value in (body.reasoning or {}).items():
        if value not in (None, "none"):
            raise UnsupportedError(f"reasoning.{key} is not supported: no reasoning model answers here")
    if body.top_logprobs:
        raise UnsupportedError("top_logprobs is not supported: extractive answers have no token probabilities")
    if body.background:
        raise UnsupportedError("background is not supported: a response is answered while you wait")


def _file_search(tool: dict[str, Any], where: str) -> FileSearch:
    if unknown := set(tool) - FILE_SEARCH_KEYS:
        raise UnsupportedError(f"{where}.{sorted(unknown)[0]} is not supported")
    ids = tool.get("vector_store_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise BadQueryError(f"{where}.vector_store_ids must be a non-empty list of vector store ids")
    k = tool.get("max_num_results")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 50):
        raise BadQueryError(f"{where}.max_num_results must be an integer from 1 to 50")
    if tool.get("filters") is not None:
        check_filter(tool["filters"], f"{where}.filters")
    ranking = tool.get("ranking_options") or {}
    if not isinstance(ranking, dict):
        raise BadQueryError(f"{where}.ranking_options must be an object")
    for key, value in ranking.items():
        if key == "score_threshold":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0 <= value <= 1):
                raise BadQueryError(f"{where}.ranking_options.score_threshold must be a number from 0 to 1")
        elif key != "ranker" and value is not None:  # ranker: the collection's own ranking answers
            raise UnsupportedError(f"{where}.ranking_options.{key} is not supported: the collection's own ranking "
                              "is used")
    return FileSearch(list(dict.fromkeys(ids)), k or 10, tool.get("filters"), ranking.get("score_threshold"))


@dataclass(frozen=True)
class Turns:
    question: str  # the last user message
    earlier: list[str]  # the user messages before it in this input, oldest first
    system: list[str]  # system and developer messages: instructions for an upstream model


def turns_of(input: str | list[dict[str, Any]]) -> Turns:
    """The conversation in `input`; a message without a user turn is a 422."""
    if isinstance(input, str):
        return Turns(input, [], [])
    users: list[str] = []
    system: list[str] = []
    for i, item in enumerate(input):
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "file_search_call":
            continue  # a search this service ran before: its question is among the user turns
        if kind != "message":
            raise UnsupportedError(f"input[{i}].type '{kind}' is not supported: messages only")
        role = item.get("role")
        if role not in ROLES:
            raise BadQueryError(f"input[{i}].role must be one of {', '.join(ROLES)}, got {role!r:.80}")
        text = _content_text(item.get("content"), f"input[{i}]")
        if role == "user":
            users.append(text)
        elif role in ("system", "developer") and text.strip():
            system.append(text)
    users = [u for u in users if u.strip()]
    if not users:
        raise BadQueryError("input holds no user message with text")
    return Turns(users[-1], users[:-1], system)


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadQueryError(f"{where}.content must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise BadQueryError(f"{where}.content[{j}] must be an object with a 'type'")
        kind = part.get("type")
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind != "refusal":
            raise UnsupportedError(f"{where}.content[{j}].type '{kind}' is not supported: text parts only")
    return " ".join(texts)
