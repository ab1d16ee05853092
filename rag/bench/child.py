"""Running a benchmark's piece in a fresh process: its time and memory are its own, and a
crash or an out-of-memory kill costs only that piece (`rag bench scale` and `rag bench
reembed` build their collections this way).

Left out: a timeout (a benchmark's build runs as long as it takes; the parent reports a death).
"""

import multiprocessing
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChildError:
    message: str


def in_child(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a fresh (spawned) process, its result sent back; a RuntimeError
    with the child's error, or its exit status if it died without a word (killed, out of memory)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_run_in_child, args=(function, args, results))
    child.start()
    while True:  # a dead child is reported, not waited on
        try:
            outcome = results.get(timeout=1.0)
            break
        except queue.Empty:
            if not child.is_alive():
                raise RuntimeError(f"{function.__name__}'s process died (exit status {child.exitcode})") from None
    child.join()
    if isinstance(outcome, ChildError):
        raise RuntimeError(f"{function.__name__} failed: {outcome.message}")
    return outcome


def _run_in_child(function: Callable[..., Any], args: tuple[Any, ...], results: Any) -> None:
    try:
        results.put(function(*args))
    except Exception as exc:  # the parent reports it
        results.put(ChildError(f"{type(exc).__name__}: {exc}"))
