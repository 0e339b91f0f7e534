/* pack_pages.c: the steps of writing an epoch's pages that the epoch writer
 * (epoch_writer.c, threads) and the fork child (capture_fork.c, no threads,
 * no allocation) share, so that the store's format is written by one code:
 * zero detection, the dedup table, a record's fields, the index file.
 * Nothing here allocates, locks or starts a thread (async-signal-safe). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "pack_pages.h"

bool mck_page_is_zero(const void *page, size_t len)
{
	const uint64_t *w = page;
	size_t n = len / 8, i = 0;

	/* 256-byte blocks OR-ed together (the compiler vectorises the block),
	 * leaving at the first block with a set bit: a page of data costs
	 * one block, a zero page one pass */
	for (; i + 32 <= n; i += 32) {
		uint64_t acc = 0;

		for (size_t j = 0; j < 32; j++)
			acc |= w[i + j];
		if (acc)
			return false;
	}
	for (; i < n; i++)
		if (w[i])
			return false;
	for (size_t b = n * 8; b < len; b++)
		if (((const uint8_t *)page)[b])
			return false;
	return true;
}

void mck_zero_digest(size_t page_size, uint8_t out[32])
{
	static const uint8_t zeros[16384];
	struct mck_blake3 h;

	mck_blake3_init(&h);
	for (size_t left = page_size; left; ) {
		size_t part = left < sizeof(zeros) ? left : sizeof(zeros);

		mck_blake3_update(&h, zeros, part);
		left -= part;
	}
	mck_blake3_final(&h, out);
}

size_t mck_dedup_cap(size_t n)
{
	size_t cap = 16;

	while (cap < 2 * n)
		cap *= 2;
	return cap;
}

uint64_t mck_dedup_find_or_add(struct mck_dedup *t, const struct mck_idx_record *recs,
			       uint64_t r, const uint8_t d[32])
{
	uint64_t h, mask = t->cap - 1;

	memcpy(&h, d, sizeof(h)); /* a digest's bytes are already uniform */
	for (h &= mask; t->slots[h]; h = (h + 1) & mask)
		if (!memcmp(recs[t->slots[h] - 1].digest, d, 32))
			return t->slots[h] - 1;
	t->slots[h] = r + 1;
	return r;
}

bool mck_place_page(struct mck_dedup *t, struct mck_idx_record *recs, uint64_t r, uint64_t page,
		    const uint8_t d[32], size_t page_size, uint64_t *pack_end)
{
	return mck_place_stored(t, recs, r, page, d, (uint32_t)page_size, 0, pack_end);
}

bool mck_place_stored(struct mck_dedup *t, struct mck_idx_record *recs, uint64_t r,
		      uint64_t page, const uint8_t d[32], uint32_t length, uint32_t flags,
		      uint64_t *pack_end)
{
	struct mck_idx_record *rec = &recs[r];
	uint64_t first;

	rec->page = page;
	rec->length = length;
	rec->flags = flags;
	memcpy(rec->digest, d, 32);
	first = mck_dedup_find_or_add(t, recs, r, d);
	if (first != r) {
		/* the first page's stored bytes, as they were stored */
		rec->offset = recs[first].offset;
		rec->length = recs[first].length;
		rec->flags = recs[first].flags;
		return false;
	}
	rec->offset = *pack_end;
	*pack_end += length;
	return true;
}

void mck_zero_record(struct mck_idx_record *rec, uint64_t page, const uint8_t zero_digest[32])
{
	rec->page = page;
	rec->offset = 0;
	rec->length = 0;
	rec->flags = MCK_PAGE_ZERO;
	memcpy(rec->digest, zero_digest, 32);
}

int mck_write_all_iov(int fd, struct iovec *iov, int cnt, uint64_t off)
{
	while (cnt > 0) {
		ssize_t w = pwritev(fd, iov, cnt, (off_t)off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return -EIO;
		off += (uint64_t)w;
		while (cnt > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

int mck_write_index(int fd, const uint8_t header[MCK_IDX_HEADER_SIZE],
		    const struct mck_idx_record *recs, uint64_t n, uint8_t digest[32],
		    uint8_t *gather)
{
	uint8_t hdr[MCK_IDX_HEADER_SIZE];
	struct mck_blake3 h;
	struct iovec iov[1 + 8];
	uint64_t left = n * sizeof(*recs), pos = 0;
	const uint8_t *p = (const uint8_t *)recs;
	int cnt = 0;

	memcpy(hdr, header, sizeof(hdr));
	for (int i = 0; i < 8; i++) /* the record count, little-endian */
		hdr[MCK_IDX_COUNT_AT + i] = (uint8_t)(n >> (8 * i));
	mck_blake3_init(&h);
	{
		struct iovec two[2] = {{hdr, sizeof(hdr)}, {(void *)p, left}};
		struct mck_iov_cursor c = {two, left ? 2 : 1, 0, 0};

		mck_hash_stream(&h, &pos, &c, sizeof(hdr) + left, gather);
	}
	mck_blake3_final(&h, digest);
	iov[cnt].iov_base = hdr;
	iov[cnt++].iov_len = sizeof(hdr);
	while (left && cnt < (int)MCK_ARRAY_SIZE(iov)) {
		size_t part = left < MCK_IOV_CAP ? left : MCK_IOV_CAP;

		iov[cnt].iov_base = (void *)p;
		iov[cnt++].iov_len = part;
		p += part;
		left -= part;
	}
	if (left) /* more than 8 GiB of records: far beyond any arena's */
		return -EFBIG;
	return mck_write_all_iov(fd, iov, cnt, 0);
}

int mck_sync_fd(int fd)
{
	while (fdatasync(fd) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}
