/* read_plan.h: the plan of an epoch read (epoch_reader.h), shared by the
 * file that builds it (read_plan.c) and the one that runs it
 * (epoch_reader.c). */
#ifndef MEMCKPT_READ_PLAN_H
#define MEMCKPT_READ_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "epoch_reader.h"
#include "pack_format.h"

/* A unit is the work one thread takes at a time: either pages to zero, or
 * records of one source stored back to back in its pack. */
#define MCK_UNIT_ZERO 0u
#define MCK_UNIT_RAW 1u        /* raw images only: preadv straight into the pages */
#define MCK_UNIT_CODED 2u      /* some compressed: read into scratch, then decode */

/* A unit reads at most this much (and at least one page): small enough to
 * hash while it is still in cache after the read, large enough that a
 * syscall per unit costs nothing. */
#define MCK_UNIT_BYTES (512u << 10)

struct mck_read_unit {
	uint64_t first;         /* ZERO: the first page; else the first entry */
	uint64_t offset;        /* pack offset of the first record's bytes */
	uint64_t bytes;         /* bytes to read from the pack */
	uint32_t n;             /* pages (ZERO) or entries */
	uint32_t source;
	uint32_t kind;          /* MCK_UNIT_* */
	uint32_t contiguous;    /* the entries' pages are consecutive */
};

/* One page to read: the page, and its record in the unit's source. */
struct mck_read_entry {
	uint64_t page;
	uint64_t record;
};

struct mck_read_plan {
	const struct mck_read_source *sources;
	uint32_t nsources;
	unsigned flags;
	uint8_t *dest;
	size_t page_size;
	uint64_t npages;
	uint32_t unit_pages;    /* at most this many pages a unit */

	struct mck_read_unit *units;
	uint64_t nunits, units_cap;
	uint64_t *done;         /* done[i]: pages units [0, i) fill; nunits + 1 of them */
	struct mck_read_entry *entries;
	uint64_t nentries, entries_cap;
	uint32_t *deferred_source;
	uint64_t *deferred_record;
	uint64_t ndeferred, deferred_cap;
	int coded;              /* some unit is CODED: threads need scratch and a decoder */
	struct mck_read_fill *fill; /* mck_read_plan_fill_in_run's blocks (read_fill.c) */
};

/* read_fill.c: with plan->fill, populate the whole 2 MiB blocks unit u
 * reads into that no thread populated yet (and wait for those another
 * thread is populating), before u is read. */
void mck_read_fill_unit(struct mck_read_plan *plan, const struct mck_read_unit *u);
void mck_read_fill_free(struct mck_read_fill *fill);

/* Record i of source s (at chain position s) is one a reader can follow:
 * within the arena's npages and the pack, known flags, a page's length.
 * 0, or -EBADMSG with f saying what is wrong (MCK_READ_FAULT_RECORD). */
int mck_read_check_record(const struct mck_read_source *src, uint32_t s, uint64_t i,
			  size_t page_size, uint64_t npages, struct mck_read_fault *f);

static inline const struct mck_idx_record *mck_plan_record(const struct mck_read_plan *p,
							   uint32_t source, uint64_t record)
{
	return (const struct mck_idx_record *)p->sources[source].records + record;
}

#endif /* MEMCKPT_READ_PLAN_H */
