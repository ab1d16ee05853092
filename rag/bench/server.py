"""The server under test, as every benchmark starts it: `rag serve` in a subprocess on a
free loopback port (nothing here imports `api`), waited for until /ready, its memory read
from /proc; and the distinct questions the benchmarks ask it.

Left out: remote servers (a benchmark measures the process it started, on this machine).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

QUESTIONS = [
    "What was the value of trade between China and Russia in 2024?",
    "Are China and Russia formal allies?",
    "How many times have Xi and Putin met?",
    "Why does Russia depend more on China than the reverse?",
    "What is the Power of Siberia 2 pipeline?",
    "When did China and Russia hold their first joint military drill?",
    "What role do BRICS and the SCO play for Beijing and Moscow?",
    "How do China and Russia cooperate on North Korea?",
    "What did Zelenskyy accuse China of in April 2025?",
    "What is the Polar Silk Road?",
    "How did the Wagner mutiny affect China's position?",
    "Which countries joined BRICS as of 2025?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(index_dir: Path, reload_poll_seconds: float, env: dict[str, str] | None = None,
                 log: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`rag serve` on `index_dir` in a subprocess on a free port, with `env` added to the
    environment, its log written to `log` (else dropped); the process and its URL."""
    port = free_port()
    env = {**os.environ, "RAG_PORT": str(port), "RAG_INDEX_DIR": str(index_dir),
           "RAG_RELOAD_POLL_SECONDS": str(reload_poll_seconds), **(env or {})}
    with open(log, "wb") if log else open(os.devnull, "wb") as sink:  # the child keeps its own copy
        server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], env=env,
                                  stdout=sink, stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}"


def wait_ready(url: str, server: subprocess.Popen[bytes], launched: float) -> float:
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.perf_counter() - launched < 120:
            if server.poll() is not None:
                raise RuntimeError(f"server exited with status {server.returncode}")
            try:
                if http.get("/ready").status_code == 200:
                    return time.perf_counter() - launched
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError("server not ready after 120 s")
