/* test_fork.c: fork snapshots (mck_fork_start/wait/kill).
 *  - the files the child writes hold the arena as it was at the fork, bit for
 *    bit, while the parent rewrites every page right after the fork (also with
 *    the child stopped until the parent is done, so the rewrite surely comes
 *    first); full and incremental; zero pages; duplicate pages; the counts,
 *    sizes and digests reported match the files;
 *  - extra_bytes sees the pages the parent rewrote while the child ran;
 *  - a child that fails (read-only pack or index fd) reports errno and stage;
 *    a child killed mid-write gives -ECHILD and the signal; mck_fork_kill;
 *  - bad jobs are refused before any fork; the child closes the parent's
 *    other fds;
 *  - mck_fork_read then mck_fork_wait; read of a killed child reaps it;
 *  - 1,000 fork/wait cycles (and 100 fork/kill): fd count flat, no child left.
 *
 * Exit 0 = pass, 1 = fail. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"
#include "helpers.h"

#define NPAGES 2048u /* 8 MiB with 4 KiB pages */
#define HDR_LEN 32u

static size_t ps;
static char dir[] = "/tmp/mck-test-fork-XXXXXX";
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

struct record {
	uint64_t page, offset;
	uint32_t length, flags;
	uint8_t digest[32];
};

/* The epoch's two files, opened read-write (or as asked) and empty. */
struct files {
	char pack[128], idx[128];
	int pack_fd, idx_fd;
	uint8_t hdr[HDR_LEN];
	uint8_t idx_hdr[MCK_FORK_IDX_HEADER_SIZE];
};

static void files_open(struct files *f, int pack_flags, int idx_flags)
{
	snprintf(f->pack, sizeof(f->pack), "%s/e.pack", dir);
	snprintf(f->idx, sizeof(f->idx), "%s/e.idx", dir);
	for (unsigned i = 0; i < HDR_LEN; i++)
		f->hdr[i] = (uint8_t)(0xA0 + i);
	for (unsigned i = 0; i < MCK_FORK_IDX_HEADER_SIZE; i++)
		f->idx_hdr[i] = (uint8_t)(0x10 + i);
	int fd = open(f->pack, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(fd >= 0 && pwrite(fd, f->hdr, HDR_LEN, 0) == HDR_LEN, "pack header");
	close(fd);
	fd = open(f->idx, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	close(fd);
	f->pack_fd = open(f->pack, pack_flags | O_CLOEXEC);
	f->idx_fd = open(f->idx, idx_flags | O_CLOEXEC);
	CHECK(f->pack_fd >= 0 && f->idx_fd >= 0, "opening the files: %s", strerror(errno));
}

static void files_close(struct files *f)
{
	close(f->pack_fd);
	close(f->idx_fd);
	unlink(f->pack);
	unlink(f->idx);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint8_t *buf;

	*len = 0;
	if (fd < 0)
		return NULL;
	buf = read_whole_fd(fd, len);
	close(fd);
	return buf;
}

struct job_mem {
	void *scratch;
	size_t len;
};

static void job_init(struct mck_fork_job *job, struct job_mem *m, const void *base,
		     const uint64_t *pages, size_t n, int incremental, struct files *f)
{
	memset(job, 0, sizeof(*job));
	job->base = base;
	job->page_size = ps;
	job->npages = NPAGES;
	job->pages = pages;
	job->n = n;
	job->incremental = incremental;
	job->pack_fd = f->pack_fd;
	job->pack_off = HDR_LEN;
	job->pack_header = f->hdr;
	job->pack_header_len = HDR_LEN;
	job->idx_fd = f->idx_fd;
	memcpy(job->idx_header, f->idx_hdr, sizeof(f->idx_hdr));
	m->len = mck_fork_scratch_size(n);
	m->scratch = malloc(m->len);
	job->scratch = m->scratch;
	job->scratch_len = m->len;
}

/* Fill the arena: page p is zero (p % 7 == 3), a copy of one of 5 shared
 * contents (p % 7 == 5), or unique to p and `salt`. */
static void fill(uint8_t *a, uint64_t salt)
{
	for (size_t p = 0; p < NPAGES; p++) {
		uint64_t *w = (uint64_t *)(a + p * ps);
		for (size_t i = 0; i < ps / 8; i++) {
			if (p % 7 == 3)
				w[i] = 0;
			else if (p % 7 == 5)
				w[i] = (p % 5 + 1) * 0x0101010101010101ULL + i;
			else
				w[i] = salt * 0x100000001b3ULL + p * 1315423911u + i;
		}
	}
}

/* Check the files against ref (the arena at fork time) for the given pages. */
static void check_files(const char *what, struct files *f, const uint8_t *ref,
			const uint64_t *pages, size_t n, int incremental,
			const struct mck_fork_result *res)
{
	size_t plen, ilen, nz = 0, zero = 0, distinct = 0, r = 0;
	uint8_t *pack = read_file(f->pack, &plen), *idx = read_file(f->idx, &ilen);
	uint8_t d[32], zd[32];
	uint8_t *zpage = calloc(1, ps);
	uint8_t (*seen)[32] = calloc(n ? n : 1, 32);

	mck_blake3_pages(zpage, ps, 1, zd);
	if (!pack || !idx) {
		CHECK(0, "%s: files unreadable", what);
		goto out;
	}
	CHECK(plen == res->pack_size && ilen == res->idx_size,
	      "%s: sizes: pack %zu vs %llu, idx %zu vs %llu", what, plen,
	      (unsigned long long)res->pack_size, ilen, (unsigned long long)res->idx_size);
	CHECK(!memcmp(pack, f->hdr, HDR_LEN), "%s: pack header changed", what);
	memset(d, 0, sizeof(d));
	CHECK(!memcmp(d, res->pack_digest, 32), "%s: no pack digest (format 1.2)", what);
	mck_blake3_pages(idx, ilen, 1, d);
	CHECK(!memcmp(d, res->idx_digest, 32), "%s: idx digest", what);
	uint64_t count;
	memcpy(&count, idx + 32, 8);
	CHECK(!memcmp(idx, f->idx_hdr, 32) && !memcmp(idx + 40, f->idx_hdr + 40, 8),
	      "%s: idx header template not kept", what);
	CHECK(count == res->records && ilen == MCK_FORK_IDX_HEADER_SIZE + count * 56,
	      "%s: idx count %llu, records %llu, %zu bytes", what, (unsigned long long)count,
	      (unsigned long long)res->records, ilen);
	const struct record *rec = (const struct record *)(idx + MCK_FORK_IDX_HEADER_SIZE);
	for (size_t i = 0; i < n; i++) {
		const uint8_t *src = ref + pages[i] * ps;
		int is_zero = !memcmp(src, zpage, ps);

		mck_blake3_pages(src, ps, 1, d);
		if (is_zero) {
			zero++;
			if (!incremental)
				continue;
		} else {
			size_t s;
			nz++;
			for (s = 0; s < distinct && memcmp(seen[s], d, 32); s++)
				;
			if (s == distinct)
				memcpy(seen[distinct++], d, 32);
		}
		if (r >= count) {
			CHECK(0, "%s: page %llu has no record", what, (unsigned long long)pages[i]);
			break;
		}
		const struct record *e = &rec[r++];
		CHECK(e->page == pages[i], "%s: record %zu is page %llu, not %llu", what, r - 1,
		      (unsigned long long)e->page, (unsigned long long)pages[i]);
		if (is_zero) {
			CHECK(e->flags == MCK_FORK_FLAG_ZERO && e->offset == 0 && e->length == 0 &&
			      !memcmp(e->digest, zd, 32), "%s: zero page %llu's record", what,
			      (unsigned long long)pages[i]);
			continue;
		}
		CHECK(e->flags == 0 && e->length == ps && !memcmp(e->digest, d, 32),
		      "%s: page %llu's record", what, (unsigned long long)pages[i]);
		CHECK(e->offset >= HDR_LEN && e->offset + ps <= plen &&
		      !memcmp(pack + e->offset, src, ps),
		      "%s: page %llu: stored bytes differ from the arena at fork time", what,
		      (unsigned long long)pages[i]);
	}
	CHECK(r == count, "%s: %zu records expected, %llu written", what, r, (unsigned long long)count);
	CHECK(res->zero == zero && res->stored == distinct && res->dedup == nz - distinct,
	      "%s: counts zero %llu/%zu stored %llu/%zu dedup %llu/%zu", what,
	      (unsigned long long)res->zero, zero, (unsigned long long)res->stored, distinct,
	      (unsigned long long)res->dedup, nz - distinct);
	CHECK(plen == HDR_LEN + distinct * ps, "%s: pack of %zu bytes for %zu pages", what, plen,
	      distinct);
out:
	free(pack);
	free(idx);
	free(zpage);
	free(seen);
}

/* One snapshot: arena filled with `salt`, pages chosen with probability
 * 1/every (all if every == 1), the parent rewriting every page after the fork
 * (child stopped meanwhile if `stop`). */
static void snapshot_case(const char *what, int incremental, unsigned every, int stop)
{
	struct mck_region reg;
	struct files f;
	struct mck_fork_job job;
	struct job_mem m;
	struct mck_fork_child c;
	struct mck_fork_result res;
	uint64_t *pages = malloc(NPAGES * sizeof(uint64_t));
	uint8_t *ref = malloc(NPAGES * ps);
	size_t n = 0;
	int rc;

	CHECK(mck_region_create(&reg, NPAGES * ps, 0) == 0, "region");
	fill(reg.addr, rnd(&rng));
	memcpy(ref, reg.addr, NPAGES * ps);
	for (size_t p = 0; p < NPAGES; p++)
		if (every == 1 || rnd(&rng) % every == 0)
			pages[n++] = p;
	files_open(&f, O_RDWR, O_RDWR);
	job_init(&job, &m, reg.addr, pages, n, incremental, &f);
	rc = mck_fork_start(&job, &c);
	CHECK(rc == 0, "%s: start: %s", what, strerror(-rc));
	if (rc == 0) {
		/* The child measures its private memory after it wrote and synced its
		 * index: stopped before its index exists, it measures after the
		 * rewrite below. A child that got that far first (it may, on a slow
		 * or loaded machine, before the SIGSTOP lands) measured before it. */
		int measured_after = 0;

		if (stop) {
			siginfo_t si;
			struct stat st;

			kill(c.pid, SIGSTOP);
			memset(&si, 0, sizeof(si));
			CHECK(waitid(P_PID, (id_t)c.pid, &si, WSTOPPED | WEXITED | WNOWAIT) == 0,
			      "%s: waitid: %s", what, strerror(errno));
			measured_after = si.si_code == CLD_STOPPED && fstat(f.idx_fd, &st) == 0 &&
					 st.st_size == 0;
		}
		/* every page changes, zero pages too, and pages shared become unique */
		fill(reg.addr, rnd(&rng));
		memset(m.scratch, 0xEE, m.len); /* the parent's scratch is not the child's */
		if (stop)
			kill(c.pid, SIGCONT);
		rc = mck_fork_wait(&c, &res);
		CHECK(rc == 0, "%s: wait: %s (stage %d, signal %d)", what, strerror(-rc), res.stage,
		      res.term_signal);
		CHECK(res.exit_code == 0 && res.reported == 1 && c.pid == -1 && c.fd == -1,
		      "%s: exit %d reported %d", what, res.exit_code, res.reported);
		if (rc == 0)
			check_files(what, &f, ref, pages, n, incremental, &res);
		if (measured_after)
			/* the child's image kept every page the parent rewrote */
			CHECK(res.extra_bytes >= NPAGES * ps, "%s: extra_bytes %llu < the %u bytes rewritten",
			      what, (unsigned long long)res.extra_bytes, NPAGES * (unsigned)ps);
		else if (stop)
			printf("  NOTE %s: the child wrote its index before it could be stopped: its "
			       "extra_bytes (measured before the rewrite) not checked\n", what);
		printf("  %s: %zu pages, %llu stored, %llu dedup, %llu zero, child %.1f ms, extra %llu KiB\n",
		       what, n, (unsigned long long)res.stored, (unsigned long long)res.dedup,
		       (unsigned long long)res.zero, res.child_seconds * 1e3,
		       (unsigned long long)res.extra_bytes >> 10);
	}
	files_close(&f);
	free(m.scratch);
	free(pages);
	free(ref);
	mck_region_destroy(&reg);
}

/* A small job whose child fails at `stage` because of how the files are opened. */
static void failing_case(const char *what, int pack_flags, int idx_flags, int want_stage)
{
	uint8_t *arena = aligned_alloc(ps, 4 * ps);
	uint64_t pages[4] = {0, 1, 2, 3};
	struct files f;
	struct mck_fork_job job;
	struct job_mem m;
	struct mck_fork_child c;
	struct mck_fork_result res;
	int rc;

	memset(arena, 0x5A, 4 * ps);
	files_open(&f, pack_flags, idx_flags);
	job_init(&job, &m, arena, pages, 4, 0, &f);
	job.npages = 4;
	rc = mck_fork_start(&job, &c);
	CHECK(rc == 0, "%s: start: %s", what, strerror(-rc));
	if (rc == 0) {
		rc = mck_fork_wait(&c, &res);
		CHECK(rc == -EBADF && res.error == EBADF && res.stage == want_stage &&
		      res.exit_code == want_stage && res.reported == 1,
		      "%s: wait %d (%s) error %d stage %d exit %d", what, rc, strerror(-rc), res.error,
		      res.stage, res.exit_code);
		CHECK(mck_fork_wait(&c, &res) == -ESRCH, "%s: a second wait", what);
	}
	files_close(&f);
	free(m.scratch);
	free(arena);
}

static void killed_case(void)
{
	const size_t big = 16384; /* 64 MiB: long enough to be caught writing */
	struct mck_region reg;
	struct files f;
	struct mck_fork_job job;
	struct job_mem m;
	struct mck_fork_child c;
	struct mck_fork_result res;
	uint64_t *pages = malloc(big * sizeof(uint64_t));
	struct timespec t0, t;
	struct stat st;
	int rc, caught = 0;

	CHECK(mck_region_create(&reg, big * ps, 0) == 0, "region");
	for (size_t p = 0; p < big; p++) {
		pages[p] = p;
		memset((uint8_t *)reg.addr + p * ps, (int)(p % 251) + 1, ps);
		((uint64_t *)((uint8_t *)reg.addr + p * ps))[0] = p;
	}
	files_open(&f, O_RDWR, O_RDWR);
	job_init(&job, &m, reg.addr, pages, big, 0, &f);
	job.npages = big;
	rc = mck_fork_start(&job, &c);
	CHECK(rc == 0, "killed: start: %s", strerror(-rc));
	if (rc == 0) {
		/* wait until the pack grows, so the kill lands mid-write */
		clock_gettime(CLOCK_MONOTONIC, &t0);
		do {
			fstat(f.pack_fd, &st);
			caught = st.st_size > HDR_LEN;
			clock_gettime(CLOCK_MONOTONIC, &t);
		} while (!caught && t.tv_sec - t0.tv_sec < 10);
		kill(c.pid, SIGKILL);
		rc = mck_fork_wait(&c, &res);
		if (!caught || (rc == 0 && res.reported)) {
			printf("  NOTE killed: the child finished before it could be killed mid-write\n");
		} else {
			CHECK(rc == -ECHILD && res.term_signal == SIGKILL && res.stage == MCK_FORK_STAGE_DIED &&
			      !res.reported && res.exit_code == -1,
			      "killed: wait %d signal %d stage %d reported %d", rc, res.term_signal,
			      res.stage, res.reported);
			printf("  killed mid-write at %lld pack bytes: wait -> %s, signal %d\n",
			       (long long)st.st_size, strerror(-rc), res.term_signal);
		}
	}
	/* mck_fork_read on a child killed before it reported reaps it */
	rc = mck_fork_start(&job, &c);
	CHECK(rc == 0, "read: start");
	if (rc == 0) {
		/* The kill follows the start at once, but a parent held back for
		 * the child's whole job (a loaded machine, a slow guest) finds it
		 * done: the check holds only for a child the SIGKILL ended (not an
		 * exit) with no report in its pipe; waitid(WNOWAIT) leaves it to
		 * mck_fork_read to reap. */
		siginfo_t si;
		struct pollfd pfd = {.fd = c.fd, .events = POLLIN};
		int unreported;

		kill(c.pid, SIGKILL);
		memset(&si, 0, sizeof(si));
		CHECK(waitid(P_PID, (id_t)c.pid, &si, WEXITED | WNOWAIT) == 0, "read: waitid: %s",
		      strerror(errno));
		unreported = si.si_code == CLD_KILLED && poll(&pfd, 1, 0) >= 0 && !(pfd.revents & POLLIN);
		rc = mck_fork_read(&c, &res);
		if (unreported) {
			CHECK(rc == -ECHILD && c.pid == -1 && c.fd == -1 && res.term_signal == SIGKILL &&
			      !res.reported, "read of a killed child: %d pid %d signal %d", rc, c.pid,
			      res.term_signal);
		} else {
			printf("  NOTE read: the child reported before the SIGKILL landed: the read of a "
			       "killed child not checked\n");
			mck_fork_wait(&c, &res);
		}
		CHECK(mck_fork_wait(&c, &res) == -ESRCH && mck_fork_read(&c, &res) == -ESRCH,
		      "wait/read after the reap");
	}
	/* mck_fork_kill on a running child, then wait */
	rc = mck_fork_start(&job, &c);
	CHECK(rc == 0, "kill: start");
	if (rc == 0) {
		CHECK(mck_fork_kill(&c) == 0 && c.pid == -1 && c.fd == -1, "mck_fork_kill");
		CHECK(mck_fork_kill(&c) == 0, "mck_fork_kill twice");
		CHECK(mck_fork_wait(&c, &res) == -ESRCH, "wait after kill");
	}
	CHECK(no_child_left(), "a child is left after kill");
	files_close(&f);
	free(m.scratch);
	free(pages);
	mck_region_destroy(&reg);
}

static void bad_jobs(void)
{
	uint8_t *arena = aligned_alloc(ps, 4 * ps);
	uint64_t pages[4] = {0, 1, 2, 3};
	struct files f;
	struct mck_fork_job job;
	struct job_mem m;
	struct mck_fork_child c;
	int fds;

	files_open(&f, O_RDWR, O_RDWR);
	fds = count_fds();
	job_init(&job, &m, arena, pages, 4, 0, &f);
	job.npages = 4;
	pages[2] = 7;
	CHECK(mck_fork_start(&job, &c) == -EINVAL && c.pid == -1, "page beyond npages accepted");
	pages[2] = 1;
	CHECK(mck_fork_start(&job, &c) == -EINVAL, "unsorted pages accepted");
	pages[2] = 2;
	job.scratch_len--;
	CHECK(mck_fork_start(&job, &c) == -EINVAL, "short scratch accepted");
	job.scratch_len++;
	job.page_size = 1000;
	CHECK(mck_fork_start(&job, &c) == -EINVAL, "page size 1000 accepted");
	job.page_size = ps;
	job.pack_off = 0;
	CHECK(mck_fork_start(&job, &c) == -EINVAL, "pack_off != header length accepted");
	CHECK(count_fds() == fds && no_child_left(), "a refused job left an fd or a child");
	files_close(&f);
	free(m.scratch);
	free(arena);
}

/* The child keeps only the fds it writes: another pipe's write end the
 * parent closes reaches EOF while the child is still busy. */
static void closes_other_fds(void)
{
	const size_t big = 16384;
	struct mck_region reg;
	struct files f;
	struct mck_fork_job job;
	struct job_mem m;
	struct mck_fork_child c;
	struct mck_fork_result res;
	uint64_t *pages = malloc(big * sizeof(uint64_t));
	int p[2], rc;
	char b;

	CHECK(mck_region_create(&reg, big * ps, 0) == 0, "region");
	for (size_t i = 0; i < big; i++) {
		pages[i] = i;
		memset((uint8_t *)reg.addr + i * ps, (int)(i % 13) + 1, ps);
		((uint64_t *)((uint8_t *)reg.addr + i * ps))[1] = i;
	}
	CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
	files_open(&f, O_RDWR, O_RDWR);
	job_init(&job, &m, reg.addr, pages, big, 0, &f);
	job.npages = big;
	rc = mck_fork_start(&job, &c);
	CHECK(rc == 0, "start");
	if (rc == 0) {
		close(p[1]);
		CHECK(read(p[0], &b, 1) == 0, "EOF");
		struct pollfd pfd = {.fd = c.fd, .events = POLLIN};
		int busy = poll(&pfd, 1, 0) == 0;
		rc = mck_fork_wait(&c, &res);
		CHECK(rc == 0, "wait: %s", strerror(-rc));
		if (busy)
			printf("  the child let go of the parent's other fds before it finished (%.1f ms)\n",
			       res.child_seconds * 1e3);
		else
			printf("  NOTE fds: the child finished before the EOF could be told apart\n");
	}
	close(p[0]);
	files_close(&f);
	free(m.scratch);
	free(pages);
	mck_region_destroy(&reg);
}

static void cycles(void)
{
	uint8_t *arena = aligned_alloc(ps, 8 * ps);
	uint64_t pages[3] = {1, 4, 6};
	struct files f;
	struct mck_fork_job job;
	struct job_mem m;
	struct mck_fork_child c;
	struct mck_fork_result res;
	int before, ok = 0, rc;

	memset(arena, 0x33, 8 * ps);
	files_open(&f, O_RDWR, O_RDWR);
	job_init(&job, &m, arena, pages, 3, 1, &f);
	job.npages = 8;
	before = count_fds();
	for (int i = 0; i < 1000; i++) {
		arena[4 * ps] = (uint8_t)(i % 50); /* never 0x33: page 4 stays unique */
		rc = mck_fork_start(&job, &c);
		if (rc < 0) {
			CHECK(0, "cycle %d: start: %s", i, strerror(-rc));
			break;
		}
		if (i % 2) { /* half the cycles: read first, reap after */
			rc = mck_fork_read(&c, &res);
			if (rc == 0 && (c.fd != -1 || c.pid < 0 || res.exit_code != -1))
				rc = -EPROTO;
			if (rc == 0)
				rc = mck_fork_wait(&c, &res);
			rc = rc == 0 && res.exit_code == 0 && c.pid == -1 ? 0 : -EPROTO;
		} else {
			rc = mck_fork_wait(&c, &res);
		}
		ok += rc == 0 && res.stored == 2 && res.dedup == 1;
	}
	CHECK(ok == 1000, "only %d of 1000 cycles succeeded", ok);
	CHECK(count_fds() == before, "fds: %d before, %d after 1000 cycles", before, count_fds());
	CHECK(no_child_left(), "a child is left after 1000 cycles");
	for (int i = 0; i < 100; i++) {
		rc = mck_fork_start(&job, &c);
		if (rc == 0)
			mck_fork_kill(&c);
	}
	CHECK(count_fds() == before, "fds: %d before, %d after 100 kills", before, count_fds());
	CHECK(no_child_left(), "a child is left after 100 kills");
	printf("  1000 fork/wait + 100 fork/kill: %d fds throughout, no child left\n", before);
	files_close(&f);
	free(m.scratch);
	free(arena);
}

int main(void)
{
	ps = (size_t)sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!mkdtemp(dir)) {
		printf("FAIL mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	snapshot_case("full, all pages", 0, 1, 0);
	snapshot_case("full, 1 page in 3", 0, 3, 0);
	snapshot_case("incremental, 1 page in 3", 1, 3, 0);
	snapshot_case("incremental, all pages, child stopped", 1, 1, 1);
	snapshot_case("full, 1 page in 50, child stopped", 0, 50, 1);
	snapshot_case("incremental, no pages", 1, 1u << 30, 0);
	failing_case("read-only pack", O_RDONLY, O_RDWR, MCK_FORK_STAGE_PACK);
	failing_case("read-only index", O_RDWR, O_RDONLY, MCK_FORK_STAGE_INDEX);
	killed_case();
	bad_jobs();
	closes_other_fds();
	cycles();
	rmdir(dir);
	printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
	return failures ? 1 : 0;
}
