"""An emulated cluster on one machine: network namespaces as hosts, a bridge
as the switch, ``tc tbf`` as the line rate.

Host i is the network namespace ``{prefix}-host{i}``. Its ``eth0`` (address
i+1 of the subnet, default 10.77.0.0/24) is one end of a veth pair whose other
end, ``{prefix}-host{i}`` in the root namespace, hangs on the bridge
``{prefix}-br``; its loopback is up. A token bucket on ``eth0`` shapes what the
host sends to ``RATE``, so MPI traffic between hosts runs at that rate while
each host keeps its own loopback. ``RATE`` is spelled as ``layerasync.units``
reads rates (``1gbit``, ``125MBps``; ``1gbps`` is refused as ambiguous) and
handed to tc in bits per second. Only bandwidth is emulated: no propagation
delay is added (that would take ``tc netem``).

``up`` records everything it creates, as it creates it, in a state file
(``default_state_file()``: under ``/run`` or a private ``$XDG_RUNTIME_DIR``);
``down`` deletes exactly what is recorded, after checking each object is
still the one that was created. Both need root (CAP_NET_ADMIN) and
iproute2's ``ip`` and ``tc``.

``up`` also writes the hostfile and the launcher script that
``emulated.emulated_command`` needs to start ranks in the namespaces.
"""
import ipaddress
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys

from ..units import format_rate, parse_rate

__all__ = ['DEFAULT_SUBNET', 'default_state_file', 'up', 'down', 'load',
           'link_counters', 'format_status']

DEFAULT_SUBNET = '10.77.0.0/24'
MIN_BURST = 128 * 1024   # below this, tbf splits TSO segments and burns a core per link


def default_state_file():
    """``$XDG_RUNTIME_DIR/layerasync/cluster.json`` if that directory is this
    user's own, else ``/run/layerasync/cluster.json``. (Under ``sudo -E`` it can
    be another user's, and root runs the launcher script kept next to the state.)"""
    base = os.environ.get('XDG_RUNTIME_DIR')
    if not base or not _private(base):
        base = '/run'
    return os.path.join(base, 'layerasync', 'cluster.json')


def _private(path):
    """Is ``path`` a directory of this user that nobody else may write to?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


# -- running ip and tc -------------------------------------------------------------

def _tools():
    """Absolute paths of ip and tc, after checking that this process may use them."""
    paths = {name: shutil.which(name) for name in ('ip', 'tc')}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise RuntimeError(f"the emulated cluster needs iproute2's {' and '.join(missing)}, not "
                           'found on PATH (install iproute2)')
    if os.geteuid() != 0:
        raise RuntimeError('the emulated cluster creates network namespaces, which needs root '
                           '(CAP_NET_ADMIN): run this as root, e.g. with sudo')
    return paths


def _run(argv, check=True):
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode:
        problem = result.stderr.strip() or f'exit status {result.returncode}'
        raise RuntimeError(f'{shlex.join(argv)} failed: {problem}')
    return result


def _link_kind(ip, name):
    """'veth', 'bridge', ... for link ``name`` in the root namespace; None if absent."""
    result = _run([ip, '-j', '-d', 'link', 'show', 'dev', name], check=False)
    if result.returncode:
        return None
    return json.loads(result.stdout)[0].get('linkinfo', {}).get('info_kind', 'unknown')


def _netns_inode(name):
    """The inode that identifies namespace ``name`` (ip keeps it in /run/netns); None if absent."""
    try:
        return os.stat(os.path.join('/run/netns', name)).st_ino
    except FileNotFoundError:
        return None


# -- state ----------------------------------------------------------------------------

def load(state_file=None):
    """The state of the cluster that is up, or None."""
    path = state_file or default_state_file()
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    state['state_file'] = path
    return state


def _save(state):
    tmp = state['state_file'] + '.tmp'
    with open(tmp, 'w') as f:
        json.dump({k: v for k, v in state.items() if k != 'state_file'}, f, indent=1)
    os.replace(tmp, state['state_file'])


def _record(state, kind, name, **identity):
    state['created'].append(dict(kind=kind, name=name, **identity))
    _save(state)


# -- up / down / status ------------------------------------------------------------------

def up(hosts, bandwidth, latency_free=False, subnet=DEFAULT_SUBNET, prefix='la',
       state_file=None, warn=print):
    """Create the cluster; returns its state. On failure, removes what it made.

    ``bandwidth``: each host's egress rate, as ``layerasync.units.parse_rate`` reads it.
    """
    rate_bits = 8 * parse_rate(bandwidth, '--bandwidth')
    if rate_bits < 1e3:
        raise ValueError(f"--bandwidth '{bandwidth}': must be at least 1kbit")
    paths = _tools()
    ip, tc = paths['ip'], paths['tc']
    state_file = state_file or default_state_file()
    if os.path.exists(state_file):
        raise RuntimeError(f'an emulated cluster is already up (state in {state_file}); '
                           'run `layerasync cluster down` first')
    network = ipaddress.ip_network(subnet)
    if not network.is_private or network.version != 4:
        raise ValueError(f'--subnet {subnet}: use a private IPv4 subnet such as {DEFAULT_SUBNET}')
    addresses = list(network.hosts())
    if not 1 <= hosts <= len(addresses):
        raise ValueError(f'--hosts {hosts}: {subnet} has room for 1 to {len(addresses)} hosts')
    if not re.fullmatch(r'[a-z][a-z0-9]{0,3}', prefix):
        raise ValueError(f"prefix {prefix!r}: 1-4 lowercase letters or digits (interface "
                         'names are at most 15 characters)')
    bridge = f'{prefix}-br'
    members = [dict(netns=f'{prefix}-host{i}', veth=f'{prefix}-host{i}', address=str(addresses[i]))
               for i in range(hosts)]
    clashes = [name for name in [bridge] + [m['veth'] for m in members] if _link_kind(ip, name)]
    clashes += [m['netns'] for m in members if _netns_inode(m['netns']) is not None]
    if clashes:
        raise RuntimeError(f"these names exist already, not made by this command: "
                           f"{', '.join(clashes)}; remove them, or pick another prefix")
    burst_kib = math.ceil(max(MIN_BURST, rate_bits / 8 / 1000) / 1024)   # >= 1 ms at line rate
    state_dir = os.path.dirname(state_file)
    made_dir = not os.path.isdir(state_dir)
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    if not _private(state_dir):
        raise RuntimeError(f'{state_dir} is not a directory of this user that only it can write '
                           'to; the launcher script kept there runs as root')
    state = dict(version=1, state_file=state_file, subnet=str(network), prefixlen=network.prefixlen,
                 bandwidth=bandwidth, bits_per_second=rate_bits, burst=f'{burst_kib}kb',
                 latency_free=latency_free, bridge=bridge, hosts=members, created=[])
    if made_dir:
        _record(state, 'dir', state_dir)
    try:
        _run([ip, 'link', 'add', bridge, 'type', 'bridge'])
        _record(state, 'link', bridge, link_kind='bridge')
        _run([ip, 'link', 'set', bridge, 'up'])
        for m in members:
            ns = m['netns']
            _run([ip, 'netns', 'add', ns])
            _record(state, 'netns', ns, inode=_netns_inode(ns))
            _run([ip, 'link', 'add', m['veth'], 'type', 'veth',
                  'peer', 'name', 'eth0', 'netns', ns])
            _record(state, 'link', m['veth'], link_kind='veth')
            _run([ip, 'link', 'set', m['veth'], 'master', bridge, 'up'])
            address = f"{m['address']}/{network.prefixlen}"
            _run([ip, '-n', ns, 'addr', 'add', address, 'dev', 'eth0'])
            _run([ip, '-n', ns, 'link', 'set', 'eth0', 'up'])
            _run([ip, '-n', ns, 'link', 'set', 'lo', 'up'])
            _run([tc, '-n', ns, 'qdisc', 'add', 'dev', 'eth0', 'root', 'tbf',
                  'rate', f'{round(rate_bits)}bit', 'burst', state['burst'], 'latency', '50ms'])
        _write_files(state)
    except BaseException:
        down(state_file, warn)    # whatever was recorded so far
        raise
    return state


def _write_files(state):
    """The hostfile and Hydra's launcher wrapper, next to the state file."""
    base = os.path.dirname(state['state_file'])
    hostfile = os.path.join(base, 'hosts')
    with open(hostfile, 'w') as f:
        f.write(''.join(f"{m['address']}\n" for m in state['hosts']))
    _record(state, 'file', hostfile)
    wrapper = os.path.join(base, 'netns-ssh')
    with open(wrapper, 'w') as f:
        f.write('#!/bin/sh\n'
                "# Hydra's ssh for the emulated cluster: run the proxy in the host's namespace.\n"
                f'exec {shlex.quote(sys.executable)} -m layerasync.launch.netns_exec '
                f"--state {shlex.quote(state['state_file'])} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    _record(state, 'file', wrapper)
    state.update(hostfile=hostfile, wrapper=wrapper)
    _save(state)


_NOUNS = {'link': 'link', 'netns': 'namespace', 'file': 'file'}


def down(state_file=None, warn=print):
    """Delete what ``up`` recorded, newest first; returns what it removed, for people."""
    state = load(state_file)
    if state is None:
        raise RuntimeError(f'no emulated cluster is up (no {state_file or default_state_file()})')
    ip = _tools()['ip']
    removed = []
    for item in reversed(state['created']):
        kind, name = item['kind'], item['name']
        if kind == 'link':
            found = _link_kind(ip, name)
            if found is None:
                continue    # a veth goes when its peer's namespace goes
            if found != item['link_kind']:
                warn(f'not deleting link {name}: it is a {found}, not the {item["link_kind"]} made')
                continue
            _run([ip, 'link', 'del', 'dev', name])
        elif kind == 'netns':
            if _netns_inode(name) != item['inode']:
                warn(f'not deleting namespace {name}: it is not the one made (gone or replaced)')
                continue
            pids = _run([ip, 'netns', 'pids', name], check=False).stdout.split()
            if pids:
                warn(f"namespace {name} still has processes {' '.join(pids)}; it lives on "
                     'until they end')
            _run([ip, 'netns', 'del', name])
        elif kind == 'file':
            if not os.path.exists(name):
                continue
            os.remove(name)
        else:
            continue    # the state directory: last, once the state file is gone
        removed.append(f"{_NOUNS[kind]} {name}")
    os.remove(state['state_file'])
    for item in state['created']:
        if item['kind'] == 'dir' and os.path.isdir(item['name']) and not os.listdir(item['name']):
            os.rmdir(item['name'])
            removed.append(f"directory {item['name']}")
    return removed


def link_counters(state):
    """Per host: byte and packet counters of its eth0 (``ip -n NS -s link``) and
    the drops of its token bucket."""
    paths = _tools()
    ip, tc = paths['ip'], paths['tc']
    out = []
    for m in state['hosts']:
        link = json.loads(_run([ip, '-n', m['netns'], '-s', '-j', 'link', 'show', 'dev', 'eth0'])
                          .stdout)[0]['stats64']
        qdisc = json.loads(_run([tc, '-n', m['netns'], '-s', '-j', 'qdisc', 'show', 'dev', 'eth0'])
                           .stdout)
        tbf = next((q for q in qdisc if q.get('kind') == 'tbf'), {})
        out.append(dict(netns=m['netns'], address=m['address'],
                        tx_bytes=link['tx']['bytes'], rx_bytes=link['rx']['bytes'],
                        tx_packets=link['tx']['packets'], rx_packets=link['rx']['packets'],
                        shaper_drops=tbf.get('drops')))
    return out


def format_status(state, counters):
    lines = [f"emulated cluster: {len(state['hosts'])} hosts on {state['subnet']}, "
             f"{format_rate(state['bits_per_second'] / 8)} egress per host (tbf burst "
             f"{state['burst']}), no added propagation latency",
             f"{'host':>4}  {'namespace':<12} {'address':<15} {'tx bytes':>16} {'rx bytes':>16} "
             f"{'shaper drops':>12}"]
    for i, c in enumerate(counters):
        lines.append(f"{i:>4}  {c['netns']:<12} {c['address']:<15} {c['tx_bytes']:>16,} "
                     f"{c['rx_bytes']:>16,} {c['shaper_drops']:>12}")
    return '\n'.join(lines)
