"""Benchmarks, each behind a `rag bench` subcommand: the real server's latency,
throughput and memory (`serve`, the server a subprocess: nothing here imports `api`), a
soak under mixed load (`soak`), collections of a million chunks (`scale`), live writes
(`writes`), and where a query's time goes and how encoder backends compare (`profile`)."""
