/* helpers.h: what several C test binaries ask of the process they run in
 * (its fds, its threads, a kernel write through a pipe) and the tracked
 * region they all set up. Static inline: each binary is one translation
 * unit and uses some of them. */
#ifndef MCK_TEST_HELPERS_H
#define MCK_TEST_HELPERS_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memckpt.h"

/* Entries of a /proc directory, not counting . and .. (nor, for an fd
 * directory, the DIR's own fd); -1 if it cannot be read. */
static inline int count_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n - (strcmp(path, "/proc/self/fd") == 0);
}

static inline int count_fds(void)
{
	return count_dir("/proc/self/fd");
}

static inline int count_tasks(void)
{
	return count_dir("/proc/self/task");
}

/* A joined thread can linger in /proc/self/task for a moment (long under
 * emulation, longer on a loaded host): wait, up to 20 s, for the count to
 * come down to at_most (a settled count returns at once). */
static inline int settled_tasks(int at_most)
{
	int n = count_tasks();

	for (int i = 0; i < 2000 && n > at_most; i++) {
		usleep(10000);
		n = count_tasks();
	}
	return n;
}

static inline int no_child_left(void)
{
	return waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD;
}

/* read(2) len bytes of src into dst through a pipe: the kernel, not this
 * thread, writes dst. Returns what read(2) did, errno kept. */
static inline ssize_t pipe_into(void *dst, const void *src, size_t len)
{
	int fds[2], err;
	ssize_t got;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -1;
	if (write(fds[1], src, len) != (ssize_t)len) {
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	got = read(fds[0], dst, len);
	err = errno;
	close(fds[0]);
	close(fds[1]);
	errno = err;
	return got;
}

/* A fresh, never-touched region of npages and a tracker of backend on it. */
struct tracked {
	struct mck_region region;
	struct mck_tracker *t;
};

/* 0, or -errno with nothing left open. */
static inline int tracked_open(struct tracked *x, int backend, size_t npages)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	int rc = mck_region_create(&x->region, npages * ps, 0);

	x->t = NULL;
	if (rc < 0)
		return rc;
	rc = mck_tracker_open(&x->t, backend, x->region.addr, x->region.len);
	if (rc < 0)
		mck_region_destroy(&x->region);
	return rc;
}

/* Close the tracker (unless closed already: t NULL) and the region;
 * the first error, or 0. */
static inline int tracked_close(struct tracked *x)
{
	int rc = x->t ? mck_tracker_close(x->t) : 0, rc2;

	x->t = NULL;
	rc2 = mck_region_destroy(&x->region);
	return rc < 0 ? rc : rc2;
}

/* The whole file open on fd (read with pread from 0; malloc'd, the caller
 * frees it), its length in *len; NULL if fstat or malloc failed. */
static inline uint8_t *read_whole_fd(int fd, size_t *len)
{
	struct stat st;
	uint8_t *buf;

	*len = 0;
	if (fstat(fd, &st) < 0)
		return NULL;
	buf = malloc((size_t)st.st_size + 1);
	while (buf && *len < (size_t)st.st_size) {
		ssize_t r = pread(fd, buf + *len, (size_t)st.st_size - *len, (off_t)*len);

		if (r <= 0)
			break;
		*len += (size_t)r;
	}
	return buf;
}

#endif /* MCK_TEST_HELPERS_H */
