/* lazy_index.c: one index file of a lazily restored chain checked whole,
 * in the background (see lazy_restore.h): its BLAKE3 against the
 * manifest's, then what a reader's binary search relies on and the store's
 * parser checks too (store/binary.py check_records): pages strictly
 * increasing, every record one the reader can follow, a ZERO record with no
 * stored bytes and the digest of a zero page. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "internal.h"
#include "lazy_restore.h"
#include "memckpt.h"
#include "read_plan.h"

static int index_fault(struct mck_read_fault *f, uint32_t s, uint64_t record, uint64_t page,
		       const char *why)
{
	memset(f, 0, sizeof(*f));
	f->kind = MCK_READ_FAULT_RECORD;
	f->source = s;
	f->record = record;
	f->page = page;
	snprintf(f->why, sizeof(f->why), "%s", why);
	return -EBADMSG;
}

/* The file digest: its aligned 64 KiB subtrees in SIMD lanes (hash_iov.c). */
static int file_digest(const uint8_t *data, uint64_t size, uint8_t out[MCK_BLAKE3_LEN])
{
	struct iovec iov = {.iov_base = (void *)data, .iov_len = (size_t)size};
	struct mck_iov_cursor c = {.iov = &iov, .cnt = 1};
	struct mck_blake3 h;
	uint8_t *gather = malloc(MCK_BLAKE3_SUBTREE_BYTES);
	uint64_t pos = 0;

	if (!gather)
		return -ENOMEM;
	mck_blake3_init(&h);
	mck_hash_stream(&h, &pos, &c, size, gather);
	mck_blake3_final(&h, out);
	free(gather);
	return 0;
}

int mck_lazy_index_digest(const struct mck_lazy_index *ix)
{
	uint8_t got[MCK_BLAKE3_LEN];

	if (!ix->data)
		return 1;
	if (file_digest(ix->data, ix->size, got) < 0)
		return -ENOMEM;
	return memcmp(got, ix->digest, MCK_BLAKE3_LEN) == 0;
}

int mck_lazy_check_index(const struct mck_lazy_index *ix, const struct mck_read_source *src,
			 uint32_t s, size_t page_size, uint64_t npages, struct mck_read_fault *f)
{
	const struct mck_idx_record *r = src->records;
	uint8_t zero_digest[MCK_BLAKE3_LEN];
	uint8_t *zero;

	memset(f, 0, sizeof(*f));
	if (ix->data) {
		int ok = mck_lazy_index_digest(ix);

		if (ok < 0)
			return ok;
		if (!ok)
			return index_fault(f, s, MCK_LAZY_WHOLE_FILE, 0,
					   "BLAKE3 digest mismatch (the file is damaged)");
	}
	zero = calloc(1, page_size);
	if (!zero)
		return -ENOMEM;
	mck_blake3_pages(zero, page_size, 1, zero_digest);
	free(zero);
	for (uint64_t i = 0; i < src->nrecords; i++) {
		int rc = mck_read_check_record(src, s, i, page_size, npages, f);

		if (rc < 0)
			return rc;
		if (i && r[i].page <= r[i - 1].page)
			return index_fault(f, s, i, r[i].page, "is not in strictly increasing page order");
		if ((r[i].flags & MCK_PAGE_ZERO) &&
		    (r[i].offset || r[i].length || memcmp(r[i].digest, zero_digest, MCK_BLAKE3_LEN)))
			return index_fault(f, s, i, r[i].page,
					   "is a zero page with stored bytes or the wrong digest");
	}
	return 0;
}
