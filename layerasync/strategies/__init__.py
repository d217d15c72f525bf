"""Strategies: when gradients are sent, waited for and applied.

``get_strategy('delayed:2', solver, comm)`` builds one by name; the text after
a colon is the strategy's argument. ``parse_strategy('delayed:2')`` checks a
name and its argument without building anything (``('delayed', 2)``); the
simulator and the bench read names through it too. Modules are imported
lazily, so a single process without MPI can still train with ``sync``, and
this package imports neither mpi4py nor a strategy module.
"""
import importlib
import math
from typing import Callable, NamedTuple

from .base import Strategy  # noqa: F401

__all__ = ['Strategy', 'STRATEGIES', 'DEFAULT_STRATEGIES', 'LAYERWISE_ORDERS', 'known',
           'parse_argument', 'parse_strategy', 'get_strategy']

# The apply orders of ``layerwise``; the first is the default.
LAYERWISE_ORDERS = ('all', 'ordered', 'lazy')

# The allreduce strategies compared side by side by default (``layerasync bench``
# and ``layerasync sim``): every apply order, and the smallest delay.
DEFAULT_STRATEGIES = ('sync', 'layerwise', 'layerwise:ordered', 'layerwise:lazy',
                      'async-layerwise', 'delayed:1')


def _no_argument(name, argument):
    if argument is not None:
        raise ValueError(f"strategy '{name}' takes no argument (got ':{argument}')")


def _apply_order(name, argument):
    order = argument or LAYERWISE_ORDERS[0]
    if order not in LAYERWISE_ORDERS:
        raise ValueError(f"layerwise apply order '{argument}' is not one of "
                         f"{', '.join(LAYERWISE_ORDERS)}")
    return order


def _delay(name, argument):
    if argument is None or not argument.isdigit() or int(argument) < 1:
        raise ValueError(f"delayed:K needs a delay K >= 1 (e.g. delayed:1), got "
                         f"'delayed{':' + argument if argument else ''}'; "
                         'K = 0 is the sync strategy')
    return int(argument)


class Outer(NamedTuple):
    """``local-sgd``'s outer optimizer: its rule, learning rate and momentum."""
    rule: str
    lr: float
    momentum: float


# DiLoCo's outer Nesterov momentum (Douillard et al. 2023, their defaults).
OUTER_RULES = {'nesterov': Outer('nesterov', 0.7, 0.9)}


def _local_sgd(name, argument):
    """``'4'`` -> (4, None); ``'4+outer=nesterov'`` -> (4, DiLoCo's Outer rule);
    ``'4+outer=nesterov:1:0.5'`` -> (4, Outer('nesterov', 1.0, 0.5))."""
    spelling = f'local-sgd:{argument}' if argument is not None else 'local-sgd'
    period, _, option = (argument or '').partition('+')
    if not period.isdigit() or int(period) < 1:
        raise ValueError(f"local-sgd:H needs a period H >= 1 (e.g. local-sgd:4), got '{spelling}'")
    outer = None
    if option:
        key, _, rule = option.partition('=')
        rule, *values = rule.split(':')
        if key != 'outer' or rule not in OUTER_RULES or len(values) > 2:
            raise ValueError(f"'{spelling}': the only option is +outer=RULE[:LR[:MOMENTUM]], RULE "
                             f"one of {', '.join(OUTER_RULES)} (e.g. local-sgd:4+outer=nesterov, "
                             'or local-sgd:4+outer=nesterov:1:0.5)')
        outer = OUTER_RULES[rule]
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            numbers = [-1.0]
        if any(not 0 <= x < math.inf for x in numbers) or (len(numbers) == 2 and numbers[1] >= 1):
            raise ValueError(f"'{spelling}': the outer rate must be a number >= 0 and the outer "
                             'momentum in [0, 1)')
        outer = outer._replace(**dict(zip(('lr', 'momentum'), numbers)))
    return int(period), outer


class _Entry(NamedTuple):
    module: str          # below the layerasync package, imported when the strategy is built
    cls: str
    parse: Callable      # (name, argument text or None) -> the argument's value
    spelling: str        # how the name and its argument are written, for messages


STRATEGIES = {
    'sync': _Entry('strategies.sync', 'Sync', _no_argument, 'sync'),
    'layerwise': _Entry('strategies.layerwise', 'Layerwise', _apply_order,
                        f"layerwise[:{'|'.join(LAYERWISE_ORDERS)}]"),
    'async-layerwise': _Entry('strategies.async_layerwise', 'AsyncLayerwise', _no_argument,
                              'async-layerwise'),
    'delayed': _Entry('strategies.delayed', 'Delayed', _delay, 'delayed:K'),
    'sharded': _Entry('strategies.sharded', 'Sharded', _no_argument, 'sharded'),
    'local-sgd': _Entry('strategies.local_sgd', 'LocalSGD', _local_sgd,
                        'local-sgd:H[+outer=nesterov[:LR[:MOMENTUM]]]'),
    'ps-sync': _Entry('ps.worker', 'PsSync', _no_argument, 'ps-sync'),
    'ps-async': _Entry('ps.worker', 'PsAsync', _no_argument, 'ps-async'),
}


def known(names=STRATEGIES):
    """How ``names`` are written, for messages: ``sync, layerwise[:all|ordered|lazy], ...``."""
    return ', '.join(STRATEGIES[name].spelling for name in names)


def parse_argument(name, argument):
    """The value of strategy ``name``'s argument (the text after the colon, or None).

    ``layerwise``: its apply order (default ``'all'``); ``delayed``: K, an int
    >= 1; ``local-sgd``: (H, its ``Outer`` optimizer or None); the others take
    none (None). ValueError saying what is wrong.
    """
    return STRATEGIES[name].parse(name, argument)


def parse_strategy(spec):
    """``'delayed:2'`` -> ``('delayed', 2)``, ``'layerwise'`` -> ``('layerwise', 'all')``,
    ``'sync'`` -> ``('sync', None)``; ValueError for an unknown name or a bad argument.
    An empty argument (``'layerwise:'``) is no argument."""
    name, _, argument = spec.partition(':')
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{spec}'; known strategies: {known()}")
    return name, parse_argument(name, argument or None)


def get_strategy(spec, solver, mpi_comm=None, trace=None, **comm_settings):
    """The strategy named by ``spec`` (``name`` or ``name:argument``).

    ``mpi_comm``: an mpi4py communicator (None: one process, no MPI);
    ``comm_settings``: the communicator's bucket, chunk and progress settings.
    """
    name, argument = parse_strategy(spec)
    entry = STRATEGIES[name]
    strategy_class = getattr(importlib.import_module(f'..{entry.module}', __name__), entry.cls)
    return strategy_class(solver, mpi_comm, argument, trace=trace, **comm_settings)
