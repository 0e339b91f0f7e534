/* read_fill.c: the fresh memory an epoch read fills, faulted in before the
 * read and, on request, backed by 2 MiB pages meanwhile (epoch_reader.h:
 * mck_read_plan_prefault, mck_read_plan_split_huge).
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

/* The blocks of dest the plan fills wholly. The advice goes to the whole of
 * dest (a region is one VMA): advising part of it would split the VMA
 * before its first page fault gave it an anon_vma, and on older kernels
 * (6.1) the parts, each given its own anon_vma later, never merge again. */
struct blocks {
	uint8_t *dest;
	size_t len;
	uint8_t *lo;            /* the first 2 MiB boundary in dest */
	size_t span;            /* bytes from lo to the last boundary in dest */
	uint64_t *list;         /* block numbers from lo, ascending */
	uint64_t n;
};

struct prefault {
	const struct blocks *b;
	atomic_uint_fast64_t next;
	atomic_uint_fast64_t huge_blocks;
	atomic_int huge;        /* blocks are asked for as 2 MiB pages */
	atomic_llong huge_ns;   /* thread CPU time of their populate, all threads */
	atomic_int stop;        /* no MADV_POPULATE_WRITE here */
	int advised;            /* dest is advised MADV_HUGEPAGE */
	atomic_int rc;          /* the first failure */
};

static void count_pages(uint32_t *count, const struct blocks *b, const struct mck_read_plan *p,
			uint64_t page, uint64_t n)
{
	uintptr_t lo = (uintptr_t)b->lo;

	for (uint64_t k = 0; k < n; k++) {
		uintptr_t at = (uintptr_t)p->dest + (page + k) * p->page_size;

		if (at >= lo && at - lo < b->span)
			count[(at - lo) / FILL_BLOCK]++;
	}
}

static int dense_blocks(const struct mck_read_plan *p, struct blocks *b)
{
	uintptr_t start = (uintptr_t)p->dest, end = start + p->npages * p->page_size;
	uintptr_t lo = (start + FILL_BLOCK - 1) & ~(FILL_BLOCK - 1), hi = end & ~(FILL_BLOCK - 1);
	uint64_t nblocks, per;
	uint32_t *count;

	memset(b, 0, sizeof(*b));
	b->dest = p->dest;
	b->len = p->npages * p->page_size;
	if (!(p->flags & MCK_READ_OUT_ZERO) || !p->npages || p->page_size > FILL_BLOCK ||
	    FILL_BLOCK % p->page_size || hi <= lo)
		return 0;
	nblocks = (hi - lo) / FILL_BLOCK;
	per = FILL_BLOCK / p->page_size;
	b->lo = (uint8_t *)lo;
	b->span = hi - lo;
	count = calloc(nblocks, sizeof(*count));
	b->list = malloc(nblocks * sizeof(*b->list));
	if (!count || !b->list) {
		free(count);
		free(b->list);
		b->list = NULL;
		return -ENOMEM;
	}
	/* a plan takes each page once, so a block is whole when all its pages count */
	for (uint64_t i = 0; i < p->nunits; i++) {
		const struct mck_read_unit *u = &p->units[i];

		if (u->kind == MCK_UNIT_ZERO) {
			count_pages(count, b, p, u->first, u->n);
			continue;
		}
		for (uint32_t k = 0; k < u->n; k++)
			count_pages(count, b, p, p->entries[u->first + k].page, 1);
	}
	for (uint64_t i = 0; i < nblocks; i++)
		if (count[i] == per)
			b->list[b->n++] = i;
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
static void end_huge(struct prefault *f)
{
	if (!atomic_exchange(&f->huge, 0) || !f->advised)
		return;
	if (madvise(f->b->dest, f->b->len, MADV_NOHUGEPAGE) < 0) {
		int none = 0;

		atomic_compare_exchange_strong(&f->rc, &none, -errno);
	}
}

static void *prefault_worker(void *arg)
{
	struct prefault *f = arg;

	while (!atomic_load_explicit(&f->stop, memory_order_relaxed)) {
		uint64_t i = atomic_fetch_add(&f->next, 1);
		int huge = atomic_load_explicit(&f->huge, memory_order_relaxed);
		long long t0 = 0;
		uint8_t *at;

		if (i >= f->b->n)
			break;
		at = f->b->lo + f->b->list[i] * FILL_BLOCK;
		if (huge) {
			t0 = thread_cpu_ns();
			atomic_fetch_add(&f->huge_blocks, 1);
		}
		/* best effort: the read faults in whatever this did not */
		if (madvise(at, FILL_BLOCK, MADV_POPULATE_WRITE) < 0 && errno == EINVAL) {
			atomic_store(&f->stop, 1);
			break;
		}
		if (huge) {
			long long dt = thread_cpu_ns() - t0;
			long long sum = atomic_fetch_add(&f->huge_ns, dt) + dt;
			uint64_t n = atomic_load(&f->huge_blocks);

			if (dt > STALL_NS || (n >= SLOW_AFTER && sum > (long long)n * SLOW_MEAN_NS))
				end_huge(f);
		}
	}
	return NULL;
}

int mck_read_plan_prefault(struct mck_read_plan *p, unsigned nthreads, uint64_t *huge)
{
	struct prefault f;
	struct blocks b;
	int rc = dense_blocks(p, &b);

	if (huge)
		*huge = 0;
	if (rc < 0 || !b.n) {
		free(b.list);
		return rc;
	}
	memset(&f, 0, sizeof(f));
	f.b = &b;
	atomic_init(&f.next, 0);
	atomic_init(&f.huge_blocks, 0);
	atomic_init(&f.huge_ns, 0);
	atomic_init(&f.stop, 0);
	atomic_init(&f.rc, 0);
	/* (EINVAL: a kernel without transparent huge pages; 4 KiB pages then) */
	f.advised = (p->flags & MCK_READ_FILL_HUGE) && madvise(b.dest, b.len, MADV_HUGEPAGE) == 0;
	atomic_init(&f.huge, f.advised);
	if (!nthreads) {
		nthreads = mck_read_cpus();
		if (nthreads > b.n / THREAD_MIN_BLOCKS)
			nthreads = b.n >= THREAD_MIN_BLOCKS ? (unsigned)(b.n / THREAD_MIN_BLOCKS) : 1;
	}
	mck_read_on_threads(prefault_worker, &f, nthreads);
	/* whatever the read faults in besides (blocks it fills in part, the
	 * pages the caller writes after it) gets 4 KiB pages */
	end_huge(&f);
	if (huge)
		*huge = atomic_load(&f.huge_blocks);
	rc = atomic_load(&f.rc);
	rc = rc ? rc : (int)(b.n < (uint64_t)INT32_MAX ? b.n : INT32_MAX);
	free(b.list);
	return rc;
}

int mck_read_plan_split_huge(struct mck_read_plan *p)
{
	struct blocks b;
	size_t ps = p->page_size;
	int rc;

	if (!(p->flags & MCK_READ_FILL_HUGE))
		return 0;
	rc = dense_blocks(p, &b);
	for (uint64_t i = 0; rc == 0 && i < b.n; i++) {
		uint8_t *at = b.lo + b.list[i] * FILL_BLOCK + ps;

		/* a VMA boundary inside the block splits its huge PMD */
		if (madvise(at, ps, MADV_HUGEPAGE) < 0) {
			if (errno != EINVAL) /* EINVAL: no THP in this kernel, nothing to split */
				rc = -errno;
			break;
		}
		if (madvise(at, ps, MADV_NOHUGEPAGE) < 0)
			rc = -errno;
	}
	if (rc == 0 && b.n && madvise(b.dest, b.len, MADV_NOHUGEPAGE) < 0 && errno != EINVAL)
		rc = -errno;
	free(b.list);
	return rc;
}
