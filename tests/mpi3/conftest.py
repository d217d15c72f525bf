"""Parameter-server tests: run by ``mpiexec -n 3 python -m pytest tests/mpi3``
(1 server, 2 workers); they make sense at any size of at least 2 and skip at 1
(the serial run). See ``mpi_support`` for failures and reports."""
import pytest

pytest.importorskip('mpi4py.MPI')

from mpi_support import pytest_configure, pytest_runtest_logreport  # noqa: E402,F401 (the hooks)