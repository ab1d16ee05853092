"""Every pass over user text is linear: a hostile input four times as long takes at most
about four times as long (issue 21, "Linear time in the input").

Each test times one pass on a hostile input of size n and 4n, the best of 3 runs each
with the garbage collector off (its full collections are not the pass's work), and
asserts time(4n) / time(n) < 8: linear gives ~4, quadratic ~16. n is chosen so the small
run takes ~20-100 ms, long enough for the timer and short enough for a shared machine; a
ratio over the limit is measured once more before it fails, so one stall of a busy
machine does not fail a linear pass.

Left out: absolute time limits (they depend on the machine), and the tokenizers' own
cost (tiktoken's BPE is ~n log n on a long run of one character, measured ratio ~5).
"""

import gc
import time
from collections.abc import Callable

import numpy as np

from api.chat import webui
from rag import lexical
from rag.ingest import chunk, clean, pdf
from rag.search import answer, conversation
from tests.helpers import FakeEmbedder

RUNS = 3
LIMIT = 8.0  # time(4n) / time(n): linear ~4, quadratic ~16


def _best(run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _ratio(make: Callable[[int], Callable[[], object]], n: int) -> tuple[float, float]:
    """Best-of-RUNS seconds of make(n)() and make(4 * n)(); inputs are built before timing."""
    small, large = make(n), make(4 * n)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _best(small), _best(large)
    finally:
        if enabled:
            gc.enable()


def assert_linear(make: Callable[[int], Callable[[], object]], n: int) -> None:
    small, large = _ratio(make, n)
    if large / small >= LIMIT:  # once more: a stall on a shared machine is not quadratic work
        small, large = _ratio(make, n)
    assert large / small < LIMIT, f"n: {small * 1000:.1f} ms, 4n: {large * 1000:.1f} ms, ratio {large / small:.1f}"


def test_clean_is_linear_in_lines_that_repeat_within_a_paragraph():
    line = "A caption printed twice in one paragraph, here again"

    def make(n: int) -> Callable[[], object]:
        raw = "\n".join([line] * n)
        return lambda: clean.clean(raw, title="A long title " * 50)

    assert_linear(make, 2000)


def test_webui_task_detection_is_linear_in_repeated_tags():
    def make(n: int) -> Callable[[], object]:
        # opening tags that never close, a task line, JSON-key and role-line lookalikes
        prompt = ("### Task:\n" + "<chat_history>" * n + "\nUSER: " + '{ "a' * n
                  + "\n" + " \t" * n + "###" + "\nUSER:" * n + "</chat_history")
        closed = "### Task:\n<chat_history>\n" + "USER: x\n" * (16 * n) + "</chat_history>" + '{ "' * n
        return lambda: (webui.task_reply([{"role": "user", "content": prompt}]),
                        webui.task_reply([{"role": "user", "content": closed}]))

    assert_linear(make, 4000)


def test_sentence_splitting_and_chunking_are_linear():
    fake = FakeEmbedder(max_tokens=512)
    params = chunk.ChunkParams(256, 40, 512)

    def make(n: int) -> Callable[[], object]:
        # one endless sentence of words (cut at words), then sentence-end lookalikes
        text = "a " * n + '."' + '"' * n + " x" + "A. " * n + "a." + " " * n + "b" + "\n\n\n" * n + "End."
        doc = clean.CleanDocument(text, [clean.Section("S", 0, len(text))])
        return lambda: chunk.chunk_document("d", "T", doc, params, fake.count_tokens)

    assert_linear(make, 4000)


def test_answer_features_are_linear_in_the_question():
    rng = np.random.default_rng(0)
    candidates = [answer.Candidate(rank, "d", 0, 60, f"China imported {rank} million barrels in 2024 from Russia.",
                                   rng.standard_normal(8)) for rank in (1, 2, 3, 4, 5)]
    vector = rng.standard_normal(8)

    def make(n: int) -> Callable[[], object]:
        # curly quotes that never close, straight quotes, numbers and names
        question = "How much oil? " + "“a " * n + '"b ' * n + "1,2.3 " * n + "Xi Jinping " * (n // 10)
        return lambda: (answer.features(question, vector, candidates), answer.missing_share(question, ["x"]))

    assert_linear(make, 8000)


def test_follow_up_resolution_is_linear_in_the_chain():
    def encode(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4))

    def make(n: int) -> Callable[[], object]:
        history = ["And it? " + "." * 1000] * n  # every turn a follow-up of the one before
        return lambda: conversation.resolve("And them?", np.ones(4) / 2, history, encode)

    assert_linear(make, 2000)


def test_tokenize_is_linear():
    def make(n: int) -> Callable[[], object]:
        text = "running Russia’s exports " * n + "a" * (20 * n) + " " + "’" * n
        return lambda: lexical.tokenize(text)

    assert_linear(make, 16000)


def test_pdf_normalise_is_linear():
    def make(n: int) -> Callable[[], object]:
        text = " " * n + "word\r\n\r\ufffe\x00\x0b\x0c\ud800\uffff" * n + "\t" * n
        return lambda: pdf._normalise(text)

    assert_linear(make, 40000)
