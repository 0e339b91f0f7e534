/* lazy_drain.c: the drain threads: units taken in the drain order, in
 * chunks that shrink when faults arrive and grow when they do not, read,
 * checked and mapped a run of consecutive pages at a time. */
#include "lazy_internal.h"

/* Map the run of pages [p, p+n) from src (NULL: zeros), the ones still
 * pending. 0, or -errno that stops the drain (the arena is gone). q: the
 * handler's queue when the handler calls (it reads a pending remove event
 * itself), NULL from a drain thread. */
int lz_map_run(struct mck_lazy *l, uint64_t p, uint64_t n, const uint8_t *src,
	       struct queue *q)
{
	uint64_t i = 0;

	pthread_rwlock_rdlock(&l->maplock);
	while (i < n) {
		uint64_t j = i, done;
		int rc;

		while (i < n && atomic_load(&l->state[p + i]) != PENDING)
			i++;
		j = i;
		while (j < n && atomic_load(&l->state[p + j]) == PENDING)
			j++;
		if (i == j)
			break;
		rc = lz_map_ioctl(l, p + i, j - i, src ? src + i * l->ps : NULL, &done);
		lz_set_mapped(l, p + i, done);
		atomic_fetch_add(&l->n_drained, done);
		i += done;
		if (rc == 0)
			continue;
		if (rc == -EEXIST) {
			atomic_fetch_add(&l->n_eexist, 1);
			lz_set_mapped(l, p + i, 1); /* the handler mapped it */
			i++;
		} else if (rc == -EAGAIN) {
			/* a remove event is pending: the handler reads it (under the
			 * write side), then the pages it dropped are skipped */
			atomic_fetch_add(&l->n_eagain, 1);
			pthread_rwlock_unlock(&l->maplock);
			if (q && (rc = lz_read_msgs(l, q)) < 0)
				return rc;
			if (!q)
				sched_yield();
			pthread_rwlock_rdlock(&l->maplock);
		} else {
			pthread_rwlock_unlock(&l->maplock);
			return rc;
		}
	}
	pthread_rwlock_unlock(&l->maplock);
	return 0;
}

int lz_any_pending(struct mck_lazy *l, const struct mck_read_unit *u)
{
	const struct mck_read_entry *e = &l->plan->entries[u->first];

	for (uint32_t k = 0; k < u->n; k++)
		if (atomic_load(&l->state[u->kind == MCK_UNIT_ZERO ? u->first + k : e[k].page]) ==
		    PENDING)
			return 1;
	return 0;
}

/* Read, decode and check unit u's pages into dst (a page each entry, in
 * entry order; zeros for a ZERO unit); a page that fails is poisoned (and so
 * no longer PENDING: never mapped from dst). */
void lz_load_unit(struct mck_lazy *l, const struct mck_read_unit *u, struct scratch *sc,
		  uint8_t *dst)
{
	const struct mck_read_entry *e = &l->plan->entries[u->first];
	struct mck_read_fault f;
	uint32_t k;

	if (u->kind == MCK_UNIT_ZERO) {
		memset(dst, 0, (size_t)u->n * l->ps);
		return;
	}
	if (lz_pread_fully(l, l->plan->sources[u->source].fd, sc->buf, u->bytes, u->offset, u->source,
			   &e[0], &f) < 0) {
		for (k = 0; k < u->n; k++)
			lz_bad_page(l, e[k].page, &f);
		return;
	}
	for (k = 0; k < u->n; k++) {
		const struct mck_idx_record *r = mck_plan_record(l->plan, u->source, e[k].record);

		if (lz_decode(l, sc, u->source, &e[k], sc->buf + (r->offset - u->offset),
			      dst + (size_t)k * l->ps, &f) < 0)
			lz_bad_page(l, e[k].page, &f);
	}
	if (l->verify)
		mck_blake3_pages(dst, l->ps, u->n, sc->digests);
	for (k = 0; k < u->n; k++)
		if (lz_check(l, u->source, &e[k], sc->digests + (size_t)k * MCK_BLAKE3_LEN, &f) < 0)
			lz_bad_page(l, e[k].page, &f);
}

int lz_drain_unit(struct mck_lazy *l, const struct mck_read_unit *u, struct scratch *sc,
		  struct queue *q)
{
	const struct mck_read_entry *e = &l->plan->entries[u->first];
	uint32_t k, start;

	if (!lz_any_pending(l, u))
		return 0;
	if (u->kind == MCK_UNIT_ZERO)
		return lz_map_run(l, u->first, u->n, NULL, q);
	lz_load_unit(l, u, sc, sc->pages);
	/* runs of consecutive pages (bad ones are not PENDING: skipped) */
	for (start = 0, k = 1; k <= u->n; k++) {
		if (k < u->n && e[k].page == e[k - 1].page + 1)
			continue;
		int rc = lz_map_run(l, e[start].page, k - start, sc->pages + (size_t)start * l->ps, q);

		if (rc < 0)
			return rc;
		start = k;
	}
	return 0;
}

/* Unit ui is done (drained, or served whole by the handler). */
void lz_unit_done(struct mck_lazy *l)
{
	if (atomic_fetch_sub(&l->units_left, 1) == 1)
		(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
}

/* Whoever claims a unit first drains it (a drain thread, or the handler
 * serving a batch at the front of the prefetch order). */
int lz_claim(struct mck_lazy *l, uint64_t ui)
{
	return !atomic_exchange(&l->claimed[ui], 1);
}

void lz_stopped(struct mck_lazy *l, int err)
{
	pthread_mutex_lock(&l->lock);
	if (l->run_state == MCK_LAZY_RUNNING) {
		l->run_state = MCK_LAZY_STOPPED;
		l->err = err;
	}
	pthread_mutex_unlock(&l->lock);
	atomic_store(&l->closing, 1);
}

static void note_chunk(struct mck_lazy *l, uint64_t c)
{
	uint64_t v = atomic_load(&l->chunk_min);

	while (c < v && !atomic_compare_exchange_weak(&l->chunk_min, &v, c))
		;
	v = atomic_load(&l->chunk_max);
	while (c > v && !atomic_compare_exchange_weak(&l->chunk_max, &v, c))
		;
}

/* A fault's handler (and the program) first: a woken handler preempts a
 * drain thread of lower priority at once, where it would otherwise wait for
 * one of them to use up its slice. Best effort. */
void lz_lower_priority(void)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);
	int nice;

	errno = 0;
	nice = getpriority(PRIO_PROCESS, (id_t)tid);
	if (errno == 0 && nice + DRAIN_NICE <= 19)
		(void)!setpriority(PRIO_PROCESS, (id_t)tid, nice + DRAIN_NICE);
}

void *lz_worker(void *arg)
{
	struct mck_lazy *l = arg;
	struct mck_read_plan *p;
	uint64_t nunits, chunk = CHUNK_MIN_PAGES * 4;
	uint64_t gen;
	struct scratch sc;
	int rc;

	lz_lower_priority();
	/* the drain waits for its plan (built while faults are served already),
	 * and for a held drain's release */
	pthread_mutex_lock(&l->lock);
	while ((l->hold || !atomic_load(&l->planned)) && !atomic_load(&l->closing) &&
	       !atomic_load(&l->abandoned))
		pthread_cond_wait(&l->cond, &l->lock);
	pthread_mutex_unlock(&l->lock);
	if (!atomic_load(&l->planned))
		return NULL; /* closed or abandoned before a plan */
	p = l->plan;
	nunits = p->nunits;
	gen = atomic_load(&l->fault_gen);
	rc = lz_scratch_open(&sc, p->unit_pages, l->ps, p->coded);
	while (rc == 0 && !atomic_load(&l->closing) && !atomic_load(&l->abandoned)) {
		uint64_t take = chunk / p->unit_pages ? chunk / p->unit_pages : 1;
		uint64_t i = atomic_fetch_add(&l->next, take), end = i + take, g;

		if (i >= nunits) {
			/* the units the cursor jumped over (it follows the handler's
			 * batches at the front of the prefetch order) */
			for (i = 0; i < nunits && rc == 0 && !atomic_load(&l->closing); i++)
				if (lz_claim(l, l->order[i]) &&
				    (rc = lz_drain_unit(l, &p->units[l->order[i]], &sc, NULL)) == 0)
					lz_unit_done(l);
			break;
		}
		if (end > nunits)
			end = nunits;
		note_chunk(l, chunk);
		for (; i < end && rc == 0; i++)
			if (lz_claim(l, l->order[i]) &&
			    (rc = lz_drain_unit(l, &p->units[l->order[i]], &sc, NULL)) == 0)
				lz_unit_done(l);
		g = atomic_load(&l->fault_gen);
		if (g != gen) {
			gen = g;
			chunk = chunk / 4 > CHUNK_MIN_PAGES ? chunk / 4 : CHUNK_MIN_PAGES;
			sched_yield(); /* let the handler have the CPU */
		} else if (chunk < CHUNK_MAX_PAGES) {
			chunk *= 2;
		}
	}
	lz_scratch_close(&sc);
	if (rc == -ENOENT || rc == -EFAULT) {
		uint64_t one = 1;

		lz_stopped(l, rc); /* the arena was unmapped: nothing left to serve */
		(void)!write(l->efd, &one, sizeof(one));
	} else if (rc < 0) {
		char why[96];

		/* (not a silent stop: the unregister that follows would turn the
		 * pages left into zero pages) */
		snprintf(why, sizeof(why), "a drain thread failed (%s)", strerror(-rc));
		lz_die(l, why);
	}
	return NULL;
}
