"""Strategies: when gradients are sent, waited for and applied.

``get_strategy('delayed:2', solver, comm)`` builds one by name; the text after
a colon is the strategy's argument. Modules are imported lazily, so a single
process without MPI can still train with ``sync``.
"""
import importlib

from .base import Strategy  # noqa: F401

# name -> (module, class)
STRATEGIES = {
    'sync': ('sync', 'Sync'),
    'layerwise': ('layerwise', 'Layerwise'),
    'async-layerwise': ('async_layerwise', 'AsyncLayerwise'),
    'delayed': ('delayed', 'Delayed'),
    'ps-sync': ('ps', 'PsSync'),
    'ps-async': ('ps', 'PsAsync'),
}


def known():
    return ', '.join(STRATEGIES)


def get_strategy(spec, solver, mpi_comm=None, trace=None, **comm_settings):
    """The strategy named by ``spec`` (``name`` or ``name:argument``).

    ``mpi_comm``: an mpi4py communicator (None: one process, no MPI);
    ``comm_settings``: the communicator's bucket, chunk and progress settings.
    """
    name, _, argument = spec.partition(':')
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{spec}'; known strategies: {known()}")
    module, cls = STRATEGIES[name]
    strategy_class = getattr(importlib.import_module(f'.{module}', __name__), cls)
    return strategy_class(solver, mpi_comm, argument or None, trace=trace, **comm_settings)
