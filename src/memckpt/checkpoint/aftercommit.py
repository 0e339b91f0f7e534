"""What follows each commit of a checkpointer, on its persist thread:
retention (``keep_last=``), replication to a remote store (``replicate_to=``),
and the first epoch it wrote (for ``Checkpointer.stats()``)."""
from __future__ import annotations

from typing import Any

from ..epoch import EpochInfo
from ..store.contract import StoreContract
from .retention import Retention


class AfterCommit:
    """``keep_last``: see :class:`Retention`. ``replicate_to``: an ``s3://``
    URL (or an S3 store from :func:`memckpt.open_store`) that every committed
    epoch is copied to in the background (:class:`memckpt.store.replicate.
    Replicator`: bounded bytes in flight; each epoch's ``remote_lag_s`` in
    ``replicator.records``), with ``storage_options`` for the remote."""

    def __init__(self, store: StoreContract, keep_last: int | None, replicate_to: Any = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.retention = Retention(store, keep_last)
        self.replicator: Any = None
        if replicate_to is not None:
            from ..store.replicate import Replicator  # boto3: only for those who replicate
            self.replicator = Replicator(store, replicate_to, storage_options=storage_options)
        self.first_epoch: int | None = None  # the first epoch this checkpointer committed

    def committed(self, info: EpochInfo) -> None:
        if self.first_epoch is None:
            self.first_epoch = info.epoch
        if self.replicator is not None:  # before the prune: an epoch pruned is still copied whole
            self.replicator.submit(info.epoch)
        self.retention.after_commit()

    def close(self) -> None:
        """Wait for the replica to hold every epoch submitted (then let go)."""
        if self.replicator is not None:
            self.replicator.close()
