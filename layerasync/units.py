"""Rates written by people: one parser for every command that takes one.

``parse_rate`` turns a rate into bytes per second. It accepts tc's units and
an explicit bytes-per-second form; the prefix is k, M, G or T (powers of
1000, in any case: tc's ``mbit`` is a megabit), or Ki, Mi, Gi, Ti (powers of
1024):

=============================================  =====================  ===============
spelling                                       means                  example
=============================================  =====================  ===============
``bit``, ``bit/s``, ``b/s`` (lowercase b)      bits per second        ``1gbit``, ``10Gb/s``
``Bps``, ``B/s`` (capital B), ``byte``         bytes per second       ``125MBps``, ``1.25GB/s``,
                                                                      ``125mbyte``
=============================================  =====================  ===============

**Refused as ambiguous: ``bps`` with a lowercase b** (``1gbps``, ``100mbps``,
``Gbps``). tc, whose spelling ``layerasync cluster up`` passes on, reads
``bps`` as *bytes* per second, whatever the case (``1gbps`` is 8 Gbit/s);
common usage, and this project's simulator before, read ``Gbps`` as
*gigabits* per second (1 Gbit/s). Following tc would silently give a cluster
user who writes the link speed of a 1 GbE card eight times the rate they
meant, and every result eight times off; following common usage would make
the same word mean two things depending on the command. A refusal costs one
retry, and its message names both readings and the unambiguous spellings.
A bare number (tc: bits per second) is refused for the same reason.
"""
import re

__all__ = ['parse_rate', 'format_rate', 'RATE_SPELLINGS']

_PREFIXES = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9, 't': 1e12,
             'ki': 2 ** 10, 'mi': 2 ** 20, 'gi': 2 ** 30, 'ti': 2 ** 40}
_RATE = re.compile(r'''\s*
    ( (?: \d+ (?:\.\d*)? | \.\d+ ) (?:[eE][-+]?\d+)? ) \s*      # the number
    ( (?i: [kmgt]i? )? )                                      # the prefix, any case
    ( (?i: bit(?:/s)? | byte(?:/s)? )                        # the unit: bit, byte in any case;
    | b/s | B/s | Bps                                         # here the b's case says which;
    | (?i: bps ) )                                            # any other bps: refused
    \s*''', re.VERBOSE)
RATE_SPELLINGS = '1gbit, 100mbit or 10Gb/s (bits per second), 125MBps, 1.25GB/s or 125mbyte (bytes)'


def parse_rate(text, what='rate'):
    """A rate such as ``1gbit`` or ``125MB/s`` -> bytes per second (a float > 0).

    ValueError naming ``what`` (e.g. ``'--bandwidth'``) and the text if it is
    not a rate, or if it is ambiguous (``bps`` with a lowercase b; see the
    module docstring).
    """
    m = _RATE.fullmatch(text)
    if m is None:
        raise ValueError(f"{what} '{text}': expected a number and a unit, e.g. {RATE_SPELLINGS}")
    number, prefix, unit = m.groups()
    value = float(number) * _PREFIXES[prefix.lower()]
    if unit.lower() == 'bps' and unit != 'Bps':
        bytes_prefix = prefix[:1].upper() + prefix[1:].lower()
        raise ValueError(f"{what} '{text}' is ambiguous: tc reads {prefix}{unit} as bytes per "
                         f'second ({format_rate(value)}), common usage as bits per second '
                         f"({format_rate(value / 8)}); write {number}{prefix}bit for bits or "
                         f'{number}{bytes_prefix}Bps (= {number}{bytes_prefix}B/s) for bytes')
    is_bytes = unit in ('Bps', 'B/s') or unit.lower().startswith('byte')
    rate = value if is_bytes else value / 8
    if rate <= 0:
        raise ValueError(f"{what} '{text}': a rate must be positive")
    return rate


def format_rate(rate):
    """Bytes per second for people, in bits and in bytes: ``8 Gbit/s = 1 GB/s``."""
    def scaled(value, unit):
        prefix = next((p for p in 'TGMk' if value >= _PREFIXES[p.lower()]), '')
        return f'{value / _PREFIXES[prefix.lower()]:.4g} {prefix}{unit}'
    return f"{scaled(8 * rate, 'bit/s')} = {scaled(rate, 'B/s')}"
