# Declarations of csrc/include/memckpt.h, the C core's one public header: one
# .pxd per section of the header, in its order, all `nogil`. Cimport this one
# (`cimport memckpt._memckpt as c`): it holds every name of the sections.
from memckpt._memckpt_probe cimport *
from memckpt._memckpt_region cimport *
from memckpt._memckpt_tracker cimport *
from memckpt._memckpt_fork cimport *
from memckpt._memckpt_bg cimport *
from memckpt._memckpt_hash cimport *
from memckpt._memckpt_pause cimport *
