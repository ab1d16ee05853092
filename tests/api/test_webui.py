# ruff: noqa: W291
"""Open WebUI as a client: its background task prompts (the real default templates of
Open WebUI 0.6 and of its newest release, filled in the way its backend fills them) get a
parseable JSON reply without retrieval; RAG_CHAT_SOURCES decides whether answer texts end
with the Sources list; citation links use RAG_PUBLIC_URL."""

import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.chat.webui import from_open_webui, sources_in_text, task_reply, title
from rag.settings import Settings
from tests.helpers import BASE_URL, FakeEmbedder, running_server

QUESTION = "imports of Russian oil rose 49 percent to $76.4 billion"
AIOHTTP = {"User-Agent": "Python/3.11 aiohttp/3.11.18"}  # what Open WebUI's backend sends by default

# ---- Open WebUI's default task templates (backend/open_webui/config.py; Open WebUI is BSD-3-Clause
# licensed with a branding clause), quoted verbatim for interoperability tests,
# trailing spaces included (hence the file-wide W291 exemption at the top).
# 0.6.x
TITLE_06 = """### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Use emojis that enhance understanding of the topic, but avoid quotation marks or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over excessive creativity; keep it clear and simple.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: { "title": "your concise title here" }
### Examples:
- { "title": "📉 Stock Market Trends" },
- { "title": "🍪 Perfect Chocolate Chip Recipe" },
- { "title": "Evolution of Music Streaming" },
- { "title": "Remote Work Productivity Tips" },
- { "title": "Artificial Intelligence in Healthcare" },
- { "title": "🎮 Video Game Development Insights" }
### Chat History:
<chat_history>
{{MESSAGES:END:2}}
</chat_history>"""

# the newest release
TITLE_NEW = """### Task:
Generate a concise title summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Keep it short: 2-4 words is best.
- Do not use emojis, quotation marks, or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over creativity.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: { "title": "your concise title here" }
### Examples:
- { "title": "Stock Trends" },
- { "title": "Chocolate Chip Cookies" },
- { "title": "Music Streaming" },
- { "title": "Remote Work" }
### Chat History:
<chat_history>
{{MESSAGES:END:2}}
</chat_history>"""

TAGS = """### Task:
Generate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.

### Guidelines:
- Start with high-level domains (e.g. Science, Technology, Philosophy, Arts, Politics, Business, Health, Sports, Entertainment, Education)
- Consider including relevant subfields/subdomains if they are strongly represented throughout the conversation
- If content is too short (less than 3 messages) or too diverse, use only ["General"]
- Use the chat's primary language; default to English if multilingual
- Prioritize accuracy over specificity

### Output:
JSON format: { "tags": ["tag1", "tag2", "tag3"] }

### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""

FOLLOW_UPS = """### Task:
Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next in this conversation as a **user**, based on the chat history, to help continue or deepen the discussion.
### Guidelines:
- Write all follow-up questions from the user’s point of view, directed to the assistant.
- Make questions concise, clear, and directly related to the discussed topic(s).
- Only suggest follow-ups that make sense given the chat content and do not repeat what was already covered.
- If the conversation is very short or not specific, suggest more general (but relevant) follow-ups the user might ask.
- Use the conversation's primary language; default to English if multilingual.
- Response must be a JSON array of strings, no extra text or formatting.
### Output:
JSON format: { "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }
### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""

QUERIES = """### Task:
Analyze the chat history to determine the necessity of generating search queries, in the given language. By default, **prioritize generating 1-3 broad and relevant search queries** unless it is absolutely certain that no additional information is required. The aim is to retrieve comprehensive, updated, and valuable information even with minimal uncertainty. If no search is unequivocally needed, return an empty list.

### Guidelines:
- Respond **EXCLUSIVELY** with a JSON object. Any form of extra commentary, explanation, or additional text is strictly prohibited.
- When generating search queries, respond in the format: { "queries": ["query1", "query2"] }, ensuring each query is distinct, concise, and relevant to the topic.
- If and only if it is entirely certain that no useful results can be retrieved by a search, return: { "queries": [] }.
- Err on the side of suggesting search queries if there is **any chance** they might provide useful or updated information.
- Be concise and focused on composing high-quality search queries, avoiding unnecessary elaboration, commentary, or assumptions.
- Today's date is: {{CURRENT_DATE}}.
- Always prioritize providing actionable and broad queries that maximize informational coverage.

### Output:
Strictly return in JSON format: 
{
  "queries": ["query1", "query2"]
}

### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>
"""

AUTOCOMPLETE = """### Task:
You are an autocompletion system. Continue the text in `<text>` based on the **completion type** in `<type>` and the given language.  

### **Instructions**:
1. Analyze `<text>` for context and meaning.  
2. Use `<type>` to guide your output:  
   - **General**: Provide a natural, concise continuation.  
   - **Search Query**: Complete as if generating a realistic search query.  
3. Start as if you are directly continuing `<text>`. Do **not** repeat, paraphrase, or respond as a model. Simply complete the text.  
4. Ensure the continuation:
   - Flows naturally from `<text>`.  
   - Avoids repetition, overexplaining, or unrelated ideas.  
5. If unsure, return: `{ "text": "" }`.  

### **Output Rules**:
- Respond only in JSON format: `{ "text": "<your_completion>" }`.

### **Examples**:
#### Example 1:  
Input:  
<type>General</type>  
<text>The sun was setting over the horizon, painting the sky</text>  
Output:  
{ "text": "with vibrant shades of orange and pink." }

#### Example 2:  
Input:  
<type>Search Query</type>  
<text>Top-rated restaurants in</text>  
Output:  
{ "text": "New York City for Italian cuisine." }  

---
### Context:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>
<type>{{TYPE}}</type>  
<text>{{PROMPT}}</text>  
#### Output:
"""

IMAGE_PROMPT = """### Task:
Generate a detailed prompt for am image generation task based on the given language and context. Describe the image as if you were explaining it to someone who cannot see it. Include relevant details, colors, shapes, and any other important elements.

### Guidelines:
- Be descriptive and detailed, focusing on the most important aspects of the image.
- Avoid making assumptions or adding information not present in the image.
- Use the chat's primary language; default to English if multilingual.
- If the image is too complex, focus on the most prominent elements.

### Output:
Strictly return in JSON format:
{
    "prompt": "Your detailed description here."
}

### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""

TOOLS = """Available Tools: {{TOOLS}}

Your task is to choose and return the correct tool(s) from the list of available tools based on the query. Follow these guidelines:

- Return only the JSON object, without any additional text or explanation.

- If no tools match the query, return an empty array: 
   {
     "tool_calls": []
   }

- If one or more tools match the query, construct a JSON response containing a "tool_calls" array with objects that include:
   - "name": The tool's name.
   - "parameters": A dictionary of required parameters and their corresponding values.

The format for the JSON response is strictly:
{
  "tool_calls": [
    {"name": "toolName1", "parameters": {"key1": "value1"}},
    {"name": "toolName2", "parameters": {"key2": "value2"}}
  ]
}"""

EMOJI = """Your task is to reflect the speaker's likely facial expression through a fitting emoji. Interpret emotions from the message and reflect their facial expression using fitting, diverse emojis (e.g., 😊, 😢, 😡, 😱).

Message: ```{{prompt}}```"""

FIRST = "How much oil did China import from Russia's state companies in 2024?"
ANSWER = ('Imports of Russian oil rose 49 percent to $76.4 billion. [1]\n\n**Sources**\n'
          '[1] China and Russia — "Trade" {x} (http://127.0.0.1:8000/#cite=a:1-9)')
CHAT = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "and gas?\nAlso pipelines."}, {"role": "assistant", "content": ANSWER}]


def render(template: str, messages: list[dict[str, str]], typed: str = "") -> str:
    """A template filled as Open WebUI's utils/task.py does: {{MESSAGES:END:n}} becomes
    'ROLE: content' lines of the last n messages (utils/misc.py get_messages_content)."""
    def history(match: re.Match[str]) -> str:
        return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages[-int(match.group(1)):])

    filled = re.sub(r"\{\{MESSAGES:END:(\d+)\}\}", history, template)
    return (filled.replace("{{CURRENT_DATE}}", "2026-11-25").replace("{{TYPE}}", "General")
            .replace("{{PROMPT}}", typed).replace("{{prompt}}", typed))


def parsed(reply: str) -> dict[str, Any]:
    """The reply as Open WebUI reads it, both ways: the backend takes the outermost {...}
    (utils/middleware.py); the frontend first turns ' ‘ ’ ` into " (src/lib/apis)."""
    backend = json.loads(reply[reply.find("{"):reply.rfind("}") + 1])
    frontend_text = re.sub("['‘’`]", '"', reply)
    frontend = json.loads(frontend_text[frontend_text.find("{"):frontend_text.rfind("}") + 1])
    assert backend == frontend
    return backend


def task(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# ------------------------------------------------------------------ task prompts


@pytest.mark.parametrize("template", [TITLE_06, TITLE_NEW])
def test_title_is_the_first_question_shortened(template: str):
    # asked after the first answer: the prompt holds that question and answer
    assert parsed(task_reply(task(render(template, CHAT[:2]))) or "") == {"title": "How much oil did China import"}
    reply = parsed(task_reply(task(render(template, [{"role": "user", "content": "what's China’s 'share'?"}])))
                   or "")
    assert reply == {"title": "Whatʼs Chinaʼs ʼshareʼ"}  # apostrophes that survive the frontend's rewrite


def test_title_shape():
    assert title("  how much *oil* did [China] import from Russia in 2024?  ") == "How much oil did China import"
    assert title("Trade in 2024?!") == "Trade in 2024"
    assert title('"Polar Silk Road" — what is it?') == "Polar Silk Road — what is"
    assert len(title("word " * 50).split()) == 6


@pytest.mark.parametrize(("template", "expected"), [
    (TAGS, {"tags": []}), (FOLLOW_UPS, {"follow_ups": []}), (AUTOCOMPLETE, {"text": ""}),
    (IMAGE_PROMPT, {"prompt": ""}),
])
def test_other_tasks_get_the_empty_form_they_ask_for(template: str, expected: dict[str, Any]):
    assert parsed(task_reply(task(render(template, CHAT, typed="imports of"))) or "") == expected


def test_query_generation_gets_the_last_question():
    assert parsed(task_reply(task(render(QUERIES, CHAT))) or "") == {"queries": ["and gas? Also pipelines."]}
    assert parsed(task_reply(task(render(QUERIES, []))) or "") == {"queries": []}


def test_tool_selection_and_emoji():
    messages = [{"role": "system", "content": TOOLS.replace("{{TOOLS}}", '[{"name": "search"}]')},
                {"role": "user", "content": f"Query: History:\nUSER: {FIRST}\nQuery: {FIRST}"}]
    assert parsed(task_reply(messages) or "") == {"tool_calls": []}
    assert task_reply(task(render(EMOJI, [], typed="I love it"))) == "🙂"


def test_content_parts_and_a_system_prompt_are_tolerated():
    prompt = render(TAGS, CHAT)
    parts = [{"role": "system", "content": "You are helpful."},
             {"role": "user", "content": [{"type": "text", "text": prompt}]}]
    assert parsed(task_reply(parts) or "") == {"tags": []}


@pytest.mark.parametrize("messages", [
    task("What does '### Task:' mean in a prompt, and what is <chat_history>?"),
    task("### Task: how much oil did China import from Russia?"),  # no chat history block
    task(f"Please explain this:\n### Task:\nnothing here\n{FIRST}"),
    task(f"<chat_history>\nUSER: {FIRST}\n</chat_history> ### Task: not at a line start"),
    # a real conversation whose last question quotes a task prompt is still a conversation
    [{"role": "user", "content": FIRST}, {"role": "assistant", "content": ANSWER},
     {"role": "user", "content": render(TAGS, CHAT)}],
    task("Your task is to tell me about oil imports"),
    [{"role": "user", "content": None}], [{"role": "user", "content": 42}], ["not a message"],
])
def test_real_questions_are_not_tasks(messages: list[Any]):
    assert task_reply(messages) is None


# ------------------------------------------------------------------ over HTTP


def app_for(settings: Settings, fake: FakeEmbedder | None = None) -> Any:
    fake = fake or FakeEmbedder()
    return create_app(settings, embedder_factory=lambda name: fake)


def test_task_requests_are_answered_without_retrieval(client: TestClient, served_embedder: FakeEmbedder):
    seen = len(served_embedder.encoded)
    long_chat = [{"role": "user", "content": FIRST + " " + "context " * 200}, {"role": "assistant", "content": ANSWER}]
    for template, key, value in [(TITLE_06, "title", "How much oil did China import"), (TAGS, "tags", []),
                                 (FOLLOW_UPS, "follow_ups", []), (TITLE_NEW, "title", "How much oil did China import")]:
        prompt = render(template, long_chat)
        assert len(prompt) > 1000  # over RAG_MAX_QUESTION_CHARS: a 422 before
        r = client.post("/v1/chat/completions", json={"model": "rag", "stream": False,
                                                       "messages": task(prompt), "max_completion_tokens": 1000})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
        assert parsed(body["choices"][0]["message"]["content"])[key] == value
        assert body["citations"] == []
    assert len(served_embedder.encoded) == seen  # no question was embedded: no retrieval ran
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "rag", "stream": True, "messages": task(render(TAGS, CHAT))}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    streamed = "".join(json.loads(x[6:])["choices"][0]["delta"].get("content") or "" for x in lines[:-1])
    assert parsed(streamed) == {"tags": []}
    assert len(served_embedder.encoded) == seen


def test_a_question_mentioning_task_is_answered(client: TestClient):
    question = f"### Task: {QUESTION}"
    r = client.post("/v1/chat/completions", json={"model": "rag", "messages": task(question)})
    assert r.status_code == 200
    assert r.json()["citations"] and "49 percent" in r.json()["choices"][0]["message"]["content"]


# ------------------------------------------------------------------ RAG_CHAT_SOURCES


@pytest.mark.parametrize(("headers", "body"), [
    (AIOHTTP, {}), ({"user-agent": "Python/3.12 aiohttp/3.9.5"}, {}),
    ({"X-OpenWebUI-Chat-Id": "c1", "User-Agent": "anything"}, {}), ({"x-openwebui-user-id": "u"}, {}),
    ({}, {"metadata": {"chat_id": "c1", "message_id": "m1"}}), ({}, {"chat_id": "c1"}), ({}, {"session_id": "s"}),
])
def test_open_webui_signals(headers: dict[str, str], body: dict[str, Any]):
    assert from_open_webui(headers, body)


@pytest.mark.parametrize(("headers", "body"), [
    ({"User-Agent": "OpenAI/Python 1.54.0"}, {}), ({"User-Agent": "python-httpx/0.28.1"}, {}),
    ({"User-Agent": "curl/8.5.0"}, {}), ({"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"}, {}),
    ({"User-Agent": "LibreChat aiohttp/3 wrapper"}, {}), ({}, {"metadata": {"project": "x"}}),
    ({}, {"chat_id": None, "temperature": 0.2}), ({}, {}),
])
def test_other_clients_are_not_open_webui(headers: dict[str, str], body: dict[str, Any]):
    assert not from_open_webui(headers, body)


def test_sources_modes():
    assert sources_in_text("always", True, AIOHTTP, {}) and not sources_in_text("never", False, {}, {})
    assert not sources_in_text("auto", True, AIOHTTP, {})  # Open WebUI shows the source events instead
    assert sources_in_text("auto", False, AIOHTTP, {})  # a non-streamed answer has no source events
    assert sources_in_text("auto", True, {"User-Agent": "OpenAI/Python 1.54.0"}, {})


def stream(client: TestClient, headers: dict[str, str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The streamed text and the chunks of one streamed answer to QUESTION."""
    with client.stream("POST", "/v1/chat/completions", headers=headers or {}, json={
            "model": "rag", "stream": True, "messages": task(QUESTION)}) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line and line != "data: [DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks), chunks


def complete(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = client.post("/v1/chat/completions", headers=headers or {},
                    json={"model": "rag", "messages": task(QUESTION)})
    assert r.status_code == 200
    return r.json()


def test_auto_leaves_the_list_out_of_streams_to_open_webui(client: TestClient):
    text, chunks = stream(client, AIOHTTP)
    assert "**Sources**" not in text and "[1]" in text and "49 percent" in text
    assert [e for e in chunks if "event" in e]  # the source events still go out
    assert chunks[0]["citations"] and chunks[-1]["citations"]
    plain, _ = stream(client)  # another client: the list stays
    assert plain.startswith(text) and "\n\n**Sources**\n[1] " in plain
    forwarded, _ = stream(client, {"X-OpenWebUI-Chat-Id": "c1"})
    assert forwarded == text
    body = complete(client, AIOHTTP)  # not streamed: no source events to show, so the list stays
    assert body["choices"][0]["message"]["content"] == plain and body["citations"]


@pytest.mark.parametrize("mode", ["never", "always"])
def test_never_and_always_hold_on_both_paths(built: Settings, mode: str):
    settings = built.model_copy(update={"chat_sources": mode})
    with TestClient(app_for(settings), base_url=BASE_URL) as c:
        for headers in ({}, AIOHTTP):
            text, chunks = stream(c, headers)
            body = complete(c, headers)
            assert body["choices"][0]["message"]["content"] == text
            assert ("**Sources**" in text) is (mode == "always")
            assert body["citations"] and chunks[-1]["citations"] and [e for e in chunks if "event" in e]
            assert "49 percent" in text and "[1]" in text


def test_sources_setting_on_the_upstream_model_path(built: Settings):
    from tests.helpers import fake_upstream

    with running_server(fake_upstream([])) as upstream:
        settings = built.model_copy(update={"llm_base_url": f"{upstream}/v1", "llm_model": "tiny",
                                            "chat_sources": "never"})
        with TestClient(app_for(settings), base_url=BASE_URL) as c:
            body = complete(c)
            text, chunks = stream(c)
        assert body["choices"][0]["message"]["content"] == text == "China bought more Russian oil [1]."
        assert body["citations"] and chunks[-1]["citations"]
        auto = built.model_copy(update={"llm_base_url": f"{upstream}/v1", "llm_model": "tiny"})
        with TestClient(app_for(auto), base_url=BASE_URL) as c:
            assert stream(c, AIOHTTP)[0] == "China bought more Russian oil [1]."
            assert stream(c)[0].startswith("China bought more Russian oil [1].\n\n**Sources**\n[1] ")


def test_settings_accept_only_the_three_modes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAG_CHAT_SOURCES", "never")
    assert Settings().chat_sources == "never"
    monkeypatch.setenv("RAG_CHAT_SOURCES", "sometimes")
    with pytest.raises(ValueError):
        Settings()


# ------------------------------------------------------------------ RAG_PUBLIC_URL


def test_citation_links_use_the_public_url_behind_an_internal_host(built: Settings):
    internal = {"allowed_hosts": ["rag-internal"]}
    settings = built.model_copy(update={**internal, "public_url": "https://rag.example.org/"})
    with TestClient(app_for(settings), base_url="http://rag-internal:8000") as c:
        body = complete(c)
        text, chunks = stream(c)
    urls = [x["url"] for x in body["citations"]] + [x["url"] for x in chunks[-1]["citations"]]
    urls += [e["event"]["data"]["source"]["url"] for e in chunks if "event" in e]
    assert urls and all(u.startswith("https://rag.example.org/#cite=") for u in urls)
    assert "rag-internal" not in body["choices"][0]["message"]["content"] + text
    assert "(https://rag.example.org/#cite=" in text
    with TestClient(app_for(built.model_copy(update=internal)), base_url="http://rag-internal:8000") as c:
        assert complete(c)["citations"][0]["url"].startswith("http://rag-internal:8000/#cite=")


# ------------------------------------------------------------------ the page a citation link opens


def test_the_page_has_an_icon(client: TestClient):
    """A citation link opens the chat page, and the browser asks for /favicon.ico: an icon,
    not a 404; the page links it, and its CSP lets it load."""
    r = client.get("/favicon.ico")
    assert (r.status_code, r.headers["content-type"]) == (200, "image/x-icon")
    assert r.content[:4] == b"\x00\x00\x01\x00" and r.headers["x-content-type-options"] == "nosniff"
    page = client.get("/")
    assert '<link rel="icon" href="/favicon.ico"' in page.text
    assert "img-src 'self'" in page.headers["content-security-policy"]
