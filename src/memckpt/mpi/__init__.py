"""Coordinated checkpoints across the ranks of an MPI job (docs/mpi.md).

    from mpi4py import MPI
    from memckpt.mpi import Coordinator

    with Coordinator(MPI.COMM_WORLD, arena, "/scratch/run") as co:
        for step in ...:
            co.maybe_checkpoint()   # or co.checkpoint()

    co = Coordinator.resume(MPI.COMM_WORLD, "/scratch/run")   # co.arena

=================  =================================================================
module             what it holds
=================  =================================================================
``coordinator.py``  :class:`Coordinator`, :class:`GlobalPending`: the collective
                    checkpoint and the global commit
``restart.py``      :meth:`Coordinator.resume`: the newest global epoch every rank
                    verifies
``records.py``      the global commit records (no MPI)
``agree.py``        the collectives, polled without spinning
=================  =================================================================

mpi4py is never imported by memckpt: the caller's communicator is used
through its methods, so ``import memckpt.mpi`` works without MPI installed.
"""
from .coordinator import Coordinator, GlobalPending, rank_store
from .records import GlobalEpoch, RankEpoch, read_record, record_numbers

__all__ = ["Coordinator", "GlobalEpoch", "GlobalPending", "RankEpoch", "rank_store",
           "read_record", "record_numbers"]
