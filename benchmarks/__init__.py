"""Benchmarks of hydranet-hub, each measured as a ratio against its alternative in the same run.

Run all of them with ``python -m benchmarks.run`` (add ``--quick`` for a run of a few minutes).
Results go to ``benchmarks/results/<mode>.json`` and the tables of ``docs/benchmarks.md``.
"""
