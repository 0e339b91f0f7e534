/* test_uffd_extra.c: what the generic tracker_test cannot see about the two
 * userfaultfd backends (uffd-async, uffd-sync):
 *  - a checkpoint built from the collects, while threads write, equals memory
 *    (no write lost across a collect, no increment lost to a fault);
 *  - kernel writes, on never-touched and on protected pages, across a page
 *    boundary; and with an unprivileged (user-mode-only) userfaultfd;
 *  - reads of never-touched pages are not reported; writes after a discard are;
 *  - fork: the child writes freely; a child still holding the fd does not keep
 *    the range registered after close;
 *  - uffd-sync: the handler thread blocks every signal; close while writers
 *    run wakes them all;
 *  - no fd leaks, every fd O_CLOEXEC.
 *
 * Each test runs once per backend available here (a table, check.h).
 * Exit 0 = pass, 1 = fail, 77 = neither backend is available here (reason
 * printed). `test_uffd_extra [seed [test]]` replays a seed. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"
#include "helpers.h"

#define NPAGES 4096u /* 16 MiB with 4 KiB pages */
#define NWRITERS 4

static size_t ps;

struct fixture {
	const char *name;
	int backend;
	struct tracked x; /* x.t NULL: closed */
	uint64_t *out;
	uint8_t *reported; /* per page: in the last collect */
};

static uint8_t *page_at(struct fixture *fx, size_t p)
{
	return (uint8_t *)fx->x.region.addr + p * ps;
}

/* A fresh, never-touched region and a tracker on it. */
static int setup(struct fixture *fx)
{
	int rc = tracked_open(&fx->x, fx->backend, NPAGES);

	CHECK(rc == 0, "%s: open: %s", fx->name, strerror(-rc));
	return rc;
}

static void teardown(struct fixture *fx)
{
	int rc = tracked_close(&fx->x);

	CHECK(rc == 0, "%s: close: %s", fx->name, strerror(-rc));
}

/* Collect into fx->reported; -1 on failure. */
static int64_t collect(struct fixture *fx, const char *what)
{
	int64_t n = mck_tracker_collect(fx->x.t, fx->out, NPAGES);

	CHECK(n >= 0, "%s: %s: collect: %s", fx->name, what, strerror((int)-n));
	memset(fx->reported, 0, NPAGES);
	for (int64_t i = 0; i < n; i++) {
		CHECK(fx->out[i] < NPAGES, "%s: %s: index out of range", fx->name, what);
		CHECK(i == 0 || fx->out[i] > fx->out[i - 1], "%s: %s: unsorted", fx->name, what);
		if (fx->out[i] < NPAGES)
			fx->reported[fx->out[i]] = 1;
	}
	return n < 0 ? -1 : n;
}

/* ---- a checkpoint made of collects equals memory --------------------------- */

struct writer {
	struct fixture *fx;
	int id;
	uint64_t seed;
	uint64_t increments;
	_Atomic int *stop;
	uint8_t written[NPAGES];
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
		size_t p = rnd(&w->seed) % NPAGES;
		/* each writer owns one word of every page: the counts are
		 * checked exactly, and the other writers' words are
		 * neighbours that a wrong page fill would clobber */
		volatile uint64_t *slot = (volatile uint64_t *)page_at(w->fx, p) + w->id;

		w->written[p] = 1;
		*slot += 1;
		w->increments++;
	}
	return NULL;
}

/* The property the checkpointer relies on: copy the reported pages after
 * each collect, while the writers keep going; after the last collect the
 * copy equals memory. Starts on never-touched pages, so the first writes
 * are missing-page faults racing each other. */
static void test_shadow_checkpoint(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	static struct writer w[NWRITERS];
	pthread_t tid[NWRITERS];
	_Atomic int stop = 0;
	uint8_t *shadow = calloc(NPAGES, ps), *ever = calloc(NPAGES, 1);
	size_t differ = 0, missing = 0, extra = 0, collects = 0;
	uint64_t counted[NWRITERS] = { 0 };

	if (!shadow || !ever || setup(fx) < 0)
		goto out;
	for (int i = 0; i < NWRITERS; i++) {
		memset(w[i].written, 0, NPAGES);
		w[i].fx = fx;
		w[i].id = i;
		w[i].seed = rnd(&rng_state) | 1;
		w[i].increments = 0;
		w[i].stop = &stop;
		CHECK(pthread_create(&tid[i], NULL, writer_main, &w[i]) == 0, "pthread_create");
	}
	/* mostly back-to-back collects: a race between a collect and the
	 * handler has a window of a microsecond or so */
	struct timespec t0, now;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int round = 0;; round++) {
		/* bounded in time too: under qemu's emulation 3000 collects take minutes */
		clock_gettime(CLOCK_MONOTONIC, &now);
		bool last = round == 3000 || now.tv_sec - t0.tv_sec > 5;

		if (last) {
			atomic_store(&stop, 1);
			for (int i = 0; i < NWRITERS; i++)
				pthread_join(tid[i], NULL);
		} else if (round % 100 == 0) {
			usleep(10000);
		}
		if (collect(fx, "under writers") < 0)
			break;
		collects++;
		for (size_t p = 0; p < NPAGES; p++)
			if (fx->reported[p]) {
				memcpy(shadow + p * ps, page_at(fx, p), ps);
				ever[p] = 1;
			}
		if (last)
			break;
	}
	for (size_t p = 0; p < NPAGES; p++) {
		int written = 0;

		for (int i = 0; i < NWRITERS; i++) {
			written |= w[i].written[p];
			counted[i] += ((volatile uint64_t *)page_at(fx, p))[i];
		}
		differ += memcmp(shadow + p * ps, page_at(fx, p), ps) != 0;
		missing += written && !ever[p];
		extra += !written && ever[p];
	}
	CHECK(differ == 0, "%s: %zu pages of the checkpoint differ from memory", fx->name, differ);
	CHECK(missing == 0, "%s: %zu written pages never reported", fx->name, missing);
	CHECK(extra == 0, "%s: %zu pages reported that nobody wrote", fx->name, extra);
	for (int i = 0; i < NWRITERS; i++)
		CHECK(counted[i] == w[i].increments, "%s: writer %d: %llu increments in memory, %llu made",
		      fx->name, i, (unsigned long long)counted[i], (unsigned long long)w[i].increments);
	printf("# %s: shadow checkpoint: %zu collects, %llu writes\n", fx->name, collects,
	       (unsigned long long)(w[0].increments + w[1].increments + w[2].increments + w[3].increments));
	teardown(fx);
out:
	free(shadow);
	free(ever);
}

/* ---- kernel writes ---------------------------------------------------------- */

/* read(2) across a page boundary, into never-touched pages (a missing-page
 * fault in kernel mode) and into written-then-protected ones. */
static void test_kernel_writes(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	static uint8_t src[4 * 65536];
	size_t len = 2 * ps + 200;

	if (setup(fx) < 0)
		return;
	for (size_t i = 0; i < len; i++)
		src[i] = (uint8_t)(i * 13 + 1);
	for (int protected = 0; protected < 2; protected++) {
		size_t first = protected ? 20 : 10;
		uint8_t *dst = page_at(fx, first) + 100;

		if (protected) {
			for (size_t p = first; p < first + 3; p++)
				page_at(fx, p)[0] = 1;
			collect(fx, "before kernel write");
		}
		ssize_t got = pipe_into(dst, src, len);

		CHECK(got == (ssize_t)len, "%s: read(2) into %s pages: %s", fx->name,
		      protected ? "protected" : "never-touched",
		      got < 0 ? strerror(errno) : "short");
		CHECK(got == (ssize_t)len && !memcmp(dst, src, len), "%s: read(2) data differs", fx->name);
		int64_t n = collect(fx, "after kernel write");

		CHECK(n == 3 && fx->reported[first] && fx->reported[first + 1] && fx->reported[first + 2],
		      "%s: kernel write into %s pages %zu..%zu: %lld reported", fx->name,
		      protected ? "protected" : "never-touched", first, first + 2, (long long)n);
	}
	teardown(fx);
}

/* An unprivileged process (vm.unprivileged_userfaultfd=0) gets only a
 * UFFD_USER_MODE_ONLY fd: uffd-async still sees kernel writes (the kernel
 * resolves async faults itself), uffd-sync's fail with EFAULT, as its
 * status says. Runs in a child that drops root. */
static void test_user_mode_only(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	pid_t pid;
	int status;

	pid = fork();
	if (pid == 0) {
		static uint8_t src[65536];
		int64_t n;
		ssize_t got;

		alarm(20);
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(10);
		/* setuid clears dumpable, which makes /proc/self/pagemap root's */
		prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
		if (mck_region_create(&fx->x.region, NPAGES * ps, 0) < 0)
			_exit(11);
		if (mck_tracker_open(&fx->x.t, fx->backend, fx->x.region.addr, fx->x.region.len) < 0)
			_exit(12);
		page_at(fx, 1)[0] = 1;
		memset(src, 7, ps);
		got = pipe_into(page_at(fx, 3), src, ps);
		n = mck_tracker_collect(fx->x.t, fx->out, NPAGES);
		if (n < 0)
			_exit(13);
		if (got == (ssize_t)ps)
			_exit(n == 2 ? 0 : 14); /* pages 1 and 3 */
		if (got < 0 && errno == EFAULT)
			_exit(n == 1 ? 20 : 15); /* page 1 only */
		_exit(16);
	}
	CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
	if (!WIFEXITED(status)) {
		CHECK(0, "%s: user-mode-only child died (signal %d)", fx->name,
		      WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		return;
	}
	switch (WEXITSTATUS(status)) {
	case 0:
		CHECK(fx->backend == mck_backend_lookup("uffd-async"),
		      "%s: kernel write with a user-mode-only fd unexpectedly worked", fx->name);
		printf("# %s: user-mode-only fd: kernel writes seen\n", fx->name);
		break;
	case 20:
		CHECK(fx->backend == mck_backend_lookup("uffd-sync"),
		      "%s: kernel write with a user-mode-only fd failed with EFAULT", fx->name);
		printf("# %s: user-mode-only fd: kernel writes fail with EFAULT, as documented\n", fx->name);
		break;
	case 12:
		printf("# %s: user-mode-only: skipped, an unprivileged process cannot open the tracker here\n",
		       fx->name);
		break;
	default:
		CHECK(0, "%s: user-mode-only child failed at step %d", fx->name, WEXITSTATUS(status));
	}
}

/* ---- reads, discards -------------------------------------------------------- */

static void test_reads_and_discards(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	volatile uint8_t *p;
	uint64_t sum = 0;
	int64_t n;

	if (setup(fx) < 0)
		return;
	p = page_at(fx, 0);
	for (size_t i = 0; i < 64; i++)
		sum += p[i * ps];
	n = collect(fx, "reads");
	CHECK(n == 0 && sum == 0, "%s: reading 64 never-touched pages reported %lld", fx->name, (long long)n);
	p[5 * ps] = 1; /* read first, then written */
	n = collect(fx, "write after read");
	CHECK(n == 1 && fx->reported[5], "%s: a write after a read: %lld reported", fx->name, (long long)n);

	/* MADV_DONTNEED drops the pte with its protection; the next write
	 * must still be seen, with or without a collect in between */
	p[7 * ps] = 1;
	p[8 * ps] = 1;
	collect(fx, "before discard");
	CHECK(mck_region_discard(&fx->x.region, 7 * ps, 2 * ps) == 0, "discard");
	p[7 * ps] = 2;
	collect(fx, "write after discard");
	CHECK(fx->reported[7], "%s: a write right after a discard was lost", fx->name);
	/* page 8 was discarded, not written: uffd-async reports it (its content
	 * changed), uffd-sync does not (no write); either way a read of it
	 * must not make the next write invisible */
	sum += p[8 * ps];
	p[8 * ps] = 3;
	collect(fx, "read then write after discard");
	CHECK(fx->reported[8] && sum == 0, "%s: read-then-write after a discard was lost", fx->name);
	teardown(fx);
}

/* ---- fork ------------------------------------------------------------------- */

static void test_fork(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	struct mck_tracker *again = NULL;
	pid_t pid, holder;
	int status, rc;

	if (setup(fx) < 0)
		return;
	page_at(fx, 1)[0] = 1;
	collect(fx, "before fork");
	pid = fork();
	if (pid == 0) {
		/* the child's mm is not registered: it writes freely */
		alarm(5);
		for (size_t p = 0; p < 16; p++)
			page_at(fx, p)[0] = 9;
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "%s: child writing into the range after fork failed", fx->name);
	page_at(fx, 2)[0] = 1;
	page_at(fx, 1)[0] = 2; /* written before the fork, COW-shared since */
	collect(fx, "after fork");
	CHECK(fx->reported[1] && fx->reported[2] && !fx->reported[3] && page_at(fx, 3)[0] == 0,
	      "%s: after fork, the parent's collect should hold its own writes (1, 2) only",
	      fx->name);

	/* a child that outlives the tracker holds a copy of its fd */
	holder = fork();
	if (holder == 0) {
		alarm(30); /* outlives nothing if the parent dies first */
		pause();
		_exit(0);
	}
	CHECK(mck_tracker_close(fx->x.t) == 0, "close");
	fx->x.t = NULL;
	alarm(10); /* a write that sleeps on a dead registration ends the test */
	page_at(fx, 4)[0] = 1;
	page_at(fx, 200)[0] = 1;
	alarm(0);
	rc = mck_tracker_open(&again, fx->backend, fx->x.region.addr, fx->x.region.len);
	CHECK(rc == 0, "%s: reopen while a forked child holds the old fd: %s", fx->name, strerror(-rc));
	if (rc == 0) {
		fx->x.t = again;
		page_at(fx, 5)[0] = 1;
		collect(fx, "reopened");
		CHECK(fx->reported[5] && !fx->reported[4], "%s: reopened tracker", fx->name);
	}
	kill(holder, SIGKILL);
	waitpid(holder, NULL, 0);
	teardown(fx);
}

/* ---- uffd-sync: the handler thread ------------------------------------------ */

/* The blocked-signal masks of this process's threads but the main one: how
 * many there are (those dead or exiting are left out: a thread of an earlier
 * test that pthread_join saw end can stay listed a moment, longer under
 * TCG), and whether each blocks `must`. */
static int other_threads(uint64_t must, int *bad)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	*bad = 0;
	while (d && (e = readdir(d))) {
		char path[300], line[256];
		uint64_t blk = 0;
		int alive = 1, have = 0;
		FILE *f;

		if (e->d_name[0] == '.' || atoi(e->d_name) == getpid())
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/status", e->d_name);
		f = fopen(path, "re");
		while (f && fgets(line, sizeof(line), f)) {
			if (!strncmp(line, "State:", 6))
				alive = !strchr(line + 6, 'Z') && !strchr(line + 6, 'X');
			else if (!strncmp(line, "SigBlk:", 7)) {
				blk = strtoull(line + 7, NULL, 16);
				have = 1;
			}
		}
		if (f)
			fclose(f);
		if (!have || !alive)
			continue; /* gone meanwhile, or exiting */
		n++;
		*bad += (blk & must) != must;
	}
	if (d)
		closedir(d);
	return n;
}

static void test_handler_sigmask(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	const uint64_t must = (1ULL << (SIGINT - 1)) | (1ULL << (SIGTERM - 1)) |
			      (1ULL << (SIGUSR1 - 1)) | (1ULL << (SIGALRM - 1)) |
			      (1ULL << (SIGCHLD - 1)) | (1ULL << (SIGSEGV - 1));
	int n = 0, bad = 0;

	if (setup(fx) < 0)
		return;
	/* up to 20 s for an earlier test's exiting thread to leave the list
	 * (2 s was enough for TCG on an idle host, the deadline is for a
	 * loaded one; a settled list ends the wait at once) */
	for (int tries = 0; tries < 400; tries++) {
		n = other_threads(must, &bad);
		if (n == 1)
			break;
		usleep(50000);
	}
	CHECK(bad == 0, "%s: %d other thread(s) do not block the signals a handler must", fx->name,
	      bad);
	CHECK(n == 1, "%s: expected one handler thread, found %d", fx->name, n);
	teardown(fx);
}

/* close while writers fault: unregistering wakes them, none may hang. */
static void test_close_under_writers(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	static struct writer w[NWRITERS];
	pthread_t tid[NWRITERS];
	_Atomic int stop = 0;

	if (setup(fx) < 0)
		return;
	for (int i = 0; i < NWRITERS; i++) {
		memset(w[i].written, 0, NPAGES);
		w[i].fx = fx;
		w[i].id = i;
		w[i].seed = rnd(&rng_state) | 1;
		w[i].stop = &stop;
		CHECK(pthread_create(&tid[i], NULL, writer_main, &w[i]) == 0, "pthread_create");
	}
	usleep(3000);
	collect(fx, "before close");
	usleep(3000);
	alarm(10);
	CHECK(mck_tracker_close(fx->x.t) == 0, "close");
	fx->x.t = NULL;
	usleep(3000);
	atomic_store(&stop, 1);
	for (int i = 0; i < NWRITERS; i++)
		pthread_join(tid[i], NULL);
	alarm(0);
	teardown(fx);
}

/* ---- fds -------------------------------------------------------------------- */

/* Counts the open fds; with seen, checks O_CLOEXEC on those not in seen
 * (the ones the tracker opened), and marks every fd in seen. */
static int scan_fds(uint8_t *seen, size_t nseen, int check_cloexec, int *no_cloexec)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);

		if (e->d_name[0] == '.' || fd == dirfd(d))
			continue;
		n++;
		if (check_cloexec && (size_t)fd < nseen && !seen[fd] &&
		    !(fcntl(fd, F_GETFD) & FD_CLOEXEC))
			(*no_cloexec)++;
		if (seen && (size_t)fd < nseen)
			seen[fd] = 1;
	}
	closedir(d);
	return n;
}

static void test_fds(struct test_ctx *ctx)
{
	struct fixture *fx = ctx->fixture;
	static uint8_t seen[4096];
	int before = scan_fds(seen, sizeof(seen), 0, NULL), during, no_cloexec = 0;
	int tasks = settled_tasks(1); /* every earlier thread was joined */

	for (int i = 0; i < 50; i++) {
		if (setup(fx) < 0)
			return;
		page_at(fx, (size_t)i)[0] = 1;
		if (i == 0) {
			during = scan_fds(seen, sizeof(seen), 1, &no_cloexec);
			CHECK(no_cloexec == 0, "%s: %d fds without O_CLOEXEC", fx->name, no_cloexec);
			CHECK(during > before, "%s: no fd while open?", fx->name);
		}
		teardown(fx);
	}
	CHECK(count_fds() == before, "%s: fds leaked: %d before, %d after 50 open/close",
	      fx->name, before, count_fds());
	CHECK(settled_tasks(tasks) == tasks, "%s: threads leaked: %d before, %d after", fx->name,
	      tasks, count_tasks());
}

static const char *need_handler(const struct test_ctx *ctx)
{
	return ctx->backend == mck_backend_lookup("uffd-sync") ? NULL
	       : "only uffd-sync has a handler thread";
}

static const struct test_case tests[] = {
	{ "shadow_checkpoint", test_shadow_checkpoint, { NULL } },
	{ "kernel_writes", test_kernel_writes, { NULL } },
	{ "user_mode_only", test_user_mode_only, { need_root } },
	{ "reads_and_discards", test_reads_and_discards, { NULL } },
	{ "fork", test_fork, { NULL } },
	{ "handler_sigmask", test_handler_sigmask, { need_handler } },
	{ "close_under_writers", test_close_under_writers, { need_handler } },
	/* last: it counts the threads the tests before it left */
	{ "fds", test_fds, { NULL } },
};

int main(int argc, char **argv)
{
	static const char *const names[] = { "uffd-async", "uffd-sync" };

	test_start(argc, argv, "test_uffd_extra");
	ps = (size_t)sysconf(_SC_PAGESIZE);
	for (size_t b = 0; b < sizeof(names) / sizeof(names[0]); b++) {
		struct fixture fx = { .name = names[b] };
		struct test_ctx ctx = { .fixture = &fx };

		if (!backend_pass(&ctx, names[b]))
			continue;
		fx.backend = ctx.backend;
		fx.out = calloc(NPAGES, sizeof(*fx.out));
		fx.reported = calloc(NPAGES, 1);
		if (!fx.out || !fx.reported)
			return 1;
		RUN_TESTS(tests, &ctx);
		free(fx.out);
		free(fx.reported);
	}
	return test_finish("test_uffd_extra");
}
