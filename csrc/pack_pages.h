/* pack_pages.h: the steps of writing pages that the epoch writer and the
 * fork child share (pack_pages.c): each allocates nothing, takes no lock and
 * starts no thread, so the fork child may call them. The layouts they write
 * are pack_format.h's. */
#ifndef MEMCKPT_PACK_PAGES_H
#define MEMCKPT_PACK_PAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "memckpt.h"
#include "pack_format.h"


_Static_assert(MCK_IDX_RECORD_SIZE == MCK_FORK_RECORD_SIZE, "the fork API's record");
_Static_assert(MCK_IDX_HEADER_SIZE == MCK_FORK_IDX_HEADER_SIZE, "the fork API's index header");
_Static_assert(MCK_PAGE_ZERO == MCK_FORK_FLAG_ZERO, "the fork API's zero flag");

/* ---- writing pages (pack_pages.c) -------------------------------------------
 * The rules (the same as the Python writer's, store/packing.py): an all-zero
 * page is not stored (a ZERO record in an incremental epoch, no record in a
 * full one); a page whose digest an earlier page of the epoch had points at
 * that page's stored bytes (dedup); every other page is stored raw at the
 * pack's next free offset, so the pack holds the new pages in page order. */

/* Linux's IOV_MAX; a larger vector is EINVAL. */
#define MCK_IOV_MAX 1024
/* One iovec never grows past this: one pwritev moves at most 2 GiB - 4 KiB. */
#define MCK_IOV_CAP ((size_t)1 << 30)

bool mck_page_is_zero(const void *page, size_t len);
/* BLAKE3 of page_size zero bytes (hashed from a static zero block). */
void mck_zero_digest(size_t page_size, uint8_t out[32]);

/* The epoch's digests seen so far: an open-addressing table of record
 * indices + 1 (0 = empty slot) into the epoch's record array. */
struct mck_dedup {
	uint64_t *slots;
	size_t cap; /* a power of two >= 2 * the records it may hold */
};

/* Slots a table for n records needs. */
size_t mck_dedup_cap(size_t n);
/* The record (index) of recs whose digest is d, or else remember recs[r]
 * (which holds d) and return r. The table must have room. */
uint64_t mck_dedup_find_or_add(struct mck_dedup *t, const struct mck_idx_record *recs,
			       uint64_t r, const uint8_t d[32]);
/* Fill recs[r] for a nonzero page with digest d: dedup against the table,
 * else stored at *pack_end (which grows by page_size). True if stored. */
bool mck_place_page(struct mck_dedup *t, struct mck_idx_record *recs, uint64_t r, uint64_t page,
		    const uint8_t d[32], size_t page_size, uint64_t *pack_end);
/* The same for a page stored as `length` bytes with `flags` (a compressed
 * image: MCK_PAGE_ZSTD or MCK_PAGE_LZ4; or raw: page_size, 0); a dedup hit
 * takes the first page's offset, length and flags. */
bool mck_place_stored(struct mck_dedup *t, struct mck_idx_record *recs, uint64_t r,
		      uint64_t page, const uint8_t d[32], uint32_t length, uint32_t flags,
		      uint64_t *pack_end);
/* Fill *rec as the ZERO record of page. */
void mck_zero_record(struct mck_idx_record *rec, uint64_t page, const uint8_t zero_digest[32]);

/* pwritev the whole vector from off, finishing short writes and retrying
 * EINTR; the vector is consumed (advanced in place). 0 or -errno. */
int mck_write_all_iov(int fd, struct iovec *iov, int cnt, uint64_t off);
/* Write the index file from offset 0: header (with the record count set to
 * n) and records; digest = BLAKE3 of the bytes written. gather: 64 KiB of
 * scratch (mck_hash_stream). 0 or -errno. */
int mck_write_index(int fd, const uint8_t header[MCK_IDX_HEADER_SIZE],
		    const struct mck_idx_record *recs, uint64_t n, uint8_t digest[32],
		    uint8_t *gather);
/* fdatasync, retrying EINTR; 0 or -errno. */
int mck_sync_fd(int fd);

#endif /* MEMCKPT_PACK_PAGES_H */
