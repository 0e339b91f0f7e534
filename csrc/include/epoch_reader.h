/* epoch_reader.h: reading an epoch of a store into memory, in C.
 *
 * The caller (the store's Python layer, or a C program) has walked the
 * chain [full, ..., epoch], opened each epoch's pack and checked each
 * index (docs/format.md); it hands over one source per epoch, oldest first.
 * A plan resolves once which source holds each page (the newest that has a
 * record for it) and cuts the work into units: runs of records stored back
 * to back in one pack (read with one preadv straight into the pages, or
 * into a scratch buffer when compressed), and runs of pages to zero. Running
 * the plan hands the units to threads, each of which reads a unit and then
 * hashes it while it is still in cache, so reads and BLAKE3 overlap.
 *
 * Same conventions as memckpt.h: 0 or a count, else -errno. A damaged
 * store is not an errno: the call returns -EBADMSG and fills a
 * struct mck_read_fault saying what and where. */
#ifndef MEMCKPT_EPOCH_READER_H
#define MEMCKPT_EPOCH_READER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One epoch of the chain. */
struct mck_read_source {
	int fd;                 /* its pack, open for reading */
	const void *records;    /* its index records (struct mck_idx_record), page order */
	uint64_t nrecords;
	uint64_t pack_size;     /* no record may point past it */
};

enum mck_read_fault_kind {
	MCK_READ_FAULT_NONE = 0,
	MCK_READ_FAULT_DIGEST,  /* a page does not match its record's BLAKE3 digest */
	MCK_READ_FAULT_SHORT,   /* the pack ends before a record's bytes (at `offset`) */
	MCK_READ_FAULT_DECODE,  /* a compressed image does not decode to one page (`why`) */
	MCK_READ_FAULT_RECORD,  /* a record the reader cannot follow (`why`) */
	MCK_READ_FAULT_IO,      /* a read failed: `err` is its -errno */
};

/* What went wrong, where: the first faulty unit of the plan's order, so
 * the answer does not depend on the number of threads. */
struct mck_read_fault {
	int kind;               /* enum mck_read_fault_kind */
	int err;                /* IO: the -errno */
	uint32_t source;        /* index into the sources */
	uint64_t record;        /* index into that source's records */
	uint64_t page;          /* the page the record is for */
	uint64_t offset;        /* the byte offset in the pack */
	uint64_t nbad;          /* DIGEST: pages of that unit that do not match */
	char why[112];
};

/* Flags of mck_read_plan_build. */
#define MCK_READ_VERIFY (1u << 0)       /* check every page read against its digest */
#define MCK_READ_OUT_ZERO (1u << 1)     /* dest reads as zero already (a fresh mapping):
					 * zero pages are left untouched, and the pages
					 * to read are populated before the read */
#define MCK_READ_DEFER_CODED (1u << 2)  /* leave compressed pages to the caller even
					 * when this build decodes them */
#define MCK_READ_FILL_HUGE (1u << 3)    /* with OUT_ZERO: dest is memory of this process's
					 * own, advised MADV_NOHUGEPAGE (a memckpt region
					 * tracked at 4 KiB) and in no one's hands yet:
					 * mck_read_plan_prefault may back it with 2 MiB
					 * pages, which mck_read_plan_split_huge returns
					 * to 4 KiB page-table entries */

struct mck_read_plan;

/* Plan the read of pages into dest (npages pages of page_size bytes, page
 * p at dest + p * page_size) from sources[0..nsources) (oldest first).
 * want: NULL for every page, else nwant page numbers, strictly increasing,
 * < npages; pages not wanted are not touched. Pages no source holds, and
 * pages whose newest record is ZERO, read as zero. Compressed pages this
 * build cannot decode (or all of them, with MCK_READ_DEFER_CODED) are
 * listed by mck_read_plan_deferred for the caller to read. The plan keeps
 * the pointers it is given: they must outlive it. -EINVAL on bad
 * arguments; -EBADMSG and *fault (RECORD) on a record that points outside
 * the arena or the pack. */
int mck_read_plan_build(struct mck_read_plan **out, const struct mck_read_source *sources,
			uint32_t nsources, void *dest, size_t page_size, uint64_t npages,
			const uint64_t *want, uint64_t nwant, unsigned flags,
			struct mck_read_fault *fault);

/* Units in the plan, and the pages units [0, end) fill (for progress). */
uint64_t mck_read_plan_units(const struct mck_read_plan *plan);
uint64_t mck_read_plan_pages(const struct mck_read_plan *plan, uint64_t end);

/* The deferred pages (source, record): copies up to cap of them; returns
 * how many there are. */
uint64_t mck_read_plan_deferred(const struct mck_read_plan *plan, uint32_t *source,
				uint64_t *record, uint64_t cap);

/* Run units [first, last) on nthreads threads, the calling thread among
 * them (0: the CPUs this thread may run on, but one thread per 4 MiB of
 * work at most: a small read is done before a thread would start); every
 * thread is joined before return. 0; -EBADMSG with *fault filled (then dest holds part of the
 * epoch); or another -errno (thread or memory trouble, *fault IO for a
 * failed read). */
int mck_read_plan_run(struct mck_read_plan *plan, uint64_t first, uint64_t last,
		      unsigned nthreads, struct mck_read_fault *fault);

/* Fault in, before running the plan, the 2 MiB blocks of dest that the
 * plan fills wholly (MCK_READ_OUT_ZERO plans; the others are left alone),
 * with MADV_POPULATE_WRITE on nthreads threads (0: as mck_read_plan_run).
 * A fresh 4 KiB page's first touch costs more than reading and hashing it;
 * populating a block costs less than faulting it in page by page, and with
 * MCK_READ_FILL_HUGE the block is asked for as one 2 MiB page (the region
 * advised MADV_HUGEPAGE meanwhile), which costs a quarter of that where
 * the kernel has one at hand; 2 MiB pages that cost more CPU than 4 KiB
 * pages would (the kernel compacting memory to find them) are given up for
 * the rest of the read. Blocks partly filled, and the
 * pages the caller writes after, get 4 KiB pages: a sparse arena stays
 * sparse. Best effort: a kernel without MADV_POPULATE_WRITE (< 5.14)
 * leaves the faults to the read. The blocks prefaulted, or -errno (thread
 * or memory trouble, or a failed madvise of the advice). *huge (if not
 * NULL): the blocks asked for as 2 MiB pages (the kernel may have given
 * 4 KiB ones). */
int mck_read_plan_prefault(struct mck_read_plan *plan, unsigned nthreads, uint64_t *huge);

/* Instead of mck_read_plan_prefault: the whole 2 MiB blocks are populated
 * in the run, each by the thread that reads into it first, just before it
 * does (a thread takes a block's units at a time), so that the zeroing is
 * spread over the threads and overlaps the other threads' reads and
 * hashing, and the pages are in cache when the read copies into them.
 * Same 2 MiB pages and giving up as mck_read_plan_prefault; with
 * MCK_READ_FILL_HUGE dest stays advised MADV_HUGEPAGE until
 * mck_read_plan_split_huge, so the pages the plan reads outside whole
 * blocks are populated here first, as 4 KiB pages. The blocks the run
 * will populate; 0 when it would not pay (not an OUT_ZERO plan, no whole
 * block, or more pages outside whole blocks than in them: call
 * mck_read_plan_prefault then); or -errno (-EBUSY: set up already). */
int mck_read_plan_fill_in_run(struct mck_read_plan *plan);

/* The blocks asked for as 2 MiB pages by the runs so far (after
 * mck_read_plan_fill_in_run; 0 without it). */
int mck_read_plan_fill_huge_blocks(const struct mck_read_plan *plan);

/* With MCK_READ_FILL_HUGE, after the read: every block prefaulted (or
 * populated in the run) is mapped by 4 KiB page-table entries again (a huge one is split, its
 * bytes kept), so that dirty tracking sees 4 KiB pages, and dest is left
 * advised MADV_NOHUGEPAGE. 0 (also without the flag: nothing to do), or
 * -errno (-ENOMEM: the process's mapping count limit). */
int mck_read_plan_split_huge(struct mck_read_plan *plan);

void mck_read_plan_free(struct mck_read_plan *plan);

/* The MCK_PAGE_* compression flags this build decodes itself. */
unsigned mck_read_codecs(void);

#ifdef __cplusplus
}
#endif
#endif /* MEMCKPT_EPOCH_READER_H */
