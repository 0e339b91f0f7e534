/* test_bg.c: background (copy-before-write) capture over a uffd-sync tracker.
 *  - snapshot under writers: threads keep writing while the instant is taken
 *    and while the copy runs; each writer's writes are numbered and logged,
 *    and the staged pages must equal, bit for bit, the arena reconstructed at
 *    one cut of every writer's log (the instant), every write before the cut
 *    must be in D, and every write after it in the next collect;
 *  - a kernel write (read(2)) into a page awaiting its copy;
 *  - close while the copy runs and writers wait on it;
 *  - errors: another backend, a copy already pending, no copy, short staging;
 *  - 1,000 cycles, and 50 trackers with a copier each, without fd or thread leaks.
 *
 * Exit 0 = pass, 1 = fail, 77 = uffd-sync unavailable (reason printed).
 * `test_bg [seed [test]]` replays a seed. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"
#include "helpers.h"

#define NPAGES 16384u /* 64 MiB with 4 KiB pages: a copy long enough to race */
#define NWRITERS 3
#define LOG_CAP (4u << 20)
#define CYCLES 12

static size_t ps;

static uint8_t *base;

static uint8_t *page_at(size_t p)
{
	return base + p * ps;
}

/* ---- snapshot under writers -------------------------------------------------- */

struct writer {
	int id;
	uint64_t seed;
	_Atomic int *stop;
	uint32_t *log; /* log[k - 1]: the page of this writer's write number k */
	_Atomic uint64_t count;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint64_t k = 0;

	while (!atomic_load_explicit(w->stop, memory_order_relaxed) && k < LOG_CAP) {
		/* half the writes in the first quarter: pages D holds again and
		 * again, so many writes meet a page awaiting its copy */
		uint64_t r = rnd(&w->seed);
		size_t p = (r & 1) ? (r >> 1) % (NPAGES / 4) : (r >> 1) % NPAGES;

		w->log[k] = (uint32_t)p;
		k++;
		/* one store of the write's number into this writer's word */
		((volatile uint64_t *)page_at(p))[w->id] = k;
		atomic_store_explicit(&w->count, k, memory_order_release);
	}
	return NULL;
}

static void test_snapshot_under_writers(struct test_ctx *ctx)
{
	int backend = ctx->backend;
	static struct writer w[NWRITERS];
	pthread_t tid[NWRITERS];
	_Atomic int stop = 0;
	struct tracked x;
	struct mck_tracker *t;
	uint64_t *pages = calloc(NPAGES, sizeof(*pages)), *next = calloc(NPAGES, sizeof(*next));
	uint8_t *staging = malloc((size_t)NPAGES * ps), *expect = calloc(1, ps);
	uint64_t *cut_prev = calloc(NWRITERS, sizeof(uint64_t));
	uint64_t (*model)[NWRITERS] = calloc(NPAGES, sizeof(*model)); /* arena at the last cut */
	uint8_t *in_d = calloc(NPAGES, 1), *in_next = calloc(NPAGES, 1);
	uint64_t waited = 0, early = 0, staged_pages = 0, maxcopy = 0;
	int64_t n;

	if (!pages || !next || !staging || !expect || !cut_prev || !model || !in_d || !in_next) {
		CHECK(0, "out of memory");
		return;
	}
	if (tracked_open(&x, backend, NPAGES) < 0) {
		CHECK(0, "setup");
		return;
	}
	t = x.t;
	base = x.region.addr;
	for (int i = 0; i < NWRITERS; i++) {
		w[i].id = i;
		w[i].seed = rnd(&rng_state) | 1;
		w[i].stop = &stop;
		w[i].log = malloc(LOG_CAP * sizeof(uint32_t));
		atomic_store(&w[i].count, 0);
		if (!w[i].log || pthread_create(&tid[i], NULL, writer_main, &w[i])) {
			CHECK(0, "writer");
			return;
		}
	}
	alarm(240); /* a writer left asleep would hang the test (a guest under TCG on a
		     * loaded host copies 64 MiB in up to 11 s: 12 cycles need room) */
	for (int c = 0; c < CYCLES; c++) {
		struct mck_bg_stats st;
		uint64_t cut[NWRITERS];
		size_t differ = 0;

		usleep(c % 3 == 0 ? 30000 : 3000);
		if (c % 3 == 2) {
			/* a pre-arm while the writers run, then more writes */
			int64_t pre = mck_bg_prearm(t, MCK_BG_GAP_AUTO);

			CHECK(pre >= 0, "cycle %d: prearm: %s", c, strerror((int)-pre));
			usleep(3000);
		}
		/* cycles 1, 5, 9 snapshot every page (a full epoch); 3, 7, 11
		 * protect D with one ioctl over its span */
		n = mck_bg_begin(t, pages, NPAGES, staging, NPAGES,
				 c % 4 == 3 ? MCK_BG_GAP_SPAN : MCK_BG_GAP_AUTO,
				 c % 4 == 1 ? MCK_BG_ALL_PAGES : 0, NULL);
		CHECK(n >= 0, "cycle %d: bg_begin: %s", c, strerror((int)-n));
		if (n < 0)
			break;
		int rc = mck_bg_wait(t, &st);

		CHECK(rc == 0, "cycle %d: bg_wait: %s", c, strerror(-rc));
		waited += st.faults_waited;
		early += st.copied_early;
		staged_pages += (uint64_t)n;
		maxcopy = st.copy_ns > maxcopy ? st.copy_ns : maxcopy;
		memset(in_d, 0, NPAGES);
		for (int64_t i = 0; i < n; i++)
			in_d[pages[i]] = 1;
		/* each writer's cut: the newest of its writes that staging holds
		 * (a write before the instant is in D, whose copy holds it), or
		 * the last cut if it wrote nothing since (its log may be full) */
		memcpy(cut, cut_prev, sizeof(cut));
		for (int64_t i = 0; i < n; i++)
			for (int j = 0; j < NWRITERS; j++) {
				uint64_t v = ((uint64_t *)(staging + (size_t)i * ps))[j];

				cut[j] = v > cut[j] ? v : cut[j];
			}
		/* every write between the last cut and this one is to a page of D
		 * (else the tracker lost it, or the cut includes a write made
		 * after the instant to a page it had not protected yet) */
		for (int j = 0; j < NWRITERS; j++) {
			size_t outside = 0;

			for (uint64_t k = cut_prev[j] + 1; k <= cut[j]; k++) {
				outside += !in_d[w[j].log[k - 1]];
				model[w[j].log[k - 1]][j] = k;
			}
			CHECK(outside == 0, "cycle %d: writer %d: %zu writes before the instant outside D",
			      c, j, outside);
			cut_prev[j] = cut[j];
		}
		/* the staged pages equal the arena at the cut, bit for bit */
		for (int64_t i = 0; i < n; i++) {
			memset(expect, 0, ps);
			memcpy(expect, model[pages[i]], sizeof(model[0]));
			differ += memcmp(expect, staging + (size_t)i * ps, ps) != 0;
		}
		CHECK(differ == 0, "cycle %d: %zu of %lld staged pages differ from the arena at the instant",
		      c, differ, (long long)n);
		/* the writes after the cut belong to the next epoch: the next
		 * cycle's "outside D" check holds them to its D, and after the
		 * last cycle a collect with the writers stopped does */
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < NWRITERS; i++)
		pthread_join(tid[i], NULL);
	/* writers stopped: the final collect holds every write after the last cut */
	n = mck_tracker_collect(t, next, NPAGES);
	CHECK(n >= 0, "final collect");
	memset(in_next, 0, NPAGES);
	for (int64_t i = 0; i < n; i++)
		in_next[next[i]] = 1;
	{
		size_t lost = 0, differ = 0;

		for (int j = 0; j < NWRITERS; j++) {
			uint64_t end = atomic_load(&w[j].count);

			for (uint64_t k = cut_prev[j] + 1; k <= end; k++) {
				lost += !in_next[w[j].log[k - 1]];
				model[w[j].log[k - 1]][j] = k;
			}
		}
		for (size_t p = 0; p < NPAGES; p++) {
			memset(expect, 0, ps);
			memcpy(expect, model[p], sizeof(model[0]));
			differ += memcmp(expect, page_at(p), ps) != 0;
		}
		CHECK(lost == 0, "%zu writes after the last instant missing from the next collect", lost);
		CHECK(differ == 0, "%zu pages of the arena differ from the writers' logs", differ);
	}
	CHECK(waited > 0, "no write waited for a copy in %d cycles: the test did not race", CYCLES);
	printf("# snapshot under writers: %d cycles, %llu pages staged, %llu writes, "
	       "%llu writes waited for a copy (%llu pages copied early), longest copy %.1f ms\n",
	       CYCLES, (unsigned long long)staged_pages,
	       (unsigned long long)(atomic_load(&w[0].count) + atomic_load(&w[1].count) +
				    atomic_load(&w[2].count)),
	       (unsigned long long)waited, (unsigned long long)early, maxcopy / 1e6);
	alarm(0);
	tracked_close(&x);
	for (int i = 0; i < NWRITERS; i++)
		free(w[i].log);
	free(pages);
	free(next);
	free(staging);
	free(expect);
	free(cut_prev);
	free(model);
	free(in_d);
	free(in_next);
}

/* ---- a kernel write into a page awaiting its copy ------------------------------ */

static uint64_t ns_between(const struct timespec *a, const struct timespec *b)
{
	return (uint64_t)((b->tv_sec - a->tv_sec) * 1000000000LL + (b->tv_nsec - a->tv_nsec));
}

/* D = every page, each filled with its number; read(2) then writes into the
 * last page, which the copier reaches last: the syscall must wait for the
 * copy, staging must hold the old bytes, the arena the new ones. */
static void test_kernel_write(struct test_ctx *ctx)
{
	int backend = ctx->backend;
	struct tracked x;
	struct mck_tracker *t;
	uint64_t *pages = calloc(NPAGES, sizeof(*pages));
	uint8_t *staging = malloc((size_t)NPAGES * ps), *src = malloc(ps);
	struct mck_bg_stats st;
	size_t last = NPAGES - 1, differ = 0;
	struct timespec t0, t1;
	int64_t n;
	bool raced;

	if (!pages || !staging || !src || tracked_open(&x, backend, NPAGES) < 0) {
		CHECK(0, "setup");
		return;
	}
	t = x.t;
	base = x.region.addr;
	for (size_t p = 0; p < NPAGES; p++)
		memset(page_at(p), (int)(p % 251) + 1, ps);
	memset(src, 0xEE, ps);
	alarm(20);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	n = mck_bg_begin(t, pages, NPAGES, staging, NPAGES, MCK_BG_GAP_AUTO, 0, NULL);
	CHECK(n == NPAGES, "bg_begin: %lld", (long long)n);
	ssize_t got = pipe_into(page_at(last), src, ps);

	clock_gettime(CLOCK_MONOTONIC, &t1);
	CHECK(got == (ssize_t)ps, "read(2) into a page awaiting its copy: %s",
	      got < 0 ? strerror(errno) : "short");
	CHECK(mck_bg_wait(t, &st) == 0, "bg_wait");
	alarm(0);
	/* The copy ended (its last page, the written one, copied) at the instant
	 * plus copy_ns, and the instant is after t0: a read(2) over by then made
	 * its write before that page's copy, so it must have waited. A read held
	 * back longer than the whole copy (a loaded machine) raced nothing. */
	raced = ns_between(&t0, &t1) < st.copy_ns;
	for (size_t p = 0; p < NPAGES; p++)
		for (size_t b = 0; b < ps; b++)
			differ += staging[p * ps + b] != (uint8_t)(p % 251 + 1);
	CHECK(differ == 0, "%zu staged bytes differ (the kernel's write leaked into the copy?)", differ);
	CHECK(!memcmp(page_at(last), src, ps), "the kernel's write is not in the arena");
	n = mck_tracker_collect(t, pages, NPAGES);
	CHECK(n == 1 && pages[0] == last, "the next collect should hold the kernel-written page only: %lld",
	      (long long)n);
	if (raced || st.faults_waited) {
		CHECK(st.faults_waited >= 1, "the kernel write did not wait (copy %.1f ms, read(2) over "
		      "%.1f ms after bg_begin began)", st.copy_ns / 1e6, ns_between(&t0, &t1) / 1e6);
		printf("# kernel write: waited for its copy (%llu fault(s) waited, copy %.1f ms)\n",
		       (unsigned long long)st.faults_waited, st.copy_ns / 1e6);
	} else {
		printf("# NOTE kernel write: read(2) over %.1f ms after bg_begin began, the copy in "
		       "%.1f ms: it came after the copy, its wait not checked\n",
		       ns_between(&t0, &t1) / 1e6, st.copy_ns / 1e6);
	}
	tracked_close(&x);
	free(pages);
	free(staging);
	free(src);
}

/* ---- close while the copy runs -------------------------------------------------- */

struct closer_writer {
	_Atomic int *go, *stop;
	uint64_t seed;
};

static void *closer_writer_main(void *arg)
{
	struct closer_writer *cw = arg;

	while (!atomic_load(cw->go))
		;
	while (!atomic_load_explicit(cw->stop, memory_order_relaxed))
		page_at(rnd(&cw->seed) % NPAGES)[ps - 1] = 0xAB;
	return NULL;
}

static void test_close_mid_copy(struct test_ctx *ctx)
{
	int backend = ctx->backend;
	struct mck_region region;
	struct mck_tracker *t = NULL;
	uint64_t *pages = calloc(NPAGES, sizeof(*pages));
	uint8_t *staging = malloc((size_t)NPAGES * ps);
	struct closer_writer cw[NWRITERS];
	pthread_t tid[NWRITERS];
	_Atomic int go = 0, stop = 0;
	size_t differ = 0;
	int64_t n;

	if (!pages || !staging || mck_region_create(&region, (size_t)NPAGES * ps, 0) < 0 ||
	    mck_tracker_open(&t, backend, region.addr, region.len) < 0) {
		CHECK(0, "setup");
		return;
	}
	base = region.addr;
	for (size_t p = 0; p < NPAGES; p++)
		memset(page_at(p), (int)(p % 199) + 1, ps);
	for (int i = 0; i < NWRITERS; i++) {
		cw[i] = (struct closer_writer){ .go = &go, .stop = &stop, .seed = rnd(&rng_state) | 1 };
		pthread_create(&tid[i], NULL, closer_writer_main, &cw[i]);
	}
	alarm(20);
	n = mck_bg_begin(t, pages, NPAGES, staging, NPAGES, MCK_BG_GAP_AUTO, 0, NULL);
	CHECK(n == NPAGES, "bg_begin: %lld", (long long)n);
	atomic_store(&go, 1);
	usleep(200);
	/* close finishes the copy, releasing the waiting writers, then
	 * unregisters: nobody may hang, and staging is still the snapshot */
	CHECK(mck_tracker_close(t) == 0, "close mid-copy");
	usleep(2000);
	atomic_store(&stop, 1);
	for (int i = 0; i < NWRITERS; i++)
		pthread_join(tid[i], NULL);
	alarm(0);
	for (size_t p = 0; p < NPAGES; p++)
		for (size_t b = 0; b < ps; b++)
			differ += staging[p * ps + b] != (uint8_t)(p % 199 + 1);
	CHECK(differ == 0, "close mid-copy: %zu staged bytes differ from the instant", differ);
	printf("# close mid-copy: copy finished by close, writers released, staging intact\n");
	mck_region_destroy(&region);
	free(pages);
	free(staging);
}

/* ---- errors ---------------------------------------------------------------------- */

static void test_errors(struct test_ctx *ctx)
{
	int backend = ctx->backend;
	struct mck_region region;
	struct mck_tracker *t = NULL, *other = NULL;
	uint64_t *pages = calloc(NPAGES, sizeof(*pages));
	uint8_t *staging = malloc(4 * ps);
	char reason[512];
	int64_t n;

	if (!pages || !staging || mck_region_create(&region, (size_t)NPAGES * ps, 0) < 0) {
		CHECK(0, "setup");
		return;
	}
	base = region.addr;
	/* another backend: refused, with a reason that names the way out */
	if (mck_tracker_open(&other, mck_backend_lookup("mprotect"), region.addr, region.len) == 0) {
		n = mck_bg_begin(other, pages, NPAGES, staging, 4, MCK_BG_GAP_AUTO, 0, NULL);
		CHECK(n == -EOPNOTSUPP, "bg_begin on mprotect: %lld", (long long)n);
		CHECK(mck_bg_wait(other, NULL) == -EOPNOTSUPP, "bg_wait on mprotect");
		mck_tracker_close(other);
	}
	CHECK(mck_bg_supported(mck_backend_lookup("uffd-async"), reason, sizeof(reason)) == 0 &&
	      strstr(reason, "\"copy\""), "uffd-async: %s", reason);
	CHECK(mck_bg_supported(backend, reason, sizeof(reason)) == 1, "uffd-sync: %s", reason);
	if (mck_tracker_open(&t, backend, region.addr, region.len) < 0) {
		CHECK(0, "open");
		return;
	}
	CHECK(mck_bg_wait(t, NULL) == -EINVAL, "bg_wait with no copy started");
	for (size_t p = 0; p < 6; p++)
		page_at(p * 3)[0] = 1;
	n = mck_bg_begin(t, pages, NPAGES, staging, 4, MCK_BG_GAP_AUTO, 0, NULL);
	CHECK(n == -ENOBUFS, "6 dirty pages into 4 pages of staging: %lld", (long long)n);
	n = mck_bg_begin(t, pages, NPAGES / 2, staging, 4, MCK_BG_GAP_AUTO, 0, NULL);
	CHECK(n == -ENOBUFS, "cap below the page count: %lld", (long long)n);
	n = mck_bg_begin(t, pages, NPAGES, staging, 4, MCK_BG_GAP_AUTO, MCK_BG_ALL_PAGES, NULL);
	CHECK(n == -ENOBUFS, "every page into 4 pages of staging: %lld", (long long)n);
	n = mck_bg_begin(t, pages, NPAGES, staging, 4, MCK_BG_GAP_AUTO, 1u << 5, NULL);
	CHECK(n == -EINVAL, "an unknown flag: %lld", (long long)n);
	/* nothing lost: the pages are still dirty */
	page_at(1)[0] = 1;
	n = mck_bg_begin(t, pages, NPAGES, staging, 0, MCK_BG_GAP_AUTO, 0, NULL);
	CHECK(n == -ENOBUFS, "7 into 0: %lld", (long long)n);
	n = mck_tracker_collect(t, pages, NPAGES);
	CHECK(n == 7, "after -ENOBUFS the dirty pages must still be reported: %lld", (long long)n);
	page_at(2)[0] = 1;
	n = mck_bg_begin(t, pages, NPAGES, staging, 4, MCK_BG_GAP_AUTO, 0, NULL);
	CHECK(n == 1, "bg_begin: %lld", (long long)n);
	CHECK(mck_bg_begin(t, pages, NPAGES, staging, 4, MCK_BG_GAP_AUTO, 0, NULL) == -EBUSY,
	      "a second bg_begin before bg_wait");
	CHECK(mck_bg_wait(t, NULL) == 0, "bg_wait");
	CHECK(mck_bg_wait(t, NULL) == -EINVAL, "bg_wait twice");
	CHECK(staging[0] == 1, "staged page 2");
	mck_tracker_close(t);
	mck_region_destroy(&region);
	free(pages);
	free(staging);
}

/* ---- pre-arm: the pages written before it need no protect in the pause ------------ */

static void test_prearm(struct test_ctx *ctx)
{
	int backend = ctx->backend;
	struct mck_region region;
	struct mck_tracker *t = NULL, *other = NULL;
	uint64_t *pages = calloc(NPAGES, sizeof(*pages));
	uint8_t *staging = malloc(NPAGES * ps);
	struct mck_bg_stats st;
	int64_t n;

	if (!pages || !staging || mck_region_create(&region, (size_t)NPAGES * ps, 0) < 0) {
		CHECK(0, "setup");
		return;
	}
	base = region.addr;
	if (mck_tracker_open(&other, mck_backend_lookup("mprotect"), region.addr, region.len) == 0) {
		CHECK(mck_bg_prearm(other, MCK_BG_GAP_AUTO) == -EOPNOTSUPP, "prearm on mprotect");
		mck_tracker_close(other);
	}
	if (mck_tracker_open(&t, backend, region.addr, region.len) < 0) {
		CHECK(0, "open");
		return;
	}
	/* A = 0..99 written, pre-armed; then B = 50..149 written */
	for (size_t p = 0; p < 100; p++)
		page_at(p)[0] = 1;
	n = mck_bg_prearm(t, MCK_BG_GAP_RUNS);
	CHECK(n == 100, "prearm of 100 written pages: %lld", (long long)n);
	CHECK(mck_bg_prearm(t, MCK_BG_GAP_RUNS) == 0, "a second prearm has nothing to protect");
	for (size_t p = 50; p < 150; p++)
		page_at(p)[1] = 2;
	n = mck_bg_begin(t, pages, NPAGES, staging, NPAGES, MCK_BG_GAP_RUNS, 0, &st);
	CHECK(n == 150 && pages[0] == 0 && pages[149] == 149, "D after a prearm: %lld", (long long)n);
	CHECK(st.prearmed == 50 && st.protect_pages == 100 && st.protect_calls == 1,
	      "the pause should protect pages 50..149 only: prearmed %llu, %llu pages in %llu ioctls",
	      (unsigned long long)st.prearmed, (unsigned long long)st.protect_pages,
	      (unsigned long long)st.protect_calls);
	/* a pre-armed page written during the copy still waits for its copy */
	page_at(10)[2] = 3;
	page_at(120)[2] = 3;
	CHECK(mck_bg_wait(t, &st) == 0, "bg_wait");
	for (size_t p = 0; p < 150; p++) {
		uint8_t *g = staging + p * ps;

		CHECK(g[0] == (p < 100) && g[1] == (p >= 50 ? 2 : 0) && g[2] == 0,
		      "staged page %zu: %d %d %d", p, g[0], g[1], g[2]);
	}
	n = mck_tracker_collect(t, pages, NPAGES);
	CHECK(n == 2 && pages[0] == 10 && pages[1] == 120, "after the copy: %lld", (long long)n);
	/* and a plain collect reports pre-armed pages too */
	page_at(7)[0] = 9;
	CHECK(mck_bg_prearm(t, MCK_BG_GAP_AUTO) == 1, "prearm of page 7");
	page_at(7)[0] = 10; /* faults again: writable, dirty */
	page_at(8)[0] = 9;
	CHECK(mck_bg_prearm(t, MCK_BG_GAP_AUTO) == 2, "prearm of pages 7, 8");
	n = mck_tracker_collect(t, pages, NPAGES);
	CHECK(n == 2 && pages[0] == 7 && pages[1] == 8, "collect after prearms: %lld", (long long)n);
	page_at(8)[0] = 11;
	n = mck_tracker_collect(t, pages, NPAGES);
	CHECK(n == 1 && pages[0] == 8, "a pre-armed page written after the collect: %lld", (long long)n);
	printf("# prearm: the pause protects only the pages written after it\n");
	mck_tracker_close(t);
	mck_region_destroy(&region);
	free(pages);
	free(staging);
}

/* ---- leaks ------------------------------------------------------------------------ */

static void test_leaks(struct test_ctx *ctx)
{
	int backend = ctx->backend;
	struct mck_region region;
	struct mck_tracker *t = NULL;
	uint64_t *pages = calloc(NPAGES, sizeof(*pages));
	uint8_t *staging = malloc(64 * ps);
	int fds = count_dir("/proc/self/fd"), tasks = settled_tasks(1), during = 0;
	size_t bad = 0;

	if (!pages || !staging || mck_region_create(&region, (size_t)NPAGES * ps, 0) < 0 ||
	    mck_tracker_open(&t, backend, region.addr, region.len) < 0) {
		CHECK(0, "setup");
		return;
	}
	base = region.addr;
	for (int c = 0; c < 1000; c++) {
		for (int k = 0; k < 8; k++)
			page_at((size_t)(c * 8 + k) % NPAGES)[0] = (uint8_t)c;
		int64_t n = mck_bg_begin(t, pages, NPAGES, staging, 64, MCK_BG_GAP_AUTO, 0, NULL);

		if (n != 8 || mck_bg_wait(t, NULL) != 0) {
			CHECK(0, "cycle %d: %lld", c, (long long)n);
			break;
		}
		for (int k = 0; k < 8; k++)
			bad += staging[(size_t)k * ps] != (uint8_t)c;
		if (c == 0)
			during = count_dir("/proc/self/task");
	}
	CHECK(bad == 0, "%zu staged pages wrong over 1,000 cycles", bad);
	CHECK(during == tasks + 2, "expected a handler and a copier thread: %d tasks, %d before", during, tasks);
	CHECK(count_dir("/proc/self/task") == during, "threads grew over 1,000 cycles: %d, %d after the first",
	      count_dir("/proc/self/task"), during);
	mck_tracker_close(t);
	/* trackers closed with a copier parked, and with one never started */
	for (int i = 0; i < 50; i++) {
		if (mck_tracker_open(&t, backend, region.addr, region.len) < 0) {
			CHECK(0, "open %d", i);
			break;
		}
		page_at((size_t)i)[0] = 1;
		if (i % 2 && mck_bg_begin(t, pages, NPAGES, staging, 64, MCK_BG_GAP_AUTO, 0, NULL) >= 0 && i % 4 == 1)
			mck_bg_wait(t, NULL); /* the others are closed with the copy unwaited */
		mck_tracker_close(t);
	}
	CHECK(count_dir("/proc/self/fd") == fds, "fds leaked: %d before, %d after", fds,
	      count_dir("/proc/self/fd"));
	CHECK(settled_tasks(tasks) == tasks, "threads leaked: %d before, %d after", tasks,
	      count_dir("/proc/self/task"));
	printf("# leaks: 1,000 cycles and 50 trackers: %d fds, %d threads, as before\n", fds, tasks);
	mck_region_destroy(&region);
	free(pages);
	free(staging);
}

static const struct test_case tests[] = {
	{ "errors", test_errors, { NULL } },
	{ "prearm", test_prearm, { NULL } },
	{ "leaks", test_leaks, { NULL } },
	{ "kernel_write", test_kernel_write, { NULL } },
	{ "close_mid_copy", test_close_mid_copy, { NULL } },
	{ "snapshot_under_writers", test_snapshot_under_writers, { NULL } },
};

int main(int argc, char **argv)
{
	struct test_ctx ctx = { .backend = mck_backend_lookup("uffd-sync") };
	char reason[512] = "";
	int rc;

	test_start(argc, argv, "test_bg");
	ps = (size_t)sysconf(_SC_PAGESIZE);
	rc = mck_bg_supported(ctx.backend, reason, sizeof(reason));
	if (rc < 0) {
		printf("FAIL: background capture: %s\n", strerror(-rc));
		return 1;
	}
	if (rc == 0)
		printf("SKIP: background capture unavailable: %s\n", reason);
	else
		RUN_TESTS(tests, &ctx);
	return test_finish("test_bg");
}
