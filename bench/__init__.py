"""Benchmarks: each runs against real servers it starts itself and prints its figures.

Run all with `make bench`, or one with `python -m bench NAME`. Figures go, by hand, with the
machine and date, into docs/benchmarks.md. Nothing here is a pass/fail test.
"""
