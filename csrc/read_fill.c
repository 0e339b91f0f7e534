/* read_fill.c: the fresh memory an epoch read fills, faulted in a block at
 * a time and, on request, backed by 2 MiB pages meanwhile (epoch_reader.h:
 * mck_read_plan_fill_in_run, mck_read_plan_prefault,
 * mck_read_plan_split_huge). In the run, each whole block is populated by
 * the reader thread about to read into it (mck_read_fill_unit, called by
 * epoch_reader.c), so the zeroing is spread over the threads beside their
 * copying and hashing; the prefault pass populates them all before the
 * read instead (for reads mostly outside whole blocks).
 *
 * Measured on this project's VMs (2 vCPUs, THP "madvise"): populating
 * 512 MiB of 4 KiB pages costs 160-250 ms of CPU, the same as 2 MiB pages
 * 50-130 ms, and numpy's large arrays get the latter (it advises them
 * MADV_HUGEPAGE). An arena is tracked at 4 KiB, so its 2 MiB pages are
 * split back into 4 KiB page-table entries once the read is done: a 4 KiB
 * range of each block advised apart for a moment splits the VMA there,
 * which splits the huge PMD (the bytes stay where they are), and advising
 * it back merges the VMA again: ~5 ms for 512 MiB, no protection changed.
 * With defrag "madvise" a 2 MiB page may cost the faulting thread a
 * compaction (seen here: 1.4 s for 512 MiB instead of 0.13 s), so huge
 * pages that cost more CPU than 4 KiB pages would are given up for the
 * rest of the read. */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "read_plan.h"
#include "read_threads.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#define FILL_BLOCK ((uintptr_t)2 << 20)
/* 2 MiB pages are given up once they cost more CPU than 4 KiB pages would:
 * a block's 512 4 KiB pages cost 0.6-1 ms of populate here, a 2 MiB page
 * 0.2-0.3 ms, but single blocks take 1-3 ms now and then on a busy
 * machine, so the mean of the blocks so far is what counts (from the
 * 8th), or one block that took a compaction's time. */
#define SLOW_MEAN_NS 1000000LL
#define SLOW_AFTER 8
#define STALL_NS 20000000LL
/* a thread more per this many blocks at least (starting one costs ~50 us) */
#define THREAD_MIN_BLOCKS 8

/* Per 2 MiB block of dest, from lo: what the plan reads into it, and
 * (filled in the run) where its population stands. */
enum {
	BLK_NONE = 0,           /* nothing read into it */
	BLK_PART,               /* read in part */
	BLK_WHOLE,              /* read wholly: to populate */
	BLK_BUSY,               /* a thread populates it now */
	BLK_DONE,               /* populated (or tried to be) */
};

/* The blocks of dest and what the plan reads into each. The advice goes to
 * the whole of dest (a region is one VMA): advising part of it would split
 * the VMA before its first page fault gave it an anon_vma, and on older
 * kernels (6.1) the parts, each given its own anon_vma later, never merge
 * again. */
struct mck_read_fill {
	uint8_t *dest;
	size_t len;
	uint8_t *lo;            /* the first 2 MiB boundary in dest */
	size_t span;            /* bytes from lo to the last boundary in dest */
	uint64_t nblocks;       /* span / FILL_BLOCK */
	_Atomic uint8_t *state; /* nblocks of BLK_* */
	uint64_t *list;         /* the BLK_WHOLE blocks, ascending */
	uint64_t n;
	uint64_t outside;       /* pages read outside whole blocks */
	atomic_uint_fast64_t next;
	atomic_uint_fast64_t huge_blocks;
	atomic_int huge;        /* blocks are asked for as 2 MiB pages */
	atomic_llong huge_ns;   /* thread CPU time of their populate, all threads */
	atomic_int stop;        /* no MADV_POPULATE_WRITE here */
	int advised;            /* dest is advised MADV_HUGEPAGE */
	atomic_int rc;          /* the first failure */
};

/* The block of dest a page is in, or UINT64_MAX outside [lo, lo + span). */
static inline uint64_t block_of(const struct mck_read_fill *f, const struct mck_read_plan *p,
				uint64_t page)
{
	uintptr_t at = (uintptr_t)p->dest + page * p->page_size, lo = (uintptr_t)f->lo;

	return at >= lo && at - lo < f->span ? (at - lo) / FILL_BLOCK : UINT64_MAX;
}

static void count_pages(uint32_t *count, const struct mck_read_fill *f,
			const struct mck_read_plan *p, uint64_t page, uint64_t n)
{
	for (uint64_t k = 0; k < n; k++) {
		uint64_t b = block_of(f, p, page + k);

		if (b != UINT64_MAX)
			count[b]++;
	}
}

void mck_read_fill_free(struct mck_read_fill *f)
{
	if (!f)
		return;
	free((void *)f->state);
	free(f->list);
	free(f);
}

/* *out: the blocks of the plan's dest (none outside an OUT_ZERO plan of
 * whole 2 MiB blocks), each block's state, the whole ones listed. */
static int fill_open(const struct mck_read_plan *p, struct mck_read_fill **out)
{
	uintptr_t start = (uintptr_t)p->dest, end = start + p->npages * p->page_size;
	uintptr_t lo = (start + FILL_BLOCK - 1) & ~(FILL_BLOCK - 1), hi = end & ~(FILL_BLOCK - 1);
	struct mck_read_fill *f = calloc(1, sizeof(*f));
	uint64_t per, pages = 0;
	uint32_t *count;

	*out = f;
	if (!f)
		return -ENOMEM;
	f->dest = p->dest;
	f->len = p->npages * p->page_size;
	atomic_init(&f->next, 0);
	atomic_init(&f->huge_blocks, 0);
	atomic_init(&f->huge, 0);
	atomic_init(&f->huge_ns, 0);
	atomic_init(&f->stop, 0);
	atomic_init(&f->rc, 0);
	if (!(p->flags & MCK_READ_OUT_ZERO) || !p->npages || p->page_size > FILL_BLOCK ||
	    FILL_BLOCK % p->page_size || hi <= lo)
		return 0;
	f->nblocks = (hi - lo) / FILL_BLOCK;
	per = FILL_BLOCK / p->page_size;
	f->lo = (uint8_t *)lo;
	f->span = hi - lo;
	count = calloc(f->nblocks, sizeof(*count));
	f->state = calloc(f->nblocks, sizeof(*f->state));
	f->list = malloc(f->nblocks * sizeof(*f->list));
	if (!count || !f->state || !f->list) {
		free(count);
		return -ENOMEM;
	}
	/* a plan takes each page once, so a block is whole when all its pages count */
	for (uint64_t i = 0; i < p->nunits; i++) {
		const struct mck_read_unit *u = &p->units[i];

		pages += u->n;
		if (u->kind == MCK_UNIT_ZERO) {
			count_pages(count, f, p, u->first, u->n);
			continue;
		}
		for (uint32_t k = 0; k < u->n; k++)
			count_pages(count, f, p, p->entries[u->first + k].page, 1);
	}
	for (uint64_t i = 0; i < f->nblocks; i++) {
		uint8_t s = count[i] == per ? BLK_WHOLE : count[i] ? BLK_PART : BLK_NONE;

		atomic_init(&f->state[i], s);
		if (s == BLK_WHOLE)
			f->list[f->n++] = i;
	}
	f->outside = pages - f->n * per;
	free(count);
	return 0;
}

static long long thread_cpu_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* The rest of the read gets 4 KiB pages (once, whichever thread sees it first). */
static void end_huge(struct mck_read_fill *f)
{
	if (!atomic_exchange(&f->huge, 0) || !f->advised)
		return;
	if (madvise(f->dest, f->len, MADV_NOHUGEPAGE) < 0) {
		int none = 0;

		atomic_compare_exchange_strong(&f->rc, &none, -errno);
	}
}

/* Populate block i, as a 2 MiB page while those come cheap. */
static void fill_block(struct mck_read_fill *f, uint64_t i)
{
	int huge = atomic_load_explicit(&f->huge, memory_order_relaxed);
	uint8_t *at = f->lo + i * FILL_BLOCK;
	long long t0 = 0;

	if (atomic_load_explicit(&f->stop, memory_order_relaxed))
		return;
	if (huge) {
		t0 = thread_cpu_ns();
		atomic_fetch_add(&f->huge_blocks, 1);
	}
	/* best effort: the read faults in whatever this did not */
	if (madvise(at, FILL_BLOCK, MADV_POPULATE_WRITE) < 0 && errno == EINVAL) {
		atomic_store(&f->stop, 1);
		return;
	}
	if (huge) {
		long long dt = thread_cpu_ns() - t0;
		long long sum = atomic_fetch_add(&f->huge_ns, dt) + dt;
		uint64_t n = atomic_load(&f->huge_blocks);

		if (dt > STALL_NS || (n >= SLOW_AFTER && sum > (long long)n * SLOW_MEAN_NS))
			end_huge(f);
	}
}

static void *prefault_worker(void *arg)
{
	struct mck_read_fill *f = arg;

	while (!atomic_load_explicit(&f->stop, memory_order_relaxed)) {
		uint64_t i = atomic_fetch_add(&f->next, 1);

		if (i >= f->n)
			break;
		fill_block(f, f->list[i]);
	}
	return NULL;
}

/* (EINVAL: a kernel without transparent huge pages; 4 KiB pages then) */
static void advise_huge(struct mck_read_fill *f, const struct mck_read_plan *p)
{
	f->advised = (p->flags & MCK_READ_FILL_HUGE) && madvise(f->dest, f->len, MADV_HUGEPAGE) == 0;
	atomic_store(&f->huge, f->advised);
}

int mck_read_plan_prefault(struct mck_read_plan *p, unsigned nthreads, uint64_t *huge)
{
	struct mck_read_fill *f;
	int rc = p->fill ? -EBUSY : fill_open(p, &f);

	if (huge)
		*huge = 0;
	if (rc < 0 || !f->n) {
		mck_read_fill_free(rc == -EBUSY ? NULL : f);
		return rc;
	}
	advise_huge(f, p);
	if (!nthreads) {
		nthreads = mck_read_cpus();
		if (nthreads > f->n / THREAD_MIN_BLOCKS)
			nthreads = f->n >= THREAD_MIN_BLOCKS ? (unsigned)(f->n / THREAD_MIN_BLOCKS) : 1;
	}
	mck_read_on_threads(prefault_worker, f, nthreads);
	/* whatever the read faults in besides (blocks it fills in part, the
	 * pages the caller writes after it) gets 4 KiB pages */
	end_huge(f);
	if (huge)
		*huge = atomic_load(&f->huge_blocks);
	rc = atomic_load(&f->rc);
	rc = rc ? rc : (int)(f->n < (uint64_t)INT32_MAX ? f->n : INT32_MAX);
	mck_read_fill_free(f);
	return rc;
}

/* Populate the pages the plan reads outside whole blocks, runs of
 * consecutive pages at a time: 0, or -EINVAL (no MADV_POPULATE_WRITE). */
static int fill_outside(const struct mck_read_fill *f, const struct mck_read_plan *p)
{
	uint64_t run = 0, len = 0;

	for (uint64_t i = 0; i <= p->nunits; i++) {
		const struct mck_read_unit *u = i < p->nunits ? &p->units[i] : NULL;

		for (uint32_t k = 0; k < (u ? u->n : 1); k++) {
			uint64_t page = !u ? UINT64_MAX : u->kind == MCK_UNIT_ZERO
				? u->first + k : p->entries[u->first + k].page;
			uint64_t b = u ? block_of(f, p, page) : UINT64_MAX;

			if (u && b != UINT64_MAX && atomic_load(&f->state[b]) == BLK_WHOLE)
				continue;
			if (len && page == run + len) {
				len++;
				continue;
			}
			if (len && madvise(p->dest + run * p->page_size, len * p->page_size,
					   MADV_POPULATE_WRITE) < 0 && errno == EINVAL)
				return -EINVAL;
			run = page;
			len = u ? 1 : 0;
		}
	}
	return 0;
}

int mck_read_plan_fill_in_run(struct mck_read_plan *p)
{
	struct mck_read_fill *f;
	int rc = p->fill ? -EBUSY : fill_open(p, &f);

	if (rc == -EBUSY)
		return rc;
	/* a read mostly outside whole blocks: populated unit by unit in the
	 * read, which the prefault pass then leaves to it */
	if (rc < 0 || !f->n || f->outside > f->n * (FILL_BLOCK / p->page_size)) {
		mck_read_fill_free(f);
		return rc;
	}
	/* dest stays advised MADV_HUGEPAGE through the run: what the read
	 * fills outside whole blocks must have its 4 KiB pages first */
	if ((p->flags & MCK_READ_FILL_HUGE) && f->outside && fill_outside(f, p) < 0) {
		mck_read_fill_free(f);
		return 0;
	}
	advise_huge(f, p);
	p->fill = f;
	return (int)(f->n < (uint64_t)INT32_MAX ? f->n : INT32_MAX);
}

void mck_read_fill_unit(struct mck_read_plan *p, const struct mck_read_unit *u)
{
	struct mck_read_fill *f = p->fill;
	uint64_t last = UINT64_MAX;

	if (u->kind == MCK_UNIT_ZERO)
		return;
	for (uint32_t k = 0; k < u->n; k++) {
		uint64_t b = block_of(f, p, p->entries[u->first + k].page);
		uint8_t s;

		if (b == last || b == UINT64_MAX)
			continue;
		last = b;
		s = BLK_WHOLE;
		if (atomic_compare_exchange_strong(&f->state[b], &s, BLK_BUSY)) {
			fill_block(f, b);
			atomic_store(&f->state[b], BLK_DONE);
			continue;
		}
		/* another thread populates it: a fault here now would race it */
		while (atomic_load(&f->state[b]) == BLK_BUSY)
			sched_yield();
	}
}

int mck_read_plan_fill_huge_blocks(const struct mck_read_plan *p)
{
	uint64_t n = p->fill ? atomic_load(&p->fill->huge_blocks) : 0;

	return (int)(n < (uint64_t)INT32_MAX ? n : INT32_MAX);
}

/* Split the huge PMD of block i, if any: a VMA boundary inside the block
 * splits it, and the VMA merges back. */
static int split_block(const struct mck_read_fill *f, uint64_t i, size_t ps)
{
	uint8_t *at = f->lo + i * FILL_BLOCK + ps;

	if (madvise(at, ps, MADV_HUGEPAGE) < 0)
		return errno == EINVAL ? 1 : -errno; /* EINVAL: no THP in this kernel, nothing to split */
	return madvise(at, ps, MADV_NOHUGEPAGE) < 0 ? -errno : 0;
}

int mck_read_plan_split_huge(struct mck_read_plan *p)
{
	struct mck_read_fill *f = p->fill;
	size_t ps = p->page_size;
	int rc = 0;

	p->fill = NULL;
	if (!(p->flags & MCK_READ_FILL_HUGE)) {
		mck_read_fill_free(f);
		return 0;
	}
	if (f) {
		/* the whole of dest first: a 4 KiB range advised apart splits the
		 * VMA only where the advice differs. Blocks read in part are split
		 * too: khugepaged may have collapsed one while dest was advised. */
		end_huge(f);
		rc = atomic_load(&f->rc);
		for (uint64_t i = 0; rc == 0 && i < f->nblocks; i++) {
			uint8_t s = atomic_load(&f->state[i]);

			if (s == BLK_DONE || s == BLK_PART)
				rc = split_block(f, i, ps);
		}
	} else {
		rc = fill_open(p, &f);
		for (uint64_t i = 0; rc == 0 && i < f->n; i++)
			rc = split_block(f, f->list[i], ps);
	}
	if (rc == 0 && f && f->n && madvise(f->dest, f->len, MADV_NOHUGEPAGE) < 0 &&
	    errno != EINVAL)
		rc = -errno;
	mck_read_fill_free(f);
	return rc > 0 ? 0 : rc;
}
