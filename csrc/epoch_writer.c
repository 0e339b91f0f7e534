/* epoch_writer.c: an epoch's pages into its pack and index, with threads.
 *
 * An add runs in windows of about 8 MiB of pages. Each window goes through
 * DIGEST (zero test and BLAKE3 of each page, and in a compressed epoch its
 * zstd or lz4 image: tasks, in parallel), PLACE
 * (dedup and offsets, in page order: one thread, cheap), WRITE and HASH
 * (pwritev of the new pages' runs; the 64 KiB subtrees of the pack's own
 * digest: tasks, in parallel) and ABSORB (the subtrees' chaining values into
 * the pack's digest, in window order: one thread). Up to EW_SLOTS windows
 * are in flight at once, so a window's DIGEST runs beside an earlier one's
 * WRITE and HASH, and the disk is written while the next pages are hashed;
 * each piece written starts its writeback at once (sync_file_range), so the
 * final fdatasync finds little left to do. The threads take what can run
 * from one scheduler (a mutex and a condition, no barrier): a thread the
 * machine preempts holds up only its own task's window.
 *
 * Every decision that shapes the files (dedup, offsets, the order of the
 * pack's digest) is made by PLACE and ABSORB, in page order: the threads
 * only compute values and write bytes at offsets fixed before, so the files
 * are the same, byte for byte, for any number of threads. No thread outlives
 * an add. */
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
#include "page_codec.h"

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
	unsigned compress;    /* 0, MCK_PAGE_ZSTD or MCK_PAGE_LZ4 */
	int level;
	size_t cbound;        /* room for one encoded page */
	struct mck_encoder **enc; /* one a thread (tid), made on first use */
	struct ew_async *job; /* an add that runs beyond its call (mck_ew_add_async) */
};

enum ew_task_kind { T_DIGEST, T_WRITE, T_HASH };

struct ew_task {
	int kind;
	uint64_t lo, hi; /* DIGEST: entries; WRITE: pack bytes; HASH: subtrees */
	struct mck_iov_cursor cur; /* WRITE, HASH: at lo */
};

/* A window in flight. Its life: DIGEST tasks; PLACE (serial); WRITE and
 * HASH tasks; ABSORB (serial, in window order: the subtrees' CVs into the
 * pack's digest); then its slot takes a later window. */
enum ew_state { S_FREE, S_DIGEST, S_PLACING, S_PLACED };

struct ew_slot {
	int state;
	size_t lo, hi;          /* its entries (page i of the add is entry i) */
	uint8_t *digests;       /* 32 bytes an entry */
	uint8_t *nonzero;       /* 1 byte an entry */
	/* a compressed epoch: each nonzero entry's image (clen 0: stored raw),
	 * packed a DIGEST task after another, at coff in cbuf */
	uint8_t *cbuf;
	uint32_t *clen;
	size_t *coff;
	struct ew_task *tasks;
	size_t ntasks;
	size_t next;            /* the first task not claimed */
	size_t left;            /* tasks not finished */
	uint8_t *cvs;           /* the CVs of subtrees g0 .. g0 + ncv */
	uint64_t g0, ncv;
};

#define EW_SLOTS 4

struct ew_call {
	struct mck_ew *w;
	const uint8_t *base;
	const uint64_t *pages, *rows;
	size_t n;
	size_t win;             /* entries a window */
	size_t nwin;
	struct ew_slot slot[EW_SLOTS];
	size_t task_cap, cv_cap;
	struct iovec *segs;     /* this add's new bytes, in pack order (runs of pages) */
	size_t nseg;
	size_t sealed;          /* segments tasks may read: those never grow */
	uint64_t written;       /* pack bytes handed to WRITE tasks */
	uint64_t scheduled;     /* pack bytes handed to the digest (streamed, or HASH tasks) */
	struct mck_iov_cursor wcur, hcur; /* at written, at scheduled */
	uint8_t *gather;        /* 64 KiB a thread */
	/* the scheduler: all below under lock */
	pthread_mutex_t lock;
	pthread_cond_t cv;
	size_t ready;           /* entries whose bytes may be read: a window opens when all of its are */
	size_t opened, placed, absorbed; /* windows so far */
	bool serial_busy;       /* a thread is in PLACE or ABSORB */
	bool done;
	int err;
	int nthreads;
	int waiting;
};

static int job_end(struct mck_ew *w, bool cancel);
static bool job_mine(const struct mck_ew *w);

int mck_cpus_available(void)
{
	cpu_set_t set;
	int n;

	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		return 1;
	n = CPU_COUNT(&set);
	return n < 1 ? 1 : n > EW_MAX_THREADS ? EW_MAX_THREADS : n;
}

int mck_cpus_idle(void)
{
	char buf[128];
	const char *p;
	long running;
	ssize_t len;
	int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC), idle;

	if (fd < 0)
		return -errno;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (len <= 0)
		return len < 0 ? -errno : -ENODATA;
	buf[len] = '\0';
	/* "0.52 0.61 0.70 3/612 4242": the fourth field is runnable/total,
	 * the caller among the runnable */
	p = buf;
	for (int field = 0; field < 3 && p; field++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	if (!p)
		return -ENODATA;
	running = strtol(p, NULL, 10);
	if (running < 1)
		return -ENODATA;
	idle = mck_cpus_available() - (int)(running < EW_MAX_THREADS ? running : EW_MAX_THREADS);
	return idle < 0 ? 0 : idle;
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
	if (cfg->compress) {
		if (cfg->compress & ~mck_codec_flags() || (cfg->compress & (cfg->compress - 1))) {
			mck_ew_close(w);
			return -ENOTSUP;
		}
		w->compress = cfg->compress;
		w->level = cfg->level;
		w->cbound = mck_encode_bound(cfg->compress, ps);
		w->enc = calloc((size_t)w->threads, sizeof(*w->enc));
		if (!w->enc) {
			mck_ew_close(w);
			return -ENOMEM;
		}
	}
	mck_blake3_init(&w->h);
	if (!(w->flags & MCK_EW_NO_PACK_DIGEST))
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
	if (w->job) {
		/* a fork child's copy: the job's threads and its lock are the
		 * parent's (the lock may be held for good here); its memory is
		 * left alone, the rest freed */
		if (job_mine(w))
			job_end(w, true);
		w->job = NULL;
	}
	free(w->recs);
	free(w->table.slots);
	free(w->gather);
	if (w->enc)
		for (int t = 0; t < w->threads; t++)
			mck_encoder_close(w->enc[t]);
	free(w->enc);
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

int mck_ew_pack_digest(const struct mck_ew *w, uint8_t out[32])
{
	if (w->flags & MCK_EW_NO_PACK_DIGEST)
		return -EINVAL;
	mck_blake3_final(&w->h, out);
	return 0;
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

	if (w->job)
		return -EBUSY;
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

static uint64_t row_of(const struct ew_call *c, size_t i)
{
	return c->rows ? c->rows[i] : i;
}

/* A compressed epoch: encode the task's nonzero pages (their slot-relative
 * entries at[], rows rows[]) one after another into the task's part of cbuf. */
static int run_encode(struct ew_call *c, struct ew_slot *s, const struct ew_task *t, int tid,
		      const uint64_t *rows, const size_t *at, size_t k)
{
	struct mck_ew *w = c->w;
	size_t ps = w->ps, pos = (t->lo - s->lo) * w->cbound;

	if (!w->enc[tid]) {
		int rc = mck_encoder_open(w->compress, w->level, &w->enc[tid]);

		if (rc < 0)
			return rc;
	}
	for (size_t j = 0; j < k; j++) {
		size_t len = mck_encode_page(w->enc[tid], c->base + rows[j] * ps, ps, s->cbuf + pos,
					     w->cbound);

		s->clen[at[j]] = (uint32_t)len;
		s->coff[at[j]] = pos;
		pos += len;
	}
	return 0;
}

static int run_digest(struct ew_call *c, struct ew_slot *s, const struct ew_task *t, int tid)
{
	uint64_t rows[EW_DIGEST_TASK_MAX];
	size_t at[EW_DIGEST_TASK_MAX], k = 0, ps = c->w->ps;
	uint8_t out[EW_DIGEST_TASK_MAX * 32];

	for (size_t i = t->lo; i < t->hi; i++) {
		uint64_t row = row_of(c, i);
		bool nz = !mck_page_is_zero(c->base + row * ps, ps);

		s->nonzero[i - s->lo] = nz;
		if (nz) {
			rows[k] = row;
			at[k++] = i - s->lo;
		}
	}
	if (k)
		mck_blake3_pages_at(c->base, ps, rows, k, out);
	for (size_t j = 0; j < k; j++)
		memcpy(s->digests + 32 * at[j], out + 32 * j, 32);
	return c->w->compress ? run_encode(c, s, t, tid, rows, at, k) : 0;
}

static int run_write(struct ew_call *c, const struct ew_task *t)
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
		if (rc < 0)
			return rc;
	}
	if (!(c->w->flags & MCK_EW_NO_EARLY_FLUSH))
		/* start the writeback now; advice only: the fdatasync of finish
		 * is what makes the bytes durable and reports any error */
		sync_file_range(c->w->pack_fd, (off_t)t->lo, (off_t)(t->hi - t->lo),
				SYNC_FILE_RANGE_WRITE);
	return 0;
}

static int run_hash(struct ew_call *c, struct ew_slot *s, const struct ew_task *t, int tid)
{
	struct mck_iov_cursor cur = t->cur;

	for (uint64_t g = t->lo; g < t->hi; g++)
		mck_hash_subtree_at(&cur, g, c->gather + (size_t)tid * G, s->cvs + 32 * (g - s->g0));
	return 0;
}

static int run_task(struct ew_call *c, struct ew_slot *s, const struct ew_task *t, int tid)
{
	if (t->kind == T_DIGEST)
		return run_digest(c, s, t, tid);
	if (t->kind == T_WRITE)
		return run_write(c, t);
	return run_hash(c, s, t, tid);
}

/* ---- the serial steps (one thread at a time, in window order) ------------------ */

static void add_task(struct ew_call *c, struct ew_slot *s, int kind, uint64_t lo, uint64_t hi,
		     const struct mck_iov_cursor *cur)
{
	struct ew_task *t = &s->tasks[s->ntasks++];

	(void)c;
	t->kind = kind;
	t->lo = lo;
	t->hi = hi;
	if (cur)
		t->cur = *cur;
}

/* Pages a DIGEST task takes: about EW_DIGEST_TASK_BYTES. */
static size_t digest_task_pages(size_t ps)
{
	size_t per = EW_DIGEST_TASK_BYTES / ps;

	return per < 1 ? 1 : per > EW_DIGEST_TASK_MAX ? EW_DIGEST_TASK_MAX : per;
}

/* Give the next window a slot and its DIGEST tasks. */
static void open_window(struct ew_call *c)
{
	struct ew_slot *s = &c->slot[c->opened % EW_SLOTS];
	size_t per = digest_task_pages(c->w->ps);

	s->state = S_DIGEST;
	s->lo = c->opened * c->win;
	s->hi = s->lo + c->win < c->n ? s->lo + c->win : c->n;
	s->ntasks = s->next = 0;
	for (size_t i = s->lo; i < s->hi; i += per)
		add_task(c, s, T_DIGEST, i, s->hi - i < per ? s->hi : i + per, NULL);
	s->left = s->ntasks;
	c->opened++;
}

/* PLACE: the window's records, in page order; its new pages' bytes join the
 * segments; then its WRITE and HASH tasks. */
static void place_window(struct ew_call *c, struct ew_slot *s)
{
	struct mck_ew *w = c->w;
	size_t ps = w->ps;
	uint64_t end;

	for (size_t i = s->lo; i < s->hi; i++) {
		uint64_t page = c->pages[i];

		if (!s->nonzero[i - s->lo]) {
			w->zero++;
			if (w->incremental)
				mck_zero_record(&w->recs[w->nrec++], page, w->zero_digest);
			continue;
		}
		/* the bytes stored: the page's image if it shrank, else the page */
		uint32_t len = w->compress ? s->clen[i - s->lo] : 0;
		uint8_t *p = len ? s->cbuf + s->coff[i - s->lo]
				 : (uint8_t *)c->base + row_of(c, i) * ps;

		if (!len)
			len = (uint32_t)ps;
		if (!mck_place_stored(&w->table, w->recs, w->nrec++, page,
				      s->digests + 32 * (i - s->lo), len,
				      len < ps ? w->compress : 0, &w->pack_end)) {
			w->dedup++;
			continue;
		}
		w->stored++;
		struct iovec *last = c->nseg ? &c->segs[c->nseg - 1] : NULL;

		if (last && c->nseg > c->sealed && (uint8_t *)last->iov_base + last->iov_len == p &&
		    last->iov_len + len <= MCK_IOV_CAP) {
			last->iov_len += len;
		} else {
			c->segs[c->nseg].iov_base = p;
			c->segs[c->nseg++].iov_len = len;
		}
	}
	c->wcur.cnt = c->hcur.cnt = c->nseg;
	end = w->pack_end;
	s->ntasks = s->next = 0;
	/* WRITE: the bytes placed since the last window */
	while (c->written < end) {
		uint64_t hi = end - c->written < EW_WRITE_PIECE ? end : c->written + EW_WRITE_PIECE;

		add_task(c, s, T_WRITE, c->written, hi, &c->wcur);
		mck_cursor_skip(&c->wcur, hi - c->written);
		c->written = hi;
	}
	s->g0 = s->ncv = 0;
	if (w->flags & MCK_EW_NO_PACK_DIGEST) {
		c->scheduled = w->hashed = end;
		c->sealed = c->nseg;
		return;
	}
	/* the digest: up to a subtree boundary streamed here (only at the start
	 * of an add: nothing else is pending then, so the hasher stands at
	 * `scheduled`); then the whole subtrees with a byte after them (the last
	 * byte of all is left to the streaming hasher, which keeps the final
	 * chunk) as HASH tasks */
	if (c->scheduled % G && c->scheduled < end) {
		uint64_t part = G - c->scheduled % G;

		if (part > end - c->scheduled)
			part = end - c->scheduled;
		mck_hash_stream(&w->h, &w->hashed, &c->hcur, part, w->gather);
		c->scheduled = w->hashed;
	}
	s->g0 = c->scheduled / G;
	s->ncv = 0;
	if (c->scheduled % G == 0 && c->scheduled < end && (end - 1) / G > s->g0) {
		uint64_t g1 = (end - 1) / G;

		if (g1 - s->g0 > c->cv_cap)
			g1 = s->g0 + c->cv_cap;
		s->ncv = g1 - s->g0;
		for (uint64_t g = s->g0; g < g1; g += EW_HASH_TASK_SUBTREES) {
			uint64_t hi = g1 - g < EW_HASH_TASK_SUBTREES ? g1 : g + EW_HASH_TASK_SUBTREES;

			add_task(c, s, T_HASH, g, hi, &c->hcur);
			mck_cursor_skip(&c->hcur, (hi - g) * G);
		}
		c->scheduled = g1 * G;
	}
	/* tasks read the segments from now on, beside later PLACEs: a segment
	 * handed out never grows (the next page starts a new one) */
	c->sealed = c->nseg;
}

/* ABSORB: the window's subtrees into the pack's digest, in order. */
static void absorb_window(struct ew_call *c, struct ew_slot *s)
{
	mck_blake3_push_subtrees(&c->w->h, s->cvs, s->ncv);
	c->w->hashed += s->ncv * G;
}

/* ---- the scheduler ---------------------------------------------------------------
 * No barrier: a thread takes whatever can run (the serial step that unblocks
 * the most, then the oldest window's WRITE and HASH, then DIGEST of the
 * windows ahead, up to EW_SLOTS in flight), so a thread the machine preempts
 * holds up only the window its task is in. */

struct ew_pick {
	int what; /* 0 nothing, 1 task, 2 place, 3 absorb, 4 the tail */
	struct ew_slot *s;
	struct ew_task t;
};

/* Whether window k's entries may all be read (an asynchronous add's rows
 * come in as its caller copies them: mck_ew_add_async). */
static bool window_ready(const struct ew_call *c, size_t k)
{
	size_t hi = (k + 1) * c->win;

	return (hi < c->n ? hi : c->n) <= c->ready;
}

static struct ew_pick pick(struct ew_call *c)
{
	struct ew_pick p = {0, NULL, {0, 0, 0, {0}}};

	if (!c->serial_busy) {
		struct ew_slot *a = &c->slot[c->absorbed % EW_SLOTS];
		struct ew_slot *pl = &c->slot[c->placed % EW_SLOTS];

		if (c->absorbed < c->placed && a->left == 0) {
			p.what = 3;
			p.s = a;
		} else if (c->placed < c->opened && pl->state == S_DIGEST && pl->left == 0) {
			/* its tasks are rebuilt outside the lock: none may be taken meanwhile */
			pl->state = S_PLACING;
			p.what = 2;
			p.s = pl;
		} else if (c->absorbed == c->nwin) {
			p.what = 4;
		}
		if (p.what) {
			c->serial_busy = true;
			return p;
		}
	}
	/* the oldest windows' tasks first: WRITE and HASH, then DIGEST */
	for (size_t k = c->absorbed; k < c->opened; k++) {
		struct ew_slot *s = &c->slot[k % EW_SLOTS];

		if (s->state != S_PLACING && s->next < s->ntasks) {
			p.what = 1;
			p.s = s;
			p.t = s->tasks[s->next++];
			return p;
		}
	}
	if (c->opened < c->nwin && c->opened - c->absorbed < EW_SLOTS && window_ready(c, c->opened)) {
		open_window(c);
		return pick(c);
	}
	return p;
}

static void work(struct ew_call *c, int tid)
{
	pthread_mutex_lock(&c->lock);
	while (!c->done && !c->err) {
		struct ew_pick p = pick(c);
		int rc = 0;

		if (!p.what) {
			c->waiting++;
			pthread_cond_wait(&c->cv, &c->lock);
			c->waiting--;
			continue;
		}
		pthread_mutex_unlock(&c->lock);
		if (p.what == 1)
			rc = run_task(c, p.s, &p.t, tid);
		else if (p.what == 2)
			place_window(c, p.s);
		else if (p.what == 3)
			absorb_window(c, p.s);
		else /* everything written and absorbed: the rest of the digest, streamed */
			mck_hash_stream(&c->w->h, &c->w->hashed, &c->hcur,
					c->w->pack_end - c->w->hashed, c->w->gather);
		pthread_mutex_lock(&c->lock);
		if (p.what == 1)
			p.s->left--;
		else
			c->serial_busy = false;
		if (p.what == 2) {
			p.s->left = p.s->ntasks; /* its WRITE and HASH tasks, open to all now */
			p.s->state = S_PLACED;
			c->placed++;
		} else if (p.what == 3) {
			p.s->state = S_FREE;
			c->absorbed++;
		}
		else if (p.what == 4)
			c->done = true;
		if (rc < 0 && !c->err)
			c->err = rc;
		if (c->waiting)
			pthread_cond_broadcast(&c->cv);
	}
	pthread_mutex_unlock(&c->lock);
}

/* ---- the threads ------------------------------------------------------------------ */

struct ew_worker {
	struct ew_call *call;
	int tid;
	pthread_t thread;
};

static void *worker_main(void *arg)
{
	struct ew_worker *wk = arg;

	work(wk->call, wk->tid);
	return NULL;
}

/* Run the add on up to c->nthreads threads (the caller is thread 0): no
 * thread outlives it. A thread that cannot be started leaves its work to
 * the others. */
static void run_threads(struct ew_call *c)
{
	struct ew_worker wk[EW_MAX_THREADS];
	sigset_t all, old;
	int started = 0;

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
	work(c, 0);
	for (int t = 1; t <= started; t++)
		pthread_join(wk[t].thread, NULL);
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

	/* a slot holds a window's DIGEST tasks, later its WRITE and HASH ones */
	c->cv_cap = win_bytes / G + 2;
	c->task_cap = win_bytes / EW_WRITE_PIECE + 2 + c->cv_cap / EW_HASH_TASK_SUBTREES + 2;
	if (c->task_cap < c->win / digest_task_pages(ps) + 2)
		c->task_cap = c->win / digest_task_pages(ps) + 2;
	c->segs = malloc((c->n + 1) * sizeof(*c->segs));
	c->gather = malloc((size_t)c->nthreads * G);
	if (!c->segs || !c->gather)
		return -ENOMEM;
	for (int k = 0; k < EW_SLOTS; k++) {
		struct ew_slot *s = &c->slot[k];

		s->digests = malloc(c->win * 32);
		s->nonzero = malloc(c->win);
		s->tasks = malloc(c->task_cap * sizeof(*s->tasks));
		s->cvs = malloc(c->cv_cap * 32);
		if (!s->digests || !s->nonzero || !s->tasks || !s->cvs)
			return -ENOMEM;
		if (c->w->compress) {
			s->cbuf = malloc(c->win * c->w->cbound);
			s->clen = malloc(c->win * sizeof(*s->clen));
			s->coff = malloc(c->win * sizeof(*s->coff));
			if (!s->cbuf || !s->clen || !s->coff)
				return -ENOMEM;
		}
	}
	return 0;
}

static void call_free(struct ew_call *c)
{
	free(c->segs);
	free(c->gather);
	for (int k = 0; k < EW_SLOTS; k++) {
		free(c->slot[k].digests);
		free(c->slot[k].nonzero);
		free(c->slot[k].tasks);
		free(c->slot[k].cvs);
		free(c->slot[k].cbuf);
		free(c->slot[k].clen);
		free(c->slot[k].coff);
	}
}

/* An add's call, ready to run (every row readable: ready = n), or -errno
 * with nothing to free; call_end frees it. */
static int call_begin(struct mck_ew *w, const void *base, uint64_t nrows, const uint64_t *pages,
		      const uint64_t *rows, size_t n, struct ew_call *c)
{
	uint64_t bytes;
	int rc;

	memset(c, 0, sizeof(*c));
	if (!base || !pages)
		return -EINVAL;
	rc = check_pages(w, nrows, pages, rows, n);
	if (rc < 0)
		return rc;
	rc = reserve(w, n);
	if (rc < 0)
		return rc;
	c->w = w;
	c->base = base;
	c->pages = pages;
	c->rows = rows;
	c->n = c->ready = n;
	c->win = EW_WINDOW_BYTES / w->ps ? EW_WINDOW_BYTES / w->ps : 1;
	if (c->win > n)
		c->win = n;
	c->nwin = (n + c->win - 1) / c->win;
	bytes = (uint64_t)n * w->ps;
	c->nthreads = w->threads;
	if ((uint64_t)c->nthreads > bytes / EW_BYTES_PER_THREAD)
		c->nthreads = bytes / EW_BYTES_PER_THREAD ? (int)(bytes / EW_BYTES_PER_THREAD) : 1;
	c->written = c->scheduled = w->pack_end;
	rc = call_alloc(c);
	if (rc < 0) {
		call_free(c);
		return rc;
	}
	c->wcur.iov = c->hcur.iov = c->segs;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cv, NULL);
	return 0;
}

/* After the call's threads ended: its result, kept by the writer. */
static int call_end(struct mck_ew *w, struct ew_call *c)
{
	int rc = c->err;

	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->lock);
	if (rc < 0)
		w->failed = rc; /* the pack may hold part of this add: no more adds */
	else
		w->next_page = c->pages[c->n - 1] + 1;
	call_free(c);
	return rc;
}

int mck_ew_add(struct mck_ew *w, const void *base, uint64_t nrows, const uint64_t *pages,
	       const uint64_t *rows, size_t n)
{
	struct ew_call c;
	int rc;

	if (w->job)
		return -EBUSY;
	if (w->failed)
		return w->failed;
	if (n == 0)
		return 0;
	rc = call_begin(w, base, nrows, pages, rows, n, &c);
	if (rc < 0)
		return rc;
	if (c.nthreads > 1)
		run_threads(&c);
	else
		work(&c, 0);
	return call_end(w, &c);
}

/* ---- an add that runs beyond its call ----------------------------------------------
 * mck_ew_add_async starts the add's threads and returns; its caller fills
 * the rows in order and says how far (mck_ew_add_ready): a window opens when
 * all its rows are in. mck_ew_wait joins the threads. The job keeps its own
 * copy of the page numbers (a pause's lists are reused by the next pause);
 * the rows' memory is the caller's until mck_ew_wait or mck_ew_cancel
 * returns. */

struct ew_async {
	struct ew_call c;
	uint64_t *pages, *rows;
	pid_t pid;              /* the process whose threads run it */
	int started;
	struct ew_worker wk[EW_MAX_THREADS];
};

/* Start workers until `want` run (at most the call's threads); signals
 * blocked in them, as in run_threads. */
static void job_spawn(struct ew_async *j, int want)
{
	sigset_t all, old;

	if (want > j->c.nthreads)
		want = j->c.nthreads;
	if (j->started >= want)
		return;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	while (j->started < want) {
		struct ew_worker *wk = &j->wk[j->started];

		wk->call = &j->c;
		wk->tid = j->started;
		if (pthread_create(&wk->thread, NULL, worker_main, wk))
			break;
		j->started++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

int mck_ew_add_async(struct mck_ew *w, const void *base, uint64_t nrows, const uint64_t *pages,
		     const uint64_t *rows, size_t n, size_t ready, int threads)
{
	struct ew_async *j;
	int rc;

	if (w->job)
		return -EBUSY;
	if (w->failed)
		return w->failed;
	if (n == 0 || ready > n)
		return n == 0 ? 0 : -EINVAL;
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->pages = malloc(n * sizeof(*pages));
	j->rows = rows ? malloc(n * sizeof(*rows)) : NULL;
	if (!j->pages || (rows && !j->rows)) {
		rc = -ENOMEM;
		goto fail;
	}
	memcpy(j->pages, pages, n * sizeof(*pages));
	if (rows)
		memcpy(j->rows, rows, n * sizeof(*rows));
	rc = call_begin(w, base, nrows, j->pages, j->rows, n, &j->c);
	if (rc < 0)
		goto fail;
	j->c.ready = ready;
	j->pid = getpid();
	w->job = j;
	job_spawn(j, threads);
	return 0;
fail:
	free(j->pages);
	free(j->rows);
	free(j);
	return rc;
}

void mck_ew_add_ready(struct mck_ew *w, size_t ready, int threads)
{
	struct ew_async *j = w->job;

	if (!j)
		return;
	pthread_mutex_lock(&j->c.lock);
	if (ready > j->c.ready)
		j->c.ready = ready < j->c.n ? ready : j->c.n;
	if (j->c.waiting)
		pthread_cond_broadcast(&j->c.cv);
	pthread_mutex_unlock(&j->c.lock);
	job_spawn(j, threads);
}

bool mck_ew_busy(const struct mck_ew *w)
{
	return w->job != NULL;
}

static int job_end(struct mck_ew *w, bool cancel)
{
	struct ew_async *j = w->job;
	int rc;

	pthread_mutex_lock(&j->c.lock);
	/* rows never said to be in are never read: such an add cannot finish */
	if ((cancel || j->c.ready < j->c.n) && !j->c.err && !j->c.done)
		j->c.err = -ECANCELED;
	if (j->c.waiting)
		pthread_cond_broadcast(&j->c.cv);
	pthread_mutex_unlock(&j->c.lock);
	if (j->started == 0)
		work(&j->c, 0); /* no thread could be started: the waiter does the work */
	for (int t = 0; t < j->started; t++)
		pthread_join(j->wk[t].thread, NULL);
	w->job = NULL;
	rc = call_end(w, &j->c);
	free(j->pages);
	free(j->rows);
	free(j);
	return rc;
}

static bool job_mine(const struct mck_ew *w)
{
	return w->job->pid == getpid();
}

int mck_ew_wait(struct mck_ew *w)
{
	if (!w->job)
		return w->failed;
	if (!job_mine(w))
		return -ECHILD; /* a fork child: the threads are the parent's */
	return job_end(w, false);
}

void mck_ew_cancel(struct mck_ew *w)
{
	if (w->job && job_mine(w))
		job_end(w, true);
}
