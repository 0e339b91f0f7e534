# cython: language_level=3, boundscheck=False, wraparound=False, auto_pickle=False
"""Thin binding of the C core (csrc/include/memckpt.h): no policy here.

Every call that may enter the kernel runs with the GIL released, and every
-errno the core returns becomes an OSError subclass through one helper.
"""
# One extension module, its code one file per concern, textually included
# below (they share this file's cimports: `c`, the header; `check`, the one
# -errno helper). The header is declared in _memckpt.pxd, one .pxd per section.
from libc.stdint cimport int64_t, uint64_t

cimport memckpt._memckpt as c
cimport memckpt._epoch_writer as ew
from memckpt._check cimport check

import errno
import mmap

import numpy as np

include "_core_probe.pxi"     # probe(), the backends' table
include "_core_region.pxi"    # Region
include "_core_tracker.pxi"   # Tracker, background capture (bg_*)
include "_core_fork.pxi"      # fork_snapshot(), ForkChild
include "_core_hash.pxi"      # blake3(), hash_pages(), hash_pages_at()
include "_core_pause.pxi"     # pause_copy(), pause_fork(): the instant of a pause
