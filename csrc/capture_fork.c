/* capture_fork.c: fork snapshots. The parent checks the job and forks; the
 * child writes the dirty pages of its copy-on-write image into the epoch's
 * pack and index files and reports over a pipe; the parent reaps it.
 *
 * Everything the child runs is below child_main(). Its rules, because it may
 * be forked while another thread of the parent holds any lock (malloc's,
 * stdio's, the interpreter's): no allocation, no stdio, no locks, no Python;
 * only system calls and the async-signal-safe memcpy/memcmp/memset, and the
 * core's BLAKE3, which allocates nothing. It leaves only by _exit(), which
 * runs no atexit handler and flushes no parent stdio buffer a second time.
 * For a large epoch it forks one helper process of its own to hash pages
 * beside it (start_work): the child has one thread, so that fork is safe. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "pack_pages.h"

#ifndef __NR_close_range
#define __NR_close_range 436
#endif

/* _Fork (glibc >= 2.34) forks without running pthread_atfork handlers, in
 * either process. Elsewhere, a bare clone(SIGCHLD) does the same; the child
 * then must not use glibc's idea of its own thread id, and does not. */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define mck_raw_fork() _Fork()
#else
static pid_t mck_raw_fork(void)
{
	return (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
}
#endif

/* The part of mck_fork_result the child sends. */
_Static_assert(sizeof(struct mck_fork_result) <= PIPE_BUF, "one atomic pipe write");

/* ---- scratch layout ------------------------------------------------------ */

struct fork_scratch {
	uint8_t *digests;           /* 32 bytes a page (alone: struct fork_work's) */
	uint64_t *nonzero;          /* 8 bytes a page (alone: its nonzero flags) */
	struct mck_idx_record *recs;   /* n records at most */
	uint64_t *table;            /* dedup: record index + 1, 0 = empty */
	size_t table_cap;           /* a power of two >= 2n */
	struct iovec *iov;          /* MCK_IOV_MAX */
	uint8_t *gather;            /* MCK_BLAKE3_SUBTREE_BYTES, for hashing the index */
};

size_t mck_fork_scratch_size(size_t n)
{
	return n * 32 + n * sizeof(uint64_t) + n * sizeof(struct mck_idx_record) +
	       mck_dedup_cap(n) * sizeof(uint64_t) + MCK_IOV_MAX * sizeof(struct iovec) +
	       MCK_BLAKE3_SUBTREE_BYTES;
}

static void scratch_layout(const struct mck_fork_job *job, struct fork_scratch *s)
{
	uint8_t *p = job->scratch;
	size_t n = job->n;

	s->digests = p;
	p += n * 32;
	s->nonzero = (uint64_t *)p;
	p += n * sizeof(uint64_t);
	s->recs = (struct mck_idx_record *)p;
	p += n * sizeof(struct mck_idx_record);
	s->table_cap = mck_dedup_cap(n);
	s->table = (uint64_t *)p;
	p += s->table_cap * sizeof(uint64_t);
	s->iov = (struct iovec *)p;
	p += MCK_IOV_MAX * sizeof(struct iovec);
	s->gather = p;
}

/* ---- the child ----------------------------------------------------------- */

static double elapsed_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* Close every fd but the three the child needs: a child holding the parent's
 * other fds (pipe write ends, sockets) would delay the EOF someone else waits
 * for until the epoch is written. Best effort: without close_range (< 5.9)
 * they stay open until _exit. */
static void close_other_fds(int a, int b, int c)
{
	int keep[3] = {a, b, c};
	unsigned lo = 0;

	for (int i = 0; i < 3; i++) /* three elements: a sort by hand */
		for (int j = i + 1; j < 3; j++)
			if (keep[j] < keep[i]) {
				int t = keep[i];
				keep[i] = keep[j];
				keep[j] = t;
			}
	for (int i = 0; i < 3; i++) {
		if (keep[i] < 0 || (unsigned)keep[i] < lo)
			continue;
		if ((unsigned)keep[i] > lo)
			syscall(__NR_close_range, lo, (unsigned)keep[i] - 1, 0u);
		lo = (unsigned)keep[i] + 1;
	}
	syscall(__NR_close_range, lo, ~0u, 0u);
}

/* "Private_Clean:      123 kB" and "Private_Dirty:" of smaps_rollup, in
 * bytes; 0 when unreadable (an old kernel, no /proc). */
static uint64_t private_bytes(void)
{
	char buf[4096];
	size_t len = 0;
	uint64_t total = 0;
	int fd = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	while (len < sizeof(buf) - 1) {
		ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = 0;
	for (char *line = buf; *line; ) {
		if (!strncmp(line, "Private_Clean:", 14) || !strncmp(line, "Private_Dirty:", 14)) {
			uint64_t kb = 0;

			for (char *q = line + 14; *q && *q != '\n'; q++)
				if (*q >= '0' && *q <= '9')
					kb = kb * 10 + (uint64_t)(*q - '0');
			total += kb * 1024;
		}
		while (*line && *line != '\n')
			line++;
		if (*line)
			line++;
	}
	return total;
}

/* The pages go in windows: each window's zero tests and digests (the CPU),
 * then its placement (serial, in page order) and the pwritev of its new
 * pages, whose writeback starts at once. With two CPUs and a large epoch a
 * helper process forked from this child (the child has one thread, so a fork
 * here is safe; the helper sees the same copy-on-write image) hashes windows
 * too, claimed one at a time from a counter in a shared mapping, so the
 * digests of later windows are made while the child writes earlier ones. No
 * thread: the child may not start one (see the top). */
#define FORK_WINDOW 2048 /* pages: 8 MiB of 4 KiB pages */
/* Below this many bytes the child works alone: a helper costs a fork of the
 * child (its page tables: ~10-40 ms for a process of a few GiB), about what
 * hashing 64 MiB costs here. */
#define FORK_SPLIT_BYTES ((uint64_t)128 << 20)

struct fork_work {
	const struct mck_fork_job *job;
	size_t nwin;
	uint8_t *nz;              /* 1 a page of the job: nonzero */
	uint8_t *digests;         /* 32 a page: window w's nonzero pages' digests, packed from w's first slot */
	_Atomic uint64_t *claimed; /* helper mode: windows handed out so far */
	_Atomic unsigned char *done; /* helper mode: 1 a window, set once hashed */
	pid_t helper;             /* -1: none */
	void *map;                /* the shared mapping (helper mode) */
	size_t map_len;
};

static void hash_window(struct fork_work *fw, size_t w)
{
	const struct mck_fork_job *job = fw->job;
	const uint8_t *base = job->base;
	size_t ps = job->page_size, lo = w * FORK_WINDOW, k = 0;
	size_t hi = lo + FORK_WINDOW < job->n ? lo + FORK_WINDOW : job->n;
	uint64_t nonzero[FORK_WINDOW];

	for (size_t i = lo; i < hi; i++) {
		fw->nz[i] = !mck_page_is_zero(base + job->pages[i] * ps, ps);
		if (fw->nz[i])
			nonzero[k++] = job->pages[i];
	}
	mck_blake3_pages_at(base, ps, nonzero, k, fw->digests + 32 * lo);
	if (fw->done)
		atomic_store_explicit(&fw->done[w], 1, memory_order_release);
}

/* Hash the windows nobody claimed yet, one at a time; true if one was. */
static bool claim_and_hash(struct fork_work *fw)
{
	uint64_t w = atomic_fetch_add_explicit(fw->claimed, 1, memory_order_relaxed);

	if (w >= fw->nwin)
		return false;
	hash_window(fw, (size_t)w);
	return true;
}

/* Set up the work; helper mode when the epoch is large and two CPUs are
 * ours, and the shared mapping and the fork succeed (else the child works
 * alone, in the scratch: costing nothing). */
static void start_work(struct fork_work *fw, const struct mck_fork_job *job, struct fork_scratch *s)
{
	cpu_set_t cpus;
	pid_t me = getpid();

	fw->job = job;
	fw->nwin = (job->n + FORK_WINDOW - 1) / FORK_WINDOW;
	fw->nz = (uint8_t *)s->nonzero; /* n * 8 bytes: n are enough */
	fw->digests = s->digests;
	fw->claimed = NULL;
	fw->done = NULL;
	fw->helper = -1;
	fw->map = MAP_FAILED;
	if ((uint64_t)job->n * job->page_size < FORK_SPLIT_BYTES || fw->nwin < 2 ||
	    sched_getaffinity(0, sizeof(cpus), &cpus) < 0 || CPU_COUNT(&cpus) < 2)
		return;
	fw->map_len = 64 + fw->nwin + job->n * 33;
	fw->map = mmap(NULL, fw->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (fw->map == MAP_FAILED)
		return;
	fw->claimed = (_Atomic uint64_t *)fw->map;
	fw->done = (_Atomic unsigned char *)((uint8_t *)fw->map + 64);
	fw->nz = (uint8_t *)fw->map + 64 + fw->nwin;
	fw->digests = fw->nz + job->n;
	fw->helper = mck_raw_fork();
	if (fw->helper == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != me)
			_exit(1);
		while (claim_and_hash(fw))
			;
		_exit(0);
	}
	if (fw->helper < 0) { /* alone after all: back to the scratch */
		munmap(fw->map, fw->map_len);
		fw->map = MAP_FAILED;
		fw->claimed = NULL;
		fw->done = NULL;
		fw->nz = (uint8_t *)s->nonzero;
		fw->digests = s->digests;
	}
}

/* Window w hashed, by this child if it must: 0, or -ECHILD if the helper
 * died holding it. */
static int window_ready(struct fork_work *fw, size_t w)
{
	if (!fw->done) {
		hash_window(fw, w);
		return 0;
	}
	while (!atomic_load_explicit(&fw->done[w], memory_order_acquire)) {
		int status;

		if (claim_and_hash(fw))
			continue; /* one more window hashed here meanwhile */
		/* gone (reaped here, or by the kernel when SIGCHLD is ignored:
		 * ECHILD): it can no longer finish w */
		if (waitpid(fw->helper, &status, WNOHANG) != 0) {
			fw->helper = -1;
			if (!atomic_load_explicit(&fw->done[w], memory_order_acquire))
				return -ECHILD;
			break;
		}
		struct timespec nap = {0, 20000}; /* the helper is hashing w: 20 us */

		nanosleep(&nap, NULL);
	}
	return 0;
}

/* Reap the helper (killed first if the epoch failed) and drop the mapping.
 * Its exit status does not matter: every window placed was marked done. */
static int end_work(struct fork_work *fw, int rc)
{
	if (fw->helper > 0) {
		if (rc < 0)
			kill(fw->helper, SIGKILL);
		while (waitpid(fw->helper, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (fw->map != MAP_FAILED)
		munmap(fw->map, fw->map_len);
	return rc;
}

/* The pack's writes: runs of new pages (those placed at the next free
 * offset: dedup hits point backwards) gathered in s->iov, written at each
 * window's end. */
struct pack_out {
	uint64_t next;     /* the next new page's offset */
	uint64_t batch_off; /* where s->iov's bytes go */
	int cnt;
};

static int pack_flush(const struct mck_fork_job *job, struct fork_scratch *s, struct pack_out *o)
{
	int rc;

	if (!o->cnt)
		return 0;
	rc = mck_write_all_iov(job->pack_fd, s->iov, o->cnt, o->batch_off);
	if (rc < 0)
		return rc;
	/* its writeback starts now: the final fdatasync finds little left
	 * (best effort, as in the epoch writer) */
	sync_file_range(job->pack_fd, (off_t)o->batch_off, (off_t)(o->next - o->batch_off),
			SYNC_FILE_RANGE_WRITE);
	o->batch_off = o->next;
	o->cnt = 0;
	return 0;
}

static int pack_add(const struct mck_fork_job *job, struct fork_scratch *s, struct pack_out *o,
		    const struct mck_idx_record *rec)
{
	size_t ps = job->page_size;
	uint8_t *addr;

	if ((rec->flags & MCK_PAGE_ZERO) || rec->offset != o->next)
		return 0;
	addr = (uint8_t *)job->base + rec->page * ps;
	if (o->cnt) {
		struct iovec *last = &s->iov[o->cnt - 1];

		if ((uint8_t *)last->iov_base + last->iov_len == addr && last->iov_len + ps <= MCK_IOV_CAP) {
			last->iov_len += ps;
			o->next += ps;
			return 0;
		}
	}
	if (o->cnt == MCK_IOV_MAX) {
		int rc = pack_flush(job, s, o);

		if (rc < 0)
			return rc;
	}
	s->iov[o->cnt].iov_base = addr;
	s->iov[o->cnt++].iov_len = ps;
	o->next += ps;
	return 0;
}

/* Elide, hash, dedup, place and write the pages, window by window, by the
 * rules of pack_pages.h (the epoch writer's, step for step): records and
 * counts in res, the pack's end in *pack_end. Only this epoch's records are
 * written to: the scratch is reused, and past res->records it holds an
 * earlier epoch's. No digest of the whole pack: since format 1.2 each image
 * is covered by its record's digest alone. */
static int write_pages(const struct mck_fork_job *job, struct fork_scratch *s,
		       struct mck_fork_result *res, uint64_t *pack_end)
{
	struct mck_dedup table = {s->table, s->table_cap};
	struct pack_out out = {job->pack_off, job->pack_off, 0};
	struct fork_work fw;
	size_t ps = job->page_size;
	uint64_t r = 0, off = job->pack_off;
	uint8_t zero_digest[32];
	int rc = 0;

	if (job->incremental)
		mck_zero_digest(ps, zero_digest);
	memset(s->table, 0, s->table_cap * sizeof(uint64_t));
	start_work(&fw, job, s);
	for (size_t w = 0; w < fw.nwin && rc == 0; w++) {
		size_t lo = w * FORK_WINDOW, hi = lo + FORK_WINDOW < job->n ? lo + FORK_WINDOW : job->n;
		size_t j = lo; /* the next digest slot of the window */

		rc = window_ready(&fw, w);
		for (size_t i = lo; i < hi && rc == 0; i++) {
			uint64_t p = job->pages[i];

			if (fw.nz[i]) {
				if (mck_place_page(&table, s->recs, r, p, fw.digests + 32 * j++, ps, &off))
					res->stored++;
				else
					res->dedup++;
				rc = pack_add(job, s, &out, &s->recs[r++]);
			} else {
				res->zero++;
				if (job->incremental)
					mck_zero_record(&s->recs[r++], p, zero_digest);
			}
		}
		if (rc == 0)
			rc = pack_flush(job, s, &out);
	}
	rc = end_work(&fw, rc);
	res->records = r;
	*pack_end = off;
	return rc;
}

static int report(int fd, const struct mck_fork_result *res)
{
	const uint8_t *p = (const uint8_t *)res;
	size_t left = sizeof(*res);

	while (left) {
		ssize_t w = write(fd, p, left);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		p += w;
		left -= (size_t)w;
	}
	return 0;
}

static _Noreturn void child_main(const struct mck_fork_job *job, int result_fd,
				 pid_t parent, const struct timespec *t_fork)
{
	struct mck_fork_result res;
	struct fork_scratch s;
	uint64_t pack_end = 0;
	int rc, stage;

	memset(&res, 0, sizeof(res));
	/* die with the thread that forked us; and if it is gone already
	 * (reparented before the prctl took), nobody waits for this epoch */
	stage = MCK_FORK_STAGE_SETUP;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) {
		rc = -errno;
		goto fail;
	}
	if (getppid() != parent)
		_exit(MCK_FORK_STAGE_SETUP);
	close_other_fds(job->pack_fd, job->idx_fd, result_fd);

	scratch_layout(job, &s);
	stage = MCK_FORK_STAGE_PACK;
	rc = write_pages(job, &s, &res, &pack_end);
	if (rc < 0)
		goto fail;
	res.pack_size = pack_end;

	stage = MCK_FORK_STAGE_INDEX;
	rc = mck_write_index(job->idx_fd, job->idx_header, s.recs, res.records, res.idx_digest,
			     s.gather);
	if (rc < 0)
		goto fail;
	res.idx_size = MCK_FORK_IDX_HEADER_SIZE + res.records * sizeof(struct mck_idx_record);

	stage = MCK_FORK_STAGE_SYNC;
	rc = mck_sync_fd(job->pack_fd);
	if (rc == 0)
		rc = mck_sync_fd(job->idx_fd);
	if (rc < 0)
		goto fail;

	res.extra_bytes = private_bytes();
	res.child_seconds = elapsed_since(t_fork);
	res.stage = MCK_FORK_OK;
	if (report(result_fd, &res) < 0)
		_exit(MCK_FORK_STAGE_REPORT);
	_exit(0);
fail:
	res.error = -rc;
	res.stage = stage;
	res.child_seconds = elapsed_since(t_fork);
	report(result_fd, &res);
	_exit(stage);
}

/* ---- the parent ---------------------------------------------------------- */

static int check_job(const struct mck_fork_job *job)
{
	size_t ps = job->page_size;

	if (!job->base || ps < 512 || (ps & (ps - 1)) || ps > UINT32_MAX)
		return -EINVAL;
	if (job->n && !job->pages)
		return -EINVAL;
	if (job->pack_fd < 0 || job->idx_fd < 0 || job->pack_off != job->pack_header_len ||
	    (job->pack_header_len && !job->pack_header))
		return -EINVAL;
	if (!job->scratch || job->scratch_len < mck_fork_scratch_size(job->n))
		return -EINVAL;
	for (size_t i = 0; i < job->n; i++)
		if (job->pages[i] >= job->npages || (i && job->pages[i] <= job->pages[i - 1]))
			return -EINVAL;
	return 0;
}

int mck_fork_start(const struct mck_fork_job *job, struct mck_fork_child *out)
{
	sigset_t all, old;
	struct timespec t_fork;
	pid_t parent = getpid(), pid;
	int pfd[2], rc, err;

	out->pid = -1;
	out->fd = -1;
	out->owner = parent;
	rc = check_job(job);
	if (rc < 0)
		return rc;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	/* the child starts with every signal blocked: a signal meant for the
	 * parent (SIGINT to the process group, a timer) must not run one of the
	 * parent's handlers in the child */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	clock_gettime(CLOCK_MONOTONIC, &t_fork);
	/* _Fork, not fork: no atfork handler runs, in either process (they may
	 * allocate, and the child must not) */
	pid = mck_raw_fork();
	if (pid == 0) {
		close(pfd[0]);
		child_main(job, pfd[1], parent, &t_fork);
	}
	err = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	close(pfd[1]);
	if (pid < 0) {
		close(pfd[0]);
		return -err;
	}
	out->pid = pid;
	out->fd = pfd[0];
	return 0;
}

static void reap(struct mck_fork_child *c, struct mck_fork_result *res)
{
	int status;
	pid_t r;

	do
		r = waitpid(c->pid, &status, 0);
	while (r < 0 && errno == EINTR);
	if (res) {
		res->exit_code = -1;
		res->term_signal = 0;
		if (r == c->pid && WIFEXITED(status))
			res->exit_code = WEXITSTATUS(status);
		else if (r == c->pid && WIFSIGNALED(status))
			res->term_signal = WTERMSIG(status);
		/* r < 0 (ECHILD): reaped elsewhere (SIGCHLD ignored, a waitpid(-1)
		 * in another thread): how it ended is unknown */
	}
	c->pid = -1;
}

static int result_code(const struct mck_fork_result *res)
{
	if (!res->reported)
		return -ECHILD;
	if (res->stage != MCK_FORK_OK || res->error)
		return res->error ? -res->error : -EIO;
	return 0;
}

/* In a fork() child of the process that forked c (see memckpt.h): let go of
 * this process's copy of the pipe and nothing else. True if so. */
static bool forget_if_inherited(struct mck_fork_child *c)
{
	if (c->owner == getpid())
		return false;
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	c->pid = -1;
	return true;
}

int mck_fork_read(struct mck_fork_child *c, struct mck_fork_result *res)
{
	uint8_t *p = (uint8_t *)res;
	size_t got = 0;
	int pid = c->pid;

	if (forget_if_inherited(c))
		return -ECHILD;
	if (c->fd < 0)
		return -ESRCH;
	memset(res, 0, sizeof(*res));
	while (got < sizeof(*res)) {
		ssize_t r = read(c->fd, p + got, sizeof(*res) - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(c->fd);
	c->fd = -1;
	if (got < sizeof(*res))
		memset(res, 0, sizeof(*res));
	res->pid = pid;
	res->exit_code = -1;
	res->reported = got == sizeof(*res);
	if (!res->reported) {
		/* EOF without a whole result: the child is dead or dying, and
		 * how it died is the error; reap it now to know */
		res->stage = MCK_FORK_STAGE_DIED;
		res->error = ECHILD;
		if (pid >= 0)
			reap(c, res);
	}
	return result_code(res);
}

int mck_fork_wait(struct mck_fork_child *c, struct mck_fork_result *res)
{
	if (forget_if_inherited(c))
		return -ECHILD;
	if (c->fd >= 0)
		mck_fork_read(c, res);
	else if (c->pid < 0)
		return -ESRCH;
	/* else: mck_fork_read filled *res already */
	if (c->pid >= 0)
		reap(c, res);
	return result_code(res);
}

int mck_fork_kill(struct mck_fork_child *c)
{
	int rc = 0;

	if (forget_if_inherited(c))
		return -ECHILD;
	if (c->pid >= 0) {
		if (kill(c->pid, SIGKILL) < 0 && errno != ESRCH)
			rc = -errno;
		reap(c, NULL);
	}
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	return rc;
}
