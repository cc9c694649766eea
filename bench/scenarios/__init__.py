"""Benchmark scenarios: each module here has ``run(stack, quick) -> list[BenchResult]`` (see bench/README.md)."""
