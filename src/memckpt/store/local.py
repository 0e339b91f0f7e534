"""Store: a local directory of checkpoint epochs.

API CONTRACT (being implemented; the checkpointer and the CLI code against it):

    store = Store(path, create=True)       # opens (creating if asked), takes no lock to read;
                                           # sweeps uncommitted garbage when it can take the writer lock
    store.path                             # pathlib.Path
    store.epochs() -> list[EpochInfo]      # committed epochs, ascending by number
    store.latest() -> int | None           # the newest committed epoch number
    store.info(epoch) -> EpochInfo         # KeyError-like MemckptError if absent
    store.manifest(epoch) -> dict          # the validated manifest (layout, counts, files, ...)
    store.chain(epoch) -> list[int]        # [full, ..., epoch] following parent pointers
    store.layout(epoch) -> dict            # the arena layout recorded (Arena.layout() form)

    # writing (one writer per store: an exclusive flock on STORE/lock, held by
    # the Store object from begin() until commit()/abort(); a second writer gets TrackerBusy-like
    # MemckptError "store is locked by pid N")
    w = store.begin(kind="full"|"incremental", parent=int|None, layout=dict,
                    page_size=int, npages=int, compress=None|"zstd"|"lz4")
    w.add_pages(page_numbers: np.ndarray[uint64], data: np.ndarray[uint8, (n, page_size)])
        # may be called many times, page numbers strictly increasing across calls;
        # elides all-zero pages (in a full epoch: not recorded; in an incremental
        # one: recorded as a ZERO entry so the chain knows the page is zero now),
        # stores identical pages once (by BLAKE3 digest), compresses if asked
    w.commit(*, pages_dirty, pause_s, label, tracker, mode, extra=None) -> EpochInfo
        # fsync pack + index, write manifest tmp, fsync, rename, fsync dir
    w.abort()

    # reading
    store.read_into(epoch, out: np.ndarray[uint8, (npages, page_size)], pages=None)
        # fills out (all pages, or only `pages`) with the epoch's content; pages no
        # epoch of the chain holds are zero. Checks every page's digest:
        # CorruptionError naming epoch, page and file on mismatch.
    store.changed_pages(a, b) -> np.ndarray[uint64] | None
        # pages whose content may differ between epochs a and b, from the indexes
        # alone (no data read); None when they share no chain (then: all pages)

    store.verify(epoch=None) -> None       # all epochs, or the chain of one; raises
                                           # CorruptionError / FormatError naming epoch and file/page
    store.compact(first, last) -> EpochInfo  # merge the chain run first..last into one epoch
                                           # numbered `last` (kind and parent of `first`);
                                           # crash-safe; retires first..last-1; refuses (clear
                                           # MemckptError) if an epoch outside the run has its
                                           # parent inside first..last-1 (a branch would break)
    store.prune(keep_last=None, keep_every=None) -> list[int]  # removed epochs; keeps every
                                           # ancestor a kept epoch needs; removes newest first
"""
