"""The HTTP benchmark's harness: servers as processes, pre-signed traffic, wrk and the batch client
(used by `benches/test_bench_http.py`)."""
