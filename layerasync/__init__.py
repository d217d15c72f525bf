"""layerasync: how much gradient communication can hide behind computation.

The Python API has pycaffe's shape::

    import layerasync
    net = layerasync.Net(layerasync.models.path('lenet'), layerasync.TRAIN,
                         data=layerasync.data.DataOptions(synthetic=True))
    net.forward(); net.backward()
    net.params['conv1'][0].diff      # the first convolution's weight gradient

    solver = layerasync.get_solver(layerasync.models.path('digits', 'solver'))
    solver.step(100)
"""
from ._threads import share_cores

share_cores()   # before NumPy loads BLAS: ranks sharing a node share its cores

from . import data, models  # noqa: F401
from .blob import Blob  # noqa: F401
from .layers import LayerError, NetError  # noqa: F401
from .net import TEST, TRAIN, Net  # noqa: F401
from .proto import ProtoError  # noqa: F401
from .snapshot import SnapshotError  # noqa: F401
from .solver import AdamSolver, NesterovSolver, SGDSolver, SolverError, get_solver  # noqa: F401

__version__ = '0.1.0'
