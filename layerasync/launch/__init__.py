"""Launching: from one command to the right mpirun/srun line, and a cluster
emulated on one machine.

- ``command``: ``build_command`` resolves ranks, ranks per node, hosts (a
  hostfile or the Slurm allocation), threads per rank, fabric and exported
  variables into one MPI's argument list (``mpi``: per-MPI flags and
  recognition from ``mpirun --version``; ``hostfile``: both hostfile dialects;
  ``slurm``: allocations and batch scripts).
- ``cluster``: ``cluster up/status/down``: network namespaces as hosts,
  their links shaped with ``tc tbf``; ``emulated``: the command that runs
  ranks in them, through ``netns_exec``, the ssh stand-in Hydra calls.
- ``cli``: the ``launch`` and ``cluster`` subcommands.

Commands are argument lists from end to end; no shell ever parses a host name,
a path or a value (``Command.display`` quotes them only for people to read).
"""
from .command import Command, Job, build_command, layerasync_program  # noqa: F401
