/* lazy_restore.c: the lazy restore server's life: opening it (the arena
 * registered, the threads started), its state and figures, closing it
 * (the design: lazy_internal.h, docs/restore.md). */
#include "lazy_internal.h"

int lz_map_units(struct mck_lazy *l)
{
	const struct mck_read_plan *p = l->plan;

	l->unit_of = malloc((l->npages ? l->npages : 1) * sizeof(*l->unit_of));
	if (!l->unit_of)
		return -ENOMEM;
	if (p->nunits > UINT32_MAX || p->done[p->nunits] != l->npages)
		return -EINVAL; /* not a plan of every page (built with MCK_READ_OUT_ZERO?) */
	for (uint64_t i = 0; i < p->nunits; i++) {
		const struct mck_read_unit *u = &p->units[i];

		for (uint32_t k = 0; k < u->n; k++)
			l->unit_of[u->kind == MCK_UNIT_ZERO ? u->first + k
							     : p->entries[u->first + k].page] = (uint32_t)i;
	}
	return 0;
}

static int open_uffd(struct mck_lazy *l)
{
	uint64_t offered = 0;
	int rc, umo;

	l->fd = mck_uffd_open(&umo);
	if (l->fd < 0)
		return l->fd;
	rc = mck_uffd_api(l->fd, 0, &offered);
	if (rc < 0)
		return rc;
	close(l->fd);
	/* UFFDIO_API is once per fd: a second fd with what this kernel offers */
	l->fd = mck_uffd_open(&umo);
	if (l->fd < 0)
		return l->fd;
	l->poison = !!(offered & UFFD_FEATURE_POISON);
	rc = mck_uffd_api(l->fd, UFFD_FEATURE_EVENT_REMOVE | (l->poison ? UFFD_FEATURE_POISON : 0),
			  NULL);
	if (rc < 0)
		return rc;
	{
		struct uffdio_register reg = {
			.range = {.start = (uintptr_t)l->base, .len = l->npages * l->ps},
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		if (ioctl(l->fd, UFFDIO_REGISTER, &reg) < 0)
			return errno == EINVAL ? -EOPNOTSUPP : -errno;
		if (!(reg.ioctls & (1ull << _UFFDIO_COPY)) || !(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE)))
			return -EOPNOTSUPP;
	}
	l->keep_fd = fcntl(l->fd, F_DUPFD_CLOEXEC, 0);
	return l->keep_fd < 0 ? -errno : 0;
}

static int start_threads(struct mck_lazy *l, unsigned nthreads)
{
	sigset_t all, old;
	int rc;

	if (!nthreads) {
		cpu_set_t set;

		nthreads = sched_getaffinity(0, sizeof(set), &set) == 0 ? (unsigned)CPU_COUNT(&set) : 1;
	}
	if (nthreads > MAX_WORKERS)
		nthreads = MAX_WORKERS;
	if (nthreads < 1)
		nthreads = 1;
	/* the program's signals are for its own threads */
	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = -pthread_create(&l->handler, NULL, lz_handler, l);
	if (rc == 0) {
		l->handler_started = 1;
		for (; l->nworkers < nthreads; l->nworkers++)
			if (pthread_create(&l->workers[l->nworkers], NULL, lz_worker, l) != 0)
				break;
		if (!l->nworkers)
			rc = -EAGAIN;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}

static void free_lazy(struct mck_lazy *l)
{
	if (l->fd >= 0)
		close(l->fd);
	if (l->keep_fd >= 0)
		close(l->keep_fd);
	if (l->efd >= 0)
		close(l->efd);
	lz_scratch_close(&l->hs);
	free(l->unit_of);
	free(l->pos_of);
	free((void *)l->claimed);
	free(l->batch_buf);
	free(l->pref_bits);
	free(l->run);
	free((void *)l->state);
	free(l->order);
	free(l->touched_bits);
	free(l->touched);
	free(l->lat);
	free(l->indexes);
	free(l->digest_ok);
	free(l->porder);
	if (l->own_plan)
		mck_read_plan_free(l->plan);
	pthread_rwlock_destroy(&l->maplock);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	free(l);
}

static int open_common(struct mck_lazy **out, const struct mck_read_source *sources,
		       uint32_t nsources, const struct mck_lazy_index *indexes, void *dest,
		       size_t page_size, uint64_t npages, struct mck_read_plan *plan,
		       const uint64_t *order, uint64_t norder, unsigned nthreads, unsigned flags)
{
	struct mck_lazy *l;
	pthread_rwlockattr_t ra;
	int rc;

	*out = NULL;
	if (!npages || !page_size || !dest || (nsources && !sources) || (norder && !order))
		return -EINVAL;
	if (npages > SIZE_MAX / page_size)
		return -EOVERFLOW;
	for (uint32_t s = 0; s < nsources; s++)
		if (sources[s].nrecords && !sources[s].records)
			return -EINVAL;
	pthread_once(&lz_atfork_once, lz_register_atfork);
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->sources = sources;
	l->nsources = nsources;
	l->unit_pages = page_size >= MCK_UNIT_BYTES ? 1 : (uint32_t)(MCK_UNIT_BYTES / page_size);
	l->base = dest;
	l->ps = page_size;
	l->npages = npages;
	l->verify = !!(flags & MCK_LAZY_VERIFY);
	l->hold = !!(flags & MCK_LAZY_HOLD);
	l->pid = getpid();
	l->fd = l->keep_fd = -1;
	l->start_ns = now_ns();
	atomic_init(&l->units_left, 1); /* the plan's count: until it is set */
	atomic_init(&l->chunk_min, UINT64_MAX);
	pthread_rwlockattr_init(&ra);
	/* the handler's reads must not starve behind a stream of drain copies */
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&l->maplock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	l->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	/* (calloc of these is fresh zero pages: nothing is touched until used) */
	l->state = calloc(l->npages, 1);
	l->touched_bits = calloc((l->npages + 7) / 8, 1);
	rc = l->efd < 0 ? -errno : (!l->state || !l->touched_bits) ? -ENOMEM : 0;
	if (rc == 0)
		rc = lz_scratch_open(&l->hs, l->unit_pages > AROUND_MAX ? l->unit_pages : AROUND_MAX,
				     l->ps, mck_codec_flags() != 0);
	if (rc == 0 && !(l->run = malloc(AROUND_MAX * sizeof(*l->run))))
		rc = -ENOMEM;
	if (rc == 0 && norder && !(l->pref_bits = calloc((npages + 63) / 64, 8)))
		rc = -ENOMEM;
	for (uint64_t k = 0; rc == 0 && k < norder; k++)
		if (order[k] < npages)
			l->pref_bits[order[k] / 64] |= 1ull << (order[k] % 64);
	if (rc == 0 && plan)
		rc = lz_set_plan(l, plan, order, norder);
	if (rc == 0)
		rc = open_uffd(l);
	if (rc == 0)
		rc = start_threads(l, nthreads);
	if (rc == 0 && !plan)
		rc = lz_start_preparer(l, indexes, order, norder);
	if (rc < 0) {
		if (l->handler_started) {
			atomic_store(&l->closing, 1);
			pthread_mutex_lock(&l->lock);
			pthread_cond_broadcast(&l->cond);
			pthread_mutex_unlock(&l->lock);
			for (unsigned i = 0; i < l->nworkers; i++)
				pthread_join(l->workers[i], NULL);
			atomic_store(&l->units_left, 0);
			(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
			pthread_join(l->handler, NULL);
		}
		free_lazy(l);
		return rc;
	}
	pthread_mutex_lock(&lz_live_lock);
	l->next_live = lz_live;
	lz_live = l;
	pthread_mutex_unlock(&lz_live_lock);
	*out = l;
	return 0;
}

int mck_lazy_open(struct mck_lazy **out, const struct mck_read_source *sources,
		  uint32_t nsources, const struct mck_lazy_index *indexes, void *dest,
		  size_t page_size, uint64_t npages, const uint64_t *order, uint64_t norder,
		  unsigned nthreads, unsigned flags)
{
	return open_common(out, sources, nsources, indexes, dest, page_size, npages, NULL, order,
			   norder, nthreads, flags);
}

int mck_lazy_start(struct mck_lazy **out, struct mck_read_plan *plan, const uint64_t *order,
		   uint64_t norder, unsigned nthreads, unsigned flags)
{
	*out = NULL;
	if (plan->ndeferred)
		return -ENOTSUP;
	return open_common(out, plan->sources, plan->nsources, NULL, plan->dest, plan->page_size,
			   plan->npages, plan, order, norder, nthreads, flags);
}

void mck_lazy_abandon(struct mck_lazy *l)
{
	pthread_mutex_lock(&l->lock);
	atomic_store(&l->abandoned, 1);
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
}

int mck_lazy_index_fault(struct mck_lazy *l, struct mck_read_fault *f)
{
	int bad;

	pthread_mutex_lock(&l->lock);
	bad = l->index_damaged;
	if (bad)
		*f = l->ifault;
	pthread_mutex_unlock(&l->lock);
	return bad;
}

int mck_lazy_planned(struct mck_lazy *l)
{
	return atomic_load(&l->planned);
}

int mck_lazy_wait(struct mck_lazy *l, int timeout_ms)
{
	struct timespec until;
	int rc = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	if (timeout_ms > 0) {
		until.tv_sec += timeout_ms / 1000;
		until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
	}
	pthread_mutex_lock(&l->lock);
	while (l->run_state == MCK_LAZY_RUNNING && rc == 0) {
		if (timeout_ms < 0)
			pthread_cond_wait(&l->cond, &l->lock);
		else if (timeout_ms == 0 ||
			 pthread_cond_timedwait(&l->cond, &l->lock, &until) == ETIMEDOUT)
			rc = l->run_state == MCK_LAZY_RUNNING ? -ETIMEDOUT : 0;
	}
	pthread_mutex_unlock(&l->lock);
	return rc;
}

void mck_lazy_get_stats(struct mck_lazy *l, struct mck_lazy_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->npages = l->npages;
	st->fault_msgs = atomic_load(&l->n_fault_msgs);
	st->drained = atomic_load(&l->n_drained);
	st->served = atomic_load(&l->n_served);
	st->eexist = atomic_load(&l->n_eexist);
	st->eagain = atomic_load(&l->n_eagain);
	st->removed = atomic_load(&l->n_removed);
	st->bad = atomic_load(&l->n_bad);
	st->bytes_read = atomic_load(&l->n_bytes);
	st->chunk_min = atomic_load(&l->chunk_min);
	st->chunk_max = atomic_load(&l->chunk_max);
	if (st->chunk_min == UINT64_MAX)
		st->chunk_min = 0;
	st->start_ns = l->start_ns;
	st->planned_ns = atomic_load(&l->planned_ns);
	pthread_mutex_lock(&l->lock);
	st->faults = l->ntouched;
	st->drained_ns = l->drained_ns;
	st->state = l->run_state;
	st->err = l->err;
	pthread_mutex_unlock(&l->lock);
}

void mck_lazy_first_fault(struct mck_lazy *l, struct mck_read_fault *f)
{
	pthread_mutex_lock(&l->lock);
	*f = l->fault;
	pthread_mutex_unlock(&l->lock);
}

int mck_lazy_fd(struct mck_lazy *l)
{
	return l->fd;
}

void mck_lazy_release(struct mck_lazy *l)
{
	pthread_mutex_lock(&l->lock);
	l->hold = 0;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
}

void mck_lazy_kill_handler(struct mck_lazy *l)
{
	atomic_store(&l->kill, 1);
	(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
}

void mck_lazy_close(struct mck_lazy *l)
{
	struct mck_lazy **pp;

	if (!l)
		return;
	pthread_mutex_lock(&lz_live_lock);
	for (pp = &lz_live; *pp; pp = &(*pp)->next_live)
		if (*pp == l) {
			*pp = l->next_live;
			break;
		}
	pthread_mutex_unlock(&lz_live_lock);
	if (l->pid == getpid()) {
		mck_lazy_release(l);
		if (l->preparer_started)
			pthread_join(l->preparer, NULL); /* planned, or abandoned */
		/* the drain runs to its end: a page left missing would read zeros */
		for (unsigned i = 0; i < l->nworkers; i++)
			pthread_join(l->workers[i], NULL);
		atomic_store(&l->closing, 1);
		(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
		pthread_join(l->handler, NULL);
	}
	free_lazy(l);
}
