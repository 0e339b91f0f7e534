"""verify(): every manifest, chain tie, index and pack of a store (or of one
epoch's chain) checked against its digests, page by page; an epoch a
concurrent prune or compaction retires is skipped, not reported."""
from __future__ import annotations

import os
from typing import Any, Callable

import blake3
import numpy as np

from ..errors import CorruptionError, EpochNotFound, FormatError
from . import format as fmt
from .catalog import _check_link, _Link, _link_of
from .reader import _SNAPSHOT_TRIES, _Reader

_VERIFY_BATCH_BYTES = 16 << 20


class _Verifier(_Reader):
    """The fourth layer of Store: verify."""

    # -- verification -------------------------------------------------------------------
    def verify(self, epoch: int | None = None, *,
               progress: Callable[[int, int], None] | None = None) -> None:
        """See memckpt.store.contract; progress(done, total) counts bytes of
        index and pack files checked."""
        self._read_header()
        if epoch is None:
            return self._verify_all(progress)
        # the chain of one epoch: a compaction in another process may merge
        # part of it while we check it; then check the merged chain, skipping
        # what was checked already (its files are immutable)
        checked: set[tuple[int, Any]] = set()
        total = [0]
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(min(done[0], total[0]), total[0])

        for attempt in range(_SNAPSHOT_TRIES):
            before = set(self.epoch_numbers())
            used: dict[int, Any] = {}
            try:
                targets = self.chain(epoch)
                used.update((e, self._manifest_key(e)) for e in targets)
                todo = {e for e in targets if (e, used[e]) not in checked}
                if progress is not None:
                    total[0] = done[0] + sum(f["idx"]["size"] + f["pack"]["size"]
                                             for f in (self._doc(e)["files"] for e in todo))
                # each tie checked against the parent's manifest as verified just
                # before it (ascending: parents come first)
                verified: dict[int, _Link] = {}
                for e in targets:
                    if e in todo:
                        verified[e] = self._verify_epoch(e, tick, verified)
                        checked.add((e, used[e]))
                break
            except (CorruptionError, FormatError, EpochNotFound) as exc:
                self._raced(epoch, before, used, exc, "verify", attempt)
                self._drop_caches()
        if progress is not None:
            progress(total[0], total[0])

    def _verify_all(self, progress: Callable[[int, int], None] | None) -> None:
        """verify() of every epoch. An epoch a prune or compaction in another
        process retires during the run is skipped (it was retired, not damaged);
        one whose chain moved under its check is checked again."""
        targets = self.epoch_numbers()
        total = 0
        if progress is not None:
            for e in list(targets):
                try:
                    f = self._doc(e)["files"]
                except EpochNotFound:  # retired since the listing
                    targets.remove(e)
                    continue
                except (CorruptionError, FormatError):
                    continue  # _verify_epoch reports it
                total += f["idx"]["size"] + f["pack"]["size"]
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(min(done[0], total), total)

        # each epoch's tie to its parent, checked once against the parent's
        # manifest as verified just before it (ascending: parents come first):
        # every chain checked, in one pass over the epochs. (A link stays
        # good across a compaction in another process: its identity is carried
        # over, and a parent is retired only after its children.)
        verified: dict[int, _Link] = {}
        before = set(targets)
        for e in targets:
            for attempt in range(_SNAPSHOT_TRIES):
                used = {e: self._manifest_key(e)}
                try:
                    verified[e] = self._verify_epoch(e, tick, verified)
                    break
                except (CorruptionError, FormatError, EpochNotFound) as exc:
                    if not os.path.lexists(self.path / fmt.manifest_name(e)):
                        break  # epoch e was retired during verify: that is not damage
                    before = self._raced(e, before, used, exc, "verify", attempt)
                    self._drop_caches()
        if progress is not None:
            progress(total, total)

    def _verify_epoch(self, epoch: int, tick: Callable[[int], None],
                      verified: dict[int, _Link] | None = None) -> _Link:
        """Check one epoch's manifest, its tie to its parent (the parent's
        link from `verified` if there, else from the store), index and pack;
        return its link."""
        doc = self._doc(epoch, fresh=True)
        link = _link_of(doc, (0, 0, 0))  # the key is for the cache, not needed here
        if link.kind != "full":
            parent = link.parent
            assert parent is not None  # check_manifest: an incremental epoch has one
            plink = None if verified is None else verified.get(parent)
            if plink is None:
                try:
                    plink = self._link(parent)
                except EpochNotFound:
                    raise CorruptionError(f"epoch {epoch}: the chain is broken: epoch {epoch}'s "
                                          f"parent {parent} is missing") from None
            _check_link(epoch, epoch, link, plink)
        recs = self._index(epoch, fresh=True)
        c = doc["counts"]
        zero = (recs["flags"] & fmt.FLAG_ZERO) != 0
        stored = recs[~zero]
        nstored = len(np.unique(stored["offset"])) if len(stored) else 0
        nzero = int(zero.sum())
        if (nstored != c["pages_stored"] or len(stored) - nstored != c["pages_dedup"]
                or (doc["kind"] == "incremental" and nzero != c["pages_zero"])):
            raise CorruptionError(
                f"epoch {epoch}: the manifest's counts (stored {c['pages_stored']}, dedup "
                f"{c['pages_dedup']}, zero {c['pages_zero']}) disagree with its index (stored "
                f"{nstored}, dedup {len(stored) - nstored}, zero records {nzero})")
        where = f"epoch {epoch}: {doc['files']['pack']['name']}"
        fd = self._open_pack(epoch, doc)
        try:
            if "blake3" not in doc["files"]["pack"]:  # 1.2: the images' digests alone
                self._check_coverage(epoch, fd, doc, stored, where)
            else:
                self._check_pack_digest(fd, doc, where)
            tick(doc["files"]["idx"]["size"] + fmt.PACK_HEADER_SIZE)
            # and every page, against its own digest
            batch = max(1, _VERIFY_BATCH_BYTES // self.page_size)
            scratch = np.empty((min(batch, max(len(stored), 1)), self.page_size), dtype=np.uint8)
            for lo in range(0, len(stored), batch):
                part = stored[lo:lo + batch]
                self._fetch(epoch, fd, doc["files"]["pack"]["name"], part, scratch,
                            np.arange(len(part), dtype=np.int64), None)
                tick(int(part["length"].sum(dtype=np.uint64)))
        finally:
            os.close(fd)
        return link

    def _check_pack_digest(self, fd: int, doc: dict[str, Any], where: str) -> None:
        """A pack of format 1.0/1.1: the whole file against the manifest's digest."""
        h = blake3.blake3()
        buf = bytearray(min(_VERIFY_BATCH_BYTES, max(doc["files"]["pack"]["size"], 1)))
        pos, size = 0, doc["files"]["pack"]["size"]
        while pos < size:
            n = os.preadv(fd, [buf], pos)
            if n == 0:
                raise CorruptionError(f"{where}: file ends early (at byte {pos}); truncated?")
            h.update(memoryview(buf)[:n])
            pos += n
        if h.hexdigest() != doc["files"]["pack"]["blake3"]:
            raise CorruptionError(f"{where}: BLAKE3 digest mismatch (the file is damaged)")

    def _check_coverage(self, epoch: int, fd: int, doc: dict[str, Any], stored: np.ndarray,
                        where: str) -> None:
        """A pack of format 1.2 has no whole-file digest: its header is checked
        against the manifest (_open_pack), each image against its record's
        digest (the caller), and here that the images fill the file from the
        header's end to its last byte, back to back: no byte is uncovered."""
        hsize = fmt.parse_pack_header(os.pread(fd, fmt.PACK_HEADER_SIZE, 0), epoch=epoch,
                                      page_size=self.page_size, minor=doc["version"][1], where=where)
        size = doc["files"]["pack"]["size"]
        off, first = np.unique(stored["offset"], return_index=True)
        end = off + stored["length"][first].astype(np.uint64)
        # where each image must start (the header's end, then the image before's
        # end), and where the file must end (the last image's end)
        should = np.concatenate((np.array([hsize], np.uint64), end))
        bad = np.flatnonzero(should != np.concatenate((off, np.array([size], np.uint64))))
        if len(bad):
            raise CorruptionError(f"{where}: bytes from {int(should[bad[0]])} are not a page image "
                                  f"of the index (images must fill the pack, {size} bytes, back to back)")
