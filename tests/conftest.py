import os
import sys

# One BLAS thread per process unless asked otherwise: tests run several MPI
# ranks on few cores, where spinning BLAS threads slow everything down badly.
os.environ.setdefault('OMP_NUM_THREADS', '1')
sys.path.insert(0, os.path.dirname(__file__))
