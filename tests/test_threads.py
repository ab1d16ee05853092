"""The thread settings `import rag` makes for every process it starts (rag/__init__.py): numpy's
OpenBLAS at one thread (its spinning second thread cost rag serve ~100 ms of CPU a query:
docs/benchmarks.md#numpys-blas-threads-rag__init__py), FAISS's left alone, and a user's own
setting kept."""

import json
import os
import subprocess
import sys

PROBE = ("import rag, numpy, faiss, threadpoolctl, json; "
         "print(json.dumps({i['prefix']: i['num_threads'] for i in threadpoolctl.threadpool_info()}))")


def threads(env: dict[str, str]) -> dict[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS", "OMP_"))}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          check=True)
    return dict(json.loads(done.stdout))


def test_numpys_blas_runs_one_thread_and_faiss_keeps_its_own():
    found = threads({})
    assert found["libscipy_openblas"] == 1
    assert found["libgomp"] == (os.cpu_count() or 1)  # FAISS's OpenMP threads: one per core


def test_a_users_own_setting_wins():
    assert threads({"OPENBLAS_NUM_THREADS": "2"})["libscipy_openblas"] == 2
