"""Open WebUI: its background task prompts, and whether a request comes from it.

Background tasks. Unless an admin picks a separate task model, Open WebUI (0.6 to 0.12)
sends its side jobs to the chat's own model: a chat title, tags, follow-up suggestions
and, when enabled, search/retrieval queries and autocompletion. Each is one user message
holding a task prompt, `stream: false` (backend/open_webui/config.py,
DEFAULT_*_GENERATION_PROMPT_TEMPLATE; routers/tasks.py sends them):

    ### Task:
    Generate a concise, 3-5 word title with an emoji summarizing the chat history.
    ...
    JSON format: { "title": "your concise title here" }
    ### Chat History:
    <chat_history>
    USER: How much oil did China import from Russia?
    ASSISTANT: ...
    </chat_history>

Open WebUI reads the reply's outermost `{...}` as JSON (utils/middleware.py for title,
tags and follow-ups; the frontend first turns ' ‘ ’ ` into ", so a reply must hold none of
them). Retrieval over such a prompt is useless, and it is longer than a question may be
(a 422 today), so `task_reply` answers it without retrieval:
- title: `{"title": "<the chat's first question, at most 6 words>"}`;
- queries (query generation): `{"queries": ["<the last user question>"]}`;
- any other JSON object the prompt asks for: its key with an empty value
  (`{"tags": []}`, `{"follow_ups": []}`, `{"text": ""}` for autocompletion);
- tool selection (system prompt "Available Tools: ...", user "Query: ..."): `{"tool_calls": []}`;
- the voice-call emoji prompt: a neutral emoji.
A prompt counts as a task only when it is the conversation's one user turn (no assistant
turn), has a line starting "### Task:" and a `<chat_history>...</chat_history>` block;
a question that merely mentions "### Task:" is answered as a question.

Open WebUI as the client (`from_open_webui`): it renders our stream's `source` events
as chips with a citation modal, so a Markdown Sources list in the text shows every source
twice. It numbers its source list itself and maps [n] in the answer to the n-th source,
merging sources of one name: the events' names carry no [n] and are kept distinct
(api.chat.answers.source_names). Its backend calls us with aiohttp and no header of its
own by default: the User-Agent is aiohttp's `Python/3.x aiohttp/3.x` (Open WebUI PR #26333: "Open WebUI's
internal aiohttp UA"); with ENABLE_FORWARD_USER_INFO_HEADERS it adds `X-OpenWebUI-User-*`
and `X-OpenWebUI-Chat-Id`; an admin may add any `X-OpenWebUI-...` header to the
connection. Its body fields `chat_id`, `session_id` and `metadata` are removed before the
request leaves it in the versions read, but are accepted should a version or a pipe pass
them on. Any of these counts.

Left out: mixture-of-agents merging (user-started, not a background task), image prompt
generation (answered with an empty prompt by the generic rule), document suggestions
(newest versions; their prompt has no chat history), and admin templates without the
markers above (they get the normal answer, or a 422 when too long).
"""

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

SourcesMode = Literal["auto", "always", "never"]

TASK_LINE = re.compile(r"^[ \t]*###[ \t]*Task:", re.M)
HISTORY_OPEN, HISTORY_CLOSE = "<chat_history>", "</chat_history>"
ROLE_LINE = re.compile(r"^(USER|ASSISTANT|SYSTEM|TOOL|DEVELOPER|FUNCTION):[ \t]?", re.M)
JSON_KEY = re.compile(r'\{\s*"(\w+)"\s*:\s*([\["{]?)')
TITLE_WORDS = 6
TITLE_DROP = re.compile(r"[\"“”`*_#<>\[\]{}|\\~^]")  # quotes and Markdown: a title is plain words
APOSTROPHES = re.compile(r"['‘’]")
MODIFIER_APOSTROPHE = "\u02bc"  # looks like ' but survives Open WebUI's quote-to-JSON rewrite
TRAILING = " \t.,;:!?…-–—"
QUERY_CHARS = 500
EMOJI_PROMPT = "Your task is to reflect the speaker's likely facial expression through a fitting emoji"
NEUTRAL_EMOJI = "🙂"
AIOHTTP_AGENT = re.compile(r"^Python/\d[\w.+-]* aiohttp/\d", re.I)
OPEN_WEBUI_FIELDS = ("chat_id", "session_id")
OPEN_WEBUI_METADATA = ("chat_id", "message_id", "session_id")


def task_reply(messages: Sequence[Any]) -> str | None:
    """The reply to an Open WebUI background task, or None when `messages` is a real
    conversation. Never raises on odd message shapes: those are for the normal path."""
    turns = [(m.get("role"), _text(m.get("content"))) for m in messages if isinstance(m, dict)]
    users = [text for role, text in turns if role == "user"]
    if any(role == "assistant" for role, _ in turns) or len(users) != 1:
        return None
    prompt = users[0]
    system = " ".join(text for role, text in turns if role == "system").lstrip()
    if system.startswith("Available Tools:") and "tool_calls" in system and prompt.lstrip().startswith("Query:"):
        return json.dumps({"tool_calls": []})
    if prompt.lstrip().startswith(EMOJI_PROMPT):
        return NEUTRAL_EMOJI
    history = _history_block(prompt)
    if history is None or not TASK_LINE.search(prompt):
        return None
    start, end = history
    instructions = prompt[:start] + prompt[end:]  # never read keys from the chat itself
    turns_in_history = _history_turns(prompt[start + len(HISTORY_OPEN):end - len(HISTORY_CLOSE)])
    questions = [text for role, text in turns_in_history if role == "USER" and text]
    key = JSON_KEY.search(instructions)
    if key is None:  # an admin template asking for plain text
        return title(questions[0]) if questions and "title" in instructions.lower() else ""
    name, opening = key.group(1), key.group(2)
    if name == "title":
        return json.dumps({"title": title(questions[0]) if questions else ""}, ensure_ascii=False)
    if name == "queries":
        last = " ".join(questions[-1].split())[:QUERY_CHARS] if questions else ""
        return json.dumps({"queries": [last] if last else []}, ensure_ascii=False)
    empty: Any = {"[": [], '"': "", "{": {}}.get(opening)
    return json.dumps({name: empty})


def title(question: str) -> str:
    """A short chat title from a question: its first words, plain, no end punctuation.
    'How much oil did China import from Russia?' -> 'How much oil did China import'"""
    words = _no_apostrophes(TITLE_DROP.sub(" ", question)).split()[:TITLE_WORDS]
    text = " ".join(words).strip(TRAILING)
    return text[:1].upper() + text[1:]


def from_open_webui(headers: Mapping[str, str], body: Mapping[str, Any]) -> bool:
    """Whether a request was sent by Open WebUI's backend (see the module docstring)."""
    named = {name.lower(): value for name, value in headers.items()}  # HTTP names ignore case
    if any(name.startswith("x-openwebui-") for name in named):
        return True
    if AIOHTTP_AGENT.match(named.get("user-agent", "")):
        return True
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and any(key in metadata for key in OPEN_WEBUI_METADATA):
        return True
    return any(body.get(key) for key in OPEN_WEBUI_FIELDS)


def sources_in_text(mode: SourcesMode, stream: bool, headers: Mapping[str, str], body: Mapping[str, Any]) -> bool:
    """Whether the answer text ends with the Markdown Sources list (RAG_CHAT_SOURCES).
    `auto` leaves it out only where the client renders our source events: a stream to
    Open WebUI (a non-streamed answer carries no source events, so it keeps the list)."""
    if mode != "auto":
        return mode == "always"
    return not (stream and from_open_webui(headers, body))


def _history_block(prompt: str) -> tuple[int, int] | None:
    """The span of the first `<chat_history>...</chat_history>` block, tags included, as
    the regex `<chat_history>(.*?)</chat_history>` (re.S) finds it, or None. Two forward
    str.find scans: the regex tried every opening tag and scanned to the end of the text
    from each when none closed, quadratic (a 56 KB message of opening tags took 1.6 s on
    the event loop). The first opening tag is the one: a closing tag after any later one
    is also after it."""
    start = prompt.find(HISTORY_OPEN)
    if start < 0:
        return None
    close = prompt.find(HISTORY_CLOSE, start + len(HISTORY_OPEN))
    return None if close < 0 else (start, close + len(HISTORY_CLOSE))


def _history_turns(history: str) -> list[tuple[str, str]]:
    """'USER: a\\nASSISTANT: b' -> [('USER', 'a'), ('ASSISTANT', 'b')] (a turn may span lines)."""
    marks = list(ROLE_LINE.finditer(history))
    return [(m.group(1), history[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(history)].strip())
            for i, m in enumerate(marks)]


def _no_apostrophes(text: str) -> str:
    return APOSTROPHES.sub(MODIFIER_APOSTROPHE, text)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content
                        if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""
