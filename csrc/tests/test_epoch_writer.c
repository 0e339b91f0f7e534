/* test_epoch_writer.c: the epoch writer (csrc/epoch_writer.c) against a
 * reference written here from docs/format.md, one page at a time with no
 * threads, no dedup table and no subtree hashing:
 *  - zero pages: no record in a full epoch, a ZERO record (zero digest) in an
 *    incremental one; identical pages stored once, across adds too;
 *  - the pack and index files and both digests equal the reference's, byte
 *    for byte, for page sizes 512 B .. 1 MiB, pages given by rows or in
 *    order, in one add or several, at 1, 2, 3 and 8 threads;
 *  - the fork child (capture_fork.c) writes the same files for the same pages;
 *  - bad page lists are refused with nothing added; a failed write fails
 *    every later add; no thread outlives an add;
 *  - an add that runs beyond its call (mck_ew_add_async), its rows coming
 *    in pieces, writes the same files; one whose rows never all come in
 *    fails, and close and cancel stop it.
 * Exit 0 = pass, 1 = fail. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "epoch_writer.h"
#include "helpers.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static char dir[] = "/tmp/mck-test-ew-XXXXXX";

/* ---- the reference ----------------------------------------------------------- */

struct ref {
	uint8_t *pack;      /* the whole pack file */
	size_t pack_len, pack_cap;
	struct mck_idx_record *recs;
	size_t nrec;
	uint64_t stored, dedup, zero;
};

static void ref_init(struct ref *r, const uint8_t *hdr, size_t hdr_len, size_t max_bytes,
		     size_t max_recs)
{
	memset(r, 0, sizeof(*r));
	r->pack_cap = hdr_len + max_bytes;
	r->pack = malloc(r->pack_cap);
	r->recs = calloc(max_recs ? max_recs : 1, sizeof(*r->recs));
	memcpy(r->pack, hdr, hdr_len);
	r->pack_len = hdr_len;
}

static void ref_free(struct ref *r)
{
	free(r->pack);
	free(r->recs);
}

static void ref_add(struct ref *r, const uint8_t *base, size_t ps, const uint64_t *pages,
		    const uint64_t *rows, size_t n, int incremental)
{
	uint8_t *zero = calloc(1, ps), zd[32], d[32];

	mck_blake3_pages(zero, ps, 1, zd);
	for (size_t i = 0; i < n; i++) {
		const uint8_t *p = base + (rows ? rows[i] : i) * ps;
		struct mck_idx_record *rec = &r->recs[r->nrec];
		size_t k;

		if (!memcmp(p, zero, ps)) {
			r->zero++;
			if (!incremental)
				continue;
			memset(rec, 0, sizeof(*rec));
			rec->page = pages[i];
			rec->flags = MCK_PAGE_ZERO;
			memcpy(rec->digest, zd, 32);
			r->nrec++;
			continue;
		}
		mck_blake3_pages(p, ps, 1, d);
		for (k = 0; k < r->nrec; k++) /* every earlier record: slow, and plainly right */
			if (!(r->recs[k].flags & MCK_PAGE_ZERO) && !memcmp(r->recs[k].digest, d, 32))
				break;
		rec->page = pages[i];
		rec->length = (uint32_t)ps;
		rec->flags = 0;
		memcpy(rec->digest, d, 32);
		if (k < r->nrec) {
			rec->offset = r->recs[k].offset;
			r->dedup++;
		} else {
			rec->offset = r->pack_len;
			memcpy(r->pack + r->pack_len, p, ps);
			r->pack_len += ps;
			r->stored++;
		}
		r->nrec++;
	}
	free(zero);
}

/* ---- files ------------------------------------------------------------------------ */

static int open_tmp(const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
}

static void headers(uint8_t hdr[MCK_PACK_HEADER_SIZE], uint8_t idx_hdr[MCK_IDX_HEADER_SIZE])
{
	for (int i = 0; i < MCK_PACK_HEADER_SIZE; i++)
		hdr[i] = (uint8_t)(0x40 + i);
	for (int i = 0; i < MCK_IDX_HEADER_SIZE; i++)
		idx_hdr[i] = (uint8_t)(0x80 + i);
}

struct written {
	uint8_t *pack, *idx;
	size_t pack_len, idx_len;
	uint8_t pack_digest[32], idx_digest[32];
	struct mck_ew_stats st;
	int rc;
};

static void written_free(struct written *o)
{
	free(o->pack);
	free(o->idx);
}

/* the flags write_epoch opens its writers with */
static unsigned ew_flags;
/* write_epoch's adds run beyond their call (mck_ew_add_async), their rows
 * copied into a zeroed shadow of base a piece at a time, each piece said
 * to be in after its copy (as a pause's copy fills staging): a row read
 * before its piece is in reads as zero, and the files differ */
static int ew_async;

static int add_in_pieces(struct mck_ew *w, const uint8_t *base, uint8_t *shadow, uint64_t nrows,
			 size_t ps, const uint64_t *pages, const uint64_t *rows, size_t n)
{
	size_t piece = n / 5 + 1;
	int rc = mck_ew_add_async(w, shadow, nrows, pages, rows, n, 0, 1);

	if (rc < 0)
		return rc;
	CHECK(mck_ew_busy(w), "an add beyond its call is running");
	CHECK(mck_ew_add(w, base, nrows, pages, rows, n) == -EBUSY, "add during a running add");
	for (size_t lo = 0; lo < n; lo += piece) {
		size_t hi = lo + piece < n ? lo + piece : n;

		for (size_t i = lo; i < hi; i++) {
			uint64_t r = rows ? rows[i] : i;

			memcpy(shadow + r * ps, base + r * ps, ps);
		}
		mck_ew_add_ready(w, hi, hi < n ? 1 : 64);
	}
	rc = mck_ew_wait(w);
	CHECK(!mck_ew_busy(w), "waited for");
	return rc;
}

/* One epoch through the writer: adds of pages[cuts[k]..cuts[k+1]) each. */
static void write_epoch(struct written *o, const uint8_t *base, uint64_t nrows, size_t ps,
			uint64_t npages, const uint64_t *pages, const uint64_t *rows,
			int incremental, int threads, const size_t *cuts, size_t ncuts)
{
	uint8_t hdr[MCK_PACK_HEADER_SIZE], idx_hdr[MCK_IDX_HEADER_SIZE];
	int pfd = open_tmp("e.pack"), ifd = open_tmp("e.idx");
	struct mck_ew_config cfg = {pfd, ps, npages, incremental, hdr, sizeof(hdr), threads, ew_flags};
	struct mck_ew *w = NULL;
	uint64_t idx_size = 0;
	uint8_t *shadow = ew_async ? calloc(nrows, ps) : NULL;

	memset(o, 0, sizeof(*o));
	headers(hdr, idx_hdr);
	if (pfd < 0 || ifd < 0 || pwrite(pfd, hdr, sizeof(hdr), 0) != sizeof(hdr)) {
		o->rc = -errno;
		goto out;
	}
	o->rc = mck_ew_open(&cfg, &w);
	for (size_t k = 0; o->rc == 0 && k + 1 < ncuts; k++)
		o->rc = shadow ? add_in_pieces(w, base, shadow, nrows, ps, pages + cuts[k],
					       rows ? rows + cuts[k] : NULL, cuts[k + 1] - cuts[k])
			       : mck_ew_add(w, base, nrows, pages + cuts[k],
					    rows ? rows + cuts[k] : NULL, cuts[k + 1] - cuts[k]);
	if (o->rc == 0) {
		mck_ew_read_stats(w, &o->st);
		if (ew_flags & MCK_EW_NO_PACK_DIGEST)
			CHECK(mck_ew_pack_digest(w, o->pack_digest) == -EINVAL,
			      "pack digest of a writer that keeps none");
		else
			mck_ew_pack_digest(w, o->pack_digest);
		o->rc = mck_ew_finish(w, ifd, idx_hdr, o->idx_digest, &idx_size);
	}
	if (o->rc == 0) {
		o->pack = read_whole_fd(pfd, &o->pack_len);
		o->idx = read_whole_fd(ifd, &o->idx_len);
		CHECK(o->idx_len == idx_size, "index size %zu, finish said %llu", o->idx_len,
		      (unsigned long long)idx_size);
	}
out:
	mck_ew_close(w);
	free(shadow);
	if (pfd >= 0)
		close(pfd);
	if (ifd >= 0)
		close(ifd);
}

/* The writer's files against the reference's. */
static void check_against(const char *what, const struct written *o, const struct ref *r)
{
	uint8_t hdr[MCK_PACK_HEADER_SIZE], idx_hdr[MCK_IDX_HEADER_SIZE], d[32];
	struct mck_blake3 h;

	headers(hdr, idx_hdr);
	CHECK(o->rc == 0, "%s: %s", what, strerror(-o->rc));
	if (o->rc)
		return;
	CHECK(o->pack_len == r->pack_len && !memcmp(o->pack, r->pack, r->pack_len),
	      "%s: pack differs (%zu bytes, reference %zu)", what, o->pack_len, r->pack_len);
	CHECK(o->st.pack_size == r->pack_len, "%s: pack_size %llu", what,
	      (unsigned long long)o->st.pack_size);
	mck_blake3_init(&h);
	mck_blake3_update(&h, r->pack, r->pack_len);
	mck_blake3_final(&h, d);
	CHECK(!memcmp(d, o->pack_digest, 32), "%s: pack digest", what);
	CHECK(o->idx_len == MCK_IDX_HEADER_SIZE + r->nrec * MCK_IDX_RECORD_SIZE &&
	      !memcmp(o->idx, idx_hdr, MCK_IDX_COUNT_AT) &&
	      !memcmp(o->idx + MCK_IDX_COUNT_AT + 8, idx_hdr + MCK_IDX_COUNT_AT + 8,
		      MCK_IDX_HEADER_SIZE - MCK_IDX_COUNT_AT - 8),
	      "%s: index header or size (%zu bytes for %zu records)", what, o->idx_len, r->nrec);
	if (o->idx_len == MCK_IDX_HEADER_SIZE + r->nrec * MCK_IDX_RECORD_SIZE) {
		uint64_t count;

		memcpy(&count, o->idx + MCK_IDX_COUNT_AT, 8);
		CHECK(count == r->nrec, "%s: count %llu, %zu records", what,
		      (unsigned long long)count, r->nrec);
		for (size_t i = 0; i < r->nrec; i++) {
			const uint8_t *got = o->idx + MCK_IDX_HEADER_SIZE + i * MCK_IDX_RECORD_SIZE;

			if (memcmp(got, &r->recs[i], MCK_IDX_RECORD_SIZE)) {
				CHECK(0, "%s: record %zu (page %llu) differs", what, i,
				      (unsigned long long)r->recs[i].page);
				break;
			}
		}
	}
	mck_blake3_init(&h);
	mck_blake3_update(&h, o->idx, o->idx_len);
	mck_blake3_final(&h, d);
	CHECK(!memcmp(d, o->idx_digest, 32), "%s: index digest", what);
	CHECK(o->st.records == r->nrec && o->st.stored == r->stored && o->st.dedup == r->dedup &&
	      o->st.zero == r->zero, "%s: counts %llu/%llu/%llu/%llu, reference %zu/%llu/%llu/%llu",
	      what, (unsigned long long)o->st.records, (unsigned long long)o->st.stored,
	      (unsigned long long)o->st.dedup, (unsigned long long)o->st.zero, r->nrec,
	      (unsigned long long)r->stored, (unsigned long long)r->dedup,
	      (unsigned long long)r->zero);
}

/* ---- content ------------------------------------------------------------------------ */

/* nrows rows of ps bytes: every zero_every-th zero, every dup_every-th a copy
 * of an earlier one, the rest random (0: none of that kind) */
static uint8_t *make_rows(size_t nrows, size_t ps, int zero_every, int dup_every)
{
	uint8_t *a = malloc(nrows * ps);

	for (size_t r = 0; r < nrows; r++) {
		uint64_t *w = (uint64_t *)(a + r * ps);

		if (zero_every && r % (size_t)zero_every == 1) {
			memset(w, 0, ps);
		} else if (dup_every && r % (size_t)dup_every == 2 && r > 2) {
			memcpy(w, a + (rnd(&rng_state) % (r - 1)) * ps, ps);
		} else {
			for (size_t i = 0; i < ps / 8; i++)
				w[i] = rnd(&rng_state);
		}
	}
	return a;
}

/* pages: k of npages, increasing, at random (or all: k == npages) */
static uint64_t *pick_pages(uint64_t npages, size_t k)
{
	uint64_t *p = malloc((k ? k : 1) * sizeof(*p));
	size_t got = 0;

	for (uint64_t q = 0; q < npages && got < k; q++)
		if (rnd(&rng_state) % (npages - q) < k - got)
			p[got++] = q;
	return p;
}

/* ---- the tests --------------------------------------------------------------------- */

struct shape {
	size_t ps;
	size_t nrows;
	int incremental;
	int by_rows;   /* pages are rows of an arena (add_pages_from) */
	int nadds;
	int zero_every, dup_every;
};

static const struct shape shapes[] = {
	{4096, 6000, 0, 1, 1, 9, 13},    /* a full epoch from an arena: 23 MiB, several windows */
	{4096, 6000, 1, 1, 3, 9, 13},    /* incremental, every page, three adds */
	{4096, 3000, 1, 0, 2, 4, 5},     /* incremental, staged rows, many zero and dup */
	{512, 8000, 0, 1, 2, 11, 7},     /* the smallest pages: half a chunk each */
	{1024, 9000, 1, 1, 1, 0, 0},     /* every page stored */
	{16384, 900, 1, 0, 1, 3, 4},
	{65536, 120, 0, 1, 2, 5, 6},     /* a page is one subtree of the pack's digest */
	{1 << 20, 12, 1, 1, 1, 4, 3},    /* pages bigger than a window */
};

static void one_shape(const struct shape *s, size_t k_of)
{
	char what[160];
	uint64_t npages = s->nrows + 5;
	size_t k = s->by_rows ? s->nrows / k_of : s->nrows;
	uint8_t *rows_mem = make_rows(s->nrows, s->ps, s->zero_every, s->dup_every);
	uint64_t *pages = s->by_rows ? pick_pages(s->nrows, k) : pick_pages(npages, k);
	size_t cuts[8] = {0};
	struct ref r;
	uint8_t hdr[MCK_PACK_HEADER_SIZE], idx_hdr[MCK_IDX_HEADER_SIZE];
	struct written first;

	headers(hdr, idx_hdr);
	for (int a = 1; a < s->nadds; a++)
		cuts[a] = k * (size_t)a / (size_t)s->nadds;
	cuts[s->nadds] = k;
	ref_init(&r, hdr, sizeof(hdr), k * s->ps, k);
	for (int a = 0; a < s->nadds; a++)
		ref_add(&r, rows_mem, s->ps, pages + cuts[a], s->by_rows ? pages + cuts[a] : NULL,
			cuts[a + 1] - cuts[a], s->incremental);
	memset(&first, 0, sizeof(first));
	for (int threads = 1; threads <= 8; threads = threads == 3 ? 8 : threads + 1) {
		struct written o;

		snprintf(what, sizeof(what), "page %zu, %zu of %zu pages, %s, %s, %d adds, %d threads",
			 s->ps, k, s->nrows, s->incremental ? "incremental" : "full",
			 s->by_rows ? "rows of an arena" : "staged", s->nadds, threads);
		write_epoch(&o, rows_mem, s->nrows, s->ps, npages, pages,
			    s->by_rows ? pages : NULL, s->incremental, threads, cuts,
			    (size_t)s->nadds + 1);
		check_against(what, &o, &r);
		if (threads == 1) {
			first = o;
			continue;
		}
		CHECK(first.rc == 0 && o.rc == 0 && o.pack_len == first.pack_len &&
		      o.idx_len == first.idx_len && !memcmp(o.pack, first.pack, o.pack_len) &&
		      !memcmp(o.idx, first.idx, o.idx_len), "%s: files differ from 1 thread's", what);
		written_free(&o);
	}
	written_free(&first);
	ref_free(&r);
	free(pages);
	free(rows_mem);
}

static void test_matches_reference(struct test_ctx *ctx)
{
	(void)ctx;
	for (size_t i = 0; i < NELEM(shapes); i++) {
		one_shape(&shapes[i], 1);
		if (shapes[i].by_rows)
			one_shape(&shapes[i], 3); /* a scattered third of the arena */
	}
}

static void test_zero_pages(struct test_ctx *ctx)
{
	const size_t ps = 4096, n = 64;
	uint8_t *a = calloc(n, ps), zd[32];
	uint64_t pages[64];
	size_t cuts[2] = {0, n};

	(void)ctx;
	for (size_t i = 0; i < n; i++)
		pages[i] = 3 * i;
	a[5 * ps + 17] = 1; /* one nonzero page among zeros */
	mck_blake3_pages(a, ps, 1, zd);
	for (int inc = 0; inc <= 1; inc++) {
		struct written o;

		write_epoch(&o, a, n, ps, 3 * n, pages, NULL, inc, 2, cuts, 2);
		CHECK(o.rc == 0 && o.st.zero == n - 1 && o.st.stored == 1 &&
		      o.st.records == (inc ? n : 1),
		      "%s: zero %llu stored %llu records %llu", inc ? "incremental" : "full",
		      (unsigned long long)o.st.zero, (unsigned long long)o.st.stored,
		      (unsigned long long)o.st.records);
		CHECK(o.pack_len == MCK_PACK_HEADER_SIZE + ps, "only the nonzero page is stored");
		for (size_t r = 0; o.idx && r < o.st.records; r++) {
			struct mck_idx_record rec;

			memcpy(&rec, o.idx + MCK_IDX_HEADER_SIZE + r * MCK_IDX_RECORD_SIZE, sizeof(rec));
			if (rec.page == 15) {
				CHECK(rec.flags == 0 && rec.offset == MCK_PACK_HEADER_SIZE,
				      "the nonzero page is stored raw after the header");
			} else {
				CHECK(inc && rec.flags == MCK_PAGE_ZERO && rec.offset == 0 &&
				      rec.length == 0 && !memcmp(rec.digest, zd, 32),
				      "page %llu: a ZERO record with the zero page's digest",
				      (unsigned long long)rec.page);
			}
		}
		written_free(&o);
	}
	free(a);
}

static void test_dedup_across_adds(struct test_ctx *ctx)
{
	const size_t ps = 4096, n = 40;
	uint8_t *a = make_rows(n, ps, 0, 0);
	uint64_t pages[40];
	size_t cuts[4] = {0, 10, 25, n};
	struct written o;

	(void)ctx;
	for (size_t i = 0; i < n; i++) {
		pages[i] = i;
		if (i >= 20)
			memcpy(a + i * ps, a + (i % 4) * ps, ps); /* pages 20.. repeat 0..3 */
	}
	write_epoch(&o, a, n, ps, n, pages, pages, 0, 2, cuts, 4);
	CHECK(o.rc == 0 && o.st.stored == 20 && o.st.dedup == 20,
	      "stored %llu dedup %llu", (unsigned long long)o.st.stored,
	      (unsigned long long)o.st.dedup);
	for (size_t i = 20; o.idx && i < n; i++) {
		struct mck_idx_record rec;

		memcpy(&rec, o.idx + MCK_IDX_HEADER_SIZE + i * MCK_IDX_RECORD_SIZE, sizeof(rec));
		CHECK(rec.offset == MCK_PACK_HEADER_SIZE + (i % 4) * ps,
		      "page %zu points at the first copy", i);
	}
	written_free(&o);
	free(a);
}

static void test_fork_child_writes_the_same(struct test_ctx *ctx)
{
	const size_t ps = 4096, n = 3000;
	uint8_t *a = make_rows(n, ps, 7, 5);
	uint64_t *pages = pick_pages(n, n / 2);
	size_t k = n / 2, cuts[2] = {0, k};
	uint8_t hdr[MCK_PACK_HEADER_SIZE];

	(void)ctx;
	headers(hdr, (uint8_t[MCK_IDX_HEADER_SIZE]){0});
	for (int inc = 0; inc <= 1; inc++) {
		struct written o, f;
		struct mck_fork_job job;
		struct mck_fork_child child;
		struct mck_fork_result res;
		int pfd = open_tmp("f.pack"), ifd = open_tmp("f.idx"), rc;

		write_epoch(&o, a, n, ps, n, pages, pages, inc, 2, cuts, 2);
		memset(&job, 0, sizeof(job));
		job.base = a;
		job.page_size = ps;
		job.npages = n;
		job.pages = pages;
		job.n = k;
		job.incremental = inc;
		job.pack_fd = pfd;
		job.pack_off = sizeof(hdr);
		job.pack_header = hdr;
		job.pack_header_len = sizeof(hdr);
		job.idx_fd = ifd;
		headers(hdr, job.idx_header);
		job.scratch_len = mck_fork_scratch_size(k);
		job.scratch = malloc(job.scratch_len);
		rc = pwrite(pfd, hdr, sizeof(hdr), 0) == sizeof(hdr) ? 0 : -EIO;
		if (rc == 0)
			rc = mck_fork_start(&job, &child);
		if (rc == 0)
			rc = mck_fork_wait(&child, &res);
		CHECK(rc == 0, "fork child: %s", strerror(-rc));
		f.pack = read_whole_fd(pfd, &f.pack_len);
		f.idx = read_whole_fd(ifd, &f.idx_len);
		CHECK(o.rc == 0 && f.pack_len == o.pack_len && f.idx_len == o.idx_len &&
		      !memcmp(f.pack, o.pack, o.pack_len) && !memcmp(f.idx, o.idx, o.idx_len),
		      "%s: the fork child's files differ from the writer's",
		      inc ? "incremental" : "full");
		static const uint8_t none[32];

		CHECK(!memcmp(res.pack_digest, none, 32) && !memcmp(res.idx_digest, o.idx_digest, 32),
		      "digests: the child keeps no pack digest (format 1.2), the index's as the writer's");
		free(job.scratch);
		free(f.pack);
		free(f.idx);
		written_free(&o);
		close(pfd);
		close(ifd);
	}
	free(pages);
	free(a);
}

/* Format 1.2: a writer without the pack's digest writes the same files, for
 * 1 and 2 threads (the digest pass is all it drops). */
static void test_no_pack_digest(struct test_ctx *ctx)
{
	size_t ps = 4096, n = 260; /* small: the kernel matrix runs this under TCG */
	uint8_t *base = calloc(n, ps);
	uint64_t *pages = calloc(n, sizeof(*pages));
	size_t cuts[] = {0, 1, 100, n};

	(void)ctx;
	for (size_t i = 0; i < n; i++) {
		pages[i] = i;
		if (i % 7)
			memset(base + i * ps, (int)(i % 5 + 1), ps); /* zero and repeated pages */
		base[i * ps] = (uint8_t)(i % 11 ? 1 : i);
	}
	for (int threads = 1; threads <= 2; threads++) {
		struct written a, b;

		ew_flags = 0;
		write_epoch(&a, base, n, ps, n, pages, NULL, 1, threads, cuts, 4);
		ew_flags = MCK_EW_NO_PACK_DIGEST;
		write_epoch(&b, base, n, ps, n, pages, NULL, 1, threads, cuts, 4);
		ew_flags = 0;
		CHECK(a.rc == 0 && b.rc == 0 && a.pack_len == b.pack_len && a.idx_len == b.idx_len &&
		      !memcmp(a.pack, b.pack, a.pack_len) && !memcmp(a.idx, b.idx, a.idx_len) &&
		      !memcmp(a.idx_digest, b.idx_digest, 32),
		      "%d threads: the files differ without the pack digest", threads);
		written_free(&a);
		written_free(&b);
	}
	free(base);
	free(pages);
}

static void test_bad_pages(struct test_ctx *ctx)
{
	const size_t ps = 4096;
	uint8_t *a = make_rows(8, ps, 0, 0), hdr[MCK_PACK_HEADER_SIZE], idx_hdr[MCK_IDX_HEADER_SIZE];
	int pfd = open_tmp("b.pack");
	struct mck_ew_config cfg = {pfd, ps, 100, 1, hdr, sizeof(hdr), 2, 0};
	struct mck_ew *w = NULL;
	struct mck_ew_stats st;
	static const struct {
		const char *why;
		uint64_t pages[3], rows[3];
		int use_rows;
	} bad[] = {
		{"pages not increasing", {5, 5, 6}, {0}, 0},
		{"page beyond npages", {5, 6, 100}, {0}, 0},
		{"row beyond the rows", {1, 2, 3}, {1, 2, 8}, 1},
		{"page below one added before", {1, 2, 3}, {0}, 0},
	};
	uint64_t ok[2] = {10, 11};

	(void)ctx;
	headers(hdr, idx_hdr);
	CHECK(mck_ew_open(&cfg, &w) == 0, "open");
	CHECK(mck_ew_add(w, a, 8, ok, NULL, 2) == 0, "a good add");
	for (size_t i = 0; i < NELEM(bad); i++) {
		int rc = mck_ew_add(w, a, 8, bad[i].pages, bad[i].use_rows ? bad[i].rows : NULL, 3);

		mck_ew_read_stats(w, &st);
		CHECK(rc == -EINVAL && st.records == 2 && st.pack_size == sizeof(hdr) + 2 * ps,
		      "%s: rc %d, records %llu", bad[i].why, rc, (unsigned long long)st.records);
	}
	mck_ew_close(w);
	cfg.page_size = 3000;
	CHECK(mck_ew_open(&cfg, &w) == -EINVAL && !w, "a page size that is no power of two");
	close(pfd);
	free(a);
}

static void test_failed_write_sticks(struct test_ctx *ctx)
{
	const size_t ps = 4096, n = 1024;
	uint8_t *a = make_rows(n, ps, 0, 0), hdr[MCK_PACK_HEADER_SIZE], idx_hdr[MCK_IDX_HEADER_SIZE];
	char path[256];
	int fd;
	uint64_t *pages = pick_pages(n, n), more = n + 1;
	struct mck_ew *w = NULL;

	(void)ctx;
	headers(hdr, idx_hdr);
	snprintf(path, sizeof(path), "%s/ro.pack", dir);
	close(open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	struct mck_ew_config cfg = {fd, ps, n + 2, 0, hdr, sizeof(hdr), 2, 0};
	CHECK(mck_ew_open(&cfg, &w) == 0, "open");
	CHECK(mck_ew_add(w, a, n, pages, NULL, n) == -EBADF, "a read-only pack: -EBADF");
	CHECK(mck_ew_add(w, a, n, &more, NULL, 1) == -EBADF, "and so is every later add");
	uint8_t d[32];
	uint64_t sz;
	CHECK(mck_ew_finish(w, fd, idx_hdr, d, &sz) == -EBADF, "and finish");
	mck_ew_close(w);
	close(fd);
	free(pages);
	free(a);
}

static void test_no_thread_outlives_an_add(struct test_ctx *ctx)
{
	const size_t ps = 4096, n = 8192; /* 32 MiB: every thread gets work */
	uint8_t *a = make_rows(n, ps, 0, 0);
	uint64_t *pages = pick_pages(n, n);
	/* every earlier test joined its threads (one of them may still be
	 * listed a moment: counted, it would make the settled count after look
	 * like one fewer than before) */
	int before = settled_tasks(1);
	size_t cuts[2] = {0, n};
	struct written o;

	(void)ctx;
	for (int i = 0; i < 20; i++) {
		write_epoch(&o, a, n, ps, n, pages, NULL, 0, 4, cuts, 2);
		CHECK(o.rc == 0, "epoch %d", i);
		written_free(&o);
	}
	CHECK(settled_tasks(before) == before, "threads left: %d, were %d", count_tasks(), before);
	free(pages);
	free(a);
}

/* Shapes again (a full epoch from an arena, staged increments in two
 * adds, pages a subtree each: a few, for the kernel matrix's emulated
 * CPUs), each add running beyond its call with its rows coming in pieces:
 * the same files as the reference's. */
static void test_async_matches_reference(struct test_ctx *ctx)
{
	(void)ctx;
	ew_async = 1;
	one_shape(&shapes[0], 1);
	one_shape(&shapes[2], 1);
	one_shape(&shapes[6], 1);
	ew_async = 0;
}

/* An add beyond its call: waiting for rows never said to be in fails
 * (-ECANCELED) and fails the writer; close and cancel stop one whose rows
 * never come; no thread outlives any of them. */
static void test_async_cancel(struct test_ctx *ctx)
{
	const size_t ps = 4096, n = 8192;
	uint8_t *a = make_rows(n, ps, 0, 0), hdr[MCK_PACK_HEADER_SIZE] = {0};
	uint64_t *pages = pick_pages(n, n);
	int before = count_tasks(), pfd = open_tmp("c.pack");
	struct mck_ew_config cfg = {pfd, ps, n, 0, hdr, sizeof(hdr), 4, 0};
	struct mck_ew *w = NULL;

	(void)ctx;
	CHECK(mck_ew_open(&cfg, &w) == 0, "open");
	CHECK(mck_ew_add_async(w, a, n, pages, NULL, n, n / 2, 4) == 0, "start");
	CHECK(mck_ew_wait(w) == -ECANCELED, "wait with half the rows in");
	CHECK(mck_ew_add(w, a, n, pages, NULL, 1) == -ECANCELED, "the writer failed");
	mck_ew_close(w);
	for (int how = 0; how < 2; how++) {
		CHECK(mck_ew_open(&cfg, &w) == 0, "open");
		CHECK(mck_ew_add_async(w, a, n, pages, NULL, n, 0, 4) == 0, "start");
		mck_ew_add_ready(w, 0, 64); /* every thread started, none has a row */
		if (how)
			mck_ew_cancel(w);
		CHECK(!how || !mck_ew_busy(w), "cancelled");
		CHECK(!how || mck_ew_wait(w) == -ECANCELED, "a cancelled add failed the writer");
		mck_ew_close(w);
	}
	CHECK(settled_tasks(before) == before, "threads left: %d, were %d", count_tasks(), before);
	close(pfd);
	free(pages);
	free(a);
}

static void test_threads_default(struct test_ctx *ctx)
{
	uint8_t hdr[MCK_PACK_HEADER_SIZE] = {0};
	struct mck_ew_config cfg = {1, 4096, 1, 0, hdr, sizeof(hdr), 0, 0};
	struct mck_ew *w = NULL;
	struct mck_ew_stats st;
	cpu_set_t set;

	(void)ctx;
	CHECK(sched_getaffinity(0, sizeof(set), &set) == 0, "sched_getaffinity");
	CHECK(mck_cpus_available() == CPU_COUNT(&set), "cpus %d, affinity %d",
	      mck_cpus_available(), CPU_COUNT(&set));
	CHECK(mck_ew_open(&cfg, &w) == 0, "open");
	mck_ew_read_stats(w, &st);
	CHECK(st.threads == mck_cpus_available(), "threads 0 means the CPUs available");
	mck_ew_close(w);
}

static const struct test_case tests[] = {
	{"matches_reference", test_matches_reference, {NULL}},
	{"zero_pages", test_zero_pages, {NULL}},
	{"dedup_across_adds", test_dedup_across_adds, {NULL}},
	{"fork_child_writes_the_same", test_fork_child_writes_the_same, {NULL}},
	{"no_pack_digest", test_no_pack_digest, {NULL}},
	{"bad_pages", test_bad_pages, {NULL}},
	{"failed_write_sticks", test_failed_write_sticks, {NULL}},
	{"no_thread_outlives_an_add", test_no_thread_outlives_an_add, {NULL}},
	{"threads_default", test_threads_default, {NULL}},
	{"async_matches_reference", test_async_matches_reference, {NULL}},
	{"async_cancel", test_async_cancel, {NULL}},
};

int main(int argc, char **argv)
{
	struct test_ctx ctx = {.backend = -1};
	char cmd[300];

	test_start(argc, argv, "test_epoch_writer");
	if (!mkdtemp(dir)) {
		printf("FAIL mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	RUN_TESTS(tests, &ctx);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", dir);
	return test_finish("test_epoch_writer");
}
