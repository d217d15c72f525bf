"""``layerasync sim``: extrapolate a measured profile to P ranks on a network.

    layerasync time --model alexnet --synthetic --batch 16 --iterations 3 --json alexnet.json
    layerasync sim --profile alexnet.json --fabric ib-edr --ranks 2,4,8,...,256 --plot alexnet.png

The network is a preset (``--fabric``), a fit to a measured allreduce sweep
(``--network sweep.json`` from ``benchmarks/allreduce_sweep.py``), either of
them adjusted by ``--bandwidth`` / ``--latency`` / ``--algorithm``. Rates are
spelled as ``layerasync.units`` reads them (``10gbit``, ``1.25GB/s``).
"""
import argparse
import math

from ..bench import write_csv
from ..comm import DEFAULTS, SCHEDULERS
from ..units import RATE_SPELLINGS, parse_rate
from . import (ALGORITHMS, DEFAULT_SCHEDULER, DEFAULT_STRATEGIES, FABRICS, fabric,
               load_profile, make_plan, simulate)
from .._args import compression
from .calibrate import (fit_network, fit_report, load_sweep, measure_codec_rate,
                        measure_update_rate)
from .model import parse_latency

__all__ = ['add_commands', 'parse_ranks']


def parse_ranks(text):
    """'1,2,4' or '2,4,8,...,256' (a geometric run, its ratio from the two values before '...')."""
    items = [s.strip() for s in text.split(',') if s.strip()]
    try:
        if '...' not in items:
            ranks = [int(s) for s in items]
        else:
            k = items.index('...')
            head, last = [int(s) for s in items[:k]], int(items[k + 1])
            if len(head) < 2 or head[-1] <= head[-2] or head[-1] % head[-2] or k != len(items) - 2:
                raise ValueError
            ratio, ranks = head[-1] // head[-2], head
            while ranks[-1] * ratio <= last:
                ranks.append(ranks[-1] * ratio)
    except (ValueError, IndexError):
        raise ValueError(f"--ranks '{text}': expected a comma list of rank counts (1,2,4) or a "
                         'doubling run written 2,4,8,...,256') from None
    if not ranks or min(ranks) < 1:
        raise ValueError(f"--ranks '{text}': rank counts must be at least 1")
    return ranks


def _argument(parse, *args):
    """``parse(text, *args)`` as an argparse type: its ValueError message shown as the error."""
    def convert(text):
        try:
            return parse(text, *args)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def add_commands(subparsers):
    """Add the ``sim`` command to ``layerasync``'s subparsers."""
    p = subparsers.add_parser('sim',
                              help='extrapolate a layer profile to P ranks (performance model)',
                              description=__doc__.split('\n')[0])
    p.add_argument('--profile', required=True, metavar='FILE',
                   help='per-layer profile from `layerasync time --json FILE`')
    p.add_argument('--ranks', type=_argument(parse_ranks), default=parse_ranks('1,2,4,...,256'),
                   metavar='LIST', help='rank counts, e.g. 2,4,8 or 2,4,8,...,256 (default 1..256)')
    g = p.add_argument_group('network')
    g.add_argument('--fabric', choices=sorted(FABRICS), default='ib-edr',
                   help='nominal interconnect preset (default ib-edr)')
    g.add_argument('--network', metavar='SWEEP.json',
                   help='fit latency and bandwidth to an allreduce sweep instead of a preset')
    g.add_argument('--bandwidth', type=_argument(parse_rate, '--bandwidth'), metavar='RATE',
                   help=f'link bandwidth (overrides the preset/fit): {RATE_SPELLINGS}; 10gbps '
                        'is refused as ambiguous (tc reads bytes, common usage bits)')
    g.add_argument('--latency', type=_argument(parse_latency), metavar='TIME',
                   help='latency per message step, e.g. 2us (overrides the preset/fit)')
    g.add_argument('--step-cost', type=_argument(parse_latency), metavar='TIME',
                   help='busy time per message step, in which the rank\'s part of the '
                        'collective stands still (scheduling, progress calls), e.g. 300us '
                        '(default 0)')
    g.add_argument('--algorithm', choices=ALGORITHMS, help='allreduce algorithm (default ring)')
    g.add_argument('--reduce-rate', type=_argument(parse_rate, '--reduce-rate'), metavar='RATE',
                   help='reduction arithmetic rate, e.g. 5GB/s (gamma = 1/rate; default: none, '
                        'or folded into the fitted bandwidth with --network)')
    g = p.add_argument_group('compute')
    g.add_argument('--update-rate', type=_argument(parse_rate, '--update-rate'), metavar='RATE',
                   help='solver update rate in parameter bytes, e.g. 2.7GB/s (default: '
                        'measured here)')
    g.add_argument('--compute-speedup', type=float, default=1.0, metavar='S',
                   help='what if a rank computed S times faster than the profiled process '
                        '(e.g. a many-core node); divides forward, backward and update times')
    g.add_argument('--straggler', type=_argument(float), default=1.0, metavar='F',
                   help="one rank's forward and backward take F times the others' (as "
                        '--straggler RANK:F of a replayed run); the others wait for it at '
                        'every collective (default %(default)s)')
    g.add_argument('--hook-overhead', type=_argument(parse_latency), metavar='TIME',
                   help='compute time per layer hook that drives communication, e.g. 50us '
                        '(default: the sweep\'s hook_overhead_s with --network, else 0)')
    g = p.add_argument_group('strategies and communicator (as `layerasync train`, with its '
                             'defaults)')
    g.add_argument('--strategy', action='append', metavar='S',
                   help='strategy to model (repeat or comma-separate; default: '
                        f"{', '.join(DEFAULT_STRATEGIES)})")
    g.add_argument('--fusion-bytes', type=int, default=DEFAULTS['fusion_bytes'], metavar='N',
                   help='fuse layers into buckets of at least N bytes (0: one per layer; '
                        'default %(default)s)')
    g.add_argument('--chunk-bytes', type=int, default=DEFAULTS['chunk_bytes'], metavar='N',
                   help='cut buckets into chunks of at most N bytes (0: no cutting; '
                        'default %(default)s)')
    g.add_argument('--in-flight', type=int, default=DEFAULTS['max_in_flight'], metavar='N',
                   help='at most N chunk reductions in flight (default: as layerasync train, '
                        'by scheduler)')
    g.add_argument('--compress', type=compression, default=None,
                   metavar='fp16|bf16|topk:RATIO|powersgd:RANK',
                   help="gradient compression as train's --compress: what its collectives "
                        'send, and its packing at --codec-rate (powersgd needs a profile '
                        'with blob shapes)')
    g.add_argument('--codec-rate', type=_argument(parse_rate, '--codec-rate'), metavar='RATE',
                   help='gradient bytes per second the codec packs and unpacks, e.g. 1GB/s '
                        '(default: measured here, with --compress)')
    g.add_argument('--scheduler', choices=list(SCHEDULERS), default=DEFAULT_SCHEDULER,
                   help='post order: as ready, or forward priority; auto: as layerasync train '
                        'chooses, from the modelled link (default %(default)s)')
    g.add_argument('--servers', type=int, default=1, metavar='S',
                   help='parameter servers of the ps-sync / ps-async rows, P then counting '
                        'the workers (default %(default)s)')
    g.add_argument('--unshaped-ingress', action='store_true',
                   help="a server's port does not limit what it receives (the emulated "
                        'cluster, which shapes each host\'s egress only)')
    g = p.add_argument_group('output')
    g.add_argument('--csv', metavar='FILE', help='write the table as CSV')
    g.add_argument('--plot', metavar='FILE.png', help='plot speed-up and efficiency against P')
    p.set_defaults(run=cmd_sim)


def _network(args):
    """The network, and the hook overhead (the sweep's if it measured one, else 0)."""
    hook = 0.0
    if args.network:
        sweep = load_sweep(args.network)
        network = fit_network(sweep, name=f'fit to {args.network}')
        print(f"Fit to {args.network} ({sweep['ranks']} ranks, {sweep.get('mpi', 'MPI')}):")
        print('\n'.join('  ' + row for row in fit_report(sweep, network)))
        hook = sweep.get('hook_overhead_s', 0.0)
    else:
        network = fabric(args.fabric)
    changes = {key: value for key, value in (('beta', args.bandwidth), ('alpha', args.latency),
                                             ('algorithm', args.algorithm),
                                             ('sigma', args.step_cost)) if value is not None}
    if args.reduce_rate:
        changes['gamma'] = 1 / args.reduce_rate
    if args.hook_overhead is not None:
        hook = args.hook_overhead
    return (network.with_(**changes) if changes else network), hook


def cmd_sim(args):
    profile = load_profile(args.profile)
    network, hook = _network(args)
    strategies = ([s.strip() for item in args.strategy for s in item.split(',') if s.strip()]
                  if args.strategy else list(DEFAULT_STRATEGIES))
    update_rate = args.update_rate or measure_update_rate(profile.get('param_bytes', 0))
    codec_rate = (args.codec_rate or measure_codec_rate(args.compress) if args.compress
                  else math.inf)
    settings = dict(fusion_bytes=args.fusion_bytes, chunk_bytes=args.chunk_bytes,
                    in_flight=args.in_flight, scheduler=args.scheduler, update_rate=update_rate,
                    compute_speedup=args.compute_speedup, hook_overhead=hook,
                    compress=args.compress, codec_rate=codec_rate, servers=args.servers,
                    server_ingress=not args.unshaped_ingress, straggler=args.straggler)
    results = simulate(profile, network, args.ranks, strategies, **settings)
    plan = make_plan(profile, network, 1, **settings)
    megabytes = sum(layer['param_bytes'] for layer in profile['layers']) / 1e6
    print(f"Profile {args.profile}: {profile.get('net') or 'net'}, batch "
          f"{profile.get('batch', '?')} per rank, {megabytes:.3g} MB of parameters in "
          f'{len(plan.buckets)} buckets / {len(plan.chunks)} chunks')
    speedup = f', compute sped up {args.compute_speedup:g}x' if args.compute_speedup != 1 else ''
    if hook:
        speedup += f', {1e6 * hook:.3g} us per layer hook'
    print(f'Network {network.describe()}; update {update_rate / 1e9:.3g} GB/s{speedup}; '
          f'{args.fusion_bytes} B fusion, {args.chunk_bytes} B chunks, {args.scheduler} '
          f'scheduler, {args.in_flight} in flight'
          + (f'; {args.compress} packing {codec_rate / 1e9:.3g} GB/s' if args.compress else ''))
    print(format_table(results))
    if args.csv:
        # No communication (one rank): no overlap, an empty cell.
        write_csv([{**r.as_dict(), 'overlap': None if math.isnan(r.overlap) else r.overlap}
                   for r in results], args.csv)
        print(f'table written to {args.csv}')
    if args.plot:
        what = f', compute x{args.compute_speedup:g}' if args.compute_speedup != 1 else ''
        title = (f"{profile.get('net') or args.profile} "
                 f"(batch {profile.get('batch', '?')}/rank{what}), {network.name}")
        plot(results, args.plot, title=title)
        print(f'plot written to {args.plot}')


def format_table(results):
    rows = [f"{'P':>5} {'strategy':<18} {'iter ms':>9} {'compute':>9} {'comm':>9} "
            f"{'exposed':>9} {'overlap':>8} {'speed-up':>9} {'effic.':>7}"]
    for k, r in enumerate(results):
        if k and r.ranks != results[k - 1].ranks:
            rows.append('')
        overlap = '-' if math.isnan(r.overlap) else f'{r.overlap:.0%}'
        rows.append(f'{r.ranks:>5} {r.strategy:<18} {r.iteration_ms:>9.2f} {r.compute_ms:>9.2f} '
                    f'{r.comm_ms:>9.2f} {r.exposed_ms:>9.2f} {overlap:>8} {r.speedup:>9.1f} '
                    f'{r.efficiency:>7.1%}')
    return '\n'.join(rows)


def plot(results, path, title=''):
    """Speed-up and parallel efficiency against P, one line per strategy."""
    import matplotlib.ticker

    from ..plot import _matplotlib
    plt = _matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ranks = sorted({r.ranks for r in results})
    left.plot(ranks, ranks, color='0.7', linestyle='--', label='ideal')
    for strategy in dict.fromkeys(r.strategy for r in results):
        mine = [r for r in results if r.strategy == strategy]
        left.plot([r.ranks for r in mine], [r.speedup for r in mine], marker='o', label=strategy)
        right.plot([r.ranks for r in mine], [100 * r.efficiency for r in mine], marker='o',
                   label=strategy)
    for ax in (left, right):
        ax.set_xscale('log', base=2)
        ax.set_xticks(ranks, [str(p) for p in ranks])
        ax.minorticks_off()
        ax.set_xlabel('ranks P (fixed batch per rank)')
        ax.grid(True, alpha=0.3)
    left.set_yscale('log', base=2)
    left.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    left.set_ylabel('speed-up over 1 rank')
    right.set_ylabel('parallel efficiency (%)')
    right.set_ylim(0, 105)
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
