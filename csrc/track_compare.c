/* track_compare.c: compare every page with the copy kept from the last epoch.
 *
 * Needs nothing from the kernel, sees every kind of write (user, kernel,
 * MADV_DONTNEED discards, another process through a shared mapping), and
 * reports changes in content: a write of the same bytes is not a change, which
 * is all a checkpoint needs. The price is a second copy of the range and a
 * scan of all of it (both copies) on every collect.
 *
 * With writers running during collect: a write that lands in a page before the
 * compare reads that spot is seen now; one that lands after is not in the
 * shadow either, so the next collect sees it. A write racing the copy into the
 * shadow leaves the shadow with either the old bytes at that spot (the next
 * collect reports the page again) or the new ones (reported now, and in memory
 * before the caller copies the page). So collect itself loses nothing.
 *
 * Yet no MCK_PROP_CONCURRENT: the shadow records a page at collect time, the
 * checkpoint copies it later. A writer that changes a reported page in that gap
 * and then changes it back (a flag set and cleared, a counter up and down)
 * leaves the stored copy holding the intermediate bytes while memory equals the
 * shadow again, so no later collect ever reports the page. Writers must be
 * quiescent from collect until the dirty pages are copied.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* pages whose zero-ness open decides before copying them (2 MiB) */
#define CMP_CHUNK 512

struct cmp_priv {
	uint8_t *shadow;
};

/* memcmp stops at the first difference and is vectorised; a differing page
 * usually differs early, an equal one costs a full read of both copies,
 * which is the floor anyway. */
static inline bool cmp_page_differs(const uint8_t *a, const uint8_t *b, size_t len)
{
	return memcmp(a, b, len) != 0;
}

static bool cmp_page_is_zero(const uint8_t *p, size_t len)
{
	const uint64_t *w = (const uint64_t *)p;
	uint64_t acc = 0;

	for (size_t i = 0; i < len / sizeof(*w); i += 8) {
		for (size_t j = 0; j < 8; j++)
			acc |= w[i + j];
		if (acc)
			return false;
	}
	return true;
}

static int cmp_status(const struct mck_features *f, char *reason, size_t len)
{
	(void)f;
	mck_reason(reason, len,
		   "page-by-page compare with a private copy: needs nothing, costs a second "
		   "copy of the range and a full scan per collect");
	return 1;
}

static int cmp_open(struct mck_tracker *t)
{
	struct cmp_priv *c;
	int rc;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	/* NORESERVE: the shadow is as large as the range, and pages never
	 * written stay zero and unallocated in both */
	c->shadow = mmap(NULL, t->len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (c->shadow == MAP_FAILED) {
		rc = -errno;
		goto fail;
	}
	/* A fresh mapping reads as zero: copy only the pages that are not, so
	 * that a fresh arena costs a scan at open but no shadow memory. */
	for (size_t first = 0; first < t->npages; first += CMP_CHUNK) {
		size_t cnt = t->npages - first < CMP_CHUNK ? t->npages - first : CMP_CHUNK;
		uint64_t nonzero[CMP_CHUNK / 64] = { 0 };
		size_t n = 0;

		for (size_t i = 0; i < cnt; i++)
			if (!cmp_page_is_zero(t->addr + (first + i) * t->page_size, t->page_size)) {
				nonzero[i / 64] |= 1ULL << (i % 64);
				n++;
			}
		/* one madvise allocates a mostly-used chunk several times faster
		 * than a fault per page; where it is missing (< 5.14) the
		 * faults still do the work */
		if (n >= cnt / 2)
			madvise(c->shadow + first * t->page_size, cnt * t->page_size,
				MADV_POPULATE_WRITE);
		for (size_t i = 0; i < cnt; i++)
			if (nonzero[i / 64] & (1ULL << (i % 64)))
				memcpy(c->shadow + (first + i) * t->page_size,
				       t->addr + (first + i) * t->page_size, t->page_size);
	}
	t->priv = c;
	return 0;
fail:
	free(c);
	return rc;
}

static int64_t cmp_collect(struct mck_tracker *t, uint64_t *out, size_t cap)
{
	struct cmp_priv *c = t->priv;
	size_t ps = t->page_size;
	int64_t n = 0;

	if (cap < t->npages)
		return -ENOBUFS;
	for (size_t i = 0; i < t->npages; i++) {
		const uint8_t *cur = t->addr + i * ps;
		uint8_t *old = c->shadow + i * ps;

		if (cmp_page_differs(cur, old, ps)) {
			memcpy(old, cur, ps);
			out[n++] = i;
		}
	}
	return n;
}

static void cmp_close(struct mck_tracker *t)
{
	struct cmp_priv *c = t->priv;

	if (!c)
		return;
	munmap(c->shadow, t->len);
	free(c);
	t->priv = NULL;
}

const struct mck_tracker_ops mck_compare_ops = {
	.name = "compare",
	.props = MCK_PROP_EXACT | MCK_PROP_KERNEL_WRITES,
	.status = cmp_status,
	.open = cmp_open,
	.collect = cmp_collect,
	.close = cmp_close,
	.forget = cmp_close, /* the shadow is this process's own memory */
};
