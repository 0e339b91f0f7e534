/* lazy_handler.c: the page fault handler thread: the userfaultfd's
 * messages read and each fault served (fault-around, batches at the front
 * of the prefetch order), remove events, and the end of the drain. */
#include "lazy_internal.h"

static void dropped(struct mck_lazy *l, uint64_t start, uint64_t end)
{
	uint64_t lo = (uintptr_t)l->base, hi = lo + l->npages * l->ps;

	if (end <= lo || start >= hi)
		return;
	start = start < lo ? 0 : (start - lo) / l->ps;
	end = end > hi ? l->npages : (end - lo + l->ps - 1) / l->ps;
	for (uint64_t p = start; p < end; p++) {
		uint8_t s = atomic_exchange(&l->state[p], DROPPED);

		if (s == PENDING)
			atomic_fetch_add(&l->n_removed, 1);
		else if (s == BAD)
			atomic_store(&l->state[p], BAD);
	}
}

/* Read what the kernel queued: remove events handled, faults queued. The
 * messages read, or -errno if the uffd is unusable. */
int lz_read_msgs(struct mck_lazy *l, struct queue *q)
{
	struct uffd_msg msg[MSG_BATCH];
	unsigned room = (unsigned)(sizeof(q->q) / sizeof(q->q[0])) - q->n;
	ssize_t got;
	int err = 0;

	pthread_rwlock_wrlock(&l->maplock);
	got = read(l->fd, msg, sizeof(msg));
	if (got < 0)
		err = errno == EAGAIN || errno == EINTR ? 0 : -errno;
	for (ssize_t i = 0; got > 0 && i < got / (ssize_t)sizeof(msg[0]); i++) {
		if (msg[i].event == UFFD_EVENT_PAGEFAULT) {
			uint64_t a = msg[i].arg.pagefault.address, lo = (uintptr_t)l->base;

			atomic_fetch_add(&l->n_fault_msgs, 1);
			/* (a fault with no room left is woken by the drain's copy of
			 * its page, or by the unregister at the end) */
			if (a >= lo && a < lo + l->npages * l->ps && room) {
				room--;
				q->q[q->n].page = (a - lo) / l->ps;
				q->q[q->n++].t = now_ns();
			}
		} else if (msg[i].event == UFFD_EVENT_REMOVE) {
			dropped(l, msg[i].arg.remove.start, msg[i].arg.remove.end);
		}
	}
	pthread_rwlock_unlock(&l->maplock);
	return err < 0 ? err : got > 0 ? (int)(got / (ssize_t)sizeof(msg[0])) : 0;
}

/* Where page p is in the chain: the newest source with a record for it
 * (binary search: records are in page order), checked to be a record the
 * reader can follow; *rec NULL: no source has one (the page is zero). This
 * needs no plan: faults are served by it from the moment the server starts,
 * while the plan is built and the indexes checked in the background. */
static int lookup(const struct mck_lazy *l, uint64_t p, uint32_t newest, uint32_t *src,
		  uint64_t *idx, const struct mck_idx_record **rec, struct mck_read_fault *f)
{
	for (uint32_t s = newest; s-- > 0;) {
		const struct mck_idx_record *r = l->sources[s].records;
		uint64_t lo = 0, hi = l->sources[s].nrecords;

		while (lo < hi) {
			uint64_t mid = lo + (hi - lo) / 2;

			if (r[mid].page < p)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo < l->sources[s].nrecords && r[lo].page == p) {
			*src = s;
			*idx = lo;
			*rec = &r[lo];
			return mck_read_check_record(&l->sources[s], s, lo, l->ps, l->npages, f);
		}
	}
	*rec = NULL;
	return 0;
}

/* No source newer than s has a record for page p. */
static int newest_is(const struct mck_lazy *l, uint64_t p, uint32_t s)
{
	uint32_t s2;
	uint64_t i2;
	const struct mck_idx_record *r2;
	struct mck_read_fault f;

	return lookup(l, p, l->nsources, &s2, &i2, &r2, &f) == 0 && r2 && s2 == s;
}

/* For a fault on page p, record i of source s (stored bytes): the entries
 * to serve with it into e[], up to FAULT_AROUND: the pending pages that
 * follow p whose records follow i in the source, stored right after (one
 * read), and are the chain's newest for their page. */
static uint32_t around(struct mck_lazy *l, uint64_t p, uint32_t s, uint64_t i,
		       struct mck_read_entry *e, uint32_t max)
{
	const struct mck_idx_record *r = lz_record_of(l, s, 0);
	uint64_t n = l->sources[s].nrecords;
	struct mck_read_fault f;
	uint32_t m = 1;

	e[0].page = p;
	e[0].record = i;
	while (m < max && i + m < n && r[i + m].page == p + m &&
	       !(r[i + m].flags & MCK_PAGE_ZERO) &&
	       r[i + m].offset == r[i + m - 1].offset + r[i + m - 1].length &&
	       atomic_load(&l->state[p + m]) == PENDING &&
	       mck_read_check_record(&l->sources[s], s, i + m, l->ps, l->npages, &f) == 0 &&
	       (s + 1 == l->nsources || newest_is(l, p + m, s))) {
		e[m].page = p + m;
		e[m].record = i + m;
		m++;
	}
	return m;
}

/* Pages after p (zero like it: no record or a ZERO one) to zero with it. */
static uint32_t zero_around(struct mck_lazy *l, uint64_t p, uint32_t max)
{
	uint32_t m = 1, s;
	uint64_t i;
	const struct mck_idx_record *r;
	struct mck_read_fault f;

	while (m < max && p + m < l->npages &&
	       atomic_load(&l->state[p + m]) == PENDING &&
	       lookup(l, p + m, l->nsources, &s, &i, &r, &f) == 0 &&
	       (!r || (r->flags & MCK_PAGE_ZERO)))
		m++;
	return m;
}

/* Read, decode and check entries e[0, m) of source s (stored back to back)
 * into the handler's scratch; the entries that pass, from the first (0:
 * the faulting page failed). */
static uint32_t fetch_run(struct mck_lazy *l, uint32_t s, const struct mck_read_entry *e,
			  uint32_t m)
{
	const struct mck_idx_record *r0 = lz_record_of(l, s, e[0].record);
	const struct mck_idx_record *rl = lz_record_of(l, s, e[m - 1].record);
	struct mck_read_fault f;

	if (lz_pread_fully(l, l->sources[s].fd, l->hs.buf, rl->offset + rl->length - r0->offset,
			   r0->offset, s, e, &f) < 0) {
		lz_bad_page(l, e[0].page, &f);
		return 0;
	}
	for (uint32_t i = 0; i < m; i++) {
		const struct mck_idx_record *r = lz_record_of(l, s, e[i].record);

		if (lz_decode(l, &l->hs, s, &e[i], l->hs.buf + (r->offset - r0->offset),
			      l->hs.pages + (size_t)i * l->ps, &f) < 0) {
			lz_bad_page(l, e[i].page, &f);
			m = i;
		}
	}
	if (l->verify && m) {
		mck_blake3_pages(l->hs.pages, l->ps, m, l->hs.digests);
		for (uint32_t i = 0; i < m; i++)
			if (lz_check(l, s, &e[i], l->hs.digests + (size_t)i * MCK_BLAKE3_LEN, &f) < 0) {
				lz_bad_page(l, e[i].page, &f);
				m = i;
			}
	}
	return m;
}

/* Map page p for a fault, checked, with up to FAULT_AROUND pending pages
 * that follow it (a program touching pages in order faults once per run,
 * not once per page). */
static int serve(struct mck_lazy *l, uint64_t p, struct queue *q)
{
	const uint8_t *src = NULL;
	uint8_t st = atomic_load(&l->state[p]);
	uint64_t n = 1;
	int rc;

	if (st == MAPPED || st == BAD) {
		lz_wake(l, p);
		return 0;
	}
	if (st == PENDING) {
		const struct mck_idx_record *r;
		struct mck_read_fault f;
		uint32_t s = 0, max = FAULT_AROUND;
		uint64_t i = 0;

		if (lookup(l, p, l->nsources, &s, &i, &r, &f) < 0) {
			lz_bad_page(l, p, &f);
			return 0; /* poisoned: the toucher gets SIGBUS */
		}
		/* reading the prefetch list in page order before the plan: grow */
		if (l->pref_bits && p == l->run_end && !atomic_load(&l->planned) &&
		    (l->pref_bits[p / 64] >> (p % 64) & 1))
			l->around = max = l->around * 2 > AROUND_MAX ? AROUND_MAX
				: l->around * 2 < 4 * FAULT_AROUND ? 4 * FAULT_AROUND : (uint32_t)l->around * 2;
		else
			l->around = FAULT_AROUND;
		if (!r || (r->flags & MCK_PAGE_ZERO)) {
			n = zero_around(l, p, max);
		} else {
			n = fetch_run(l, s, l->run, around(l, p, s, i, l->run, max));
			if (!n)
				return 0;
			src = l->hs.pages;
		}
		l->run_end = p + n;
	}
	for (;;) {
		uint64_t done;

		/* (the pages after p may have been mapped by the drain meanwhile:
		 * EEXIST after p's copy ends the run) */
		rc = lz_map_ioctl(l, p, n, src, &done);
		lz_set_mapped(l, p, done);
		atomic_fetch_add(&l->n_served, done);
		if (rc == 0 || (done && (rc == -EEXIST || rc == -EAGAIN)))
			return 0; /* p is mapped, its thread woken */
		if (rc == -EEXIST) {
			atomic_fetch_add(&l->n_eexist, 1);
			lz_set_mapped(l, p, 1);
			lz_wake(l, p);
			return 0;
		}
		if (rc != -EAGAIN)
			return rc;
		atomic_fetch_add(&l->n_eagain, 1);
		rc = lz_read_msgs(l, q);
		if (rc < 0)
			return rc;
		n = 1;
		if (atomic_load(&l->state[p]) == DROPPED)
			src = NULL; /* dropped by the program meanwhile: it reads zeros */
	}
}

/* Map the handler's batch run (pages [first, first+n) in batch_buf, from
 * nunits units): every unit of it done. */
static int flush_batch(struct mck_lazy *l, uint64_t first, uint64_t *n, uint64_t *nunits,
		       struct queue *q)
{
	int rc = *n ? lz_map_run(l, first, *n, l->batch_buf, q) : 0;

	for (; rc == 0 && *nunits; --*nunits)
		lz_unit_done(l);
	*n = 0;
	return rc;
}

/* A fault on page p at the front of the prefetch order, right after the
 * last one there: serve a batch of the units that follow in the order (see
 * BATCH_MIN_PAGES). 1 if served so, 0 if p is not such a fault, -errno. */
static int front(struct mck_lazy *l, uint64_t p, struct queue *q)
{
	const struct mck_read_plan *pl = l->plan;
	uint64_t ui, pos, j, run_first = 0, run_n = 0, run_units = 0, got = 0, nx;
	int rc = 0;

	if (!atomic_load(&l->planned) || !l->nprefetch || atomic_load(&l->state[p]) != PENDING)
		return 0;
	ui = l->unit_of[p];
	pos = l->pos_of[ui];
	if (pos >= l->nprefetch)
		return 0;
	if (!l->front_next || pos + 1 < l->front_next || pos > l->front_next + FRONT_SLACK) {
		l->batch = 0; /* not where the last one ended: an ordinary fault */
		l->front_next = pos + 1;
		return 0;
	}
	if (atomic_load(&l->claimed[ui])) {
		/* at a unit a drain thread is on: p now, the batch from the next */
		rc = serve(l, p, q);
		if (rc < 0)
			return rc;
		pos++;
	}
	if (!l->batch_buf) {
		l->batch_buf = aligned_alloc(l->ps, (BATCH_MAX_PAGES + (size_t)l->unit_pages) * l->ps);
		if (!l->batch_buf)
			return 0;
	}
	l->batch = l->batch ? (l->batch * 2 > BATCH_MAX_PAGES ? BATCH_MAX_PAGES : l->batch * 2)
			    : BATCH_MIN_PAGES;
	for (j = pos; j < l->nprefetch && got < l->batch && rc == 0; j++) {
		uint64_t uj = l->order[j];
		const struct mck_read_unit *u = &pl->units[uj];
		uint64_t first = u->kind == MCK_UNIT_ZERO ? u->first : pl->entries[u->first].page;

		if (!lz_claim(l, uj))
			continue; /* a drain thread's */
		got += u->n;
		if (!lz_any_pending(l, u)) {
			lz_unit_done(l); /* served by faults already */
			continue;
		}
		if (run_n && first != run_first + run_n)
			rc = flush_batch(l, run_first, &run_n, &run_units, q);
		if (rc == 0 && !u->contiguous) {
			if ((rc = lz_drain_unit(l, u, &l->hs, q)) == 0)
				lz_unit_done(l);
			continue;
		}
		if (!run_n)
			run_first = first;
		lz_load_unit(l, u, &l->hs, l->batch_buf + run_n * l->ps);
		run_n += u->n;
		run_units++;
	}
	if (rc == 0)
		rc = flush_batch(l, run_first, &run_n, &run_units, q);
	l->front_next = j;
	/* the drain goes on after the batch: ahead of the program */
	nx = atomic_load(&l->next);
	while (nx < j && !atomic_compare_exchange_weak(&l->next, &nx, j))
		;
	return rc < 0 ? rc : 1;
}

/* Every page mapped: unregister (a page the program drops from now on
 * reads as zero the ordinary way) and close the userfaultfd. */
static void finish(struct mck_lazy *l)
{
	struct uffdio_range r = {.start = (uintptr_t)l->base, .len = l->npages * l->ps};

	struct queue q = {.n = 0};

	ioctl(l->fd, UFFDIO_UNREGISTER, &r);
	/* remove events queued before: their madvise waits for them to be read */
	while (lz_read_msgs(l, &q) > 0)
		q.n = 0;
	pthread_mutex_lock(&l->lock);
	if (l->run_state == MCK_LAZY_RUNNING) {
		l->run_state = MCK_LAZY_DRAINED;
		l->drained_ns = now_ns();
	}
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
}

void *lz_handler(void *arg)
{
	struct mck_lazy *l = arg;
	struct queue q = {.n = 0};

	for (;;) {
		struct pollfd pfd[2] = {{.fd = l->fd, .events = POLLIN}, {.fd = l->efd, .events = POLLIN}};
		int rc;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			lz_die(l, "the page fault handler failed to poll its userfaultfd");
			break;
		}
		if (atomic_load(&l->kill)) {
			lz_die(l, "the page fault handler was killed (a test)");
			break;
		}
		if (pfd[0].revents & POLLNVAL) {
			lz_die(l, "the page fault handler found its userfaultfd closed under it");
			l->fd = l->keep_fd; /* drained already: unregister through the copy */
			l->keep_fd = -1;
			break;
		}
		if (pfd[0].revents & POLLIN) {
			rc = lz_read_msgs(l, &q);
			rc = rc < 0 ? rc : 0;
			for (unsigned i = 0; rc == 0 && i < q.n; i++) {
				uint64_t p = q.q[i].page, t = q.q[i].t;

				rc = front(l, p, &q);
				if (rc >= 0)
					rc = serve(l, p, &q); /* (p is mapped: a wake) */
				lz_first_touch(l, p, t);
				atomic_fetch_add(&l->fault_gen, 1);
			}
			q.n = 0;
			if (rc == -ENOENT || rc == -EFAULT) {
				lz_stopped(l, rc); /* the arena was unmapped: nothing left to serve */
				break;
			}
			if (rc < 0) {
				char why[96];

				snprintf(why, sizeof(why), "the page fault handler failed (%s)", strerror(-rc));
				lz_die(l, why);
				break;
			}
		}
		if (pfd[1].revents & POLLIN) {
			uint64_t v;

			(void)!read(l->efd, &v, sizeof(v));
		}
		if (atomic_load(&l->abandoned)) {
			lz_poison_pending(l);
			atomic_store(&l->units_left, 0);
			break;
		}
		if (!atomic_load(&l->units_left) || atomic_load(&l->closing))
			break;
	}
	/* the drain may have stopped with faults still queued in the kernel:
	 * unregistering wakes them (the arena is gone, or every page is there) */
	finish(l);
	return NULL;
}
