"""fastllm benchmark suites (see README "Benchmarks")."""
