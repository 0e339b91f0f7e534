# cython: language_level=3
"""numpy's data-memory handler (NEP 49) that puts arrays in an arena.

``handler(blocks, threshold, fallback)`` makes a PyCapsule "mem_handler" for
``numpy.core.multiarray``'s ``PyDataMem_SetHandler``, which numpy keeps in a
context variable: it applies to the current thread (context) only. Requests
below ``threshold`` bytes go to the C library's allocator, as numpy's own do;
the others ask ``blocks`` (memckpt.alloc.Blocks) for whole pages of its
arena, with the GIL taken (numpy may allocate without it); memckpt's own
allocations (a checkpoint taken inside the block) get the C library's. A full arena gives
NULL (numpy raises MemoryError; memckpt.allocating turns it into ArenaFull)
or, with ``fallback``, the C library's memory. Every array records the
capsule it was allocated with, so the handler outlives the ``with`` block
for as long as one of its arrays lives, and frees each block where it came
from (by address: inside the arena or not).
"""
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
from cpython.ref cimport Py_INCREF, Py_DECREF, PyObject
from libc.stdint cimport uintptr_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memcpy, strncpy

cimport numpy as cnp

cnp.import_array()


cdef struct mck_handler_ctx:
    PyObject *blocks     # memckpt.alloc.Blocks, one reference held
    size_t threshold
    bint fallback
    uintptr_t lo, hi     # the arena's pages


cdef struct mck_handler:
    cnp.PyDataMem_Handler h
    mck_handler_ctx c


cdef inline bint _in_arena(mck_handler_ctx *c, void *p) noexcept nogil:
    return c.lo <= <uintptr_t>p < c.hi


cdef void *_arena_alloc(mck_handler_ctx *c, size_t size, bint zero) noexcept nogil:
    """A block of the arena (zeroed if asked), or the fallback, or NULL."""
    cdef uintptr_t addr = 0
    cdef bint fresh = False, own = False
    with gil:
        try:
            got = (<object>c.blocks).alloc(size)
            if got is None:
                own = True  # memckpt's own scratch: never in the arena
            else:
                addr, fresh = got
        except BaseException as exc:  # a bug: never let it unwind through numpy
            (<object>c.blocks).failed(size, exc)
            addr = 0
    if own:
        return calloc(size, 1) if zero else malloc(size)
    if addr == 0:
        if c.fallback:
            return calloc(size, 1) if zero else malloc(size)
        return NULL
    if zero and not fresh:
        memset(<void *>addr, 0, size)
    return <void *>addr


cdef void _arena_free(mck_handler_ctx *c, void *p) noexcept nogil:
    with gil:
        try:
            (<object>c.blocks).free(<uintptr_t>p)
        except BaseException as exc:
            (<object>c.blocks).failed(0, exc)


cdef void *_h_malloc(void *ctx, size_t size) noexcept nogil:
    cdef mck_handler_ctx *c = <mck_handler_ctx *>ctx
    if size < c.threshold:
        return malloc(size)
    return _arena_alloc(c, size, False)


cdef void *_h_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef mck_handler_ctx *c = <mck_handler_ctx *>ctx
    cdef size_t size = nelem * elsize
    if elsize and size // elsize != nelem:
        return NULL
    if size < c.threshold:
        return calloc(nelem, elsize)
    return _arena_alloc(c, size, True)


cdef void *_h_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    cdef mck_handler_ctx *c = <mck_handler_ctx *>ctx
    cdef void *q
    cdef size_t old = 0
    if ptr == NULL:
        return _h_malloc(ctx, new_size)
    if not _in_arena(c, ptr):
        return realloc(ptr, new_size)
    with gil:
        old = (<object>c.blocks).size_of(<uintptr_t>ptr)
    q = _h_malloc(ctx, new_size)
    if q == NULL:
        return NULL
    memcpy(q, ptr, old if old < new_size else new_size)
    _arena_free(c, ptr)
    return q


cdef void _h_free(void *ctx, void *ptr, size_t size) noexcept nogil:
    cdef mck_handler_ctx *c = <mck_handler_ctx *>ctx
    if ptr == NULL:
        return
    if _in_arena(c, ptr):
        _arena_free(c, ptr)
    else:
        free(ptr)


cdef void _capsule_gone(object capsule) noexcept:
    cdef mck_handler *m = <mck_handler *>PyCapsule_GetPointer(capsule, "mem_handler")
    Py_DECREF(<object>m.c.blocks)
    free(m)


def handler(blocks, size_t threshold, bint fallback, uintptr_t lo, uintptr_t hi, str name):
    """A "mem_handler" capsule over ``blocks`` (see the module docstring)."""
    cdef mck_handler *m = <mck_handler *>calloc(1, sizeof(mck_handler))
    if m == NULL:
        raise MemoryError("allocating the memory handler")
    b = name.encode()[:126]
    strncpy(m.h.name, b, 126)
    m.h.version = 1
    m.c.threshold = threshold
    m.c.fallback = fallback
    m.c.lo, m.c.hi = lo, hi
    Py_INCREF(blocks)
    m.c.blocks = <PyObject *>blocks
    m.h.allocator.ctx = &m.c
    m.h.allocator.malloc = _h_malloc
    m.h.allocator.calloc = _h_calloc
    m.h.allocator.realloc = _h_realloc
    m.h.allocator.free = _h_free
    return PyCapsule_New(m, "mem_handler", _capsule_gone)


def set_handler(capsule):
    """numpy's PyDataMem_SetHandler: make ``capsule`` (None: numpy's default)
    the handler of the current context; returns the one it replaces."""
    return cnp.PyDataMem_SetHandler(capsule)


def get_handler():
    return cnp.PyDataMem_GetHandler()
