"""Numba kernels: pure functions over arrays, no framework imports.

Every kernel is compiled ``nopython``, ``nogil`` (a communication thread runs
beside it) and ``cache=True`` (compiled once per machine, not per process).
Naming: ``<op>_forward(..., out)`` / ``<op>_backward(..., out)``.
"""
