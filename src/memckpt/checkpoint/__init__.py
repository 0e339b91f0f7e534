"""The checkpoint lifecycle: one arena over one store.

=====================  ==========================================================
module                 what it holds
=====================  ==========================================================
``checkpointer.py``    :class:`Checkpointer`: kind and parent of each epoch, one
                       epoch in flight, resume, close
``pending.py``         :class:`PendingEpoch` and the in-flight count; the persist
                       of a capture and its bookkeeping
``head.py``            the epoch the arena holds, and the next epoch's kind
``schedule.py``        when :meth:`Checkpointer.maybe_checkpoint` checkpoints
``rollback.py``        :meth:`Checkpointer.rollback`'s write-back
``resume.py``          :meth:`Checkpointer.resume`
``options.py``         the constructor's arguments, checked
``auto.py``            ``mode="auto"``: the pair a calibration picks, and why
``view.py``            the read-only properties
=====================  ==========================================================

The snapshot itself is a capture mode's (:mod:`memckpt.capture`), the
epoch's files the store's (:mod:`memckpt.store`).
"""
from .checkpointer import Checkpointer
from .options import COMPRESSORS
from .pending import PendingEpoch
from .rollback import RollbackInfo

__all__ = ["COMPRESSORS", "Checkpointer", "PendingEpoch", "RollbackInfo"]
