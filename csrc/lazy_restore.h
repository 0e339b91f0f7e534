/* lazy_restore.h: an epoch served into an arena on first touch
 * (userfaultfd MISSING), while drain threads fill the rest.
 *
 * The plan (read_plan.h) is built for the arena as dest, without
 * MCK_READ_OUT_ZERO (so every page is in some unit, zero ones too) and
 * with no deferred page. The arena must be mapped, untouched since it was
 * mapped (every page missing), and stay mapped until mck_lazy_close. */
#ifndef MEMCKPT_LAZY_RESTORE_H
#define MEMCKPT_LAZY_RESTORE_H

#include <stddef.h>
#include <stdint.h>

#include "epoch_reader.h"

struct mck_lazy;

struct mck_lazy_stats {
	uint64_t npages;
	uint64_t faults;          /* distinct pages first touched by the program */
	uint64_t fault_msgs;      /* fault messages read (retries and races too) */
	uint64_t drained;         /* pages the drain mapped (copied or zero) */
	uint64_t served;          /* pages the fault handler mapped */
	uint64_t eexist;          /* copies that found the page there already */
	uint64_t eagain;          /* copies refused while a remove event was pending */
	uint64_t removed;         /* pages the program dropped (MADV_DONTNEED) before they were drained */
	uint64_t bad;             /* pages that failed their check (poisoned) */
	uint64_t bytes_read;      /* from the packs */
	uint64_t chunk_min, chunk_max; /* the drain's chunk sizes seen, in pages */
	uint64_t start_ns;        /* CLOCK_MONOTONIC at start */
	uint64_t planned_ns;      /* when the indexes were checked and the plan built (0: not yet) */
	uint64_t drained_ns;      /* when the drain finished (0: not yet) */
	int state;                /* MCK_LAZY_* */
	int err;                  /* -errno of a failure that stopped it */
};

#define MCK_LAZY_RUNNING 0
#define MCK_LAZY_DRAINED 1    /* every page mapped; the range unregistered */
#define MCK_LAZY_STOPPED 2    /* stopped early: the arena was unmapped */

/* An index file to check whole in the background: its bytes (a mapping of
 * the file) and the BLAKE3 its manifest gives. */
struct mck_lazy_index {
	const uint8_t *data;
	uint64_t size;
	uint8_t digest[32];
};

/* record of a fault that is about a whole index file (its digest) */
#define MCK_LAZY_WHOLE_FILE UINT64_MAX

/* Start serving the arena dest (npages pages of page_size, every one
 * missing) from sources (oldest first, as for mck_read_plan_build) at once,
 * before any plan: a fault finds its page's record by binary search in each
 * source's records, newest source first (records are in page order), and
 * the page is checked against that record's digest before it is mapped. A
 * thread of the server meanwhile checks each index whole (indexes[i] for
 * source i; indexes NULL: checked already), builds the plan and only then
 * lets the drain begin (order, nthreads, flags: as for mck_lazy_start). An
 * index found damaged then abandons the restore (mck_lazy_abandon) and is
 * told by mck_lazy_index_fault. The sources, their records and the index
 * bytes must stay until mck_lazy_close; order is copied. */
int mck_lazy_open(struct mck_lazy **out, const struct mck_read_source *sources,
		  uint32_t nsources, const struct mck_lazy_index *indexes, void *dest,
		  size_t page_size, uint64_t npages, const uint64_t *order, uint64_t norder,
		  unsigned nthreads, unsigned flags);

/* The sources cannot be trusted: every page not mapped yet is poisoned (a
 * touch raises SIGBUS; on a kernel that cannot poison, the process aborts
 * with the reason), the drain never starts, the server ends (state
 * DRAINED, with the pages poisoned). Pages mapped before stay as they are. */
void mck_lazy_abandon(struct mck_lazy *l);

/* 1 and *f if an index was found damaged (f->source: its chain position,
 * f->record: the record, or MCK_LAZY_WHOLE_FILE for its digest; f->why);
 * 0 if not (or not checked yet). */
int mck_lazy_index_fault(struct mck_lazy *l, struct mck_read_fault *f);

/* 1 once the indexes are checked and the plan built (the drain may run). */
int mck_lazy_planned(struct mck_lazy *l);

/* 1 if ix's bytes have its digest (or ix->data is NULL), 0 if not, -ENOMEM. */
int mck_lazy_index_digest(const struct mck_lazy_index *ix);

/* One index checked whole (lazy_index.c): ix's digest (if ix->data), then
 * every record of src: followable, pages strictly increasing, ZERO ones
 * well formed. 0, -EBADMSG with f, -ENOMEM. */
int mck_lazy_check_index(const struct mck_lazy_index *ix, const struct mck_read_source *src,
			 uint32_t s, size_t page_size, uint64_t npages, struct mck_read_fault *f);

/* Start serving the arena (plan->dest, npages pages) with a plan built
 * already (no background check). order: pages whose
 * units drain first, in that order (any page numbers; out of range ones
 * are ignored); nthreads drain threads (0: the CPUs this process may use).
 * -ENOTSUP: the plan leaves compressed pages to the caller;
 * -EOPNOTSUPP: the kernel lacks userfaultfd MISSING or UFFDIO_POISON. */
#define MCK_LAZY_VERIFY (1u << 0)  /* check each page's digest before it is mapped */
#define MCK_LAZY_HOLD (1u << 1)    /* tests: the drain (and mck_lazy_open's check and
				    * plan) wait for mck_lazy_release */

int mck_lazy_start(struct mck_lazy **out, struct mck_read_plan *plan, const uint64_t *order,
		   uint64_t norder, unsigned nthreads, unsigned flags);

/* Let a held drain (MCK_LAZY_HOLD) begin. */
void mck_lazy_release(struct mck_lazy *l);

/* Wait at most timeout_ms (-1: for ever) for the drain: 0 drained (or
 * stopped), -ETIMEDOUT. */
int mck_lazy_wait(struct mck_lazy *l, int timeout_ms);

void mck_lazy_get_stats(struct mck_lazy *l, struct mck_lazy_stats *st);

/* The first damaged page (kind NONE if none so far). */
void mck_lazy_first_fault(struct mck_lazy *l, struct mck_read_fault *f);

/* Up to cap of the pages the program touched first, in order of first
 * touch; returns how many there are. */
uint64_t mck_lazy_touched(struct mck_lazy *l, uint64_t *pages, uint64_t cap);

/* Up to cap fault latencies (ns, message read to page mapped), in order;
 * returns how many there are. */
uint64_t mck_lazy_latencies(struct mck_lazy *l, uint64_t *ns, uint64_t cap);

/* The handler's userfaultfd (for tests of its death: closing it is one). */
int mck_lazy_fd(struct mck_lazy *l);

/* Tests only: make the handler thread exit as if it had died. */
void mck_lazy_kill_handler(struct mck_lazy *l);

/* Finish the drain (blocks until every page is mapped), join the threads,
 * free. NULL-safe. */
void mck_lazy_close(struct mck_lazy *l);

#endif /* MEMCKPT_LAZY_RESTORE_H */
