"""``make bench``: the throughput and latency of the signed exchange, against a plain baseline.

Rules:

- Everything the benchmark starts binds 127.0.0.1 on a port the operating system chooses and
  runs as a separate process, started by :mod:`bench.processes` and stopped by it at the end,
  also on Ctrl+C or an error.
- The benchmark measures, it never asserts: the numbers go to ``bench/results/latest.json``
  and a table; the tests of this package check that the harness works, never how fast.
- The same minimal provider service (:mod:`bench.service`) answers behind the nodes and behind
  the baseline proxies (:mod:`bench.baseline`), so the ratio between the two isolates what the
  nodes add: signing, verification, access checks and the message log.
"""
