"""Benchmarks (run by hand or via ``make bench``, never by the test suite)."""
