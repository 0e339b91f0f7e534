/* epoch_writer.h: the epoch writer (epoch_writer.c), the one code that
 * turns pages into an epoch's pack and index for every capture mode (the
 * fork child shares its steps, pack_pages.c). Internal to the core: the
 * Python binding (_writer.pyx) is its user. */
#ifndef MEMCKPT_EPOCH_WRITER_H
#define MEMCKPT_EPOCH_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pack_pages.h"

struct mck_ew;

enum mck_ew_flags {
	/* do not start the pack's writeback as each piece is written
	 * (sync_file_range): leave it all to the fdatasync of finish */
	MCK_EW_NO_EARLY_FLUSH = 1u << 0,
	/* no digest of the whole pack (format 1.2: each image is covered by
	 * its record's digest): the pack's bytes are not hashed a second time */
	MCK_EW_NO_PACK_DIGEST = 1u << 1,
};

struct mck_ew_config {
	int pack_fd;          /* the pack, open for writing; its header is written */
	size_t page_size;     /* a power of two, 512 .. 2^30 */
	uint64_t npages;      /* the arena's pages: every page number is below it */
	int incremental;      /* 1: zero pages get a ZERO record; 0: they get none */
	const uint8_t *pack_header; /* the header's bytes (its length: where pages start) */
	size_t pack_header_len;
	int threads;          /* <= 0: the CPUs this process may run on */
	unsigned flags;       /* enum mck_ew_flags */
	unsigned compress;    /* 0, or MCK_PAGE_ZSTD / MCK_PAGE_LZ4: each page stored as its
			       * image when that is smaller (-ENOTSUP: not in this build) */
	int level;            /* zstd's level */
};

struct mck_ew_stats {
	uint64_t records; /* index records so far */
	uint64_t stored;  /* pages stored in the pack */
	uint64_t dedup;   /* nonzero pages whose content the epoch stored already */
	uint64_t zero;    /* all-zero pages */
	uint64_t pack_size; /* bytes, header included */
	int threads;      /* the threads an add may use */
};

/* The CPUs this process may run on (sched_getaffinity), at least 1. */
int mck_cpus_available(void);
/* The CPUs available that no runnable task holds now: mck_cpus_available
 * minus the runnable tasks of the whole system (the caller among them;
 * /proc/loadavg), at least 0; -errno if that cannot be read. An instant's
 * guess: a pause sizes the writer's threads beside its copy by it. */
int mck_cpus_idle(void);

/* A writer for one epoch's pages; *out is freed by mck_ew_close. 0, -EINVAL
 * for a bad config, -ENOMEM. */
int mck_ew_open(const struct mck_ew_config *cfg, struct mck_ew **out);
/* Add n pages: page numbers pages[0..n), strictly increasing and above every
 * page added before, each below npages; page i's bytes are row rows[i] of
 * base (rows NULL: row i), a row being page_size bytes, every row below
 * nrows. Zero pages elided, digests, dedup, the new pages written to the pack
 * (pwritev of runs) and hashed into its digest, with up to the writer's
 * threads (none outlives the call). Byte for byte the same files for any
 * number of threads. 0 or -errno (-EINVAL for bad pages or rows: nothing
 * added); after a failed write every later call fails the same way. */
int mck_ew_add(struct mck_ew *w, const void *base, uint64_t nrows, const uint64_t *pages,
	       const uint64_t *rows, size_t n);
/* mck_ew_add, run beyond the call: its threads start (`threads` of them
 * now, up to the writer's) and the call returns; the rows of base come in
 * order, and the caller says how many are in (ready now, then
 * mck_ew_add_ready): a window of pages is read only once all its rows are
 * in. The page numbers and rows are copied; base's memory must stay until
 * mck_ew_wait or mck_ew_cancel returns (or mck_ew_close). Until then every
 * other call on the writer (add, finish) fails with -EBUSY. 0 or -errno
 * (then nothing was started). */
int mck_ew_add_async(struct mck_ew *w, const void *base, uint64_t nrows, const uint64_t *pages,
		     const uint64_t *rows, size_t n, size_t ready, int threads);
/* Rows [0, ready) of the running add are in; at least `threads` of its
 * threads run from now on (up to the writer's). No running add: nothing. */
void mck_ew_add_ready(struct mck_ew *w, size_t ready, int threads);
/* Whether an add runs beyond its call (mck_ew_add_async, not yet waited). */
bool mck_ew_busy(const struct mck_ew *w);
/* Wait for the running add's threads (none: 0, or the writer's failure):
 * its result, as mck_ew_add's. An add whose rows were not all said to be
 * in fails with -ECANCELED (those rows are never read). In a fork child of
 * the process that started it: -ECHILD (the threads are the parent's). */
int mck_ew_wait(struct mck_ew *w);
/* Stop the running add (its threads end after their current task) and wait
 * for them; the writer has failed (-ECANCELED) unless the add had finished. */
void mck_ew_cancel(struct mck_ew *w);
void mck_ew_read_stats(const struct mck_ew *w, struct mck_ew_stats *st);
/* The records so far (valid until the next add or close). */
const struct mck_idx_record *mck_ew_records(const struct mck_ew *w, uint64_t *n);
/* BLAKE3 of the pack as written so far: 0, or -EINVAL for a writer opened
 * with MCK_EW_NO_PACK_DIGEST. */
int mck_ew_pack_digest(const struct mck_ew *w, uint8_t out[32]);
/* Make the files durable: write the index (the header given, its count
 * set) to idx_fd from offset 0, then fdatasync it and the pack (at once, on
 * two threads). idx_digest and idx_size describe the index file. 0 or
 * -errno. */
int mck_ew_finish(struct mck_ew *w, int idx_fd, const uint8_t idx_header[MCK_IDX_HEADER_SIZE],
		  uint8_t idx_digest[32], uint64_t *idx_size);
/* Free the writer; a running add is cancelled first (in a fork child of
 * the process that started it, its memory is left alone: its threads and
 * lock are the parent's). */
void mck_ew_close(struct mck_ew *w);

#endif /* MEMCKPT_EPOCH_WRITER_H */
