"""Programs that the tests launch under ``mpiexec`` (each process checks itself and prints ``OK``)."""

MPI_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "HYDRA_LAUNCHER": "fork"}
"""Environment for launched jobs: one BLAS thread per process (they share the cores), local launching."""
