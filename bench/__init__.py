"""Benchmarks for photo-sync (issue 7): `python -m bench.run --sizes 1000,10000`.

Not tests: they start Azurite and the tenant simulator, run the real code paths against them and
print tables of request counts, throughput, memory and latency. See docs/benchmarks.md.
"""
