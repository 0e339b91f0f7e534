# The one errno helper of the binding (every extension module of memckpt
# cimports it): the C core returns -errno, never sets errno.
from libc.stdint cimport int64_t
from libc.string cimport strerror


cdef inline int check(int64_t rc, str what) except -1:
    """Turn a -errno from the core into the OSError subclass for that errno."""
    if rc < 0:
        err = <int>-rc
        raise OSError(err, f"{what}: {strerror(err).decode()}")
    return 0
