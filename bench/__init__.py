"""Plant's benchmarks: ``make bench`` / ``make bench-quick`` (see ``bench/README.md``).

The harness (:mod:`bench.harness`) starts the embedded stack; scenario modules under
``bench/scenarios/`` measure against it and return :class:`bench.harness.BenchResult`s;
:mod:`bench.run` runs them and writes ``bench/results/<timestamp>.json`` and the results
sections of ``docs/benchmarks.md``.
"""
