/* track_softdirty.c: the kernel's soft-dirty bit, the way CRIU's pre-dump uses it.
 *
 * Writing "4" to /proc/self/clear_refs clears the bit on every page of the
 * process and write-protects the page tables; the next write to a page takes a
 * minor fault that sets bit 55 of its /proc/self/pagemap entry again.
 *
 * Weaker than the other backends, and the props say so:
 *  - Not concurrent. collect reads the bits, then clears them. A write landing
 *    between the read and the clear sets a bit that the clear erases before
 *    anyone saw it: that write is lost. The kernel offers no read-and-clear in
 *    one step for soft-dirty (PAGEMAP_SCAN's PM_SCAN_WP_MATCHING works on
 *    uffd-wp, not on this bit), so collect needs the writers quiescent, as CRIU
 *    freezes the task for it. No MCK_PROP_CONCURRENT.
 *  - Not exact. A mapping that mmap or brk creates or grows (a neighbour that
 *    merges into the range's VMA included) is marked VM_SOFTDIRTY, and every
 *    page of it then reads soft-dirty until the next clear; the region's guard
 *    pages are there to stop such merges. (An mprotect split and re-merge does
 *    not do this: measured on 6.1 and 6.12.) A transparent huge page reports
 *    all its 512 pages together.
 *  - The clear covers the whole process, not the range: one soft-dirty tracker
 *    would erase another's bits, so only one may be open per process (-EBUSY).
 *    Anything else in the process clearing soft-dirty (a CRIU pre-dump of this
 *    process, another library) would make this tracker lose writes.
 *  - Kernel writes into the range (read(2)) set the bit like user writes do.
 *  - A page dropped with MADV_DONTNEED reads as zero afterwards but its entry is
 *    empty, not soft-dirty: discards must be recorded by the caller.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* pagemap entries read per pread: 32 KiB, several hundred per GiB tracked */
#define SD_CHUNK 4096

struct sd_priv {
	int clear_fd;
	int pagemap_fd;
	pid_t pid;    /* the process both fds describe */
	bool use_scan;
	uint64_t *entries; /* SD_CHUNK pagemap entries, for the pread path */
};

/* clear_refs is process-wide: a second tracker would steal the first's bits */
static atomic_flag sd_in_use = ATOMIC_FLAG_INIT;

static int sd_status(const struct mck_features *f, char *reason, size_t len)
{
	switch (f->soft_dirty) {
	case MCK_PROBE_OK:
		mck_reason(reason, len,
			   "soft-dirty self-test passed; collect reads %s and clears "
			   "soft-dirty process-wide, so writers must be quiescent during it",
			   f->pagemap_scan == MCK_PROBE_OK ? "PAGEMAP_SCAN" : "pagemap bit 55");
		return 1;
	case MCK_PROBE_UNSUPPORTED:
		if (f->soft_dirty_errno && f->soft_dirty_errno != ENOTSUP)
			mck_reason(reason, len, "cannot write /proc/self/clear_refs: %s",
				   strerror(f->soft_dirty_errno));
		else
			mck_reason(reason, len,
				   "kernel built without CONFIG_MEM_SOFT_DIRTY: clear_refs accepted '4' "
				   "but a written page's pagemap bit 55 stayed clear");
		return 0;
	default:
		mck_reason(reason, len, "the soft-dirty self-test failed: %s",
			   strerror(f->soft_dirty_errno ? f->soft_dirty_errno : EIO));
		return -(f->soft_dirty_errno ? f->soft_dirty_errno : EIO);
	}
}

static int sd_clear(int clear_fd)
{
	ssize_t n;

	do
		n = write(clear_fd, "4", 1);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return n == 1 ? 0 : -EIO;
}

/* "self" is resolved when the file is opened: after fork(), the inherited fds
 * still name the parent, and a child's collect would read the parent's bits
 * and clear them under its feet. Reopen instead. */
static int sd_fds_for_this_process(struct sd_priv *sd)
{
	pid_t pid = getpid();
	int cfd = -1, pfd = -1, rc;

	if (sd->pid == pid)
		return 0;
	cfd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	if (cfd < 0) {
		rc = -errno;
		goto fail;
	}
	pfd = mck_pagemap_open();
	if (pfd < 0) {
		rc = pfd;
		goto fail;
	}
	if (sd->clear_fd >= 0)
		close(sd->clear_fd);
	if (sd->pagemap_fd >= 0)
		close(sd->pagemap_fd);
	sd->clear_fd = cfd;
	sd->pagemap_fd = pfd;
	sd->pid = pid;
	return 0;
fail:
	if (cfd >= 0)
		close(cfd);
	return rc;
}

static int sd_pread_full(int fd, void *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, off + (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		done += (size_t)n;
	}
	return 0;
}

static int64_t sd_read_bits(struct mck_tracker *t, struct sd_priv *sd, uint64_t *out)
{
	uint64_t first_page = (uintptr_t)t->addr / t->page_size;
	int64_t n = 0;

	for (size_t base = 0; base < t->npages; base += SD_CHUNK) {
		size_t cnt = t->npages - base < SD_CHUNK ? t->npages - base : SD_CHUNK;
		int rc = sd_pread_full(sd->pagemap_fd, sd->entries, cnt * sizeof(uint64_t),
				       (off_t)((first_page + base) * sizeof(uint64_t)));

		if (rc < 0)
			return rc;
		for (size_t i = 0; i < cnt; i++)
			if (sd->entries[i] & MCK_PM_SOFT_DIRTY)
				out[n++] = base + i;
	}
	return n;
}

static void sd_close(struct mck_tracker *t);

static int sd_open(struct mck_tracker *t)
{
	struct mck_features f;
	struct sd_priv *sd = NULL;
	int rc;

	rc = mck_probe(&f);
	if (rc < 0)
		return rc;
	if (atomic_flag_test_and_set(&sd_in_use))
		return -EBUSY;
	sd = calloc(1, sizeof(*sd));
	if (!sd) {
		rc = -ENOMEM;
		goto fail;
	}
	sd->clear_fd = sd->pagemap_fd = -1;
	sd->use_scan = f.pagemap_scan == MCK_PROBE_OK;
	if (!sd->use_scan) {
		sd->entries = malloc(SD_CHUNK * sizeof(uint64_t));
		if (!sd->entries) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	rc = sd_fds_for_this_process(sd);
	if (rc < 0)
		goto fail;
	/* also drops the VM_SOFTDIRTY that the range's fresh VMA was born with,
	 * which would otherwise report every page at the first collect */
	rc = sd_clear(sd->clear_fd);
	if (rc < 0)
		goto fail;
	t->priv = sd;
	return 0;
fail:
	t->priv = sd;
	sd_close(t);
	return rc;
}

/* Writers must be quiescent for the whole call: see the top of the file. */
static int64_t sd_collect(struct mck_tracker *t, uint64_t *out, size_t cap)
{
	struct sd_priv *sd = t->priv;
	int64_t n;
	int rc;

	if (cap < t->npages)
		return -ENOBUFS;
	rc = sd_fds_for_this_process(sd);
	if (rc < 0)
		return rc;
	if (sd->use_scan)
		n = mck_pagemap_scan_indices(sd->pagemap_fd, 0, PAGE_IS_SOFT_DIRTY, t->addr,
					     t->len, t->page_size, out, cap);
	else
		n = sd_read_bits(t, sd, out);
	if (n < 0)
		return n;
	/* a failed clear leaves the bits set: the next collect reports them
	 * again, which over-reports but loses nothing */
	rc = sd_clear(sd->clear_fd);
	return rc < 0 ? rc : n;
}

static void sd_close(struct mck_tracker *t)
{
	struct sd_priv *sd = t->priv;

	if (sd) {
		if (sd->clear_fd >= 0)
			close(sd->clear_fd);
		if (sd->pagemap_fd >= 0)
			close(sd->pagemap_fd);
		free(sd->entries);
		free(sd);
	}
	t->priv = NULL;
	atomic_flag_clear(&sd_in_use);
}

const struct mck_tracker_ops mck_soft_dirty_ops = {
	.name = "soft-dirty",
	.props = MCK_PROP_KERNEL_WRITES,
	.status = sd_status,
	.open = sd_open,
	.collect = sd_collect,
	.close = sd_close,
	/* close only closes this process's fds and clears this process's
	 * in-use flag: a child may then open a soft-dirty tracker of its own */
	.forget = sd_close,
};
