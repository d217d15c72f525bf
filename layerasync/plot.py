"""Figures: the Gantt chart of one iteration, and training curves from metrics.

    layerasync plot timeline TRACE.json [--iteration N] [--out FILE.png]
    layerasync plot metrics RUN.jsonl [RUN2.jsonl ...] [--x time|iter] [--out FILE.png]

matplotlib is loaded through ``_matplotlib`` only (it is an optional dependency;
the simulator's plots load it from here too).
"""
import json
import os

__all__ = ['plot_timeline', 'plot_metrics', 'add_commands']

COLORS = {'forward': '#4C72B0', 'backward': '#DD8452', 'wait': '#C44E52',
          'update': '#55A868', 'comm': '#8172B3'}


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'layerasync[plot]'") from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _kind(span):
    if span['track'] == 'comm':
        return 'comm'
    return span['args'].get('phase') or span['name'].split()[0]


def _lanes(spans):
    """Stack overlapping spans into lanes (chunks in flight at once)."""
    ends = []
    out = []
    for span in sorted(spans, key=lambda s: s['start']):
        lane = next((k for k, end in enumerate(ends) if end <= span['start']), len(ends))
        if lane == len(ends):
            ends.append(span['end'])
        else:
            ends[lane] = span['end']
        out.append((lane, span))
    return out, max(len(ends), 1)


def plot_timeline(trace_path, out, iteration=None):
    """Draw iteration ``iteration`` (default: the second to last) of every rank."""
    from .trace import load_spans
    spans = load_spans(trace_path)
    compute = [s for s in spans if s['track'] == 'compute']
    if not compute:
        raise ValueError(f'{trace_path}: no compute spans; was it written by --trace?')
    iterations = sorted({s['args'].get('iteration', 0) for s in compute})
    if iteration is None:
        iteration = iterations[-2] if len(iterations) > 1 else iterations[-1]
    if iteration not in iterations:
        raise ValueError(f'{trace_path}: no iteration {iteration}; it has {iterations[0]}..{iterations[-1]}')
    mine = [s for s in compute if s['args'].get('iteration') == iteration]
    t0, t1 = min(s['start'] for s in mine), max(s['end'] for s in mine)
    shown = [s for s in spans if s['end'] > t0 and s['start'] < t1]
    plt = _matplotlib()
    ranks = sorted({s['rank'] for s in shown})
    rows, labels, y = [], [], 0
    for rank in ranks:
        comm_lanes, depth = _lanes([s for s in shown if s['rank'] == rank and s['track'] == 'comm'])
        rows.append((y, 1, [(0, s) for s in shown if s['rank'] == rank and s['track'] == 'compute']))
        labels.append((y + 0.5, f'rank {rank}\ncompute'))
        rows.append((y + 1.2, 1 / depth, comm_lanes))
        labels.append((y + 1.7, f'rank {rank}\ncomm'))
        y += 2.6
    fig, ax = plt.subplots(figsize=(12, 1.2 + 1.1 * y))
    for base, height, lane_spans in rows:
        for lane, s in lane_spans:
            start, end = max(s['start'], t0), min(s['end'], t1)
            ax.broken_barh([((start - t0) * 1e3, (end - start) * 1e3)],
                           (base + lane * height, height * 0.9), color=COLORS.get(_kind(s), '#999999'),
                           edgecolor='none')
    ax.set_yticks([p for p, _ in labels], [text for _, text in labels])
    ax.invert_yaxis()
    ax.set_xlim(0, (t1 - t0) * 1e3)
    ax.set_xlabel(f'ms since the start of iteration {iteration}')
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, ['forward', 'backward', 'wait', 'update', 'allreduce (chunk)'],
              ncol=5, loc='upper center', bbox_to_anchor=(0.5, 1.15), frameon=False)
    ax.set_title(os.path.basename(trace_path), loc='left', fontsize=9, pad=24)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def load_records(path):
    """The records of a JSON Lines metrics file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(paths, out, x='time', y='test/accuracy'):
    """One curve per metrics file: ``y`` against wall-clock seconds or iterations."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in paths:
        points = [(r[x], r[y]) for r in load_records(path) if y in r and r.get('rank', 0) == 0]
        if not points:
            raise ValueError(f"{path}: no records with '{y}'")
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker='.', label=os.path.splitext(os.path.basename(path))[0])
    ax.set_xlabel('wall-clock seconds' if x == 'time' else 'iteration')
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def add_commands(subparsers):
    p = subparsers.add_parser('plot', help='draw a timeline or training curves')
    kinds = p.add_subparsers(dest='kind', required=True)
    t = kinds.add_parser('timeline', help='Gantt chart of one iteration of a --trace file')
    t.add_argument('trace')
    t.add_argument('--iteration', type=int, help='which iteration (default: the second to last)')
    t.add_argument('--out', help='PNG to write (default: TRACE with .png)')
    t.set_defaults(run=lambda a: print(plot_timeline(
        a.trace, a.out or os.path.splitext(a.trace)[0] + '.png', a.iteration)))
    m = kinds.add_parser('metrics', help='test accuracy (or any metric) over time')
    m.add_argument('metrics', nargs='+', help='JSON Lines files written by train --metrics')
    m.add_argument('--x', choices=['time', 'iter'], default='time')
    m.add_argument('--y', default='test/accuracy', help='metric to plot (default: test/accuracy)')
    m.add_argument('--out', default='metrics.png')
    m.set_defaults(run=lambda a: print(plot_metrics(a.metrics, a.out, a.x, a.y)))
