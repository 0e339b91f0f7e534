# The chain's sources for the C reader (csrc/include/epoch_reader.h), from
# Python: one helper that the epoch reader's and the lazy restore's bindings
# (_reader.pyx, _lazy.pyx) both cimport.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

cimport memckpt._epoch_reader as r


cdef inline r.mck_read_source *read_sources(object sources, list keep) except NULL:
    """A calloc'd array of mck_read_source (the caller frees it) for
    ``sources``, oldest first: (fd, records, pack_size) with records the
    index's record array (1-D, 56-byte records, page order). The bytes the
    array points at are appended to ``keep``: hold it while C reads them."""
    import numpy as np
    cdef uint32_t n = len(sources), i
    cdef const uint8_t[::1] rv
    cdef r.mck_read_source *out = <r.mck_read_source *>calloc(n if n else 1,
                                                            sizeof(r.mck_read_source))
    if out == NULL:
        raise MemoryError()
    for i in range(n):
        fd, recs, pack_size = sources[i]
        if recs.dtype.itemsize != r.MCK_IDX_RECORD_SIZE or recs.ndim != 1:
            free(out)
            raise ValueError(f"source {i}: records must be a 1-D array of "
                             f"{r.MCK_IDX_RECORD_SIZE}-byte records")
        raw = np.ascontiguousarray(recs).view(np.uint8)
        keep.append(raw)
        rv = raw
        out[i].fd = fd
        out[i].records = &rv[0] if rv.shape[0] else NULL
        out[i].nrecords = <uint64_t>recs.shape[0]
        out[i].pack_size = pack_size
    return out
