"""Slurm: the allocation a job step runs in, and batch scripts.

Inside ``salloc``/``sbatch`` Slurm describes the allocation in the
environment: ``SLURM_JOB_ID``, ``SLURM_JOB_NODELIST`` (older Slurm:
``SLURM_NODELIST``) in compressed form such as ``node[01-04,07]``,
``SLURM_NNODES``, ``SLURM_NTASKS`` and ``SLURM_TASKS_PER_NODE`` (``2(x3),1``)
when tasks were requested, ``SLURM_CPUS_PER_TASK`` when ``-c`` was given.
"""
import re
import shlex
from dataclasses import dataclass

from .hostfile import check_host_name

__all__ = ['Allocation', 'expand_nodelist', 'expand_tasks_per_node', 'batch_script']


@dataclass
class Allocation:
    job_id: str
    nodes: list                 # host names, expanded
    ntasks: int | None          # SLURM_NTASKS, if tasks were requested
    tasks_per_node: list | None
    cpus_per_task: int | None

    @classmethod
    def from_environ(cls, environ):
        """The allocation described by ``environ``, or None outside Slurm."""
        job_id = environ.get('SLURM_JOB_ID') or environ.get('SLURM_JOBID')
        if not job_id:
            return None
        nodelist = environ.get('SLURM_JOB_NODELIST') or environ.get('SLURM_NODELIST')
        if not nodelist:
            raise ValueError(f'Slurm job {job_id}: SLURM_JOB_NODELIST is not set, so the '
                             'allocated nodes are unknown')
        nodes = expand_nodelist(nodelist)
        count = _integer(environ, 'SLURM_JOB_NUM_NODES') or _integer(environ, 'SLURM_NNODES')
        if count is not None and count != len(nodes):
            raise ValueError(f'Slurm job {job_id}: SLURM_NNODES={count} but SLURM_JOB_NODELIST='
                             f'{nodelist} names {len(nodes)} nodes')
        per_node = environ.get('SLURM_TASKS_PER_NODE') or environ.get('SLURM_NTASKS_PER_NODE')
        return cls(job_id, nodes,
                   _integer(environ, 'SLURM_NTASKS') or _integer(environ, 'SLURM_NPROCS'),
                   expand_tasks_per_node(per_node) if per_node else None,
                   _integer(environ, 'SLURM_CPUS_PER_TASK'))

    def uniform_tasks_per_node(self):
        """The tasks per node if Slurm gave every node the same number, else None."""
        if self.tasks_per_node and len(set(self.tasks_per_node)) == 1:
            return self.tasks_per_node[0]
        return None


def _integer(environ, name):
    value = environ.get(name)
    if value is None or value == '':
        return None
    if not value.isdigit():
        raise ValueError(f'{name}={value!r}: expected a whole number')
    return int(value)


def expand_nodelist(text):
    """``'a[01-03,07],b1'`` -> ``['a01', 'a02', 'a03', 'a07', 'b1']``.

    Ranges keep their zero padding; several bracket groups in one name expand
    to every combination, as Slurm's hostlist does (``r[1-2]n[1-2]``).
    """
    names = []
    for item in _split_top_level(text, text):
        names.extend(_expand_name(item, text))
    for name in names:
        check_host_name(name, f'Slurm nodelist {text!r}')
    return names


def _split_top_level(text, whole):
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == '[':
            depth += 1
        elif c == ']':
            depth -= 1
        if depth not in (0, 1):
            raise ValueError(f'Slurm nodelist {whole!r}: unbalanced brackets')
        if c == ',' and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f'Slurm nodelist {whole!r}: unbalanced brackets')
    items.append(text[start:])
    if any(not item for item in items):
        raise ValueError(f'Slurm nodelist {whole!r}: empty name')
    return items


def _expand_name(item, whole):
    head, bracket, rest = item.partition('[')
    if not bracket:
        return [item]
    inner, close, tail = rest.partition(']')
    if not close or not inner:
        raise ValueError(f'Slurm nodelist {whole!r}: bad bracket group in {item!r}')
    suffixes = _expand_name(tail, whole) if tail else ['']
    return [head + middle + suffix
            for middle in _expand_ranges(inner, whole) for suffix in suffixes]


def _expand_ranges(inner, whole):
    out = []
    for part in inner.split(','):
        low, dash, high = part.partition('-')
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f'Slurm nodelist {whole!r}: expected N or N-M inside brackets, '
                             f'got {part!r}')
        if not dash:
            out.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f'Slurm nodelist {whole!r}: range {part!r} runs backwards')
        out.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return out


def expand_tasks_per_node(text):
    """``'2(x3),1'`` -> ``[2, 2, 2, 1]``."""
    out = []
    for part in text.split(','):
        m = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', part.strip())
        if m is None:
            raise ValueError(f'SLURM_TASKS_PER_NODE={text!r}: expected N or N(xK), '
                             'comma-separated')
        out.extend([int(m[1])] * int(m[2] or 1))
    return out


def batch_script(command, nodes=None, ntasks=None, ntasks_per_node=None, cpus_per_task=None,
                 job_name='layerasync', time=None, partition=None, account=None):
    """A Slurm batch script (text) that runs ``command`` (a ``launch.Command``).

    ``#SBATCH`` lines request the resources; the command's environment settings
    become ``export`` lines; every value is shell-quoted.
    """
    directives = [('job-name', job_name), ('nodes', nodes), ('ntasks', ntasks),
                  ('ntasks-per-node', ntasks_per_node), ('cpus-per-task', cpus_per_task),
                  ('time', time), ('partition', partition), ('account', account)]
    lines = ['#!/bin/bash']
    for name, value in directives:
        if value is None:
            continue
        value = str(value)
        if not re.fullmatch(r'[A-Za-z0-9._:+@-]+', value):
            # Slurm reads #SBATCH lines itself, without a shell: keep them plain.
            raise ValueError(f'--{name} {value!r}: use letters, digits and . _ : + @ - only')
        lines.append(f'#SBATCH --{name}={value}')
    lines.append('')
    lines.append('# written by `layerasync launch --sbatch`; submit with: sbatch THIS_FILE')
    lines.append('set -euo pipefail')
    for name, value in command.env.items():
        lines.append(f'export {name}={shlex.quote(value)}')
    lines.append(shlex.join(command.argv))
    return '\n'.join(lines) + '\n'
