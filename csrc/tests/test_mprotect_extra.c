/* test_mprotect_extra.c: what the generic tracker test cannot see about the
 * mprotect backend: its SIGSEGV handler living next to the program's own,
 * exactness of a checkpoint taken while threads write, kernel writes, the
 * tracker registry, and vm.max_map_count.
 *
 * Exit 0 = pass, 1 = fail. `test_mprotect_extra [seed [test]]` replays a seed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"

static size_t ps;
static int backend;

struct tracked {
	struct mck_region r;
	struct mck_tracker *t;
	uint64_t *out;
	size_t npages;
};

static int tracked_open(struct tracked *x, size_t npages)
{
	int rc = mck_region_create(&x->r, npages * ps, 0);

	if (rc < 0)
		return rc;
	x->npages = npages;
	x->out = calloc(npages, sizeof(*x->out));
	if (!x->out)
		return -ENOMEM;
	return mck_tracker_open(&x->t, backend, x->r.addr, x->r.len);
}

static void tracked_close(struct tracked *x)
{
	CHECK(mck_tracker_close(x->t) == 0, "close");
	CHECK(mck_region_destroy(&x->r) == 0, "region destroy");
	free(x->out);
}

static void *current_segv_handler(void)
{
	struct sigaction cur;

	sigaction(SIGSEGV, NULL, &cur);
	return cur.sa_flags & SA_SIGINFO ? (void *)cur.sa_sigaction : (void *)cur.sa_handler;
}

/* ---- chaining to the program's own SIGSEGV handler ------------------------ */

static sigjmp_buf jump_back;
static volatile sig_atomic_t prev_calls;
static volatile void *prev_addr;
static volatile int prev_code;

static void prev_jumping(int sig, siginfo_t *si, void *uctx)
{
	(void)sig;
	(void)uctx;
	prev_calls++;
	prev_addr = si->si_addr;
	prev_code = si->si_code;
	siglongjmp(jump_back, 1);
}

static uint8_t *volatile fixable_page; /* read by the handler */

/* returns normally after making the page writable: the write is retried */
static void prev_fixing(int sig)
{
	(void)sig;
	prev_calls++;
	mprotect(fixable_page, ps, PROT_READ | PROT_WRITE);
}

static void test_chaining(struct test_ctx *ctx)
{
	(void)ctx;
	struct sigaction sa = { 0 }, orig;
	struct tracked x;
	volatile uint8_t *outside;
	int rc;

	sa.sa_sigaction = prev_jumping;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, &orig);

	rc = tracked_open(&x, 64);
	CHECK(rc == 0, "open: %s", strerror(-rc));
	if (rc < 0)
		return;
	CHECK(current_segv_handler() != (void *)prev_jumping, "the tracker installed no handler");
	outside = mmap(NULL, ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	/* a tracked write never reaches the program's handler */
	prev_calls = 0;
	((volatile uint8_t *)x.r.addr)[5 * ps] = 1;
	CHECK(prev_calls == 0, "a tracked write reached the previous handler");

	/* a real fault outside every tracked range does, and it may longjmp */
	if (sigsetjmp(jump_back, 1) == 0) {
		outside[0] = 1;
		CHECK(0, "a write to a PROT_NONE page went through");
	}
	CHECK(prev_calls == 1, "previous handler called %d times for a foreign fault", prev_calls);
	CHECK(prev_addr == (void *)outside, "previous handler saw si_addr %p, not %p",
	      (void *)prev_addr, (void *)outside);
	CHECK(prev_code == SEGV_ACCERR, "si_code %d", prev_code);

	/* the guard page right below the tracked range is not the range */
	prev_calls = 0;
	if (sigsetjmp(jump_back, 1) == 0)
		((volatile uint8_t *)x.r.addr)[-1] = 1;
	CHECK(prev_calls == 1, "guard page fault: previous handler called %d times", prev_calls);

	/* tracking still works after the longjmp left the handler */
	((volatile uint8_t *)x.r.addr)[7 * ps] = 1;
	int64_t n = mck_tracker_collect(x.t, x.out, x.npages);

	CHECK(n == 2 && x.out[0] == 5 && x.out[1] == 7, "collect after chaining: n=%lld",
	      (long long)n);

	/* kill(2) sends a SIGSEGV with no address: it belongs to the program */
	prev_calls = 0;
	if (sigsetjmp(jump_back, 1) == 0) {
		kill(getpid(), SIGSEGV);
		CHECK(0, "kill(SIGSEGV) did not reach the previous handler");
	}
	CHECK(prev_calls == 1 && prev_code == SI_USER, "kill: calls %d code %d", prev_calls,
	      prev_code);

	/* a plain sa_handler that fixes the fault and returns */
	struct sigaction fix = { 0 };

	tracked_close(&x);
	CHECK(current_segv_handler() == (void *)prev_jumping,
	      "the previous handler was not restored at the last close");
	fix.sa_handler = prev_fixing;
	sigemptyset(&fix.sa_mask);
	sigaction(SIGSEGV, &fix, NULL);
	rc = tracked_open(&x, 16);
	CHECK(rc == 0, "reopen: %s", strerror(-rc));
	fixable_page = (uint8_t *)outside;
	prev_calls = 0;
	outside[1] = 42;
	CHECK(prev_calls == 1 && outside[1] == 42, "returning previous handler: calls %d",
	      prev_calls);
	tracked_close(&x);
	CHECK(current_segv_handler() == (void *)prev_fixing, "handler not restored");
	munmap((void *)outside, ps);
	sigaction(SIGSEGV, &orig, NULL);
}

/* With SIG_DFL or SIG_IGN before us, a foreign fault must still kill the
 * process with SIGSEGV, as it would have without the tracker. */
static void default_action(void *disposition)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		struct tracked x;

		signal(SIGSEGV, (void (*)(int))disposition);
		if (tracked_open(&x, 4) < 0)
			_exit(3);
		((volatile uint8_t *)x.r.addr)[0] = 1; /* tracked: survives */
		((volatile uint8_t *)x.r.addr)[x.r.len] = 1; /* guard page: dies */
		_exit(4);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait");
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV,
	      "%s before us: child status 0x%x, expected death by SIGSEGV",
	      disposition == (void *)SIG_IGN ? "SIG_IGN" : "SIG_DFL", status);
}

/* ---- writers running during collect ---------------------------------------- */

#define NWRITERS 4
#define WPAGES 4096u

struct writer {
	uint8_t *base;
	uint64_t seed;
	unsigned id;
	_Atomic int *stop;
	uint8_t *log; /* pages this thread wrote, set after each write */
	uint64_t writes;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
		size_t p = rnd(&w->seed) % WPAGES;
		/* each thread owns one word per page: content is checked below */
		volatile uint64_t *word = (volatile uint64_t *)(w->base + p * ps) + w->id;

		*word = ++w->writes;
		w->log[p] = 1;
		/* now and then a write and its undo: the case a checkpoint
		 * taken between the two must still get right in the end */
		if (w->writes % 7 == 0) {
			*word = 0xdead;
			*word = w->writes;
		}
	}
	return NULL;
}

/* Collect and copy the reported pages while the writers run, as a
 * checkpoint would; once they stop, one more collect-and-copy must leave the
 * copy equal to memory, and every page written must have been reported. */
static void test_concurrent_writers(struct test_ctx *ctx)
{
	static struct writer w[NWRITERS];
	struct tracked x;
	_Atomic int stop = 0;
	pthread_t tid[NWRITERS];
	uint8_t *image, *reported;
	size_t missing = 0, extra = 0, rounds = 0, total = 0;
	int rc = tracked_open(&x, WPAGES);
	uint64_t *seed = &rng_state;

	(void)ctx;
	CHECK(rc == 0, "open: %s", strerror(-rc));
	if (rc < 0)
		return;
	image = calloc(WPAGES, ps);
	reported = calloc(WPAGES, 1);
	for (int i = 0; i < NWRITERS; i++) {
		w[i] = (struct writer){ .base = x.r.addr, .seed = rnd(seed) | 1, .id = (unsigned)i,
					.stop = &stop, .log = calloc(WPAGES, 1) };
		pthread_create(&tid[i], NULL, writer_main, &w[i]);
	}
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		int64_t n = mck_tracker_collect(x.t, x.out, WPAGES);

		CHECK(n >= 0, "collect under writers: %s", strerror((int)-n));
		for (int64_t i = 0; n > 0 && i < n; i++) {
			reported[x.out[i]] = 1;
			memcpy(image + x.out[i] * ps, (uint8_t *)x.r.addr + x.out[i] * ps, ps);
		}
		total += n > 0 ? (size_t)n : 0;
		rounds++;
		usleep(rnd(seed) % 500);
		clock_gettime(CLOCK_MONOTONIC, &t1);
	} while ((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) < 1500000000L);
	atomic_store(&stop, 1);
	for (int i = 0; i < NWRITERS; i++)
		pthread_join(tid[i], NULL);
	int64_t n = mck_tracker_collect(x.t, x.out, WPAGES);

	CHECK(n >= 0, "final collect: %s", strerror((int)-n));
	for (int64_t i = 0; n > 0 && i < n; i++) {
		reported[x.out[i]] = 1;
		memcpy(image + x.out[i] * ps, (uint8_t *)x.r.addr + x.out[i] * ps, ps);
	}
	uint64_t writes = 0;

	for (size_t p = 0; p < WPAGES; p++) {
		int written = 0;

		for (int i = 0; i < NWRITERS; i++)
			written |= w[i].log[p];
		missing += written && !reported[p];
		extra += !written && reported[p];
	}
	for (int i = 0; i < NWRITERS; i++) {
		writes += w[i].writes;
		free(w[i].log);
	}
	CHECK(missing == 0, "%zu written pages never reported", missing);
	CHECK(extra == 0, "%zu pages reported that no thread wrote", extra);
	CHECK(!memcmp(image, x.r.addr, WPAGES * ps),
	      "the checkpoint copy differs from memory after the writers stopped");
	printf("# concurrent: %zu collects, %zu pages reported, %llu writes, %d threads\n", rounds,
	       total, (unsigned long long)writes, NWRITERS);
	free(image);
	free(reported);
	tracked_close(&x);
}

/* ---- kernel writes, errno, registry, VMA limit ----------------------------- */

static void test_kernel_write_efault(struct test_ctx *ctx)
{
	(void)ctx;
	struct tracked x;
	int fds[2];
	char buf[64] = "hello";
	ssize_t got;

	CHECK(tracked_open(&x, 8) == 0, "open");
	CHECK(pipe(fds) == 0, "pipe");
	CHECK(write(fds[1], buf, sizeof(buf)) == (ssize_t)sizeof(buf), "write pipe");
	got = read(fds[0], (uint8_t *)x.r.addr + 2 * ps, sizeof(buf));
	CHECK(got < 0 && errno == EFAULT, "read(2) into a protected page: %zd, %s", got,
	      strerror(errno));
	/* once user code wrote the page, it is writable until the next collect */
	((volatile uint8_t *)x.r.addr)[2 * ps] = 1;
	got = read(fds[0], (uint8_t *)x.r.addr + 2 * ps, sizeof(buf));
	CHECK(got == (ssize_t)sizeof(buf), "read(2) into an unprotected page: %zd", got);
	CHECK(mck_tracker_collect(x.t, x.out, x.npages) == 1, "collect");
	close(fds[0]);
	close(fds[1]);

	/* the handler leaves errno as the interrupted code had it */
	errno = 4242;
	((volatile uint8_t *)x.r.addr)[3 * ps] = 1;
	CHECK(errno == 4242, "errno changed by a tracked write: %d", errno);
	tracked_close(&x);
}

#define REG_SLOTS 64

static void test_registry(struct test_ctx *ctx)
{
	(void)ctx;
	static struct tracked x[REG_SLOTS + 1];
	struct mck_tracker *dup;
	void *before = current_segv_handler();
	int opened = 0, rc;

	for (int i = 0; i <= REG_SLOTS; i++) {
		rc = tracked_open(&x[i], 2);
		if (i < REG_SLOTS) {
			CHECK(rc == 0, "tracker %d of %d: %s", i, REG_SLOTS, strerror(-rc));
			opened += rc == 0;
		} else {
			CHECK(rc == -EMFILE, "tracker %d beyond the registry: %d", i, rc);
			mck_region_destroy(&x[i].r);
			free(x[i].out);
		}
	}
	rc = mck_tracker_open(&dup, backend, (uint8_t *)x[0].r.addr + ps, ps);
	CHECK(rc == -EBUSY, "a second tracker on the same page: %d", rc);
	for (int i = 0; i < opened; i++)
		((volatile uint8_t *)x[i].r.addr)[(size_t)(i % 2) * ps] = (uint8_t)i;
	for (int i = 0; i < opened; i++) {
		int64_t n = mck_tracker_collect(x[i].t, x[i].out, 2);

		CHECK(n == 1 && x[i].out[0] == (uint64_t)(i % 2), "tracker %d collect", i);
	}
	for (int i = 0; i < opened; i++)
		tracked_close(&x[i]);
	CHECK(current_segv_handler() == before, "handler not restored after the registry test");
	/* slots are reusable */
	CHECK(tracked_open(&x[0], 2) == 0, "reopen after close");
	tracked_close(&x[0]);
}

/* Every other page written: each one its own VMA, more than vm.max_map_count
 * allows. The handler must fall back to larger blocks, never crash. */
static long max_map_count(void)
{
	long max_map = 65530;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "re");

	if (f) {
		if (fscanf(f, "%ld", &max_map) != 1)
			max_map = 65530;
		fclose(f);
	}
	return max_map;
}

static const char *need_low_map_count(const struct test_ctx *ctx)
{
	(void)ctx;
	return max_map_count() <= 200000 ? NULL
	       : "vm.max_map_count above 200000: reaching it would take too long";
}

static void test_vma_limit(struct test_ctx *ctx)
{
	struct tracked x;
	long max_map = max_map_count();

	(void)ctx;
	size_t npages = (size_t)max_map * 2 + 1024;
	int rc = tracked_open(&x, npages);

	CHECK(rc == 0, "open %zu pages: %s", npages, strerror(-rc));
	if (rc < 0)
		return;
	for (int round = 0; round < 2; round++) {
		for (size_t p = 0; p < npages; p += 2)
			((volatile uint8_t *)x.r.addr)[p * ps] = 1;
		int64_t n = mck_tracker_collect(x.t, x.out, npages);
		size_t missing = 0, j = 0;

		for (size_t p = 0; p < npages; p += 2) {
			while (j < (size_t)n && x.out[j] < p)
				j++;
			missing += j >= (size_t)n || x.out[j] != p;
		}
		CHECK(n >= (int64_t)(npages / 2) && missing == 0,
		      "VMA limit round %d: n=%lld, %zu missing", round, (long long)n, missing);
		printf("# VMA limit round %d: %zu pages written, %lld reported\n", round,
		       (npages + 1) / 2, (long long)n);
	}
	tracked_close(&x);
}

/* A forked child inherits the handler and the protection, so its writes go
 * through; but the tracker is the parent's (memckpt.h, fork safety): collect
 * refuses, and close makes the child's copy of the range plain memory. */
static void test_fork(struct test_ctx *ctx)
{
	(void)ctx;
	struct tracked x;
	pid_t pid;
	int status;

	CHECK(tracked_open(&x, 8) == 0, "open");
	pid = fork();
	if (pid == 0) {
		((volatile uint8_t *)x.r.addr)[4 * ps] = 1;
		int64_t n = mck_tracker_collect(x.t, x.out, 8);

		if (n != -ECHILD || mck_tracker_close(x.t) != 0)
			_exit(1);
		((volatile uint8_t *)x.r.addr)[5 * ps] = 1; /* untracked, unprotected now */
		_exit(0);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status 0x%x", status);
	CHECK(mck_tracker_collect(x.t, x.out, 8) == 0, "the child's write showed in the parent");
	tracked_close(&x);
}

static void test_default_action_dfl(struct test_ctx *ctx)
{
	(void)ctx;
	default_action((void *)SIG_DFL);
}

static void test_default_action_ign(struct test_ctx *ctx)
{
	(void)ctx;
	default_action((void *)SIG_IGN);
}

static const struct test_case tests[] = {
	{ "chaining", test_chaining, { NULL } },
	{ "default_action_dfl", test_default_action_dfl, { NULL } },
	{ "default_action_ign", test_default_action_ign, { NULL } },
	{ "concurrent_writers", test_concurrent_writers, { NULL } },
	{ "kernel_write_efault", test_kernel_write_efault, { NULL } },
	{ "registry", test_registry, { NULL } },
	{ "vma_limit", test_vma_limit, { need_low_map_count } },
	{ "fork", test_fork, { NULL } },
};

int main(int argc, char **argv)
{
	struct test_ctx ctx = { 0 };

	test_start(argc, argv, "test_mprotect_extra");
	ps = (size_t)sysconf(_SC_PAGESIZE);
	if (!backend_pass(&ctx, "mprotect"))
		return test_finish("test_mprotect_extra");
	backend = ctx.backend;
	RUN_TESTS(tests, &ctx);
	return test_finish("test_mprotect_extra");
}
