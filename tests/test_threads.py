import os

from layerasync._threads import blas_threads, threads_per_rank


def test_ranks_on_one_node_share_its_cores():
    assert threads_per_rank({'MPI_LOCALNRANKS': '2'}, usable=8, cores=8) == 4
    assert threads_per_rank({'OMPI_COMM_WORLD_LOCAL_SIZE': '3'}, usable=2, cores=2) == 1


def test_a_choice_already_made_is_kept():
    assert threads_per_rank({'MPI_LOCALNRANKS': '2', 'OMP_NUM_THREADS': '2'}, 8, 8) is None
    assert threads_per_rank({}, usable=8, cores=8) is None            # one rank: all cores
    assert threads_per_rank({'SLURM_NTASKS_PER_NODE': '1'}, 8, 8) is None


def test_a_rank_bound_to_cores_uses_them():
    assert threads_per_rank({'MPI_LOCALNRANKS': '4'}, usable=2, cores=8) == 2


def test_blas_threads_reads_the_first_variable_set():
    assert blas_threads({'OPENBLAS_NUM_THREADS': '3'}) == 3
    assert blas_threads({'OMP_NUM_THREADS': '2', 'MKL_NUM_THREADS': '5'}) == 2
    assert blas_threads({}) == (os.cpu_count() or 1)
