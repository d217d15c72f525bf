"""The data settings of a run (``DataOptions``) and the error type of the data package."""
from dataclasses import dataclass

__all__ = ['DataOptions', 'DataError']


class DataError(ValueError):
    """A data set that cannot be read or used as asked; the message says which file and why."""


@dataclass(frozen=True)
class DataOptions:
    """Settings every data layer of a run shares; the Net hands them to each layer.

    - ``rank``, ``world_size``: this process's shard of every global batch;
    - ``seed``: the shuffling and augmentation seed, the SAME on every rank
      (the ranks agree on one sample order and split it, see ``sampler``);
    - ``synthetic``: replace every real source by random samples of the same
      shape, class count and size, to time nets without the data files;
    - ``root``: the directory relative data set and mean file paths are
      resolved against (None: the current directory);
    - ``prefetch``: prepare the next batch in a background thread;
    - ``source``: a source string that replaces every Data layer's own (None:
      each layer's), to train or score a net on other data of its shape
      without editing its prototxt (``--source`` of the command).
    """
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    synthetic: bool = False
    root: str | None = None
    prefetch: bool = True
    source: str | None = None

    def __post_init__(self):
        if not (isinstance(self.world_size, int) and self.world_size >= 1):
            raise ValueError(f'DataOptions: world_size must be a positive integer, '
                             f'not {self.world_size!r}')
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.world_size):
            raise ValueError(f'DataOptions: rank must be in 0..{self.world_size - 1} '
                             f'(world_size {self.world_size}), not {self.rank!r}')
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2 ** 64):
            raise ValueError(f'DataOptions: seed must be an integer in [0, 2**64), '
                             f'not {self.seed!r}')
