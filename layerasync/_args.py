"""Argument types shared by the commands."""
import argparse

__all__ = ['count', 'seconds']


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
