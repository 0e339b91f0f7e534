/* tracker_range.c: a tracker over any byte range, such as an array the
 * program allocated itself (malloc does not page-align).
 *
 * The pages wholly inside the range go to a backend's tracker; the partial
 * pages at its ends, which it shares with whatever lies beside it, are
 * tracked by comparison: a copy of the range's own bytes in each is kept,
 * and collect reports the page when those bytes differ from the copy (the
 * neighbour's bytes in the page are never looked at, so a neighbour's writes
 * do not make it dirty). The edge pages are never protected, so the
 * neighbour runs at full speed and a kernel write into it never faults.
 *
 * Page indices count from the range's first page (the page holding its
 * first byte), as for any tracker. The compare half has the compare
 * backend's rule: writers quiescent from collect until the pages are
 * copied. No background capture (no hold interface): an edge page cannot
 * be write-protected without stopping the neighbour too. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

struct range_edge {
	size_t page;   /* index in the range */
	size_t off;    /* the range's own bytes in that page: [off, off + len) */
	size_t len;
	uint8_t *copy; /* their content at the last collect */
};

struct range_priv {
	struct mck_tracker *inner; /* the whole pages, or NULL if none */
	size_t inner_first;        /* the inner tracker's first page, as an index here */
	struct range_edge edge[2]; /* the head edge (if any) first */
	int nedge;
};

/* ops->open reads what open_range asked for from t->priv, then replaces it */
struct range_args {
	int backend;
	uint8_t *start;
	size_t len;
};

static void range_free(struct range_priv *p)
{
	for (int i = 0; i < p->nedge; i++)
		free(p->edge[i].copy);
	free(p);
}

static int add_edge(struct range_priv *p, struct mck_tracker *t, size_t page, const uint8_t *start,
		    const uint8_t *end)
{
	const uint8_t *pbeg = t->addr + page * t->page_size;
	const uint8_t *lo = start > pbeg ? start : pbeg;
	const uint8_t *hi = end < pbeg + t->page_size ? end : pbeg + t->page_size;
	struct range_edge *e = &p->edge[p->nedge];

	e->page = page;
	e->off = (size_t)(lo - pbeg);
	e->len = (size_t)(hi - lo);
	e->copy = malloc(e->len);
	if (!e->copy)
		return -ENOMEM;
	memcpy(e->copy, lo, e->len);
	p->nedge++;
	return 0;
}

static int range_open(struct mck_tracker *t)
{
	const struct range_args *a = t->priv;
	size_t ps = t->page_size;
	uint8_t *end = a->start + a->len;
	uintptr_t first_full = ((uintptr_t)a->start + ps - 1) / ps * ps;
	uintptr_t end_full = (uintptr_t)end / ps * ps;
	struct range_priv *p = calloc(1, sizeof(*p));
	int rc;

	if (!p)
		return -ENOMEM;
	p->inner_first = (first_full - (uintptr_t)t->addr) / ps;
	if (first_full != (uintptr_t)a->start || end_full < first_full) {
		rc = add_edge(p, t, 0, a->start, end);
		if (rc < 0)
			goto fail;
	}
	if ((uintptr_t)end != end_full && t->npages - 1 != (p->nedge ? p->edge[0].page : (size_t)-1)) {
		rc = add_edge(p, t, t->npages - 1, a->start, end);
		if (rc < 0)
			goto fail;
	}
	if (end_full > first_full) {
		rc = mck_tracker_open(&p->inner, a->backend, (void *)first_full, end_full - first_full);
		if (rc < 0)
			goto fail;
	}
	t->priv = p;
	return 0;
fail:
	range_free(p);
	return rc;
}

static bool edge_changed(struct mck_tracker *t, struct range_edge *e)
{
	const uint8_t *own = t->addr + e->page * t->page_size + e->off;

	if (!memcmp(own, e->copy, e->len))
		return false;
	memcpy(e->copy, own, e->len);
	return true;
}

static int64_t range_collect(struct mck_tracker *t, uint64_t *out, size_t cap)
{
	struct range_priv *p = t->priv;
	size_t n = 0;
	int e = 0;

	if (p->nedge && p->edge[0].page == 0 && p->inner_first == 1) {
		if (edge_changed(t, &p->edge[0]))
			out[n++] = 0;
		e = 1;
	}
	if (p->inner) {
		int64_t m = mck_tracker_collect(p->inner, out + n, cap - n);

		if (m < 0)
			return m;
		for (int64_t i = 0; i < m; i++)
			out[n + (size_t)i] += p->inner_first;
		n += (size_t)m;
	}
	for (; e < p->nedge; e++)
		if (edge_changed(t, &p->edge[e]))
			out[n++] = p->edge[e].page;
	return (int64_t)n;
}

static void range_close(struct mck_tracker *t)
{
	struct range_priv *p = t->priv;

	mck_tracker_close(p->inner); /* in a fork child it only forgets */
	range_free(p);
}

/* Not in the backend table: reached through mck_tracker_open_range only.
 * The tracker's backend number stays the inner backend's. */
const struct mck_tracker_ops mck_range_ops = {
	.props = 0,
	.caps = 0,
	.status = NULL,
	.open = range_open,
	.collect = range_collect,
	.close = range_close,
	.forget = range_close,
	.hold = NULL,
};

int mck_tracker_open_range(struct mck_tracker **out, int backend, void *start, size_t len)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	uintptr_t lo, hi;
	struct range_args a = {backend, start, len};
	int rc;

	*out = NULL;
	if (!start || !len || (uintptr_t)start + len < (uintptr_t)start)
		return -EINVAL;
	if ((uintptr_t)start % ps == 0 && len % ps == 0)
		return mck_tracker_open(out, backend, start, len);
	lo = (uintptr_t)start / ps * ps;
	hi = ((uintptr_t)start + len + ps - 1) / ps * ps;
	if (hi < lo)
		return -EINVAL;
	rc = mck_backend_status(backend, NULL, 0);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return -ENOTSUP;
	return mck_tracker_start(out, &mck_range_ops, backend, (void *)lo, hi - lo, &a);
}
