/* test_lazy_restore.c: the lazy restore server (csrc/lazy_restore.c) on a
 * pack written here: pages served on first touch by two threads while the
 * drain is held, then drained, against a model (raw pages, zero records,
 * dedup, never-written pages); pages the program drops read zero; a
 * damaged page is SIGBUS in the toucher (an abort on kernels that cannot
 * poison a page, before 6.6), never its bytes; a dead handler aborts,
 * never hangs. mck_lazy_open: faults served by lookup before the index is
 * checked; a damaged index then poisons what was not served.
 *
 * Exit 0 = pass, 1 = fail, 77 = nothing could run. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#include "epoch_reader.h"
#include "lazy_restore.h"
#include "memckpt.h"
#include "pack_format.h"
#include "check.h"

#define PS 4096u
#define NPAGES 600u
#define WRITTEN 520u /* pages [WRITTEN, NPAGES): never written, no record */

struct fixture {
	int fd;
	struct mck_idx_record recs[WRITTEN];
	uint8_t *model;
	struct mck_read_source src;
};

/* One source: every 7th page zero, every 11th a copy of page 1 (dedup), the rest random. */
static void build(struct fixture *fx)
{
	uint8_t hdr[MCK_PACK_HEADER_SIZE], page[PS];
	uint64_t end = MCK_PACK_HEADER_SIZE;

	memset(fx, 0, sizeof(*fx));
	fx->model = calloc(NPAGES, PS);
	fx->fd = memfd_create("mck-lazy-pack", MFD_CLOEXEC);
	CHECK(fx->model && fx->fd >= 0, "memfd");
	memset(hdr, 0xEE, sizeof(hdr));
	CHECK(pwrite(fx->fd, hdr, sizeof(hdr), 0) == (ssize_t)sizeof(hdr), "header");
	for (uint64_t p = 0; p < WRITTEN; p++) {
		struct mck_idx_record *r = &fx->recs[p];

		r->page = p;
		if (p % 7 == 0) {
			static const uint8_t zero[PS];

			r->flags = MCK_PAGE_ZERO; /* (with a zero page's digest, as stores write) */
			mck_blake3_pages(zero, PS, 1, r->digest);
			continue;
		}
		if (p % 11 == 0 && p > 1) {
			*r = fx->recs[1];
			r->page = p;
			memcpy(fx->model + p * PS, fx->model + PS, PS);
			continue;
		}
		for (unsigned i = 0; i < PS; i += 8) {
			uint64_t v = rnd(&rng_state);

			memcpy(page + i, &v, 8);
		}
		r->offset = end;
		r->length = PS;
		CHECK(pwrite(fx->fd, page, PS, (off_t)end) == (ssize_t)PS, "pwrite");
		end += PS;
		mck_blake3_pages(page, PS, 1, r->digest);
		memcpy(fx->model + p * PS, page, PS);
	}
	fx->src = (struct mck_read_source){.fd = fx->fd, .records = fx->recs, .nrecords = WRITTEN,
					   .pack_size = end};
}

static void drop(struct fixture *fx)
{
	close(fx->fd);
	free(fx->model);
}

/* A fresh arena served lazily, its drain held. */
static uint8_t *start(struct fixture *fx, struct mck_read_plan **plan, struct mck_lazy **l)
{
	uint8_t *arena = mmap(NULL, (size_t)NPAGES * PS, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct mck_read_fault f;
	int rc;

	CHECK(arena != MAP_FAILED, "mmap");
	rc = mck_read_plan_build(plan, &fx->src, 1, arena, PS, NPAGES, NULL, 0, 0, &f);
	CHECK(rc == 0, "plan: %d", rc);
	rc = mck_lazy_start(l, *plan, NULL, 0, 1, MCK_LAZY_VERIFY | MCK_LAZY_HOLD);
	CHECK(rc == 0, "start: %d", rc);
	return arena;
}

static void finish(uint8_t *arena, struct mck_read_plan *plan, struct mck_lazy *l)
{
	mck_lazy_close(l);
	mck_read_plan_free(plan);
	munmap(arena, (size_t)NPAGES * PS);
}

struct toucher {
	const uint8_t *arena, *model;
	uint64_t seed;
	int bad;
};

static void *touch(void *arg)
{
	struct toucher *t = arg;

	for (int i = 0; i < 200; i++) {
		uint64_t p = rnd(&t->seed) % NPAGES;

		t->bad += memcmp(t->arena + p * PS, t->model + p * PS, PS) != 0;
	}
	return NULL;
}

/* Two threads touching random pages of arena; the pages they found wrong. */
static int touch_in_two_threads(const uint8_t *arena, const uint8_t *model)
{
	struct toucher t[2];
	pthread_t tid[2];

	for (int i = 0; i < 2; i++) {
		t[i] = (struct toucher){.arena = arena, .model = model, .seed = rnd(&rng_state) | 1};
		pthread_create(&tid[i], NULL, touch, &t[i]);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(tid[i], NULL);
	return t[0].bad + t[1].bad;
}

static void test_serves_then_drains(struct test_ctx *ctx)
{
	struct fixture fx;
	struct mck_read_plan *plan;
	struct mck_lazy *l;
	struct mck_lazy_stats st;
	uint8_t *arena;
	int bad;

	(void)ctx;
	build(&fx);
	arena = start(&fx, &plan, &l);
	bad = touch_in_two_threads(arena, fx.model);
	CHECK(bad == 0, "pages served wrong: %d", bad);
	mck_lazy_get_stats(l, &st);
	CHECK(st.faults > 0 && st.drained == 0, "held: faults %llu, drained %llu",
	      (unsigned long long)st.faults, (unsigned long long)st.drained);
	mck_lazy_release(l);
	CHECK(mck_lazy_wait(l, 30000) == 0, "drain");
	mck_lazy_get_stats(l, &st);
	CHECK(st.state == MCK_LAZY_DRAINED && st.bad == 0, "state %d, bad %llu", st.state,
	      (unsigned long long)st.bad);
	CHECK(memcmp(arena, fx.model, (size_t)NPAGES * PS) == 0, "arena differs from the model");
	finish(arena, plan, l);
	drop(&fx);
}

static void test_dropped_read_zero(struct test_ctx *ctx)
{
	struct fixture fx;
	struct mck_read_plan *plan;
	struct mck_lazy *l;
	struct mck_lazy_stats st;
	uint8_t *arena;

	(void)ctx;
	build(&fx);
	arena = start(&fx, &plan, &l);
	CHECK(madvise(arena + 100 * PS, 50 * PS, MADV_DONTNEED) == 0, "madvise");
	mck_lazy_release(l);
	CHECK(mck_lazy_wait(l, 30000) == 0, "drain");
	mck_lazy_get_stats(l, &st);
	CHECK(st.removed == 50, "removed %llu", (unsigned long long)st.removed);
	memset(fx.model + 100 * PS, 0, 50 * PS);
	CHECK(memcmp(arena, fx.model, (size_t)NPAGES * PS) == 0, "a dropped page was refilled");
	finish(arena, plan, l);
	drop(&fx);
}

/* In a child: start, do `what`, touch page p; how the child ended. */
static int child_status(struct fixture *fx, int what, uint64_t p)
{
	pid_t pid = fork();
	int status = 0;

	if (pid == 0) {
		struct mck_read_plan *plan;
		struct mck_lazy *l;
		uint8_t *arena;

		alarm(20); /* a hang is a failure, not a stuck test run */
		signal(SIGBUS, SIG_DFL); /* the kernel's verdict, not a sanitizer's report of it */
		arena = start(fx, &plan, &l);
		if (what == 1)
			mck_lazy_kill_handler(l);
		else if (what == 2)
			close(mck_lazy_fd(l));
		usleep(100000);
		printf("# value %d\n", arena[p * PS + 5]);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	return status;
}

/* Whether this kernel poisons pages for a userfaultfd (Linux 6.6+): then a
 * damaged page is SIGBUS in its toucher, else the server aborts. */
static int kernel_poisons(void)
{
	struct uffdio_api api = {.api = UFFD_API};
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);

	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (fd < 0 || ioctl(fd, UFFDIO_API, &api) < 0)
		api.features = 0;
	if (fd >= 0)
		close(fd);
	return !!(api.features & (1ull << 14)); /* UFFD_FEATURE_POISON */
}

static void test_damaged_page_sigbus(struct test_ctx *ctx)
{
	struct fixture fx;
	uint8_t b;
	int status, want = kernel_poisons() ? SIGBUS : SIGABRT;

	(void)ctx;
	build(&fx);
	CHECK(pread(fx.fd, &b, 1, (off_t)fx.recs[3].offset + 9) == 1, "pread");
	b ^= 0x40;
	CHECK(pwrite(fx.fd, &b, 1, (off_t)fx.recs[3].offset + 9) == 1, "pwrite");
	fflush(stdout);
	status = child_status(&fx, 0, 3);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == want, "status %#x: want signal %d", status,
	      want);
	drop(&fx);
}

static void test_dead_handler_aborts(struct test_ctx *ctx)
{
	struct fixture fx;
	int status;

	(void)ctx;
	build(&fx);
	fflush(stdout);
	for (int what = 1; what <= 2; what++) {
		status = child_status(&fx, what, 200);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
		      "death %d: status %#x: want SIGABRT", what, status);
	}
	drop(&fx);
}

/* The fixture's records as an index file's bytes (a header, then the
 * records) and its digest, for mck_lazy_open; src then reads the records
 * from those bytes. */
static uint8_t *index_file(struct fixture *fx, struct mck_lazy_index *ix)
{
	size_t size = 48 + sizeof(fx->recs);
	uint8_t *buf = aligned_alloc(64, (size + 63) & ~(size_t)63);
	struct mck_blake3 h;

	CHECK(buf != NULL, "alloc");
	memset(buf, 0x5A, 48);
	memcpy(buf + 48, fx->recs, sizeof(fx->recs));
	mck_blake3_init(&h);
	mck_blake3_update(&h, buf, size);
	mck_blake3_final(&h, ix->digest);
	ix->data = buf;
	ix->size = size;
	fx->src.records = buf + 48;
	return buf;
}

static uint8_t *open_held(struct fixture *fx, const struct mck_lazy_index *ix,
			  struct mck_lazy **l)
{
	uint8_t *arena = mmap(NULL, (size_t)NPAGES * PS, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int rc;

	CHECK(arena != MAP_FAILED, "mmap");
	rc = mck_lazy_open(l, &fx->src, 1, ix, arena, PS, NPAGES, NULL, 0, 1,
			   MCK_LAZY_VERIFY | MCK_LAZY_HOLD);
	CHECK(rc == 0, "open: %d", rc);
	return arena;
}

/* mck_lazy_open: faults served by lookup before any plan (held: the index
 * check and the plan wait for the release), then checked, planned, drained. */
static void test_open_serves_by_lookup(struct test_ctx *ctx)
{
	struct fixture fx;
	struct mck_lazy_index ix;
	struct mck_lazy *l;
	struct mck_lazy_stats st;
	struct mck_read_fault f;
	uint8_t *arena, *buf;
	int bad;

	(void)ctx;
	build(&fx);
	buf = index_file(&fx, &ix);
	arena = open_held(&fx, &ix, &l);
	bad = touch_in_two_threads(arena, fx.model);
	CHECK(bad == 0, "pages served wrong: %d", bad);
	mck_lazy_get_stats(l, &st);
	CHECK(!mck_lazy_planned(l) && st.served > 0 && st.drained == 0,
	      "held: planned %d, served %llu, drained %llu", mck_lazy_planned(l),
	      (unsigned long long)st.served, (unsigned long long)st.drained);
	mck_lazy_release(l);
	CHECK(mck_lazy_wait(l, 30000) == 0, "drain");
	mck_lazy_get_stats(l, &st);
	CHECK(st.state == MCK_LAZY_DRAINED && st.bad == 0 && mck_lazy_planned(l), "state %d", st.state);
	CHECK(!mck_lazy_index_fault(l, &f), "a sound index reported damaged: %s", f.why);
	CHECK(memcmp(arena, fx.model, (size_t)NPAGES * PS) == 0, "arena differs from the model");
	mck_lazy_close(l);
	munmap(arena, (size_t)NPAGES * PS);
	free(buf);
	drop(&fx);
}

/* An index whose digest does not match, found after pages were served: the
 * served page keeps its (checked) bytes, the damage is reported, every page
 * not served is poisoned (SIGBUS; an abort on kernels that cannot poison). */
static void test_open_damaged_index(struct test_ctx *ctx)
{
	struct fixture fx;
	struct mck_lazy_index ix;
	uint8_t *buf;
	pid_t pid;
	int status = 0, want = kernel_poisons() ? SIGBUS : SIGABRT;

	(void)ctx;
	build(&fx);
	buf = index_file(&fx, &ix);
	ix.digest[7] ^= 1;
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		struct mck_lazy *l;
		struct mck_read_fault f;
		uint8_t *arena;
		int ok;

		alarm(20);
		signal(SIGBUS, SIG_DFL);
		arena = open_held(&fx, &ix, &l);
		ok = memcmp(arena + 1 * PS, fx.model + 1 * PS, PS) == 0; /* served */
		mck_lazy_release(l);
		if (!ok || mck_lazy_wait(l, 10000) != 0 || !mck_lazy_index_fault(l, &f) ||
		    f.record != MCK_LAZY_WHOLE_FILE || !strstr(f.why, "digest"))
			_exit(3);
		if (memcmp(arena + 1 * PS, fx.model + 1 * PS, PS) != 0)
			_exit(4);
		printf("# value %d\n", arena[400 * PS + 5]); /* never served */
		_exit(0);
	}
	waitpid(pid, &status, 0);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == want, "status %#x: want signal %d", status,
	      want);
	free(buf);
	drop(&fx);
}

/* With a prefetch order, a sequential reader: served in growing runs before
 * the plan, in batches at the front of the order after (timing decides
 * which); the arena equals the model either way, dropped pages aside. */
static void test_open_prefetch_reader(struct test_ctx *ctx)
{
	struct fixture fx;
	struct mck_lazy_index ix;
	struct mck_lazy *l;
	struct mck_lazy_stats st;
	uint64_t order[NPAGES];
	uint8_t *arena, *buf;
	int rc;

	(void)ctx;
	build(&fx);
	buf = index_file(&fx, &ix);
	for (uint64_t i = 0; i < NPAGES; i++)
		order[i] = (i + 200) % NPAGES; /* from page 200 on, then wrapping */
	for (int round = 0; round < 3; round++) {
		arena = mmap(NULL, (size_t)NPAGES * PS, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(arena != MAP_FAILED, "mmap");
		rc = mck_lazy_open(&l, &fx.src, 1, &ix, arena, PS, NPAGES, order, NPAGES, 1,
				   MCK_LAZY_VERIFY);
		CHECK(rc == 0, "open: %d", rc);
		for (uint64_t i = 0; i < NPAGES; i++) {
			uint64_t p = order[i];

			CHECK(memcmp(arena + p * PS, fx.model + p * PS, PS) == 0, "page %llu",
			      (unsigned long long)p);
		}
		CHECK(mck_lazy_wait(l, 30000) == 0, "drain");
		mck_lazy_get_stats(l, &st);
		CHECK(st.state == MCK_LAZY_DRAINED && st.bad == 0, "state %d", st.state);
		CHECK(memcmp(arena, fx.model, (size_t)NPAGES * PS) == 0, "arena differs");
		mck_lazy_close(l);
		munmap(arena, (size_t)NPAGES * PS);
	}
	free(buf);
	drop(&fx);
}

static const char *need_uffd(const struct test_ctx *ctx)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);

	(void)ctx;
	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (fd < 0)
		return "no userfaultfd here";
	close(fd);
	return NULL;
}

static const struct test_case tests[] = {
	{"serves_then_drains", test_serves_then_drains, {need_uffd}},
	{"dropped_read_zero", test_dropped_read_zero, {need_uffd}},
	{"damaged_page_sigbus", test_damaged_page_sigbus, {need_uffd}},
	{"dead_handler_aborts", test_dead_handler_aborts, {need_uffd}},
	{"open_serves_by_lookup", test_open_serves_by_lookup, {need_uffd}},
	{"open_damaged_index", test_open_damaged_index, {need_uffd}},
	{"open_prefetch_reader", test_open_prefetch_reader, {need_uffd}},
};

int main(int argc, char **argv)
{
	struct test_ctx ctx = {.backend = -1};

	test_start(argc, argv, "test_lazy_restore");
	RUN_TESTS(tests, &ctx);
	return test_finish("test_lazy_restore");
}
