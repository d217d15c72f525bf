"""Argument types shared by the commands."""
import argparse

__all__ = ['count']


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
