/* probe.c: probe the kernel once, into struct mck_features.
 *
 * Each feature ends in one of three states (after CRIU's kerndat): OK,
 * UNSUPPORTED (the kernel or our privileges lack it: a fact to report) or
 * ERROR (the probe itself failed: a bug or a resource problem to surface). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

static struct mck_features probed;
static int probe_rc;
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

static int read_small_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	if (n < 0)
		n = -errno;
	else
		buf[n] = '\0';
	close(fd);
	return (int)n;
}

static int probe_thp(void)
{
	char buf[128];

	if (read_small_file("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof(buf)) < 0)
		return MCK_THP_UNKNOWN;
	if (strstr(buf, "[always]"))
		return MCK_THP_ALWAYS;
	if (strstr(buf, "[madvise]"))
		return MCK_THP_MADVISE;
	if (strstr(buf, "[never]"))
		return MCK_THP_NEVER;
	return MCK_THP_UNKNOWN;
}

static int probe_sysctl_int(const char *path)
{
	char buf[32];

	if (read_small_file(path, buf, sizeof(buf)) <= 0)
		return -1;
	return (int)strtol(buf, NULL, 10);
}

static void probe_uffd(struct mck_features *f)
{
	uint64_t offered = 0;
	int fd, rc;

	f->uffd_wp = f->uffd_wp_async = f->uffd_wp_unpopulated = MCK_PROBE_UNSUPPORTED;
	fd = mck_uffd_open(&f->uffd_user_mode_only);
	if (fd < 0) {
		f->uffd = fd == -EPERM || fd == -ENOSYS || fd == -EACCES ?
			MCK_PROBE_UNSUPPORTED : MCK_PROBE_ERROR;
		f->uffd_errno = -fd;
		return;
	}
	/* features = 0 asks for nothing and returns all the kernel offers; the
	 * fd is then spent (UFFDIO_API succeeds once), so backends open their own */
	rc = mck_uffd_api(fd, 0, &offered);
	close(fd);
	if (rc < 0) {
		f->uffd = MCK_PROBE_ERROR;
		f->uffd_errno = -rc;
		return;
	}
	f->uffd = MCK_PROBE_OK;
	f->uffd_features = offered;
	if (offered & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
		f->uffd_wp = MCK_PROBE_OK;
	if (offered & UFFD_FEATURE_WP_ASYNC)
		f->uffd_wp_async = MCK_PROBE_OK;
	if (offered & UFFD_FEATURE_WP_UNPOPULATED)
		f->uffd_wp_unpopulated = MCK_PROBE_OK;
}

static void probe_pagemap_scan(struct mck_features *f, uint8_t *page)
{
	struct page_region vec[1];
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.start = (uintptr_t)page,
		.end = (uintptr_t)page + f->page_size,
		.vec = (uintptr_t)vec,
		.vec_len = 1,
		.category_anyof_mask = PAGE_IS_PRESENT,
		.return_mask = PAGE_IS_PRESENT,
	};
	int fd = mck_pagemap_open();

	if (fd < 0) {
		f->pagemap_scan = MCK_PROBE_ERROR;
		f->pagemap_scan_errno = -fd;
		return;
	}
	page[0] = 1;
	if (ioctl(fd, PAGEMAP_SCAN, &arg) >= 0) {
		f->pagemap_scan = MCK_PROBE_OK;
	} else {
		f->pagemap_scan_errno = errno;
		/* an ioctl the pagemap file does not know */
		f->pagemap_scan = errno == ENOTTY || errno == EINVAL ?
			MCK_PROBE_UNSUPPORTED : MCK_PROBE_ERROR;
	}
	close(fd);
}

static int pagemap_entry(int fd, const void *addr, size_t page_size, uint64_t *entry)
{
	off_t off = (off_t)((uintptr_t)addr / page_size * sizeof(uint64_t));

	if (pread(fd, entry, sizeof(*entry), off) != (ssize_t)sizeof(*entry))
		return errno ? -errno : -EIO;
	return 0;
}

/* clear_refs accepts "4" even on kernels built without CONFIG_MEM_SOFT_DIRTY,
 * so only a page seen to turn soft-dirty after a clear proves the feature. */
static void probe_soft_dirty(struct mck_features *f, volatile uint8_t *page)
{
	uint64_t before = 0, after = 0;
	int cfd = -1, pfd = -1, rc;

	cfd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	if (cfd < 0) {
		rc = -errno;
		goto unsupported;
	}
	pfd = mck_pagemap_open();
	if (pfd < 0) {
		rc = pfd;
		goto error;
	}
	page[0] = 1;
	if (write(cfd, "4", 1) != 1) {
		rc = -errno;
		goto unsupported;
	}
	rc = pagemap_entry(pfd, (const void *)page, f->page_size, &before);
	if (rc < 0)
		goto error;
	page[0] = 2;
	rc = pagemap_entry(pfd, (const void *)page, f->page_size, &after);
	if (rc < 0)
		goto error;
	if (!(before & MCK_PM_SOFT_DIRTY) && (after & MCK_PM_SOFT_DIRTY)) {
		f->soft_dirty = MCK_PROBE_OK;
	} else {
		f->soft_dirty = MCK_PROBE_UNSUPPORTED;
		f->soft_dirty_errno = ENOTSUP;
	}
	goto out;
unsupported:
	f->soft_dirty = MCK_PROBE_UNSUPPORTED;
	f->soft_dirty_errno = -rc;
	goto out;
error:
	f->soft_dirty = MCK_PROBE_ERROR;
	f->soft_dirty_errno = -rc;
out:
	if (pfd >= 0)
		close(pfd);
	if (cfd >= 0)
		close(cfd);
}

static void probe_all(void)
{
	struct mck_features *f = &probed;
	long ps = sysconf(_SC_PAGESIZE);
	uint8_t *page;

	memset(f, 0, sizeof(*f));
	f->page_size = ps > 0 ? (size_t)ps : 4096;
	f->thp_mode = probe_thp();
	f->unprivileged_userfaultfd = probe_sysctl_int("/proc/sys/vm/unprivileged_userfaultfd");
	probe_uffd(f);

	page = mmap(NULL, f->page_size, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED) {
		probe_rc = -errno;
		return;
	}
	probe_pagemap_scan(f, page);
	probe_soft_dirty(f, page);
	munmap(page, f->page_size);
}

int mck_probe(struct mck_features *out)
{
	pthread_once(&probe_once, probe_all);
	if (probe_rc < 0)
		return probe_rc;
	if (out)
		*out = probed;
	return 0;
}
