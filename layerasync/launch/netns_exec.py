"""Hydra's "ssh" for the emulated cluster: run a command in a host's namespace.

    python -m layerasync.launch.netns_exec --state FILE [ssh options] [user@]HOST WORD...

Hydra starts a proxy on each remote host as ``LAUNCHER -x HOST WORD...``
(plus any words of ``HYDRA_LAUNCHER_EXTRA_ARGS`` before HOST), where the words
are the proxy's command line with its path in double quotes. ssh would join
the words with spaces and hand them to the remote shell; this splits them the
way that shell would (quotes, no expansion, and no shell is run) and executes
them with ``ip netns exec NS``, NS being the namespace of HOST's address in the
cluster's state file. Failures exit 255, as ssh's own do.
"""
import json
import os
import shlex
import shutil
import sys

# OpenSSH's options that take a value (its getopt string, ssh.c).
SSH_OPTIONS_WITH_VALUE = frozenset('bceilmopBDEFIJLOPQRSwW')


def split_ssh_arguments(args):
    """``[options] [user@]HOST WORD...`` -> (HOST, the remote command's argv)."""
    i = 0
    while i < len(args) and args[i].startswith('-') and args[i] != '-':
        if args[i] == '--':
            i += 1
            break
        letters = args[i][1:]
        for j, letter in enumerate(letters):
            if letter in SSH_OPTIONS_WITH_VALUE:
                if j == len(letters) - 1:
                    i += 1      # the value is the next argument (-p 22), not attached (-p22)
                break
        i += 1
    if i >= len(args):
        raise ValueError('no host given')
    host = args[i].rpartition('@')[2]
    command = shlex.split(' '.join(args[i + 1:]))
    if not command:
        raise ValueError(f'no command for {host}: an interactive login cannot be emulated')
    return host, command


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) < 2 or argv[0] != '--state':
            raise ValueError('usage: netns_exec --state FILE [ssh options] HOST COMMAND...')
        with open(argv[1]) as f:
            hosts = json.load(f)['hosts']
        host, command = split_ssh_arguments(argv[2:])
        netns = {m['address']: m['netns'] for m in hosts}.get(host)
        if netns is None:
            raise ValueError(f"{host} is not a host of the emulated cluster (its hosts: "
                             f"{', '.join(m['address'] for m in hosts)})")
        ip = shutil.which('ip')
        if ip is None:
            raise ValueError("iproute2's ip is not on PATH")
        os.execv(ip, [ip, 'netns', 'exec', netns, *command])
    except (OSError, ValueError) as e:
        print(f'layerasync netns_exec: {e}', file=sys.stderr)
        return 255


if __name__ == '__main__':
    sys.exit(main())
