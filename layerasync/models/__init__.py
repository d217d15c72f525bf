"""The model zoo: prototxt files shipped with the package.

``path(name)`` gives the net definition ``<name>.prototxt``; ``names()`` lists
them. Solver files are ``<name>_solver.prototxt``.
"""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def names():
    return sorted(f[:-len('.prototxt')] for f in os.listdir(_HERE)
                  if f.endswith('.prototxt') and not f.endswith('_solver.prototxt'))


def path(name, kind='net'):
    """Path of zoo model ``name``'s net (``kind='net'``) or solver (``kind='solver'``) file."""
    fname = f'{name}.prototxt' if kind == 'net' else f'{name}_solver.prototxt'
    full = os.path.join(_HERE, fname)
    if not os.path.exists(full):
        raise ValueError(f"no zoo model '{name}' ({fname}); known models: {', '.join(names())}")
    return full
