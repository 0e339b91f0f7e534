/* epoch_writer.c: an epoch's pages into its pack and index, with threads.
 *
 * An add runs in windows of about 8 MiB of pages. Each window goes through
 * three steps: DIGEST (zero test and BLAKE3 of each page: parallel), PLACE
 * (dedup and offsets, in page order: serial, on thread 0, cheap) and WRITE +
 * HASH (pwritev of the new pages' runs, and the 64 KiB subtrees of the
 * pack's own digest: parallel). The DIGEST of window w+1 runs in the same
 * parallel phase as the WRITE + HASH of window w, so a phase has work for
 * every thread and the disk is written while the next window is hashed;
 * each piece written starts its writeback at once (sync_file_range), so the
 * final fdatasync finds little left to do.
 *
 * Every decision that shapes the files (dedup, offsets, the order of the
 * pack's digest) is made by PLACE or in the serial step, in page order: the
 * threads only compute values and write bytes at offsets fixed before, so the
 * files are the same, byte for byte, for any number of threads. No thread
 * outlives an add. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epoch_writer.h"
#include "internal.h"

#define EW_WINDOW_BYTES ((size_t)8 << 20)
#define EW_DIGEST_TASK_BYTES ((size_t)256 << 10)
#define EW_DIGEST_TASK_MAX 64 /* pages: the task's arrays live on its stack */
#define EW_WRITE_PIECE ((uint64_t)1 << 20)
#define EW_HASH_TASK_SUBTREES 8
/* below this many bytes per thread an add uses fewer threads: starting one
 * costs more than it saves */
#define EW_BYTES_PER_THREAD ((uint64_t)2 << 20)
#define EW_MAX_THREADS 64

#define G ((uint64_t)MCK_BLAKE3_SUBTREE_BYTES)

struct mck_ew {
	int pack_fd;
	size_t ps;
	uint64_t npages;
	int incremental;
	int threads;
	unsigned flags;
	int failed;           /* -errno of a failed write: the pack no longer matches */
	uint64_t pack_end;    /* the next free byte of the pack */
	uint64_t hashed;      /* bytes of the pack its digest has absorbed (== pack_end between adds) */
	struct mck_blake3 h;
	uint8_t zero_digest[32];
	struct mck_idx_record *recs;
	uint64_t nrec, rec_cap;
	struct mck_dedup table;
	uint64_t stored, dedup, zero;
	uint64_t next_page;   /* every page added from here on is >= this */
	uint8_t *gather;      /* 64 KiB for the serial hashing */
};

enum ew_task_kind { T_DIGEST, T_WRITE, T_HASH };

struct ew_task {
	int kind;
	uint64_t lo, hi; /* DIGEST: entries; WRITE: pack bytes; HASH: subtrees */
	struct mck_iov_cursor cur; /* WRITE, HASH: at lo */
};

struct ew_call {
	struct mck_ew *w;
	const uint8_t *base;
	const uint64_t *pages, *rows;
	size_t n;
	size_t win;             /* entries per window */
	size_t next;            /* the first entry not digested yet */
	size_t dlo, dhi;        /* the window digested by the phase just run */
	uint8_t *digests;       /* win * 32: that window's digests */
	uint8_t *nonzero;       /* win flags */
	struct iovec *segs;     /* this add's new bytes, in pack order (runs of pages) */
	size_t nseg;
	uint64_t written;       /* pack bytes handed to WRITE tasks so far */
	struct mck_iov_cursor wcur, hcur; /* at `written`, at w->hashed */
	struct ew_task *tasks;
	size_t ntasks, task_cap;
	atomic_size_t next_task;
	uint8_t *cvs;           /* the subtrees HASH tasks compute this phase */
	uint64_t cv_g0, cv_n, cv_cap;
	uint8_t *gather;        /* 64 KiB per thread */
	atomic_int err;
	bool done;
	int nthreads;
	pthread_barrier_t bar;
	pthread_mutex_t gate;
	pthread_cond_t gate_cv;
	bool go;
};

struct ew_worker {
	struct ew_call *call;
	int tid;
	pthread_t thread;
};

int mck_cpus_available(void)
{
	cpu_set_t set;
	int n;

	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		return 1;
	n = CPU_COUNT(&set);
	return n < 1 ? 1 : n > EW_MAX_THREADS ? EW_MAX_THREADS : n;
}

int mck_ew_open(const struct mck_ew_config *cfg, struct mck_ew **out)
{
	struct mck_ew *w;
	size_t ps = cfg->page_size;

	*out = NULL;
	if (ps < 512 || ps > ((size_t)1 << 30) || (ps & (ps - 1)) || cfg->pack_fd < 0 ||
	    (cfg->pack_header_len && !cfg->pack_header))
		return -EINVAL;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->gather = malloc(G);
	w->table.cap = mck_dedup_cap(0);
	w->table.slots = calloc(w->table.cap, sizeof(uint64_t));
	if (!w->gather || !w->table.slots) {
		mck_ew_close(w);
		return -ENOMEM;
	}
	w->pack_fd = cfg->pack_fd;
	w->ps = ps;
	w->npages = cfg->npages;
	w->incremental = !!cfg->incremental;
	w->threads = cfg->threads > 0 ? (cfg->threads > EW_MAX_THREADS ? EW_MAX_THREADS : cfg->threads)
				      : mck_cpus_available();
	w->flags = cfg->flags;
	mck_blake3_init(&w->h);
	mck_blake3_update(&w->h, cfg->pack_header, cfg->pack_header_len);
	w->pack_end = w->hashed = cfg->pack_header_len;
	if (w->incremental)
		mck_zero_digest(ps, w->zero_digest);
	*out = w;
	return 0;
}

void mck_ew_close(struct mck_ew *w)
{
	if (!w)
		return;
	free(w->recs);
	free(w->table.slots);
	free(w->gather);
	free(w);
}

void mck_ew_read_stats(const struct mck_ew *w, struct mck_ew_stats *st)
{
	st->records = w->nrec;
	st->stored = w->stored;
	st->dedup = w->dedup;
	st->zero = w->zero;
	st->pack_size = w->pack_end;
	st->threads = w->threads;
}

const struct mck_idx_record *mck_ew_records(const struct mck_ew *w, uint64_t *n)
{
	*n = w->nrec;
	return w->recs;
}

void mck_ew_pack_digest(const struct mck_ew *w, uint8_t out[32])
{
	mck_blake3_final(&w->h, out);
}

struct ew_sync {
	int fd;
	int rc;
};

static void *sync_main(void *arg)
{
	struct ew_sync *s = arg;

	s->rc = mck_sync_fd(s->fd);
	return NULL;
}

int mck_ew_finish(struct mck_ew *w, int idx_fd, const uint8_t idx_header[MCK_IDX_HEADER_SIZE],
		  uint8_t idx_digest[32], uint64_t *idx_size)
{
	struct ew_sync pack = {w->pack_fd, 0};
	pthread_t t;
	sigset_t all, old;
	bool apart;
	int rc;

	if (w->failed)
		return w->failed;
	rc = mck_write_index(idx_fd, idx_header, w->recs, w->nrec, idx_digest, w->gather);
	if (rc < 0)
		return rc;
	/* the two fdatasyncs at once: the file system commits its journal
	 * once for both (a few ms here), and neither file waits for the other */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	apart = pthread_create(&t, NULL, sync_main, &pack) == 0;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!apart)
		sync_main(&pack);
	rc = mck_sync_fd(idx_fd);
	if (apart)
		pthread_join(t, NULL);
	if (pack.rc < 0)
		return pack.rc;
	if (rc < 0)
		return rc;
	*idx_size = MCK_IDX_HEADER_SIZE + w->nrec * sizeof(struct mck_idx_record);
	return 0;
}

/* Room for `more` records, and a dedup table for all of them. */
static int reserve(struct mck_ew *w, uint64_t more)
{
	uint64_t want = w->nrec + more;

	if (want > w->rec_cap) {
		uint64_t cap = w->rec_cap ? w->rec_cap : 1024;
		struct mck_idx_record *r;

		while (cap < want)
			cap *= 2;
		r = realloc(w->recs, cap * sizeof(*r));
		if (!r)
			return -ENOMEM;
		w->recs = r;
		w->rec_cap = cap;
	}
	if (mck_dedup_cap(want) > w->table.cap) {
		struct mck_dedup t = {NULL, mck_dedup_cap(want)};

		t.slots = calloc(t.cap, sizeof(uint64_t));
		if (!t.slots)
			return -ENOMEM;
		/* in record order: each digest maps to its first record again */
		for (uint64_t r = 0; r < w->nrec; r++)
			if (!(w->recs[r].flags & MCK_PAGE_ZERO))
				mck_dedup_find_or_add(&t, w->recs, r, w->recs[r].digest);
		free(w->table.slots);
		w->table = t;
	}
	return 0;
}

/* ---- the tasks --------------------------------------------------------------- */

static void fail(struct ew_call *c, int rc)
{
	int zero = 0;

	atomic_compare_exchange_strong(&c->err, &zero, rc);
}

static uint64_t row_of(const struct ew_call *c, size_t i)
{
	return c->rows ? c->rows[i] : i;
}

static void run_digest(struct ew_call *c, const struct ew_task *t)
{
	uint64_t rows[EW_DIGEST_TASK_MAX];
	size_t at[EW_DIGEST_TASK_MAX], k = 0, ps = c->w->ps;
	uint8_t out[EW_DIGEST_TASK_MAX * 32];

	for (size_t i = t->lo; i < t->hi; i++) {
		uint64_t row = row_of(c, i);
		bool nz = !mck_page_is_zero(c->base + row * ps, ps);

		c->nonzero[i - c->dlo] = nz;
		if (nz) {
			rows[k] = row;
			at[k++] = i - c->dlo;
		}
	}
	if (k)
		mck_blake3_pages_at(c->base, ps, rows, k, out);
	for (size_t j = 0; j < k; j++)
		memcpy(c->digests + 32 * at[j], out + 32 * j, 32);
}

static void run_write(struct ew_call *c, const struct ew_task *t)
{
	struct iovec iov[64];
	struct mck_iov_cursor cur = t->cur;
	uint64_t off = t->lo;
	int rc;

	while (off < t->hi) {
		int cnt = 0;
		uint64_t at = off;

		while (off < t->hi && cnt < (int)MCK_ARRAY_SIZE(iov)) {
			const uint8_t *p;
			size_t left = mck_cursor_piece(&cur, &p);
			size_t part = t->hi - off < left ? (size_t)(t->hi - off) : left;

			iov[cnt].iov_base = (void *)p;
			iov[cnt++].iov_len = part;
			cur.at += part;
			off += part;
		}
		rc = mck_write_all_iov(c->w->pack_fd, iov, cnt, at);
		if (rc < 0) {
			fail(c, rc);
			return;
		}
	}
	if (!(c->w->flags & MCK_EW_NO_EARLY_FLUSH))
		/* start the writeback now; advice only: the fdatasync of finish
		 * is what makes the bytes durable and reports any error */
		sync_file_range(c->w->pack_fd, (off_t)t->lo, (off_t)(t->hi - t->lo),
				SYNC_FILE_RANGE_WRITE);
}

static void run_hash(struct ew_call *c, const struct ew_task *t, int tid)
{
	struct mck_iov_cursor cur = t->cur;

	for (uint64_t g = t->lo; g < t->hi; g++)
		mck_hash_subtree_at(&cur, g, c->gather + (size_t)tid * G,
				    c->cvs + 32 * (g - c->cv_g0));
}

static void run_tasks(struct ew_call *c, int tid)
{
	size_t i;

	while ((i = atomic_fetch_add(&c->next_task, 1)) < c->ntasks) {
		const struct ew_task *t = &c->tasks[i];

		if (atomic_load(&c->err))
			continue;
		if (t->kind == T_DIGEST)
			run_digest(c, t);
		else if (t->kind == T_WRITE)
			run_write(c, t);
		else
			run_hash(c, t, tid);
	}
}

/* ---- the serial step ------------------------------------------------------------ */

static void add_task(struct ew_call *c, int kind, uint64_t lo, uint64_t hi,
		     const struct mck_iov_cursor *cur)
{
	struct ew_task *t = &c->tasks[c->ntasks++];

	t->kind = kind;
	t->lo = lo;
	t->hi = hi;
	if (cur)
		t->cur = *cur;
}

/* Records for the window just digested, in page order; the new pages'
 * bytes join the segments. */
static void place_window(struct ew_call *c)
{
	struct mck_ew *w = c->w;
	size_t ps = w->ps;

	for (size_t i = c->dlo; i < c->dhi; i++) {
		uint64_t page = c->pages[i];

		if (!c->nonzero[i - c->dlo]) {
			w->zero++;
			if (w->incremental)
				mck_zero_record(&w->recs[w->nrec++], page, w->zero_digest);
			continue;
		}
		if (!mck_place_page(&w->table, w->recs, w->nrec++, page,
				    c->digests + 32 * (i - c->dlo), ps, &w->pack_end)) {
			w->dedup++;
			continue;
		}
		w->stored++;
		uint8_t *p = (uint8_t *)c->base + row_of(c, i) * ps;
		struct iovec *last = c->nseg ? &c->segs[c->nseg - 1] : NULL;

		if (last && (uint8_t *)last->iov_base + last->iov_len == p &&
		    last->iov_len + ps <= MCK_IOV_CAP) {
			last->iov_len += ps;
		} else {
			c->segs[c->nseg].iov_base = p;
			c->segs[c->nseg++].iov_len = ps;
		}
	}
	c->wcur.cnt = c->hcur.cnt = c->nseg;
}

/* Between two parallel phases: take in what the last one computed, and set
 * the next one's tasks; done when none is left. */
static void plan(struct ew_call *c)
{
	struct mck_ew *w = c->w;
	uint64_t end;

	if (c->cv_n) {
		mck_blake3_push_subtrees(&w->h, c->cvs, c->cv_n);
		w->hashed += c->cv_n * G;
		c->cv_n = 0;
	}
	if (c->dhi > c->dlo)
		place_window(c);
	c->dlo = c->dhi = 0;
	c->ntasks = 0;
	atomic_store(&c->next_task, 0);
	if (atomic_load(&c->err)) {
		c->done = true;
		return;
	}
	end = w->pack_end;
	/* WRITE: the bytes placed since the last phase */
	while (c->written < end) {
		uint64_t hi = end - c->written < EW_WRITE_PIECE ? end : c->written + EW_WRITE_PIECE;

		add_task(c, T_WRITE, c->written, hi, &c->wcur);
		mck_cursor_skip(&c->wcur, hi - c->written);
		c->written = hi;
	}
	/* HASH: up to a subtree boundary here, then the whole subtrees that
	 * have a byte after them (the last byte of all is absorbed by the
	 * streaming hasher, which keeps the final chunk) */
	if (w->hashed % G && w->hashed < end) {
		uint64_t part = G - w->hashed % G;

		if (part > end - w->hashed)
			part = end - w->hashed;
		mck_hash_stream(&w->h, &w->hashed, &c->hcur, part, w->gather);
	}
	if (w->hashed % G == 0 && w->hashed < end) {
		uint64_t g0 = w->hashed / G, g1 = (end - 1) / G;

		if (g1 - g0 > c->cv_cap)
			g1 = g0 + c->cv_cap;
		c->cv_g0 = g0;
		c->cv_n = g1 - g0;
		for (uint64_t g = g0; g < g1; g += EW_HASH_TASK_SUBTREES) {
			uint64_t hi = g1 - g < EW_HASH_TASK_SUBTREES ? g1 : g + EW_HASH_TASK_SUBTREES;

			add_task(c, T_HASH, g, hi, &c->hcur);
			mck_cursor_skip(&c->hcur, (hi - g) * G);
		}
	}
	/* DIGEST: the next window */
	if (c->next < c->n) {
		size_t per = EW_DIGEST_TASK_BYTES / w->ps;

		per = per < 1 ? 1 : per > EW_DIGEST_TASK_MAX ? EW_DIGEST_TASK_MAX : per;
		c->dlo = c->next;
		c->dhi = c->n - c->next < c->win ? c->n : c->next + c->win;
		for (size_t i = c->dlo; i < c->dhi; i += per)
			add_task(c, T_DIGEST, i, c->dhi - i < per ? c->dhi : i + per, NULL);
		c->next = c->dhi;
	}
	if (c->ntasks == 0) {
		/* everything written and placed: the rest of the digest, streamed */
		mck_hash_stream(&w->h, &w->hashed, &c->hcur, end - w->hashed, w->gather);
		c->done = true;
	}
}

/* ---- the threads ------------------------------------------------------------------ */

static void work(struct ew_call *c, int tid)
{
	for (;;) {
		run_tasks(c, tid);
		if (c->nthreads > 1)
			pthread_barrier_wait(&c->bar);
		if (tid == 0)
			plan(c);
		if (c->nthreads > 1)
			pthread_barrier_wait(&c->bar);
		if (c->done)
			return;
	}
}

static void *worker_main(void *arg)
{
	struct ew_worker *wk = arg;
	struct ew_call *c = wk->call;

	/* the gate: how many threads share the barrier is known once all are started */
	pthread_mutex_lock(&c->gate);
	while (!c->go)
		pthread_cond_wait(&c->gate_cv, &c->gate);
	pthread_mutex_unlock(&c->gate);
	if (wk->tid < c->nthreads)
		work(c, wk->tid);
	return NULL;
}

/* Start up to c->nthreads - 1 workers and run with those that started (the
 * caller is thread 0); join them. */
static void run_threads(struct ew_call *c)
{
	struct ew_worker wk[EW_MAX_THREADS];
	sigset_t all, old;
	int started = 0;

	pthread_mutex_init(&c->gate, NULL);
	pthread_cond_init(&c->gate_cv, NULL);
	/* the workers take no signal: signals are the program's business */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (int t = 1; t < c->nthreads; t++) {
		wk[t].call = c;
		wk[t].tid = t;
		if (pthread_create(&wk[t].thread, NULL, worker_main, &wk[t]))
			break;
		started++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_mutex_lock(&c->gate);
	c->nthreads = started + 1;
	if (c->nthreads > 1 && pthread_barrier_init(&c->bar, NULL, (unsigned)c->nthreads))
		c->nthreads = 1; /* the workers see tid >= nthreads and leave */
	c->go = true;
	pthread_cond_broadcast(&c->gate_cv);
	pthread_mutex_unlock(&c->gate);
	work(c, 0);
	for (int t = 1; t <= started; t++)
		pthread_join(wk[t].thread, NULL);
	if (c->nthreads > 1)
		pthread_barrier_destroy(&c->bar);
	pthread_cond_destroy(&c->gate_cv);
	pthread_mutex_destroy(&c->gate);
}

static int check_pages(const struct mck_ew *w, uint64_t nrows, const uint64_t *pages,
		       const uint64_t *rows, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (pages[i] >= w->npages || pages[i] < w->next_page ||
		    (i && pages[i] <= pages[i - 1]))
			return -EINVAL;
		if ((rows ? rows[i] : i) >= nrows)
			return -EINVAL;
	}
	return 0;
}

static int call_alloc(struct ew_call *c)
{
	size_t ps = c->w->ps, win_bytes = c->win * ps;

	c->cv_cap = win_bytes / G + 2;
	c->task_cap = win_bytes / EW_WRITE_PIECE + 2 + c->cv_cap / EW_HASH_TASK_SUBTREES + 2 +
		      c->win + 2;
	c->digests = malloc(c->win * 32);
	c->nonzero = malloc(c->win);
	c->segs = malloc((c->n + 1) * sizeof(*c->segs));
	c->tasks = malloc(c->task_cap * sizeof(*c->tasks));
	c->cvs = malloc(c->cv_cap * 32);
	c->gather = malloc((size_t)c->nthreads * G);
	if (!c->digests || !c->nonzero || !c->segs || !c->tasks || !c->cvs || !c->gather)
		return -ENOMEM;
	return 0;
}

static void call_free(struct ew_call *c)
{
	free(c->digests);
	free(c->nonzero);
	free(c->segs);
	free(c->tasks);
	free(c->cvs);
	free(c->gather);
}

int mck_ew_add(struct mck_ew *w, const void *base, uint64_t nrows, const uint64_t *pages,
	       const uint64_t *rows, size_t n)
{
	struct ew_call c;
	uint64_t bytes;
	int rc;

	if (w->failed)
		return w->failed;
	if (n == 0)
		return 0;
	if (!base || !pages)
		return -EINVAL;
	rc = check_pages(w, nrows, pages, rows, n);
	if (rc < 0)
		return rc;
	rc = reserve(w, n);
	if (rc < 0)
		return rc;
	memset(&c, 0, sizeof(c));
	c.w = w;
	c.base = base;
	c.pages = pages;
	c.rows = rows;
	c.n = n;
	c.win = EW_WINDOW_BYTES / w->ps ? EW_WINDOW_BYTES / w->ps : 1;
	if (c.win > n)
		c.win = n;
	bytes = (uint64_t)n * w->ps;
	c.nthreads = w->threads;
	if ((uint64_t)c.nthreads > bytes / EW_BYTES_PER_THREAD)
		c.nthreads = bytes / EW_BYTES_PER_THREAD ? (int)(bytes / EW_BYTES_PER_THREAD) : 1;
	c.written = w->pack_end;
	c.wcur.iov = c.hcur.iov = NULL;
	atomic_init(&c.err, 0);
	atomic_init(&c.next_task, 0);
	rc = call_alloc(&c);
	if (rc < 0)
		goto out;
	c.wcur.iov = c.hcur.iov = c.segs;
	plan(&c); /* the first window's DIGEST */
	if (c.nthreads > 1)
		run_threads(&c);
	else
		work(&c, 0);
	rc = atomic_load(&c.err);
	if (rc < 0)
		w->failed = rc; /* the pack may hold part of this add: no more adds */
out:
	call_free(&c);
	if (rc == 0)
		w->next_page = pages[n - 1] + 1;
	return rc;
}
