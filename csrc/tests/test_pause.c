/* test_pause.c: the pause of a checkpoint as one call (pause.c), per backend:
 *  - mck_pause_pages: the pages written since the last collect (exactly, for
 *    an exact backend; never one missing), merged with a carried list, sorted
 *    and unique; a full epoch also lists every page that holds data, or every
 *    page (MCK_PAUSE_EVERY_PAGE); the tracker's own count kept apart;
 *  - mck_copy_pages: runs and scattered pages land in order, byte for byte;
 *  - errors: an unsorted or out-of-range carry, short buffers (EINVAL), and
 *    nothing collected then (the next collect still reports the pages).
 *
 * Exit 0 = pass, 1 = fail, 77 = nothing could run. `test_pause [seed [test]]`. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"
#include "helpers.h"

#define NPAGES 512u

static size_t ps;
static uint64_t *dirty, *full, *tmp, *carry;

static bool listed(const uint64_t *v, int64_t n, uint64_t p)
{
	for (int64_t i = 0; i < n; i++)
		if (v[i] == p)
			return true;
	return false;
}

static void check_sorted(const char *what, const uint64_t *v, int64_t n)
{
	for (int64_t i = 1; i < n; i++)
		CHECK(v[i] > v[i - 1], "%s: not sorted and unique at %lld", what, (long long)i);
}

static void test_pages(struct test_ctx *ctx)
{
	struct tracked x;
	uint8_t written[NPAGES] = { 0 }, in_carry[NPAGES] = { 0 };
	bool exact = mck_backend_props(ctx->backend) & MCK_PROP_EXACT;
	struct mck_pause_out o = { .dirty = dirty, .full = full, .tmp = tmp, .cap = NPAGES };
	struct mck_pause_job job = { .page_size = ps };
	size_t ncarry = 0;
	int64_t n;
	int rc = tracked_open(&x, ctx->backend, NPAGES);

	CHECK(rc == 0, "open: %s", strerror(-rc));
	if (rc)
		return;
	job.base = x.region.addr;
	mck_tracker_collect(x.t, dirty, NPAGES);
	for (int i = 0; i < 60; i++) {
		uint64_t p = rnd(&rng_state) % NPAGES;

		((uint8_t *)x.region.addr)[p * ps + rnd(&rng_state) % ps] = 1 + (uint8_t)(i % 200);
		written[p] = 1;
	}
	for (uint64_t p = 3; p < NPAGES; p += 37) {
		carry[ncarry++] = p;
		in_carry[p] = 1;
	}
	job.carry = carry;
	job.ncarry = ncarry;
	n = mck_pause_pages(x.t, &job, &o);
	CHECK(n >= 0 && (size_t)n == o.ndirty, "incremental: %lld pages, ndirty %zu", (long long)n,
	      o.ndirty);
	check_sorted("incremental", dirty, n);
	for (uint64_t p = 0; p < NPAGES && n >= 0; p++) {
		bool want = written[p] || in_carry[p], got = listed(dirty, n, p);

		CHECK(got || !want, "page %llu written or carried, not listed", (unsigned long long)p);
		CHECK(!exact || got == want, "page %llu listed, neither written nor carried",
		      (unsigned long long)p);
	}
	CHECK(o.reported <= o.ndirty, "reported %zu > ndirty %zu", o.reported, o.ndirty);
	/* a full epoch: every page that holds data listed, the dirty list kept */
	job.ncarry = 0;
	job.full = MCK_PAUSE_POPULATED;
	((uint8_t *)x.region.addr)[5 * ps] = 9;
	n = mck_pause_pages(x.t, &job, &o);
	CHECK(n > 0, "full: %lld", (long long)n);
	check_sorted("full", full, n);
	for (uint64_t p = 0; p < NPAGES && n > 0; p++)
		CHECK(!written[p] || listed(full, n, p), "full: page %llu holds data, not listed",
		      (unsigned long long)p);
	CHECK(listed(dirty, (int64_t)o.ndirty, 5), "full: the page written since is in dirty");
	job.full = MCK_PAUSE_EVERY_PAGE;
	n = mck_pause_pages(x.t, &job, &o);
	CHECK(n == NPAGES && full[0] == 0 && full[NPAGES - 1] == NPAGES - 1, "every page: %lld",
	      (long long)n);
	rc = tracked_close(&x);
	CHECK(rc == 0, "close: %s", strerror(-rc));
}

static void test_errors(struct test_ctx *ctx)
{
	struct tracked x;
	struct mck_pause_out o = { .dirty = dirty, .full = full, .tmp = tmp, .cap = NPAGES };
	struct mck_pause_job job = { .page_size = ps, .carry = carry, .ncarry = 2 };
	int64_t n;
	int rc = tracked_open(&x, ctx->backend, NPAGES);

	CHECK(rc == 0, "open: %s", strerror(-rc));
	if (rc)
		return;
	job.base = x.region.addr;
	mck_tracker_collect(x.t, dirty, NPAGES);
	((uint8_t *)x.region.addr)[7 * ps] = 1;
	carry[0] = 9, carry[1] = 4;  /* unsorted */
	CHECK(mck_pause_pages(x.t, &job, &o) == -EINVAL, "an unsorted carry is refused");
	carry[0] = 4, carry[1] = NPAGES;  /* beyond the range */
	CHECK(mck_pause_pages(x.t, &job, &o) == -EINVAL, "a carry beyond the range is refused");
	job.ncarry = 0;
	o.cap = NPAGES - 1;
	CHECK(mck_pause_pages(x.t, &job, &o) == -EINVAL, "short buffers are refused");
	o.cap = NPAGES;
	n = mck_pause_pages(x.t, &job, &o);  /* nothing was collected by the refusals */
	CHECK(n >= 1 && listed(dirty, n, 7), "page 7 still reported after the refusals");
	rc = tracked_close(&x);
	CHECK(rc == 0, "close: %s", strerror(-rc));
}

static void test_copy(struct test_ctx *ctx)
{
	uint8_t *src = malloc(NPAGES * ps), *out = malloc(NPAGES * ps);
	uint64_t pages[NPAGES];
	size_t n = 0;

	(void)ctx;
	if (!src || !out) {
		CHECK(0, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < NPAGES * ps; i++)
		src[i] = (uint8_t)rnd(&rng_state);
	for (uint64_t p = 0; p < NPAGES; p++)  /* runs of 1..8 pages with gaps */
		if (rnd(&rng_state) % 3)
			pages[n++] = p;
	mck_copy_pages(src, ps, pages, n, out);
	for (size_t i = 0; i < n; i++)
		CHECK(memcmp(out + i * ps, src + pages[i] * ps, ps) == 0, "row %zu is not page %llu",
		      i, (unsigned long long)pages[i]);
out:
	free(src);
	free(out);
}

static const struct test_case plain[] = {
	{ "copy", test_copy, { NULL } },
};

static const struct test_case per_backend[] = {
	{ "pages", test_pages, { NULL } },
	{ "errors", test_errors, { NULL } },
};

int main(int argc, char **argv)
{
	struct test_ctx ctx = { .backend = -1 };

	test_start(argc, argv, "test_pause");
	ps = (size_t)sysconf(_SC_PAGESIZE);
	dirty = calloc(NPAGES, 8), full = calloc(NPAGES, 8), tmp = calloc(NPAGES, 8);
	carry = calloc(NPAGES, 8);
	if (!dirty || !full || !tmp || !carry)
		return 1;
	RUN_TESTS(plain, &ctx);
	for (int b = 0; b < MCK_BACKEND_COUNT; b++) {
		struct test_ctx pass = { 0 };

		if (backend_pass(&pass, mck_backend_name(b)))
			RUN_TESTS(per_backend, &pass);
	}
	free(dirty), free(full), free(tmp), free(carry);
	return test_finish("test_pause");
}
