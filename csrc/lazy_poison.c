/* lazy_poison.c: what a damaged page, a damaged index or a dead server
 * does: the page poisoned (a touch raises SIGBUS, never wrong bytes, never
 * a hang), the damage kept for the next Python boundary, or the process
 * aborted with the reason. */
#include "lazy_internal.h"

void lz_die(struct mck_lazy *l, const char *why)
{
	uint64_t left = atomic_load(&l->units_left);

	if (!left)
		return;
	dprintf(2, "memckpt: lazy restore: %s with %llu units of the "
		"arena not restored yet; aborting: a touch of one would hang (nobody serving "
		"its fault) or read zeros (userfaultfd gone)\n", why, (unsigned long long)left);
	abort();
}

/* Page p failed (f): never mapped with these bytes, never left missing. */
void lz_bad_page(struct mck_lazy *l, uint64_t p, const struct mck_read_fault *f)
{
	struct uffdio_poison ps = {.range = {.start = (uintptr_t)lz_page_addr(l, p), .len = l->ps}};
	uint8_t want = PENDING;
	int first;

	if (!atomic_compare_exchange_strong(&l->state[p], &want, BAD))
		return; /* mapped already (by a copy of a good image), dropped, or bad */
	atomic_fetch_add(&l->n_bad, 1);
	pthread_mutex_lock(&l->lock);
	first = l->fault.kind == MCK_READ_FAULT_NONE;
	if (first)
		l->fault = *f;
	pthread_mutex_unlock(&l->lock);
	if (first)
		dprintf(2, "memckpt: lazy restore: page %llu of the arena is damaged in the store "
			"(chain position %u, record %llu): poisoned, a touch of it raises SIGBUS\n",
			(unsigned long long)p, f->source, (unsigned long long)f->record);
	if (!l->poison) {
		dprintf(2, "memckpt: lazy restore: this kernel cannot poison a page "
			"(UFFDIO_POISON); aborting rather than map a damaged page\n");
		abort();
	}
	if (ioctl(l->fd, UFFDIO_POISON, &ps) < 0 && errno != EEXIST && errno != ENOENT) {
		dprintf(2, "memckpt: lazy restore: UFFDIO_POISON of page %llu failed (%s); aborting "
			"rather than map a damaged page\n", (unsigned long long)p, strerror(errno));
		abort();
	}
}

/* The restore is abandoned: every page still pending is poisoned (runs of
 * them, one ioctl a run). */
void lz_poison_pending(struct mck_lazy *l)
{
	uint64_t p = 0;

	while (p < l->npages) {
		uint64_t q = p;
		uint8_t want = PENDING;

		while (q < l->npages && atomic_compare_exchange_strong(&l->state[q], &want, BAD)) {
			q++;
			want = PENDING;
		}
		if (q == p) {
			p++;
			continue;
		}
		atomic_fetch_add(&l->n_bad, q - p);
		if (!l->poison) {
			dprintf(2, "memckpt: lazy restore: this kernel cannot poison a page "
				"(UFFDIO_POISON); aborting rather than leave pages that cannot be "
				"served\n");
			abort();
		}
		while (p < q) {
			struct uffdio_poison ps = {
				.range = {.start = (uintptr_t)lz_page_addr(l, p), .len = (q - p) * l->ps}};

			if (ioctl(l->fd, UFFDIO_POISON, &ps) == 0)
				break;
			if (errno == ENOENT)
				return; /* the arena is gone */
			if (errno == EAGAIN) {
				struct queue qu = {.n = 0};

				(void)lz_read_msgs(l, &qu); /* a remove event first; faults wait */
				continue;
			}
			if (errno != EEXIST) {
				dprintf(2, "memckpt: lazy restore: UFFDIO_POISON of pages %llu-%llu failed "
					"(%s); aborting\n", (unsigned long long)p,
					(unsigned long long)q - 1, strerror(errno));
				abort();
			}
			/* (a page there already: past it) */
			p += (ps.updated > 0 ? (uint64_t)ps.updated / l->ps : 0) + 1;
		}
		p = q;
	}
}
