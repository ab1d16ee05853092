"""The torch reference of `rag bench serve`, run as a user runs sentence-transformers: a plain
Python process of its own that never imports `rag`, so it keeps PyTorch's default threads and
OpenMP wait policy (`import rag` sets OMP_WAIT_POLICY=PASSIVE and one OpenBLAS thread, which
slowed torch's one-question encode from ~11 to ~15-20 ms when the reference ran in the
benchmark's own process: issue 26). The process loads the model once and, for each list of
questions it is sent (a JSON line on stdin), encodes them one at a time and answers their
times in ms (a JSON line on stdout), so the benchmark can alternate it with its other rounds.

Left out: a reference on another machine; settings a user might tune (threads, batch size).
"""

import json
import os
import subprocess
import sys

import rag

WORKER = r"""
import json, sys, time
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(sys.argv[1], device="cpu")
print("ready", flush=True)
for line in sys.stdin:
    times = []
    for question in json.loads(line):
        started = time.perf_counter()
        model.encode(question)
        times.append((time.perf_counter() - started) * 1000)
    print(json.dumps(times), flush=True)
"""


def plain_environment() -> dict[str, str]:
    """This process's environment without what `import rag` set (the user's own settings stay);
    the hub stays offline: nothing may download."""
    env = {name: value for name, value in os.environ.items() if name not in rag.SET_HERE}
    return {**env, "HF_HUB_OFFLINE": "1"}


class TorchReference:
    """sentence-transformers in a plain process (see the module docstring); a context manager."""

    def __init__(self, model_path: str):
        self._process = subprocess.Popen([sys.executable, "-c", WORKER, model_path], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, env=plain_environment())
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"the torch reference could not load {model_path} "
                               f"(exit status {self._process.returncode})")

    def times_ms(self, questions: list[str]) -> list[float]:
        """Each question encoded alone, in order: its time in ms."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(questions) + "\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the torch reference exited (status {self._process.poll()})")
        return [float(ms) for ms in json.loads(answer)]

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "TorchReference":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
