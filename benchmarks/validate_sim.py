"""The simulator against the emulated cluster: predicted against measured, per net, strategy and P.

    make bench-validate      # = .venv/bin/python benchmarks/validate_sim.py (after make bench-scale)

Reads the rows ``benchmarks/scale.py`` measured (``--csv``) and what it kept
beside them (``--profiles``): each net's profile (NET.json) and, at each P,
the allreduce sweep of the emulated cluster (``sweep-LINK-P.json``). For every
(net, P) it asks ``layerasync sim`` for each strategy row with the settings
the run had (the profile, the communicator's defaults, the solver-update rate
measured here) in two ways:

- **link**: the network fitted to that P's sweep (alpha, beta; without a
  sweep, the emulated bandwidth and ``--latency``) and the profile's compute
  divided by the run's ``--compute-speedup``: what one would predict for a
  cluster from its sweep and a profile alone;
- **calibrated**: the same, with two facts of the run at that P put in: the
  compute row (P ranks replaying on this machine's cores run slower than the
  profile: their solver updates are real and share two cores) sets the
  compute speed-up, and the comm row (every gradient's allreduce alone, the
  communicator's chunks and in-flight limit, no compute) sets ``sigma``, the
  model's busy time per message step (``layerasync sim --step-cost``).

Neither touches the strategy rows, which are the predictions. The
parameter-server rows (``ps-sync``, ``ps-async`` with S servers) are
predicted with ``--servers S`` and ``--unshaped-ingress`` (the emulated
hosts' egress only is shaped), calibrated by the compute row of the
allreduce run at the same P. Printed per net
and P: measured, both predictions and their errors (predicted / measured - 1)
for the compute and comm rows and each modelled strategy, then the median and
worst absolute error of the strategy rows at each P. ``--plot FILE.png``
draws ms per iteration against P: measured points over the calibrated lines.
"""
import argparse
import collections
import csv
import os
import statistics
import sys

from layerasync.sim import load_profile, make_plan, simulate
from layerasync.sim.calibrate import fit_network, load_sweep, measure_update_rate
from layerasync.sim.model import Network, parse_latency
from layerasync.sim.ps import not_modelled
from layerasync.sim.schedule import MODELLED
from layerasync.units import parse_rate

MAX_SIGMA = 0.1   # seconds per step: the bisection's upper end


def modelled(row, straggler=1.0):
    """Does the simulator play bench row ``row`` (with that straggler factor)?"""
    return row.split(':')[0] in MODELLED and not not_modelled(row, straggler)


def link_at(ranks, link, folder, latency):
    """The network fitted to the sweep of P = ``ranks`` hosts at ``link``, if
    there is one; else the emulated bandwidth with ``latency``."""
    path = os.path.join(folder, f'sweep-{link}-{ranks}.json')
    if os.path.exists(path):
        return fit_network(load_sweep(path), name=f'sweep-{link}-{ranks}')
    return Network(alpha=latency, beta=parse_rate(link), name=link)


def calibrate(profile, network, ranks, measured, settings):
    """(compute speed-up, network with sigma) that reproduce the compute and
    comm rows measured at ``ranks`` (the allreduce run; its parameter-server
    runs at the same P use them too: sigma then plays no part, the servers'
    messages are point to point)."""
    profiled = make_plan(profile, network, ranks, **{**settings, 'compute_speedup': 1.0})
    speedup = profiled.compute_s / (float(measured['compute']['ms_per_iter']) / 1e3)
    target = float(measured['comm']['ms_per_iter']) / 1e3

    def comm(sigma):
        return make_plan(profile, network.with_(sigma=sigma), ranks, **settings).comm_alone_s()
    low, high = 0.0, MAX_SIGMA
    if comm(low) >= target:
        return speedup, network
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if comm(middle) < target else (low, middle)
    return speedup, network.with_(sigma=(low + high) / 2)


def predict(profile, network, ranks, strategies, settings):
    """{row: ms per iteration}: compute, comm and each strategy."""
    plan = make_plan(profile, network, ranks, **settings)
    results = simulate(profile, network, [ranks], strategies, **settings)
    return {'compute': 1e3 * plan.compute_s, 'comm': 1e3 * plan.comm_alone_s(),
            **{r.strategy: r.iteration_ms for r in results}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--csv', default='scale.csv', help="benchmarks/scale.py's rows")
    p.add_argument('--profiles', default=None,
                   help='its profiles and sweeps (default: beside --csv)')
    p.add_argument('--latency', default='0us',
                   help="the model's alpha where a P has no sweep (default %(default)s)")
    p.add_argument('--plot', default=None, metavar='FILE.png')
    args = p.parse_args()
    folder = args.profiles or os.path.dirname(os.path.abspath(args.csv))
    with open(args.csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f'{args.csv}: no rows (run benchmarks/scale.py first)')
    groups = collections.defaultdict(dict)   # (net, link, speed-up, P, S): {row: measured}
    for r in rows:   # the last measurement of a row wins
        groups[r['net'], r['link'], float(r['speedup']), float(r.get('straggler') or 1),
               int(r['ranks']), int(r['servers'] or 0)][r['row']] = r
    update_rate = measure_update_rate(8 << 20)
    errors = collections.defaultdict(lambda: ([], []))   # P: (link errors, calibrated errors)
    lines = collections.defaultdict(lambda: ([], [], []))   # (net, strategy): P, measured, model
    calibration = {}   # (net, link, speed-up, straggler, P): (speed-up, network), from S = 0
    print(f"{'net':<13} {'P':>3} {'S':>2} {'row':<30} {'measured':>9} {'link':>8} {'error':>7} "
          f"{'calibrated':>10} {'error':>7}")
    for (net, link, speedup, slow, ranks, servers), measured in sorted(groups.items()):
        profile = load_profile(os.path.join(folder, f'{net}.json'))
        strategies = [name for name in measured if modelled(name, slow)]
        # The servers' hosts are shaped like the workers' on egress only.
        settings = dict(update_rate=update_rate, compute_speedup=speedup, straggler=slow,
                        servers=max(servers, 1), server_ingress=False)
        network = link_at(ranks, link, folder, parse_latency(args.latency))
        plain = predict(profile, network, ranks, strategies, settings)
        key = net, link, speedup, slow, ranks
        if not servers:
            calibration[key] = calibrate(profile, network, ranks, measured, settings)
        if key not in calibration:
            print(f'{net:<13} {ranks:>3} {servers:>2}: no allreduce rows at this P (and straggler) to '
                  'calibrate from; skipped\n')
            continue
        fitted_speedup, fitted = calibration[key]
        tuned = predict(profile, fitted, ranks, strategies,
                        {**settings, 'compute_speedup': fitted_speedup})
        for name, r in measured.items():
            if name not in plain:
                if servers:
                    print(f'{net:<13} {ranks:>3} {servers:>2} {name}, straggler x{slow:g}: '
                          f"{float(r['ms_per_iter']):.1f} ms measured, not modelled")
                continue
            got = float(r['ms_per_iter'])
            e_plain, e_tuned = plain[name] / got - 1, tuned[name] / got - 1
            row = (f'{name} (S={servers})' if servers else name) + (
                f', straggler x{slow:g}' if slow != 1 else '')
            if name in strategies:
                errors[ranks][0].append(abs(e_plain))
                errors[ranks][1].append(abs(e_tuned))
                for series, value in zip(lines[net, row], (ranks, got, tuned[name])):
                    series.append(value)
            print(f'{net:<13} {ranks:>3} {servers:>2} {row:<30} {got:>9.1f} {plain[name]:>8.1f} '
                  f'{e_plain:>+7.1%} {tuned[name]:>10.1f} {e_tuned:>+7.1%}')
        if not servers:
            print(f'{"":<13} link: {network.describe()}; calibrated: compute / '
                  f'{fitted_speedup:.3f}, {1e6 * fitted.sigma:.0f} us per step')
        print()
    print(f"{'P':>3} {'rows':>4} {'link: median':>13} {'worst':>6} {'calibrated: median':>19} "
          f"{'worst':>6}")
    for ranks in sorted(errors):
        plain, tuned = errors[ranks]
        print(f'{ranks:>3} {len(plain):>4} {statistics.median(plain):>13.1%} {max(plain):>6.1%} '
              f'{statistics.median(tuned):>19.1%} {max(tuned):>6.1%}')
    if args.plot:
        plot(lines, args.plot)
        print(f'plot written to {args.plot}')


def plot(lines, path):
    """ms per iteration against P, a panel per net (and one for its parameter
    servers): the model's lines, the measured dots. Straggler rows are left out."""
    from layerasync.plot import _matplotlib
    plt = _matplotlib()
    panels = {}
    for (net, strategy), series in sorted(lines.items()):
        if 'straggler' in strategy:
            continue
        kind = 'parameter servers' if strategy.startswith('ps-') else 'allreduce'
        panels.setdefault((net, kind), []).append((strategy, series))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
    for ax, ((net, kind), mine) in zip(axes[0], sorted(panels.items())):
        for k, (strategy, (ranks, got, predicted)) in enumerate(mine):
            colour = f'C{k % 10}'
            ax.plot(ranks, predicted, color=colour, label=strategy)
            ax.plot(ranks, got, 'o', color=colour)
        ax.set_xscale('log', base=2)
        if kind == 'parameter servers':
            ax.set_yscale('log')
        ax.set_xlabel('ranks P (workers)')
        ax.set_ylabel('ms per iteration')
        ax.set_title(f'{net}, {kind}\n(lines: model, calibrated; dots: measured)', fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == '__main__':
    sys.exit(main())
