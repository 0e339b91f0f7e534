/* lazy_prefetch.c: the prefetch record: the first touch of each page
 * noted as faults are served, the drain order built from a recorded list,
 * and the figures handed back (touched pages, fault latencies). */
#include "lazy_internal.h"

void lz_first_touch(struct mck_lazy *l, uint64_t p, uint64_t t0)
{
	uint64_t t1 = now_ns();

	pthread_mutex_lock(&l->lock);
	if (!(l->touched_bits[p / 8] & (1u << (p % 8)))) {
		l->touched_bits[p / 8] |= (uint8_t)(1u << (p % 8));
		(void)append(&l->touched, &l->ntouched, &l->touched_cap, p);
		(void)append(&l->lat, &l->nlat, &l->lat_cap, t1 - t0);
	}
	pthread_mutex_unlock(&l->lock);
}

int lz_build_order(struct mck_lazy *l, const uint64_t *pref, uint64_t npref)
{
	uint64_t nunits = l->plan->nunits, n = 0;
	uint8_t *seen = calloc(nunits ? nunits : 1, 1);

	l->order = malloc((nunits ? nunits : 1) * sizeof(*l->order));
	l->pos_of = malloc((nunits ? nunits : 1) * sizeof(*l->pos_of));
	l->claimed = calloc(nunits ? nunits : 1, 1);
	if (!seen || !l->order || !l->pos_of || !l->claimed) {
		free(seen);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < npref; i++) {
		uint64_t u;

		if (pref[i] >= l->npages)
			continue;
		u = l->unit_of[pref[i]];
		if (!seen[u]) {
			seen[u] = 1;
			l->order[n++] = u;
		}
	}
	l->nprefetch = npref ? n : 0;
	for (uint64_t u = 0; u < nunits; u++)
		if (!seen[u])
			l->order[n++] = u;
	free(seen);
	for (uint64_t i = 0; i < nunits; i++)
		l->pos_of[l->order[i]] = (uint32_t)i;
	return 0;
}

static uint64_t copy_out(struct mck_lazy *l, const uint64_t *src, const uint64_t *n,
			 uint64_t *dst, uint64_t cap)
{
	uint64_t got;

	pthread_mutex_lock(&l->lock);
	got = *n;
	if (cap && dst)
		memcpy(dst, src, (got < cap ? got : cap) * sizeof(*dst));
	pthread_mutex_unlock(&l->lock);
	return got;
}

uint64_t mck_lazy_touched(struct mck_lazy *l, uint64_t *pages, uint64_t cap)
{
	return copy_out(l, l->touched, &l->ntouched, pages, cap);
}

uint64_t mck_lazy_latencies(struct mck_lazy *l, uint64_t *ns, uint64_t cap)
{
	return copy_out(l, l->lat, &l->nlat, ns, cap);
}
