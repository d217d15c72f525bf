"""What the benchmarks on the emulated cluster share: bringing it up, profiling a
net, and running a command or ``layerasync bench`` on it while counting the bytes
each host sent."""
import contextlib
import csv
import os
import subprocess
import sys

ALLOCATOR = 'glibc.malloc.mmap_threshold=33554432'

__all__ = ['ALLOCATOR', 'cluster_of', 'run_on_cluster', 'profile', 'bench_on_cluster']


@contextlib.contextmanager
def cluster_of(hosts, bandwidth, reuse=True):
    """An emulated cluster for the block: the one that is up (``reuse``), or
    ``hosts`` hosts at ``bandwidth``, brought up here and down afterwards."""
    from layerasync.launch import cluster
    made = not (reuse and cluster.load() is not None)
    if made:
        cluster.up(hosts, bandwidth, latency_free=True)
    try:
        yield cluster.load()
    finally:
        if made:
            cluster.down(warn=lambda *a: None)


def run_on_cluster(program, threads=1):
    """Run ``program`` with one rank per emulated host; the bytes each host sent."""
    from layerasync.launch import cluster
    from layerasync.launch.emulated import emulated_command
    state = cluster.load()
    command, _ = emulated_command(program, threads=threads,
                                  export=[f'GLIBC_TUNABLES={ALLOCATOR}', 'GLOO_SOCKET_IFNAME=eth0'])
    before = cluster.link_counters(state)
    done = subprocess.run(command.argv, env={**os.environ, **command.env}, capture_output=True,
                          text=True)
    after = cluster.link_counters(state)
    if done.returncode != 0:
        raise SystemExit(f'{command.display()} failed ({done.returncode}):\n'
                         f'{done.stderr[-4000:]}')
    return [a['tx_bytes'] - b['tx_bytes'] for a, b in zip(after, before)]


def profile(model, batch, remove, path, iterations=10):
    """``layerasync time --json path`` of ``model`` in one process, one thread."""
    program = [sys.executable, '-m', 'layerasync', 'time', '--model', model, '--batch',
               str(batch), '--synthetic', '--iterations', str(iterations), '--json', path]
    if remove:
        program += ['--remove-layers', remove]
    done = subprocess.run(program, env=dict(os.environ, OMP_NUM_THREADS='1'),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f'{" ".join(program)} failed:\n{done.stderr[-3000:]}')


def bench_on_cluster(folder, model, batch, strategies, iterations, warmup, rounds=1, remove='',
                     flags=()):
    """``layerasync bench`` on the emulated cluster: its rows (dicts, as its CSV
    holds them) and the bytes each host sent."""
    out = os.path.join(folder, 'bench.csv')
    program = [sys.executable, '-m', 'layerasync', 'bench', '--model', model,
               '--batch', str(batch), '--strategies', strategies,
               '--iterations', str(iterations), '--warmup', str(warmup),
               '--rounds', str(rounds), '--csv', out, *flags]
    if remove:
        program += ['--remove-layers', remove]
    sent = run_on_cluster(program)
    with open(out) as f:
        return list(csv.DictReader(f)), sent
