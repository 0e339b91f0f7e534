/* tracker_test.c: one test binary per backend, built with
 * -DMCK_TEST_BACKEND='"name"'. Checks a tracker against the pages actually
 * written, through the public header only.
 *
 * Exit 0 = pass, 1 = fail, 77 = skip (the backend is unavailable here; the
 * reason is printed). `test_NAME [seed [test]]` replays a failing seed. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"

#ifndef MCK_TEST_BACKEND
#error "build with -DMCK_TEST_BACKEND='\"backend-name\"'"
#endif

#define NPAGES 8192u /* 32 MiB with 4 KiB pages */
#define NTHREADS 4

/* one tracker for the whole table: each test starts from a collect */
struct fixture {
	struct mck_region region;
	struct mck_tracker *t;
	size_t ps;
	unsigned props;
	uint64_t *out;
	uint8_t *expect; /* pages written since the last collect */
};

/* Change a page's content, so that the compare backend sees every write too. */
static void touch(struct fixture *fx, size_t page, size_t offset_words)
{
	volatile uint64_t *w = (volatile uint64_t *)((uint8_t *)fx->region.addr + page * fx->ps);

	w[offset_words % (fx->ps / 8)] += 1;
}

/* Compare a collect to the pages expected: exact backends must match, the
 * others may over-report but never miss one. */
static void check_collect(struct fixture *fx, const char *what)
{
	int64_t n = mck_tracker_collect(fx->t, fx->out, NPAGES);
	size_t missing = 0, extra = 0, expected = 0;
	static uint8_t seen[NPAGES];

	CHECK(n >= 0, "%s: collect failed: %s", what, strerror((int)-n));
	if (n < 0)
		return;
	memset(seen, 0, sizeof(seen));
	for (int64_t i = 0; i < n; i++) {
		CHECK(fx->out[i] < NPAGES, "%s: index %llu out of range", what,
		      (unsigned long long)fx->out[i]);
		if (i > 0)
			CHECK(fx->out[i] > fx->out[i - 1], "%s: not sorted and unique at %lld",
			      what, (long long)i);
		if (fx->out[i] < NPAGES)
			seen[fx->out[i]] = 1;
	}
	for (size_t p = 0; p < NPAGES; p++) {
		expected += fx->expect[p];
		if (fx->expect[p] && !seen[p])
			missing++;
		if (!fx->expect[p] && seen[p])
			extra++;
	}
	CHECK(missing == 0, "%s: %zu of %zu written pages missing", what, missing, expected);
	if (fx->props & MCK_PROP_EXACT)
		CHECK(extra == 0, "%s: %zu pages reported that were not written", what, extra);
	memset(fx->expect, 0, NPAGES);
}

static void test_untouched_and_rounds(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;

	/* the first round writes pages that were never touched before the
	 * tracker started (not even mapped in by a read) */
	for (int round = 0; round < 40; round++) {
		size_t nwrites = rnd(&rng_state) % (round % 5 == 0 ? NPAGES : 64);

		for (size_t i = 0; i < nwrites; i++) {
			size_t p = rnd(&rng_state) % NPAGES;

			touch(fx, p, i);
			fx->expect[p] = 1;
		}
		check_collect(fx, round == 0 ? "never-touched pages" : "successive collects");
	}
	check_collect(fx, "no write since the last collect");
	/* every page, then the edges */
	for (size_t p = 0; p < NPAGES; p++) {
		touch(fx, p, p);
		fx->expect[p] = 1;
	}
	check_collect(fx, "every page");
	touch(fx, 0, 0);
	touch(fx, NPAGES - 1, 0);
	fx->expect[0] = fx->expect[NPAGES - 1] = 1;
	check_collect(fx, "first and last page");
}

struct writer {
	struct fixture *fx;
	uint64_t seed;
	_Atomic int *stop;
	uint8_t written[NPAGES];
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	size_t i = 0;

	while (!atomic_load(w->stop)) {
		size_t p = rnd(&w->seed) % NPAGES;

		/* record first: a page is "written" once the store may have happened */
		w->written[p] = 1;
		touch(w->fx, p, i++);
		if (i % 4096 == 0)
			usleep(100);
	}
	return NULL;
}

/* Writers run while collect re-arms: the union of the collects must hold
 * every page any thread wrote (and, exact, nothing else). */
static void test_threads(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	static struct writer w[NTHREADS];
	static uint8_t reported[NPAGES];
	_Atomic int stop = 0;
	pthread_t tid[NTHREADS];
	int concurrent = fx->props & MCK_PROP_CONCURRENT;
	size_t missing = 0, extra = 0;

	memset(reported, 0, sizeof(reported));
	for (int i = 0; i < NTHREADS; i++) {
		memset(w[i].written, 0, NPAGES);
		w[i].fx = fx;
		w[i].seed = rnd(&rng_state) | 1;
		w[i].stop = &stop;
		CHECK(pthread_create(&tid[i], NULL, writer_main, &w[i]) == 0, "pthread_create");
	}
	for (int round = 0; round < 30; round++) {
		usleep(2000);
		if (!concurrent)
			continue; /* this backend needs writers quiescent to collect */
		int64_t n = mck_tracker_collect(fx->t, fx->out, NPAGES);

		CHECK(n >= 0, "collect under writers: %s", strerror((int)-n));
		for (int64_t i = 0; i < n; i++)
			reported[fx->out[i]] = 1;
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(tid[i], NULL);
	int64_t n = mck_tracker_collect(fx->t, fx->out, NPAGES);

	CHECK(n >= 0, "collect after writers: %s", strerror((int)-n));
	for (int64_t i = 0; i < n; i++)
		reported[fx->out[i]] = 1;
	for (size_t p = 0; p < NPAGES; p++) {
		int written = 0;

		for (int i = 0; i < NTHREADS; i++)
			written |= w[i].written[p];
		missing += written && !reported[p];
		extra += !written && reported[p];
	}
	CHECK(missing == 0, "threads: %zu written pages never reported", missing);
	if (fx->props & MCK_PROP_EXACT)
		CHECK(extra == 0, "threads: %zu pages reported that no thread wrote", extra);
}

/* The kernel writes into the range on the program's behalf (read(2)). */
static void test_kernel_writes(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	uint8_t *dst = (uint8_t *)fx->region.addr + 10 * fx->ps;
	size_t len = 3 * fx->ps;
	static uint8_t src[3 * 65536];
	int fds[2];
	ssize_t got;

	for (size_t i = 0; i < len; i++)
		src[i] = (uint8_t)(i * 7 + 3);
	CHECK(pipe(fds) == 0, "pipe");
	/* pipe capacity is 64 KiB, three pages fit */
	CHECK(write(fds[1], src, len) == (ssize_t)len, "fill pipe");
	got = read(fds[0], dst, len);
	if (fx->props & MCK_PROP_KERNEL_WRITES) {
		CHECK(got == (ssize_t)len, "read(2) into tracked pages: %s",
		      got < 0 ? strerror(errno) : "short read");
		CHECK(got == (ssize_t)len && !memcmp(dst, src, len), "read(2) data differs");
		fx->expect[10] = fx->expect[11] = fx->expect[12] = 1;
		check_collect(fx, "kernel writes via read(2)");
	} else {
		/* this backend documents that it cannot: the error must be
		 * EFAULT, never a crash or a silent miss */
		CHECK(got < 0 && errno == EFAULT,
		      "read(2) into a page this backend protects should fail with EFAULT, got %zd (%s)",
		      got, strerror(errno));
		check_collect(fx, "after the refused kernel write");
	}
	close(fds[0]);
	close(fds[1]);
}

static const struct test_case tests[] = {
	/* the first writes go to never-touched pages: it comes first */
	{ "untouched_and_rounds", test_untouched_and_rounds, { NULL } },
	{ "threads", test_threads, { NULL } },
	{ "kernel_writes", test_kernel_writes, { NULL } },
};

int main(int argc, char **argv)
{
	struct fixture fx = { 0 };
	struct test_ctx ctx = { .fixture = &fx };
	int rc;

	test_start(argc, argv, "test_" MCK_TEST_BACKEND);
	if (!backend_pass(&ctx, MCK_TEST_BACKEND))
		return test_finish(MCK_TEST_BACKEND);
	fx.ps = (size_t)sysconf(_SC_PAGESIZE);
	fx.props = mck_backend_props(ctx.backend);
	fx.out = calloc(NPAGES, sizeof(*fx.out));
	fx.expect = calloc(NPAGES, 1);
	if (!fx.out || !fx.expect)
		return 1;
	rc = mck_region_create(&fx.region, NPAGES * fx.ps, 0);
	if (rc < 0) {
		printf("FAIL: region: %s\n", strerror(-rc));
		return 1;
	}
	rc = mck_tracker_open(&fx.t, ctx.backend, fx.region.addr, fx.region.len);
	if (rc < 0) {
		printf("FAIL: open %s: %s\n", MCK_TEST_BACKEND, strerror(-rc));
		return 1;
	}
	CHECK(mck_tracker_npages(fx.t) == NPAGES, "npages");
	RUN_TESTS(tests, &ctx);
	CHECK(mck_tracker_close(fx.t) == 0, "close");
	CHECK(mck_region_destroy(&fx.region) == 0, "region destroy");
	free(fx.out);
	free(fx.expect);
	return test_finish(MCK_TEST_BACKEND);
}
