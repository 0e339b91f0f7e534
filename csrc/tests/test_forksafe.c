/* test_forksafe.c: a tracker (and a background copy) inherited by a child of
 * fork() is detached there, and nothing the child does reaches the parent.
 *
 * For every available backend (a pass of the table, check.h): the child finds the tracker detached, owned
 * by the parent; collect (and for uffd-sync, mck_bg_begin/prearm/wait)
 * return -ECHILD; close returns at once (an alarm catches a join of a thread
 * the child does not have) and makes the child's copy of the range plain
 * memory. Then the parent still sees every write, exactly. For a backend
 * that runs background capture (uffd-sync) the child is forked while a
 * background copy is in flight, and the parent's
 * copy must still complete and its writers still be served by the handler
 * (a child that wrote the shared stop eventfd would have stopped it).
 *
 * Exit 0 = pass, 1 = fail, 77 = no backend available. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"

#define NPAGES 64u

/* In the child: 0 if every check held, else the line of the first that did not. */
static int child_checks(struct mck_tracker *t, bool bg, uint8_t *base, size_t ps, pid_t parent,
			uint64_t *pages, uint8_t *staging)
{
	alarm(10); /* a hang in close (a join of the parent's threads) ends here */
	if (mck_tracker_detached(t) != 1)
		return __LINE__;
	if (mck_tracker_owner(t) != parent)
		return __LINE__;
	if (mck_tracker_collect(t, pages, NPAGES) != -ECHILD)
		return __LINE__;
	if (bg) {
		if (mck_bg_begin(t, pages, NPAGES, staging, NPAGES, MCK_BG_GAP_AUTO, 0, NULL) != -ECHILD)
			return __LINE__;
		if (mck_bg_prearm(t, MCK_BG_GAP_AUTO) != -ECHILD)
			return __LINE__;
		if (mck_bg_wait(t, NULL) != -ECHILD)
			return __LINE__;
	}
	if (mck_tracker_close(t) != 0)
		return __LINE__;
	/* the child's copy of the range is its own, untracked memory now */
	for (size_t p = 0; p < NPAGES; p++)
		base[p * ps] = 0x5a;
	return 0;
}

static void test_detached_in_child(struct test_ctx *ctx)
{
	int b = ctx->backend;
	const char *name = ctx->backend_name;
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	struct mck_region region;
	struct mck_tracker *t;
	uint64_t pages[NPAGES];
	uint8_t *staging = malloc(NPAGES * ps), *base;
	bool bg = mck_bg_supported(b, NULL, 0) == 1;
	int64_t n;
	int st;
	pid_t pid;

	if (!staging || mck_region_create(&region, NPAGES * ps, 0) < 0) {
		CHECK(0, "%s: setup failed", name);
		free(staging);
		return;
	}
	base = region.addr;
	CHECK(mck_tracker_open(&t, b, region.addr, region.len) == 0, "%s: open", name);
	CHECK(mck_tracker_detached(t) == 0 && mck_tracker_owner(t) == getpid(),
	      "%s: the opener is the owner", name);
	for (size_t p = 0; p < NPAGES; p++)
		base[p * ps] = 1;
	if (bg) {
		/* a copy in flight at the fork: the child must not wait for it */
		n = mck_bg_begin(t, pages, NPAGES, staging, NPAGES, MCK_BG_GAP_AUTO, 0, NULL);
		CHECK(n == NPAGES, "%s: bg_begin gave %lld", name, (long long)n);
	} else {
		n = mck_tracker_collect(t, pages, NPAGES);
		CHECK(n == NPAGES, "%s: first collect gave %lld", name, (long long)n);
	}
	fflush(stdout);
	pid = fork();
	if (pid == 0)
		_exit(child_checks(t, bg, base, ps, getppid(), pages, staging) ? 1 : 0);
	CHECK(pid > 0, "%s: fork: %s", name, strerror(errno));
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "%s: the child failed its checks (status 0x%x)", name, st);
	alarm(20); /* a parent writer stuck on a stopped handler ends here */
	if (bg) {
		CHECK(mck_bg_wait(t, NULL) == 0, "%s: the parent's copy did not complete", name);
		for (size_t p = 0; p < NPAGES; p++)
			CHECK(staging[p * ps] == 1, "%s: staged page %zu is %u", name, p, staging[p * ps]);
		mck_tracker_collect(t, pages, NPAGES);
	}
	for (size_t p = 0; p < NPAGES; p += 5)
		base[p * ps] = 2; /* through a protected page: needs the handler, for uffd-sync */
	n = mck_tracker_collect(t, pages, NPAGES);
	CHECK(n == (NPAGES + 4) / 5, "%s: the parent's collect after the child gave %lld, not %u",
	      name, (long long)n, (NPAGES + 4) / 5);
	for (int64_t i = 0; i < n && i < NPAGES; i++)
		CHECK(pages[i] == (uint64_t)i * 5, "%s: page %llu reported", name,
		      (unsigned long long)pages[i]);
	alarm(0);
	mck_tracker_close(t);
	for (size_t p = 0; p < NPAGES; p++)
		CHECK(base[p * ps] == (p % 5 ? 1 : 2), "%s: the child's writes reached page %zu", name, p);
	mck_region_destroy(&region);
	free(staging);
}

static const struct test_case tests[] = {
	{ "detached_in_child", test_detached_in_child, { NULL } },
};

int main(int argc, char **argv)
{
	test_start(argc, argv, "test_forksafe");
	for (int b = 0; b < MCK_BACKEND_COUNT; b++) {
		struct test_ctx ctx = { 0 };

		if (backend_pass(&ctx, mck_backend_name(b)))
			RUN_TESTS(tests, &ctx);
	}
	return test_finish("test_forksafe");
}
