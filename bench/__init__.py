"""Benchmarks: dynogen's throughput against API limits, next to the tools users would pick instead.

``python -m bench`` runs every scenario (``python -m bench --help``); see
bench/README.md for the latest numbers and how each is measured.
"""

__all__: list[str] = []
