"""The model zoo: prototxt files shipped with the package.

``path(name)`` gives the net definition ``<name>.prototxt``; ``names()`` lists
them. Solver files are ``<name>_solver.prototxt``. ``resolve(value)`` reads
what a user typed (``--model``, ``--solver``): a file, or a zoo name.
"""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))

__all__ = ['names', 'path', 'resolve']


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


def resolve(value, kind='net'):
    """``value`` itself if it reads as a file (it exists, holds a path separator
    or ends in ``.prototxt``), else zoo model ``value``'s ``kind`` file (see
    ``path``). ValueError naming both readings when it is neither."""
    if os.path.exists(value) or os.sep in value or value.endswith('.prototxt'):
        return value
    try:
        return path(value, kind)
    except ValueError as e:
        raise ValueError(f'{value}: no such file, and {e}') from None
