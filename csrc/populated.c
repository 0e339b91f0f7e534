/* populated.c: which pages of private anonymous memory may hold data.
 *
 * A page of a private anonymous mapping with no page-table entry reads as
 * zero, and so does one that maps the shared zero page (a page only ever
 * read). A full epoch records no zero page, so it need read only the others;
 * reading the rest would fault each one in (a real zero-filled page under
 * uffd-sync's MISSING fills) and stage it, for nothing. What may hold data:
 *  - a present page that is not the shared zero page;
 *  - a swapped-out page (or one under migration): its data is elsewhere.
 * Not a uffd-wp PTE marker: userfaultfd's WP_UNPOPULATED (the uffd-async
 * tracker) puts one on every never-touched page to protect it, and the
 * kernel reports a marker as a swap entry in both interfaces (PAGEMAP_SCAN's
 * PAGE_IS_SWAPPED, pagemap's bit 62; measured on 6.18). A marker is told
 * from a real swap entry by its swap type in /proc/self/pagemap, which only
 * a process with CAP_SYS_ADMIN sees; without it, or where in doubt, a page
 * counts as holding data: an extra candidate costs a read, a missing one
 * would lose data.
 *
 * PAGEMAP_SCAN (Linux >= 6.7) walks only the page tables that exist and
 * returns ranges, so a mostly empty gigabyte costs well under a millisecond;
 * elsewhere /proc/self/pagemap is read, 8 bytes a page. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

/* /proc/pid/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_MMAP_EXCLUSIVE (1ULL << 56)
#define PM_UFFD_WP (1ULL << 57)
#define PM_FRAME ((1ULL << 55) - 1) /* PFN, or swap type | offset << 5 */
#define PM_SWAP_TYPE_BITS 5
/* The kernel numbers the swap type of PTE markers last of all types:
 * MAX_SWAPFILES + every special type, i.e. 2^5 - 1 whatever the config;
 * real swap devices and migration entries come before it. */
#define SWP_PTE_MARKER ((1ULL << PM_SWAP_TYPE_BITS) - 1)
#define PTE_MARKER_UFFD_WP 1ULL /* the marker's offset: the only bit set */

#define ENTRIES 512 /* pagemap entries read per pread: 4 KiB of stack */

/* A uffd-wp marker and nothing else (a guard or poison marker stays a
 * candidate: reading it fails loudly, as it would have before). Only a
 * reader that sees frames (CAP_SYS_ADMIN) can tell: without, frame is 0. */
static bool uffd_wp_marker(uint64_t e)
{
	uint64_t frame = e & PM_FRAME;

	return (e & (PM_PRESENT | PM_SWAP | PM_UFFD_WP)) == (PM_SWAP | PM_UFFD_WP) &&
	       (frame & SWP_PTE_MARKER) == SWP_PTE_MARKER &&
	       frame >> PM_SWAP_TYPE_BITS == PTE_MARKER_UFFD_WP;
}

static uint64_t zero_pfn;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

/* The shared zero page's PFN, or 0 if this process cannot see PFNs (or the
 * kernel gave real pages). Two pages of a fresh mapping read once: both map
 * the shared zero page, so the same PFN, neither exclusive; two real pages
 * could not share one. Only then is a PFN trusted, since skipping a real
 * page that happens to reuse a wrong PFN later would lose its data. */
static void find_zero_pfn(void)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	uint64_t e[2];
	volatile uint8_t *p;
	int fd;

	p = mmap(NULL, 2 * ps, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return;
	(void)p[0];
	(void)p[ps];
	fd = mck_pagemap_open();
	if (fd >= 0) {
		if (pread(fd, e, sizeof(e), (off_t)((uintptr_t)p / ps * sizeof(e[0]))) ==
		    (ssize_t)sizeof(e) && (e[0] & PM_PRESENT) && (e[1] & PM_PRESENT) &&
		    !((e[0] | e[1]) & PM_MMAP_EXCLUSIVE) && (e[0] & PM_FRAME) &&
		    (e[0] & PM_FRAME) == (e[1] & PM_FRAME))
			zero_pfn = e[0] & PM_FRAME;
		close(fd);
	}
	munmap((void *)p, 2 * ps);
}

static bool may_hold_data(uint64_t e, uint64_t zpfn)
{
	if (e & PM_PRESENT)
		return !zpfn || (e & PM_FRAME) != zpfn;
	return (e & PM_SWAP) && !uffd_wp_marker(e);
}

/* Append to out[*n..] the pages in [first, last) (indices from base) whose
 * pagemap entries say they may hold data. */
static int read_entries(int fd, uintptr_t base, size_t ps, uint64_t first, uint64_t last,
			uint64_t zpfn, uint64_t *out, size_t cap, size_t *n)
{
	uint64_t e[ENTRIES];

	while (first < last) {
		size_t want = last - first < ENTRIES ? (size_t)(last - first) : ENTRIES;
		off_t off = (off_t)((base / ps + first) * sizeof(e[0]));
		ssize_t got = pread(fd, e, want * sizeof(e[0]), off);

		if (got < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (got < (ssize_t)sizeof(e[0]))
			return -EIO; /* the range is mapped: pagemap has its entries */
		want = (size_t)got / sizeof(e[0]);
		for (size_t i = 0; i < want; i++) {
			if (!may_hold_data(e[i], zpfn))
				continue;
			if (*n >= cap)
				return -ENOBUFS;
			out[(*n)++] = first + i;
		}
		first += want;
	}
	return 0;
}

static int append_range(uint64_t first, uint64_t last, uint64_t *out, size_t cap, size_t *n)
{
	if (last - first > cap - *n)
		return -ENOBUFS;
	for (uint64_t p = first; p < last; p++)
		out[(*n)++] = p;
	return 0;
}

/* The PAGEMAP_SCAN way: -EOPNOTSUPP if the kernel lacks it. Stops at the
 * first page it cannot classify (*resume: its index), for the caller to read
 * from there on; else *resume is the range's end. */
static int scan(int fd, uintptr_t base, size_t len, size_t ps, uint64_t *out, size_t cap,
		size_t *n, uint64_t *resume)
{
	struct page_region vec[512];
	uint64_t start = base, end = base + len;
	int rc;

	while (start < end) {
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.start = start,
			.end = end,
			.vec = (uintptr_t)vec,
			.vec_len = MCK_ARRAY_SIZE(vec),
			.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO |
				       PAGE_IS_WRITTEN,
		};
		int nr = ioctl(fd, PAGEMAP_SCAN, &arg);

		if (nr < 0)
			return errno == EINVAL || errno == ENOTTY ? -EOPNOTSUPP : -errno;
		for (int i = 0; i < nr; i++) {
			uint64_t c = vec[i].categories;
			uint64_t first = (vec[i].start - base) / ps, last = (vec[i].end - base) / ps;

			if (c & PAGE_IS_PRESENT) {
				if (c & PAGE_IS_PFNZERO)
					continue;
				rc = append_range(first, last, out, cap, n);
			} else if (c & PAGE_IS_WRITTEN) {
				/* a swap entry without the uffd-wp bit: never a
				 * uffd-wp marker, which always has it */
				rc = append_range(first, last, out, cap, n);
			} else {
				/* protected swap entries and markers look alike
				 * here; their swap type tells them apart. Where
				 * there is one marker there are thousands (uffd-
				 * async marks every never-touched page), between
				 * written pages: one pread a region would cost more
				 * (12 ms against 3 ms for 1 GiB, 1% written) than
				 * reading the rest of the range */
				*resume = first;
				return 0;
			}
			if (rc < 0)
				return rc;
		}
		if (arg.walk_end <= start) /* no progress: never spin */
			return -EIO;
		start = arg.walk_end;
	}
	*resume = len / ps;
	return 0;
}

int64_t mck_pages_populated(void *addr, size_t len, uint64_t *out, size_t cap, unsigned flags)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	uintptr_t base = (uintptr_t)addr;
	size_t n = 0;
	uint64_t from = 0;
	int fd, rc = -EOPNOTSUPP;

	if ((base | len) % ps || (!out && cap) || flags & ~(unsigned)MCK_POPULATED_READ)
		return -EINVAL;
	if (base + len < base)
		return -EINVAL;
	if (!len)
		return 0;
	fd = mck_pagemap_open();
	if (fd < 0)
		return fd;
	if (!(flags & MCK_POPULATED_READ)) {
		rc = scan(fd, base, len, ps, out, cap, &n, &from);
		if (rc == -EOPNOTSUPP)
			n = from = 0;
	}
	if (rc == -EOPNOTSUPP || (rc == 0 && from < len / ps)) {
		/* the scan listed the pages before from, in order */
		pthread_once(&zero_once, find_zero_pfn);
		rc = read_entries(fd, base, ps, from, len / ps, zero_pfn, out, cap, &n);
	}
	close(fd);
	return rc < 0 ? rc : (int64_t)n;
}
