"""Hostfiles in both dialects, and the host names that may appear in a command.

Open MPI writes a host with its slot count as ``node01 slots=4`` (optionally
``max_slots=M``); MPICH's and Intel MPI's Hydra as ``node01:4``. A bare
``node01`` is valid in both (slots: whatever that MPI assumes). ``#`` starts a
comment. ``read_hostfile`` accepts every line form in one file and says which
dialect the file is written in, so a file already in the launcher's own dialect
can be handed over unchanged.

Host names end up as arguments of mpirun/srun and inside hostfiles, so only
names made of letters, digits, ``.``, ``-`` and ``_`` (IPv4 addresses among
them) that do not start with ``-`` are accepted: nothing that a launcher could
read as an option or a separator.
"""
import re
from dataclasses import dataclass

__all__ = ['Host', 'Hostfile', 'read_hostfile', 'parse_hostfile', 'check_host_name']

_NAME = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]*\Z')
_OPENMPI = re.compile(r'(?P<host>\S+)((\s+slots\s*=\s*(?P<slots>\d+))|(\s+max_slots\s*=\s*\d+))*\Z')
_HYDRA = re.compile(r'(?P<host>[^\s:]+):(?P<slots>\d+)\Z')
_EXPECTED = "'HOST', 'HOST slots=N' (Open MPI) or 'HOST:N' (MPICH/Intel MPI)"


@dataclass(frozen=True)
class Host:
    name: str
    slots: int | None = None    # None: not given (the MPI's default applies)


@dataclass
class Hostfile:
    path: str
    hosts: list                 # of Host, in file order
    dialect: str                # 'openmpi', 'hydra', 'bare' (no counts: both read it) or 'mixed'

    def readable_by(self, dialect):
        """Can an MPI of ``dialect`` ('openmpi' or 'hydra') read this file as it is?"""
        return self.dialect in ('bare', dialect)


def check_host_name(name, where='host name'):
    """``name`` if it is a plain host name or IPv4 address, else ValueError."""
    if not _NAME.match(name):
        raise ValueError(f"{where}: '{name}' is not a host name (letters, digits, '.', '-', '_'; "
                         "not starting with '-')")
    return name


def read_hostfile(path):
    """Parse the hostfile at ``path`` (either dialect); errors name file:line."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f'hostfile {path}: {e.strerror}') from None
    return parse_hostfile(text, path)


def parse_hostfile(text, path='<hostfile>'):
    """Parse hostfile ``text``; ``path`` is only used in messages."""
    hosts, dialects = [], set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        where = f'{path}:{number}'
        hydra, openmpi = _HYDRA.match(line), _OPENMPI.match(line)
        match = hydra or openmpi
        if match is None:
            raise ValueError(f'{where}: expected {_EXPECTED}; got {line!r}')
        name = check_host_name(match['host'], where)
        slots = int(match['slots']) if match['slots'] is not None else None
        if slots == 0:
            raise ValueError(f'{where}: {name} has 0 slots; give at least 1 or remove the line')
        if slots is not None:
            dialects.add('hydra' if hydra else 'openmpi')
        hosts.append(Host(name, slots))
    if not hosts:
        raise ValueError(f'hostfile {path}: no hosts in it (only comments or blank lines)')
    # Each MPI reads only its own slot syntax; a mixed file is read by neither.
    dialect = 'mixed' if len(dialects) > 1 else dialects.pop() if dialects else 'bare'
    return Hostfile(path, hosts, dialect)
