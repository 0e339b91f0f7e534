/* lazy_prepare.c: the background check and plan after mck_lazy_open
 * returned: each index's file digest and records checked, the read plan
 * built, and only then the drain let go. */
#include "lazy_internal.h"

/* The drain's plan (and its order): the drain may begin. */
int lz_set_plan(struct mck_lazy *l, struct mck_read_plan *plan, const uint64_t *order,
		uint64_t norder)
{
	int rc;

	if (plan->ndeferred)
		return -ENOTSUP;
	if (plan->npages != l->npages || plan->dest != l->base || plan->page_size != l->ps)
		return -EINVAL;
	l->plan = plan;
	rc = lz_map_units(l);
	if (rc == 0)
		rc = lz_build_order(l, order, norder);
	if (rc < 0)
		return rc;
	atomic_fetch_add(&l->units_left, plan->nunits);
	atomic_store(&l->planned_ns, now_ns());
	pthread_mutex_lock(&l->lock);
	atomic_store(&l->planned, 1);
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	/* the plan's own count, held since the start (the handler ends at 0) */
	if (atomic_fetch_sub(&l->units_left, 1) == 1)
		(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
	return 0;
}

static void *hash_indexes(void *arg)
{
	struct mck_lazy *l = arg;

	for (uint32_t s = 0; s < l->nsources; s++)
		l->digest_ok[s] = mck_lazy_index_digest(&l->indexes[s]);
	return NULL;
}

/* The server's own thread: each index checked whole, the plan built, the
 * drain let go; or the restore abandoned, with the reason kept. */
static void *preparer(void *arg)
{
	struct mck_lazy *l = arg;
	struct mck_read_plan *plan = NULL;
	struct mck_read_fault f;
	pthread_t hasher;
	int rc = 0, hashing = 0;

	memset(&f, 0, sizeof(f));
	/* the handler first: a first fault is served at once, beside the two
	 * threads checking (the hasher stays at the process's priority: at nice
	 * +5 both would get a small share of a busy machine) */
	lz_lower_priority();
	/* a held server (tests) serves faults only by lookup until released */
	pthread_mutex_lock(&l->lock);
	while (l->hold && !atomic_load(&l->closing) && !atomic_load(&l->abandoned))
		pthread_cond_wait(&l->cond, &l->lock);
	pthread_mutex_unlock(&l->lock);
	/* the digests on a thread of their own, the records and the plan here */
	if (l->indexes && pthread_create(&hasher, NULL, hash_indexes, l) == 0)
		hashing = 1;
	for (uint32_t s = 0; l->indexes && s < l->nsources && rc == 0; s++) {
		struct mck_lazy_index records_only = {.data = NULL};

		if (!hashing)
			l->digest_ok[s] = mck_lazy_index_digest(&l->indexes[s]);
		rc = mck_lazy_check_index(&records_only, &l->sources[s], s, l->ps, l->npages, &f);
	}
	if (rc == 0)
		rc = mck_read_plan_build(&plan, l->sources, l->nsources, l->base, l->ps, l->npages,
					 NULL, 0, 0, &f);
	if (hashing)
		pthread_join(hasher, NULL);
	for (uint32_t s = 0; l->indexes && s < l->nsources; s++)
		if (l->digest_ok[s] != 1) {
			memset(&f, 0, sizeof(f));
			f.source = s;
			f.record = MCK_LAZY_WHOLE_FILE;
			f.kind = l->digest_ok[s] == 0 ? MCK_READ_FAULT_RECORD : MCK_READ_FAULT_IO;
			f.err = l->digest_ok[s] == 0 ? 0 : l->digest_ok[s];
			snprintf(f.why, sizeof(f.why), "%s", l->digest_ok[s] == 0
				 ? "BLAKE3 digest mismatch (the file is damaged)"
				 : "its digest could not be computed");
			rc = -EBADMSG;
			break;
		}
	if (rc < 0 && plan) {
		mck_read_plan_free(plan);
		plan = NULL;
	}
	if (rc == 0) {
		l->own_plan = 1;
		rc = lz_set_plan(l, plan, l->porder, l->nporder);
	}
	free(l->porder);
	l->porder = NULL;
	if (rc == 0)
		return NULL;
	if (f.kind == MCK_READ_FAULT_NONE) {
		f.kind = MCK_READ_FAULT_IO;
		f.err = rc;
		snprintf(f.why, sizeof(f.why), "planning the drain failed (%s)", strerror(-rc));
	}
	pthread_mutex_lock(&l->lock);
	l->ifault = f;
	l->index_damaged = 1;
	pthread_mutex_unlock(&l->lock);
	dprintf(2, "memckpt: lazy restore: the index at chain position %u cannot be used (%s); "
		"the %llu pages served from it so far were each checked against their record's "
		"digest, every page not served yet is poisoned (a touch raises SIGBUS)\n",
		f.source, f.why, (unsigned long long)atomic_load(&l->n_served));
	mck_lazy_abandon(l);
	return NULL;
}

int lz_start_preparer(struct mck_lazy *l, const struct mck_lazy_index *indexes,
		      const uint64_t *order, uint64_t norder)
{
	sigset_t all, old;
	int rc;

	if (indexes) {
		l->indexes = malloc(l->nsources * sizeof(*l->indexes) + 1);
		l->digest_ok = calloc(l->nsources + 1, sizeof(*l->digest_ok));
		if (!l->indexes || !l->digest_ok)
			return -ENOMEM;
		memcpy(l->indexes, indexes, l->nsources * sizeof(*l->indexes));
	}
	if (norder) {
		l->porder = malloc(norder * sizeof(*order));
		if (!l->porder)
			return -ENOMEM;
		memcpy(l->porder, order, norder * sizeof(*order));
		l->nporder = norder;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = -pthread_create(&l->preparer, NULL, preparer, l);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	l->preparer_started = rc == 0;
	return rc;
}
