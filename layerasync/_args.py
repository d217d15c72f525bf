"""Argument types shared by the commands."""
import argparse

__all__ = ['count', 'seconds', 'layer_types', 'compute_mode', 'positive', 'straggler',
           'add_compute_arguments', 'replayed_compute']


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


def _positive_number(text, what):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a {what}') from None
    if not 0 < value < float('inf'):
        raise argparse.ArgumentTypeError(f'{value:g} is not a positive, finite {what}')
    return value


def seconds(text):
    """An argparse type: a positive, finite number of seconds."""
    return _positive_number(text, 'number of seconds')


def positive(text):
    """An argparse type: a positive, finite number."""
    return _positive_number(text, 'number')


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


def compression(text):
    """``--compress``: a codec spec (``comm.parse_codec``), checked, returned as given."""
    from .comm import parse_codec
    try:
        parse_codec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def compute_mode(text):
    """An argparse type: ``real``, or ``replay[:PROFILE]``; returns (mode, profile or None)."""
    mode, _, profile = text.partition(':')
    if mode == 'real' and not profile:
        return ('real', None)
    if mode == 'replay':
        return ('replay', profile or None)
    raise argparse.ArgumentTypeError(f"{text!r}: give real, or replay[:PROFILE] (a profile "
                                     'written by layerasync time --json)')


def straggler(text):
    """An argparse type: ``RANK:F``, a rank (>= 0) and a positive factor; (rank, factor)."""
    rank, colon, factor = text.partition(':')
    if not colon:
        raise argparse.ArgumentTypeError(f'{text!r}: give RANK:F, e.g. 1:1.5 (rank 1 computes '
                                         '1.5 times slower)')
    return count(0)(rank), positive(factor)


def add_compute_arguments(p):
    p.add_argument('--compute', type=compute_mode, default=('real', None),
                   metavar='real|replay[:PROFILE]',
                   help='replay: every layer takes the time PROFILE measured (layerasync time '
                        '--json; without PROFILE rank 0 measures it first) instead of '
                        'computing, while communication and updates run for real')
    p.add_argument('--compute-speedup', type=positive, default=1.0, metavar='X',
                   help='with --compute replay: divide the profiled times by X (a faster node)')
    p.add_argument('--straggler', type=straggler, default=None, metavar='RANK:F',
                   help='with --compute replay: rank RANK replays F times slower than the '
                        'others (a straggler; F < 1 a faster rank)')


def replayed_compute(args, net, comm=None, log=print):
    """Apply ``--compute replay`` to ``net`` (nothing for ``real``); with ``comm``,
    rank 0 measures a missing profile and every rank replays it."""
    mode, path = args.compute
    slow = args.straggler
    if mode == 'real':
        if args.compute_speedup != 1.0:
            raise ValueError('--compute-speedup scales replayed compute: give --compute replay')
        if slow is not None:
            raise ValueError('--straggler slows replayed compute: give --compute replay')
        return None
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    speedup = args.compute_speedup
    if slow is not None:
        if slow[0] >= size:
            raise ValueError(f'--straggler {slow[0]}:{slow[1]:g}: there is no rank {slow[0]} in '
                             f'a job of {size} rank(s)')
        if rank == slow[0]:
            speedup /= slow[1]
    from .replay import load_profile, replay
    from .timing import profile_net
    if path:
        profile = load_profile(path)
    else:
        profile = None
        if comm is None or comm.Get_rank() == 0:
            log(f'Profiling {net.name or "the net"} for the replay (5 iterations)')
            profile = profile_net(net, 5)
        if comm is not None:
            profile = comm.bcast(profile)
    replay(net, profile, speedup)
    total = sum(row['forward_ms'] + row['backward_ms'] for row in profile['layers'])
    speed = f' at {args.compute_speedup:g}x speed' if args.compute_speedup != 1 else ''
    if slow is not None:
        speed += f', rank {slow[0]} {slow[1]:g}x slower'
    log(f"Compute replayed from {profile.get('path', 'the measured profile')}{speed}: "
        f'{total / args.compute_speedup:.1f} ms of forward and backward per iteration')
    return profile
