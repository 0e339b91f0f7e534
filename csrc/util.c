/* util.c: one small helper per kernel mechanism, shared by the backends. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

void mck_reason(char *reason, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!reason || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(reason, len, fmt, ap);
	va_end(ap);
}

/* ---- bitmaps ------------------------------------------------------------ */

int mck_bitmap_init(struct mck_bitmap *b, size_t nbits)
{
	size_t nwords = (nbits + 63) / 64;

	b->words = calloc(nwords ? nwords : 1, sizeof(*b->words));
	if (!b->words)
		return -ENOMEM;
	b->nbits = nbits;
	return 0;
}

void mck_bitmap_free(struct mck_bitmap *b)
{
	free((void *)b->words);
	b->words = NULL;
	b->nbits = 0;
}

size_t mck_bitmap_drain(struct mck_bitmap *b, uint64_t *out)
{
	size_t nwords = (b->nbits + 63) / 64, n = 0;

	for (size_t w = 0; w < nwords; w++) {
		/* a relaxed load first: most words are zero, and an exchange
		 * on each would dirty every cache line of the bitmap */
		if (!atomic_load_explicit(&b->words[w], memory_order_relaxed))
			continue;
		uint64_t bits = atomic_exchange_explicit(&b->words[w], 0,
							 memory_order_acq_rel);
		while (bits) {
			out[n++] = w * 64 + (uint64_t)__builtin_ctzll(bits);
			bits &= bits - 1;
		}
	}
	return n;
}

/* ---- userfaultfd -------------------------------------------------------- */

int mck_uffd_open(int *user_mode_only)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (user_mode_only)
		*user_mode_only = 0;
	if (fd >= 0)
		return fd;
	if (errno != EPERM)
		return -errno;
	/* vm.unprivileged_userfaultfd=0 still lets anyone handle faults
	 * raised by user-space accesses only */
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		/* kernels before 5.11 know no UFFD_USER_MODE_ONLY (EINVAL): the
		 * first refusal is the one that explains */
		return errno == EINVAL ? -EPERM : -errno;
	if (user_mode_only)
		*user_mode_only = 1;
	return fd;
}

int mck_uffd_api(int fd, uint64_t want, uint64_t *offered)
{
	struct uffdio_api api = { .api = UFFD_API, .features = want };

	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return errno == EINVAL && want ? -EOPNOTSUPP : -errno;
	if (offered)
		*offered = api.features;
	if ((api.features & want) != want)
		return -EOPNOTSUPP;
	return 0;
}

int mck_uffd_register_wp(int fd, void *addr, size_t len)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};

	if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	return 0;
}

int mck_uffd_writeprotect(int fd, void *addr, size_t len, bool protect)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) < 0)
		return -errno;
	return 0;
}

/* ---- pagemap ------------------------------------------------------------ */

int mck_pagemap_open(void)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int64_t mck_pagemap_scan_indices(int pagemap_fd, uint64_t flags, uint64_t mask,
				 uint8_t *base, size_t len, size_t page_size,
				 uint64_t *out, size_t cap)
{
	/* A fixed vector: the kernel stops when it fills and reports how far it
	 * walked in walk_end, so the loop resumes from there. */
	struct page_region vec[512];
	uint64_t start = (uintptr_t)base, end = start + len;
	int64_t n = 0;

	while (start < end) {
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.flags = flags,
			.start = start,
			.end = end,
			.vec = (uintptr_t)vec,
			.vec_len = MCK_ARRAY_SIZE(vec),
			.category_mask = mask,
			.return_mask = mask,
		};
		int nr = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);

		if (nr < 0)
			return -errno;
		for (int i = 0; i < nr; i++) {
			uint64_t first = (vec[i].start - (uintptr_t)base) / page_size;
			uint64_t last = (vec[i].end - (uintptr_t)base) / page_size;

			if ((size_t)n + (last - first) > cap)
				return -ENOBUFS;
			for (uint64_t p = first; p < last; p++)
				out[n++] = p;
		}
		if (arg.walk_end <= start) /* no progress: never spin */
			return -EIO;
		start = arg.walk_end;
	}
	return n;
}

int64_t mck_pagemap_scan_count(void *addr, size_t len, uint64_t mask)
{
	struct page_region vec[512];
	uint64_t start = (uintptr_t)addr, end = start + len;
	int64_t n = 0;
	int fd = mck_pagemap_open();

	if (fd < 0)
		return fd;
	while (start < end) {
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.start = start,
			.end = end,
			.vec = (uintptr_t)vec,
			.vec_len = MCK_ARRAY_SIZE(vec),
			/* all-of, as collect asks: the kernel answers a lone
			 * PAGE_IS_WRITTEN from the write-protect bit alone, where
			 * any-of works out every category of every page */
			.category_mask = mask,
			.return_mask = mask,
		};
		int nr = ioctl(fd, PAGEMAP_SCAN, &arg);

		if (nr < 0) {
			n = errno == EINVAL || errno == ENOTTY ? -EOPNOTSUPP : -errno;
			goto out;
		}
		for (int i = 0; i < nr; i++)
			n += (int64_t)((vec[i].end - vec[i].start) / (uint64_t)sysconf(_SC_PAGESIZE));
		if (arg.walk_end <= start) {
			n = -EIO;
			goto out;
		}
		start = arg.walk_end;
	}
out:
	close(fd);
	return n;
}
