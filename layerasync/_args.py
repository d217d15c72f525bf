"""Argument types shared by the commands."""
import argparse

__all__ = ['count', 'seconds', 'layer_types']


def count(low):
    """An argparse type: a whole number >= ``low``, refused with the flag's name otherwise."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
        if value < low:
            raise argparse.ArgumentTypeError(f'{value} is below the least allowed, {low}')
        return value
    parse.__name__ = f'whole number >= {low}'
    return parse


def seconds(text):
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number of seconds') from None
    if not 0 < value < float('inf'):
        raise argparse.ArgumentTypeError(f'{value:g} is not a positive, finite number of seconds')
    return value


def layer_types(text):
    """An argparse type: comma-separated layer types, each a type the package has."""
    from .layers import LAYERS
    types = tuple(t for t in text.split(',') if t)
    unknown = [t for t in types if t not in LAYERS]
    if unknown or not types:
        raise argparse.ArgumentTypeError(
            f"unknown layer type {', '.join(map(repr, unknown)) or repr(text)}; known: "
            f"{', '.join(sorted(LAYERS))}")
    return types
