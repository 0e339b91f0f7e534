/* test_populated.c: mck_pages_populated, both ways (PAGEMAP_SCAN and
 * /proc/self/pagemap reads), against what the pages really hold:
 *  - never-touched pages are not listed; written pages are; a page written
 *    then discarded (MADV_DONTNEED) is not; a page only read (the shared zero
 *    page) is not, where PFNs are visible (root);
 *  - a written page swapped out (MADV_PAGEOUT) is listed, where swap exists;
 *  - under each tracker backend: the uffd-wp markers that uffd-async puts on
 *    never-touched pages are not listed (with CAP_SYS_ADMIN), protected
 *    written pages are;
 *  - a huge-page region;
 *  - the one rule that matters, checked in every case: no page that holds a
 *    non-zero byte is ever missing from the list;
 *  - a background full epoch (MCK_BG_POPULATED) snapshots the populated
 *    pages, and every page when no pagemap can be opened (no fd left);
 *  - errors: unaligned, short output, unknown flags.
 *
 * Exit 0 = pass, 1 = fail. `test_populated [seed [test]]` replays a seed. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#define NPAGES 2048u

static size_t ps;
static bool pfns_visible; /* root: pagemap shows frames, markers can be told */
static uint64_t *out;

enum want { ANY = 0, LISTED, NOT_LISTED };

static bool nonzero(const uint8_t *p)
{
	for (size_t i = 0; i < ps; i++)
		if (p[i])
			return true;
	return false;
}

/* List base's pages both ways; check each page against want[] and, if
 * content, against what it holds: read only after both listings, since a
 * read fills a never-touched page with a real one under uffd-sync. */
static void check_list(const char *what, uint8_t *base, size_t npages, const uint8_t *want,
		       bool content)
{
	static uint8_t listed[2][NPAGES * 512];
	int64_t n[2];

	for (int way = 0; way < 2; way++) {
		memset(listed[way], 0, npages);
		n[way] = mck_pages_populated(base, npages * ps, out, npages,
					     way ? MCK_POPULATED_READ : 0);
		CHECK(n[way] >= 0, "%s: way %d: %s", what, way, strerror((int)-n[way]));
		if (n[way] < 0)
			return;
		for (int64_t i = 0; i < n[way]; i++) {
			CHECK(out[i] < npages, "%s: way %d: page %llu out of range", what, way,
			      (unsigned long long)out[i]);
			CHECK(i == 0 || out[i] > out[i - 1], "%s: way %d: not sorted at %lld", what,
			      way, (long long)i);
			if (out[i] < npages)
				listed[way][out[i]] = 1;
		}
	}
	for (int way = 0; way < 2; way++) {
		int bad = 0;

		for (size_t p = 0; p < npages && bad < 5; p++) {
			bool ok = true;

			if (content && nonzero(base + p * ps))
				CHECK(ok = listed[way][p], "%s: way %d: page %zu holds data, not listed",
				      what, way, p);
			if (want[p] == LISTED)
				CHECK(ok = listed[way][p], "%s: way %d: page %zu not listed", what, way, p);
			if (want[p] == NOT_LISTED)
				CHECK(ok = !listed[way][p], "%s: way %d: page %zu listed", what, way, p);
			bad += !ok;
		}
	}
}

static uint8_t want[NPAGES * 512];

/* Plain memory: untouched, written, read-only, written then discarded. */
static void test_plain(struct test_ctx *ctx)
{
	(void)ctx;
	struct mck_region r;
	uint8_t *base;
	volatile uint8_t sink = 0;

	CHECK(mck_region_create(&r, NPAGES * ps, 0) == 0, "region");
	base = r.addr;
	memset(want, NOT_LISTED, NPAGES);
	check_list("untouched", base, NPAGES, want, true);
	for (int i = 0; i < 200; i++) {
		size_t p = rnd(&rng_state) % NPAGES;

		base[p * ps + rnd(&rng_state) % ps] = (uint8_t)(1 + rnd(&rng_state) % 255);
		want[p] = LISTED;
	}
	for (int i = 0; i < 200; i++) {
		size_t p = rnd(&rng_state) % NPAGES;

		if (want[p] == LISTED)
			continue;
		sink += base[p * ps]; /* the shared zero page */
		want[p] = pfns_visible ? NOT_LISTED : ANY;
	}
	check_list("written and read", base, NPAGES, want, true);
	for (size_t p = 0; p < NPAGES; p++) {
		if (want[p] == LISTED && rnd(&rng_state) % 3 == 0) {
			CHECK(mck_region_discard(&r, p * ps, ps) == 0, "discard");
			want[p] = NOT_LISTED;
		}
	}
	check_list("discarded", base, NPAGES, want, true);
	/* a page written with zeros is present: a candidate, read as zero */
	base[5 * ps] = 0;
	want[5] = LISTED;
	check_list("written zero", base, NPAGES, want, true);
	(void)sink;
	mck_region_destroy(&r);
}

static bool have_swap(void)
{
	FILE *f = fopen("/proc/swaps", "re");
	char line[256];
	int lines = 0;

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		lines++;
	fclose(f);
	return lines > 1; /* the header, then one line per device */
}

static const char *need_swap(const struct test_ctx *ctx)
{
	(void)ctx;
	return have_swap() ? NULL : "no swap device here (/proc/swaps): MADV_PAGEOUT cannot swap";
}

static void test_swapped(struct test_ctx *ctx)
{
	struct mck_region r;
	uint8_t *base;
	uint64_t e = 0;
	FILE *pm;

	(void)ctx;
	CHECK(mck_region_create(&r, 64 * ps, 0) == 0, "region");
	base = r.addr;
	memset(want, NOT_LISTED, 64);
	for (size_t p = 0; p < 64; p += 4) {
		memset(base + p * ps, 0x5a, ps);
		want[p] = LISTED;
	}
	CHECK(madvise(base, 64 * ps, MADV_PAGEOUT) == 0, "MADV_PAGEOUT: %s", strerror(errno));
	pm = fopen("/proc/self/pagemap", "re");
	if (pm && fseek(pm, (long)((uintptr_t)base / ps * 8), SEEK_SET) == 0 &&
	    fread(&e, 8, 1, pm) == 1)
		printf("# page 0 after MADV_PAGEOUT: %s\n", e >> 62 & 1 ? "swapped" : "still present");
	if (pm)
		fclose(pm);
	/* listed both before any read brings it back: the check reads the
	 * content only after listing */
	check_list("swapped", base, 64, want, true);
	mck_region_destroy(&r);
}

/* Under each backend (a pass): what its protection leaves in the page tables. */
static void test_tracked(struct test_ctx *ctx)
{
	int b = ctx->backend;
	char what[64];
	struct mck_region r;
	struct mck_tracker *t;
	uint8_t *base;
	volatile uint8_t sink = 0;

	CHECK(mck_region_create(&r, NPAGES * ps, 0) == 0, "region");
	base = r.addr;
	memset(want, NOT_LISTED, NPAGES);
	base[3 * ps] = 1; /* before the tracker: a present page it protects */
	want[3] = LISTED;
	if (mck_tracker_open(&t, b, base, NPAGES * ps) < 0) {
		CHECK(0, "%s: open", mck_backend_name(b));
		mck_region_destroy(&r);
		return;
	}
	snprintf(what, sizeof(what), "%s, opened", mck_backend_name(b));
	/* uffd-async's markers are told from swap only with PFNs */
	if (!pfns_visible)
		memset(want + 4, ANY, NPAGES - 4);
	check_list(what, base, NPAGES, want, false);
	for (size_t p = 10; p < NPAGES; p += 97) {
		base[p * ps + 1] = 7;
		want[p] = LISTED;
	}
	sink += base[9 * ps]; /* uffd-sync fills a real page: either is fine */
	want[9] = ANY;
	CHECK(mck_tracker_collect(t, out, NPAGES) >= 0, "%s: collect", mck_backend_name(b));
	snprintf(what, sizeof(what), "%s, written", mck_backend_name(b));
	check_list(what, base, NPAGES, want, true);
	CHECK(mck_tracker_close(t) == 0, "%s: close", mck_backend_name(b));
	mck_region_destroy(&r);
	(void)sink;
}

static void test_huge(struct test_ctx *ctx)
{
	(void)ctx;
	struct mck_region r;
	size_t n = 2 * (2u << 20) / ps;

	CHECK(mck_region_create(&r, n * ps, MCK_REGION_HUGEPAGES) == 0, "huge region");
	/* the second 2 MiB may be one huge page, listed whole; the first is
	 * never touched */
	memset(want, NOT_LISTED, n / 2);
	memset(want + n / 2, ANY, n / 2);
	((uint8_t *)r.addr)[ps * 700] = 1;
	want[700] = LISTED;
	check_list("huge", r.addr, n, want, true);
	mck_region_destroy(&r);
}

/* MCK_BG_POPULATED over uffd-sync: D is the populated pages, the dirty ones
 * and the extra ones; with no fd to open pagemap with, every page. */
static void test_bg_populated(struct test_ctx *ctx)
{
	int b = ctx->backend;
	struct mck_region r;
	struct mck_tracker *t;
	struct rlimit old, low;
	static uint8_t staging[64 * 65536];
	uint64_t extra[] = { 40 };
	uint8_t *base;
	int64_t n;
	int fd;

	if (64 * ps > sizeof(staging)) {
		printf("# %zu-byte pages: the background case is not run\n", ps);
		return;
	}
	CHECK(mck_region_create(&r, 64 * ps, 0) == 0, "region");
	base = r.addr;
	base[2 * ps] = 1; /* populated before the tracker, not dirty */
	if (mck_tracker_open(&t, b, base, 64 * ps) < 0) {
		CHECK(0, "uffd-sync open");
		mck_region_destroy(&r);
		return;
	}
	base[9 * ps] = 2; /* dirty */
	n = mck_bg_begin_ex(t, out, 64, staging, 64, MCK_BG_GAP_AUTO, MCK_BG_POPULATED, extra, 1,
			    NULL);
	CHECK(n == 3 && out[0] == 2 && out[1] == 9 && out[2] == 40, "populated D: %lld pages",
	      (long long)n);
	CHECK(mck_bg_wait(t, NULL) == 0, "bg_wait");
	CHECK(n == 3 && staging[0] == 1 && staging[ps] == 2, "staged content");
	/* the lowest free fd becomes the limit: every open fails with EMFILE */
	fd = dup(0);
	getrlimit(RLIMIT_NOFILE, &old);
	low = old;
	low.rlim_cur = fd >= 0 ? (rlim_t)fd : 0;
	if (fd >= 0)
		close(fd);
	CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit");
	CHECK(mck_pages_populated(base, 64 * ps, out, 64, 0) == -EMFILE, "no fd: -EMFILE");
	n = mck_bg_begin_ex(t, out, 64, staging, 64, MCK_BG_GAP_AUTO, MCK_BG_POPULATED, NULL, 0,
			    NULL);
	setrlimit(RLIMIT_NOFILE, &old);
	CHECK(n == 64 && out[63] == 63, "no pagemap: every page, got %lld", (long long)n);
	CHECK(mck_bg_wait(t, NULL) == 0, "bg_wait");
	CHECK(staging[2 * ps] == 1 && staging[9 * ps] == 2, "staged content, every page");
	/* nothing written since: an empty collect, exact as ever */
	CHECK(mck_tracker_collect(t, out, 64) == 0, "collect after");
	CHECK(mck_tracker_close(t) == 0, "close");
	mck_region_destroy(&r);
}

static void test_errors(struct test_ctx *ctx)
{
	(void)ctx;
	struct mck_region r;

	CHECK(mck_region_create(&r, 16 * ps, 0) == 0, "region");
	memset(r.addr, 1, 4 * ps);
	CHECK(mck_pages_populated((uint8_t *)r.addr + 1, ps, out, 16, 0) == -EINVAL, "unaligned addr");
	CHECK(mck_pages_populated(r.addr, ps + 1, out, 16, 0) == -EINVAL, "unaligned length");
	CHECK(mck_pages_populated(r.addr, 16 * ps, out, 16, 1u << 7) == -EINVAL, "unknown flag");
	CHECK(mck_pages_populated(r.addr, 16 * ps, NULL, 16, 0) == -EINVAL, "no output");
	for (int way = 0; way < 2; way++) {
		unsigned f = way ? MCK_POPULATED_READ : 0;

		CHECK(mck_pages_populated(r.addr, 16 * ps, out, 3, f) == -ENOBUFS, "short, way %d", way);
		CHECK(mck_pages_populated(r.addr, 16 * ps, out, 4, f) == 4, "exact, way %d", way);
		CHECK(mck_pages_populated(r.addr, 0, out, 0, f) == 0, "empty, way %d", way);
	}
	mck_region_destroy(&r);
}

static const struct test_case tests[] = {
	{ "plain", test_plain, { NULL } },
	{ "swapped", test_swapped, { need_swap } },
	{ "huge", test_huge, { NULL } },
	{ "bg_populated", test_bg_populated, { need_bg } },
	{ "errors", test_errors, { NULL } },
};

/* run once per backend available here */
static const struct test_case per_backend[] = {
	{ "tracked", test_tracked, { NULL } },
};

int main(int argc, char **argv)
{
	struct mck_region probe;
	struct test_ctx ctx = { .backend = mck_backend_lookup("uffd-sync") };

	test_start(argc, argv, "test_populated");
	ps = (size_t)sysconf(_SC_PAGESIZE);
	out = calloc(NPAGES * 512, sizeof(*out));
	if (!out)
		return 1;
	/* frames are visible if a written page's entry shows one */
	if (mck_region_create(&probe, ps, 0) == 0) {
		FILE *pm = fopen("/proc/self/pagemap", "re");
		uint64_t e = 0;

		*(volatile uint8_t *)probe.addr = 1;
		if (pm && fseek(pm, (long)((uintptr_t)probe.addr / ps * 8), SEEK_SET) == 0 &&
		    fread(&e, 8, 1, pm) == 1)
			pfns_visible = (e & ((1ULL << 55) - 1)) != 0;
		if (pm)
			fclose(pm);
		mck_region_destroy(&probe);
	}
	printf("# page frames %s\n", pfns_visible ? "visible" : "hidden (not root)");
	RUN_TESTS(tests, &ctx);
	for (int b = 0; b < MCK_BACKEND_COUNT; b++) {
		struct test_ctx pass = { 0 };

		if (backend_pass(&pass, mck_backend_name(b)))
			RUN_TESTS(per_backend, &pass);
	}
	free(out);
	return test_finish("test_populated");
}
