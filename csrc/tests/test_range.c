/* test_range.c: mck_tracker_open_range, a tracker over any byte range, on
 * every backend available:
 *  - the edge pages (shared with the bytes beside the range) are reported
 *    when the range's own bytes in them change, never for a neighbour's
 *    write, never for a write of the same bytes;
 *  - the whole pages inside are the backend's: random rounds of writes over
 *    the range and its neighbours, every page whose own bytes were written
 *    is reported (exactly those for an exact backend);
 *  - a range inside one page, a range over two pages with no whole page,
 *    a page-aligned range (the same as mck_tracker_open);
 *  - errors: a NULL or empty range, background capture (-EOPNOTSUPP).
 *
 * Exit 0 = pass, 1 = fail, 77 = no backend here. `test_range [seed [test]]`. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"

#define NPAGES 16u

static size_t ps;

static uint8_t *buffer(void)
{
	void *p = NULL;

	if (posix_memalign(&p, ps, NPAGES * ps))
		return NULL;
	memset(p, 1, NPAGES * ps);
	return p;
}

static int64_t collect(struct mck_tracker *t, uint64_t *out)
{
	int64_t n = mck_tracker_collect(t, out, NPAGES);

	CHECK(n >= 0, "collect: %s", strerror((int)-n));
	return n;
}

static bool listed(const uint64_t *out, int64_t n, uint64_t page)
{
	for (int64_t i = 0; i < n; i++)
		if (out[i] == page)
			return true;
	return false;
}

static void test_edges(struct test_ctx *ctx)
{
	uint8_t *b = buffer();
	uint8_t *start = b + ps + 100, *end = b + 9 * ps + 50; /* pages 1..9 of b: 9 pages */
	struct mck_tracker *t = NULL;
	uint64_t out[NPAGES];
	int64_t n;
	int rc;

	if (!b) {
		CHECK(0, "posix_memalign");
		return;
	}
	rc = mck_tracker_open_range(&t, ctx->backend, start, (size_t)(end - start));
	CHECK(rc == 0, "open_range: %s", strerror(-rc));
	if (rc) {
		free(b);
		return;
	}
	CHECK(mck_tracker_npages(t) == 9, "npages %zu", mck_tracker_npages(t));
	CHECK(collect(t, out) == 0, "nothing written yet");
	start[-1] = 7, end[0] = 7, b[ps] = 7, end[ps - 51] = 7; /* the neighbours, in both edge pages */
	n = collect(t, out);
	CHECK(n == 0, "a neighbour's writes reported (%lld pages)", (long long)n);
	start[0] = 9;
	n = collect(t, out);
	CHECK(n == 1 && out[0] == 0, "head edge: %lld pages, first %llu", (long long)n,
	      (unsigned long long)out[0]);
	end[-1] = 9;
	n = collect(t, out);
	CHECK(n == 1 && out[0] == 8, "tail edge: %lld pages, first %llu", (long long)n,
	      (unsigned long long)out[0]);
	start[0] = 9, end[-1] = 9; /* the same bytes: no change */
	n = collect(t, out);
	CHECK(n == 0, "a write of the same bytes reported (%lld pages)", (long long)n);
	b[4 * ps + 5] = 3, start[1] = 4, end[-2] = 4;
	n = collect(t, out);
	CHECK(n == 3 && out[0] == 0 && out[1] == 3 && out[2] == 8,
	      "edges and page 3: %lld pages (%llu %llu %llu)", (long long)n,
	      (unsigned long long)out[0], (unsigned long long)out[1], (unsigned long long)out[2]);
	mck_tracker_close(t);
	free(b);
}

static void test_random(struct test_ctx *ctx)
{
	uint8_t *b = buffer();
	size_t lead = 1 + rnd(&rng_state) % (ps - 1), tail = 1 + rnd(&rng_state) % (ps - 1);
	uint8_t *start = b + ps + lead, *end = b + (NPAGES - 1) * ps - tail;
	bool exact = mck_backend_props(ctx->backend) & MCK_PROP_EXACT;
	struct mck_tracker *t = NULL;
	uint64_t out[NPAGES];
	int rc;

	if (!b) {
		CHECK(0, "posix_memalign");
		return;
	}
	rc = mck_tracker_open_range(&t, ctx->backend, start, (size_t)(end - start));
	CHECK(rc == 0, "open_range: %s", strerror(-rc));
	if (rc) {
		free(b);
		return;
	}
	for (int round = 0; round < 50; round++) {
		bool want[NPAGES] = { false };
		int k = 1 + (int)(rnd(&rng_state) % 12);
		int64_t n;

		for (int i = 0; i < k; i++) {
			/* anywhere in b: the range, or the neighbours beside it */
			size_t off = rnd(&rng_state) % (NPAGES * ps);
			uint8_t *p = b + off;

			*p = (uint8_t)(*p + 1); /* always a change */
			if (p >= start && p < end)
				want[(off / ps) - 1] = true; /* the range's pages start at b's page 1 */
		}
		n = collect(t, out);
		for (size_t pg = 0; pg < mck_tracker_npages(t); pg++) {
			CHECK(!want[pg] || listed(out, n, pg), "round %d: page %zu written, not reported",
			      round, pg);
			CHECK(!exact || want[pg] || !listed(out, n, pg),
			      "round %d: page %zu reported, not written", round, pg);
		}
		for (int64_t i = 1; i < n; i++)
			CHECK(out[i] > out[i - 1], "round %d: not sorted", round);
	}
	mck_tracker_close(t);
	free(b);
}

static void test_shapes(struct test_ctx *ctx)
{
	uint8_t *b = buffer();
	struct {
		size_t off, len, npages;
	} cases[] = {
		{ ps + 100, 200, 1 },        /* inside one page */
		{ ps + 100, ps, 2 },         /* two pages, no whole one */
		{ ps, 3 * ps, 3 },           /* page-aligned: mck_tracker_open */
		{ ps, ps + 1, 2 },           /* aligned start, one byte into the next page */
	};
	uint64_t out[NPAGES];

	if (!b) {
		CHECK(0, "posix_memalign");
		return;
	}
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct mck_tracker *t = NULL;
		uint8_t *s = b + cases[c].off, *e = s + cases[c].len;
		int rc = mck_tracker_open_range(&t, ctx->backend, s, cases[c].len);
		int64_t n;

		CHECK(rc == 0, "case %zu: %s", c, strerror(-rc));
		if (rc)
			continue;
		CHECK(mck_tracker_npages(t) == cases[c].npages, "case %zu: npages %zu", c,
		      mck_tracker_npages(t));
		s[-1]++, e[0]++;
		n = collect(t, out);
		CHECK(n == 0 || cases[c].off % ps == 0, "case %zu: neighbours reported", c);
		collect(t, out);
		e[-1]++;
		n = collect(t, out);
		CHECK(n >= 1 && out[n - 1] == cases[c].npages - 1, "case %zu: last byte not seen", c);
		s[0]++;
		n = collect(t, out);
		CHECK(n >= 1 && out[0] == 0, "case %zu: first byte not seen", c);
		mck_tracker_close(t);
	}
	free(b);
}

static void test_errors(struct test_ctx *ctx)
{
	uint8_t *b = buffer();
	struct mck_tracker *t = (struct mck_tracker *)1;
	uint64_t pages[NPAGES];
	int64_t n;

	if (!b) {
		CHECK(0, "posix_memalign");
		return;
	}
	CHECK(mck_tracker_open_range(&t, ctx->backend, NULL, 10) == -EINVAL && !t, "NULL range");
	CHECK(mck_tracker_open_range(&t, ctx->backend, b, 0) == -EINVAL && !t, "empty range");
	CHECK(mck_tracker_open_range(&t, MCK_BACKEND_COUNT, b + 1, 10) == -EINVAL, "bad backend");
	if (mck_tracker_open_range(&t, ctx->backend, b + 100, 3 * ps) == 0) {
		n = mck_bg_begin(t, pages, NPAGES, NULL, 0, -1, 0, NULL);
		CHECK(n == -EOPNOTSUPP, "background capture on a range: %lld", (long long)n);
		mck_tracker_close(t);
	}
	free(b);
}

static const struct test_case per_backend[] = {
	{ "edges", test_edges, { NULL } },
	{ "random", test_random, { NULL } },
	{ "shapes", test_shapes, { NULL } },
	{ "errors", test_errors, { NULL } },
};

int main(int argc, char **argv)
{
	test_start(argc, argv, "test_range");
	ps = (size_t)sysconf(_SC_PAGESIZE);
	for (int b = 0; b < MCK_BACKEND_COUNT; b++) {
		struct test_ctx pass = { 0 };

		if (backend_pass(&pass, mck_backend_name(b)))
			RUN_TESTS(per_backend, &pass);
	}
	return test_finish("test_range");
}
