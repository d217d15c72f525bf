"""The start of a distributed run: agree, then take rank 0's state.

Every rank describes what it built (``base.describe_run``: parameter shapes
and the settings that must match); a difference stops every rank together,
naming the rank and the first differing line; then every rank copies rank
0's arrays (weights, and for a parameter-server job also the iteration and
the solver history), so all start from the same state. The allreduce
strategies and the parameter-server job both start through ``agree``.
"""

__all__ = ['agree']


def agree(control, lines, arrays=(), describe=lambda rank: f'rank {rank}'):
    """Collective over the ranks of ``control`` (a ``comm.control.Control`` or
    anything with its ``check_same`` and ``bcast``).

    Raises ``AgreedError`` on every rank, naming ``describe(rank)`` of the
    first rank whose ``lines`` differ from rank 0's; otherwise makes each
    array of ``arrays`` rank 0's, in place, in order.
    """
    control.check_same(lines, describe)
    for array in arrays:
        control.bcast(array, root=0)
