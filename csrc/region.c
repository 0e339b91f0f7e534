/* region.c: page-aligned anonymous mappings between guard pages. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define MCK_HUGE_SIZE (2UL << 20)

int mck_region_create(struct mck_region *r, size_t len, unsigned flags)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	size_t unit = flags & MCK_REGION_HUGEPAGES ? MCK_HUGE_SIZE : ps;
	/* A body of 2 MiB or more starts on a 2 MiB boundary, huge pages or
	 * not: a restore may back it with huge pages while it fills it
	 * (epoch_reader.h, MCK_READ_FILL_HUGE), which the kernel does only
	 * for 2 MiB-aligned blocks. It costs address space only. */
	size_t align = unit > ps || len >= MCK_HUGE_SIZE ? MCK_HUGE_SIZE : ps;
	size_t body, map_len;
	uint8_t *base, *addr;

	memset(r, 0, sizeof(*r));
	if (!len || flags & ~(unsigned)MCK_REGION_HUGEPAGES)
		return -EINVAL;
	body = (len + unit - 1) / unit * unit;
	if (body < len)
		return -EOVERFLOW;
	/* one guard page each side, and slack to align the body */
	map_len = body + 2 * ps + (align - ps);
	if (map_len < body)
		return -EOVERFLOW;
	base = mmap(NULL, map_len, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		return -errno;
	addr = (uint8_t *)(((uintptr_t)base + ps + align - 1) / align * align);
	/* the body is its own VMA: PROT_NONE guards stop the kernel from merging
	 * it with a neighbour, which would spread soft-dirty over-reporting and
	 * make uffd ranges cross VMAs */
	if (mprotect(addr, body, PROT_READ | PROT_WRITE) < 0)
		goto fail;
	/* tracking is exact at 4 KiB only while no huge page backs the body,
	 * whatever the system-wide THP mode says */
	if (madvise(addr, body, flags & MCK_REGION_HUGEPAGES ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) < 0 &&
	    errno != EINVAL)
		goto fail;
	r->addr = addr;
	r->len = body;
	r->flags = flags;
	r->map_base = base;
	r->map_len = map_len;
	return 0;
fail:
	{
		int err = errno;

		munmap(base, map_len);
		return -err;
	}
}

int mck_region_destroy(struct mck_region *r)
{
	if (!r->map_base)
		return 0;
	if (munmap(r->map_base, r->map_len) < 0)
		return -errno;
	memset(r, 0, sizeof(*r));
	return 0;
}

int mck_region_discard(struct mck_region *r, size_t off, size_t len)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);

	if (off % ps || len % ps || off > r->len || len > r->len - off)
		return -EINVAL;
	if (madvise((uint8_t *)r->addr + off, len, MADV_DONTNEED) < 0)
		return -errno;
	return 0;
}
