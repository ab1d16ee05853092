"""What the sandbox's workers run in tests/ingest/test_sandbox.py: module-level, so that a
worker can import them by name, and in a module that imports next to nothing, so that a
worker's import stays far below the 1 s of CPU its limits allow (the test module imports
the whole service, through tests.helpers)."""

import os
import time

from rag.errors import TooLargeError


def crash() -> None:
    os.abort()


def hog_memory() -> bytes:
    return bytes(4 << 30)  # 4 GiB, over the 512 MB limit


def spin() -> None:
    while True:
        pass


def sleep_long() -> None:
    time.sleep(60)


def fail_with_a_bug() -> None:
    raise ValueError("a parser bug")


def refuse() -> None:
    raise TooLargeError("the PDF has 10000 pages; the limit is 2000 (RAG_MAX_PDF_PAGES)")
