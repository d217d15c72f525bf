"""Figures: the Gantt chart of one iteration, and training curves from metrics.

    layerasync plot timeline TRACE.json [--iteration N] [--out FILE.png]
    layerasync plot metrics RUN.jsonl [RUN2.jsonl ...] [--x time|iter] [--out FILE.png]

matplotlib is loaded through ``_matplotlib`` only (it is an optional dependency;
the simulator's plots load it from here too).
"""
import json
import os

__all__ = ['plot_timeline', 'timeline_summary', 'plot_metrics', 'add_commands']

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


def _rates(samples, t0, t1, window=0.005):
    """(ms since t0, tx MB/s) over windows of ``window`` seconds within [t0, t1]."""
    inside = [s for s in samples if t0 - window <= s[0] <= t1 + window]
    out, last = [], None
    for t, tx, _ in inside:
        if last is None or t - last[0] >= window:
            if last is not None:
                out.append(((0.5 * (t + last[0]) - t0) * 1e3, (tx - last[1]) / (t - last[0]) / 1e6))
            last = (t, tx)
    return out


def timeline_summary(trace_path, iteration=None):
    """Lines describing one iteration of every rank: its length, the longest gaps
    between progress calls in forward and in backward, and what the link sent."""
    from .trace import load_trace
    spans, link, calls = load_trace(trace_path)
    iteration = _pick_iteration(trace_path, spans, iteration)
    lines = [f'iteration {iteration}:']
    for rank in sorted({s['rank'] for s in spans}):
        mine = [s for s in spans if s['rank'] == rank and s['track'] == 'compute'
                and s['args'].get('iteration') == iteration]
        t0, t1 = min(s['start'] for s in mine), max(s['end'] for s in mine)
        text = f'  rank {rank}: {(t1 - t0) * 1e3:.1f} ms'
        for phase in ('forward', 'backward'):
            part = [s for s in mine if s['args'].get('phase') == phase]
            if not part or rank not in calls:
                continue
            a, b = min(s['start'] for s in part), max(s['end'] for s in part)
            # A wait polls all along: its span is no gap.
            waits = [(s['start'], s['end']) for s in mine if s['name'].startswith('wait')
                     and s['end'] > a and s['start'] < b]
            marks = sorted([a, b] + [t for t in calls[rank] if a <= t <= b]
                           + [t for w in waits for t in w])
            gap = max((y - x for x, y in zip(marks, marks[1:])
                       if not any(w0 <= x and y <= w1 for w0, w1 in waits)), default=0.0)
            text += (f'; {phase} {(b - a) * 1e3:.1f} ms, longest gap between progress calls '
                     f'{gap * 1e3:.1f} ms')
        samples = link.get(rank, [])
        if len(samples) > 1 and samples[0][0] <= t0 and t1 <= samples[-1][0]:
            # The counter between its samples, at the iteration's ends (an iteration
            # may be shorter than the sampling interval).
            import numpy as np
            times, sent_bytes = [x[0] for x in samples], [x[1] for x in samples]
            sent = float(np.interp(t1, times, sent_bytes) - np.interp(t0, times, sent_bytes))
            text += (f'; sent {sent / 1e6:.2f} MB, {sent / (t1 - t0) / 1e6:.2f} MB/s '
                     'on average')
        lines.append(text)
    return '\n'.join(lines)


def _pick_iteration(trace_path, spans, iteration):
    compute = [s for s in spans if s['track'] == 'compute']
    if not compute:
        raise ValueError(f'{trace_path}: no compute spans; was it written by --trace?')
    iterations = sorted({s['args'].get('iteration', 0) for s in compute})
    if iteration is None:
        iteration = iterations[-2] if len(iterations) > 1 else iterations[-1]
    if iteration not in iterations:
        raise ValueError(f'{trace_path}: no iteration {iteration}; it has {iterations[0]}..{iterations[-1]}')
    return iteration


def plot_timeline(trace_path, out, iteration=None):
    """Draw iteration ``iteration`` (default: the second to last) of every rank:
    compute, the chunks in flight, and (when sampled) the link's send rate."""
    from .trace import load_trace
    spans, link, calls = load_trace(trace_path)
    iteration = _pick_iteration(trace_path, spans, iteration)
    compute = [s for s in spans if s['track'] == 'compute']
    mine = [s for s in compute if s['args'].get('iteration') == iteration]
    t0, t1 = min(s['start'] for s in mine), max(s['end'] for s in mine)
    shown = [s for s in spans if s['end'] > t0 and s['start'] < t1]
    plt = _matplotlib()
    ranks = sorted({s['rank'] for s in shown})
    rows, labels, ticks, curves, y = [], [], [], [], 0
    for rank in ranks:
        comm_lanes, depth = _lanes([s for s in shown if s['rank'] == rank and s['track'] == 'comm'])
        rows.append((y, 1, [(0, s) for s in shown if s['rank'] == rank and s['track'] == 'compute']))
        labels.append((y + 0.5, f'rank {rank}\ncompute'))
        rows.append((y + 1.2, 1 / depth, comm_lanes))
        labels.append((y + 1.7, f'rank {rank}\ncomm'))
        ticks.append((y + 1.0, [t for t in calls.get(rank, []) if t0 <= t <= t1]))
        y += 2.6
        if rank in link:
            curves.append((y, _rates(link[rank], t0, t1)))
            labels.append((y + 0.5, f'rank {rank}\nsent'))
            y += 1.4
    fig, ax = plt.subplots(figsize=(12, 1.2 + 1.1 * y))
    top = max((r for _, curve in curves for _, r in curve), default=0) or 1
    for base, curve in curves:
        ax.fill_between([x for x, _ in curve], [base + 1] * len(curve),
                        [base + 1 - r / top for _, r in curve], color='#8172B3', alpha=0.6,
                        step='mid', linewidth=0)
    for base, times in ticks:
        ax.vlines([(t - t0) * 1e3 for t in times], base, base + 0.15, color='black', linewidth=0.4)
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
    title = os.path.basename(trace_path)
    if curves:
        title += f'; sent: MB/s, full height {top:.1f}'
    if ticks and any(t for _, t in ticks):
        title += '; black ticks: progress calls'
    ax.set_title(title, loc='left', fontsize=9, pad=24)
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
        a.trace, a.out or os.path.splitext(a.trace)[0] + '.png', a.iteration) + '\n'
        + timeline_summary(a.trace, a.iteration)))
    m = kinds.add_parser('metrics', help='test accuracy (or any metric) over time')
    m.add_argument('metrics', nargs='+', help='JSON Lines files written by train --metrics')
    m.add_argument('--x', choices=['time', 'iter'], default='time')
    m.add_argument('--y', default='test/accuracy', help='metric to plot (default: test/accuracy)')
    m.add_argument('--out', default='metrics.png')
    m.set_defaults(run=lambda a: print(plot_metrics(a.metrics, a.out, a.x, a.y)))
