/* hash_iov.c: BLAKE3 of one input laid out as iovecs (an epoch's pack: its
 * header, then runs of pages scattered in memory), with the aligned 64 KiB
 * subtrees hashed in SIMD lanes, by one thread (mck_hash_stream) or by
 * several, each taking subtrees (mck_hash_subtree_at) for one streaming
 * hasher to absorb in order. A pack's pages start 32 bytes into the file, so
 * without this every chunk would straddle pages and the streaming hasher
 * would take it block by block. Pure computation, no allocation
 * (async-signal-safe: the fork child uses it). */
#include <string.h>

#include "internal.h"

/* A cursor that consumed an iovec to its end stays there (at == iov_len)
 * rather than stepping to the next: a writer may still grow that iovec (the
 * epoch writer extends its last run of pages). Readers step over first. */
static void cursor_norm(struct mck_iov_cursor *c)
{
	while (c->i < c->cnt && c->at == c->iov[c->i].iov_len) {
		c->i++;
		c->at = 0;
	}
}

void mck_cursor_skip(struct mck_iov_cursor *c, uint64_t n)
{
	while (n) {
		size_t left;

		cursor_norm(c);
		left = c->iov[c->i].iov_len - c->at;
		if (n <= left) {
			c->at += n;
			return;
		}
		c->at += left;
		n -= left;
	}
}

size_t mck_cursor_piece(struct mck_iov_cursor *c, const uint8_t **p)
{
	cursor_norm(c);
	*p = (const uint8_t *)c->iov[c->i].iov_base + c->at;
	return c->iov[c->i].iov_len - c->at;
}

/* The next len bytes at the cursor: in place if one iovec holds them, else
 * copied into buf. The cursor moves past them. */
static const uint8_t *cursor_take(struct mck_iov_cursor *c, size_t len, uint8_t *buf)
{
	const uint8_t *p;
	size_t got = 0;

	if (mck_cursor_piece(c, &p) >= len) {
		c->at += len;
		return p;
	}
	while (got < len) {
		size_t left = mck_cursor_piece(c, &p), part = len - got < left ? len - got : left;

		memcpy(buf + got, p, part);
		got += part;
		c->at += part;
	}
	return buf;
}

void mck_hash_subtree_at(struct mck_iov_cursor *c, uint64_t g, uint8_t *gather,
			 uint8_t cv[MCK_BLAKE3_LEN])
{
	const uint8_t *chunks[MCK_BLAKE3_SUBTREE_CHUNKS];

	for (size_t i = 0; i < MCK_BLAKE3_SUBTREE_CHUNKS; i++)
		chunks[i] = cursor_take(c, 1024, gather + 1024 * i);
	mck_blake3_subtree(chunks, g * MCK_BLAKE3_SUBTREE_CHUNKS, cv);
}

/* Absorb n bytes at the cursor, streaming. */
static void stream_bytes(struct mck_blake3 *h, struct mck_iov_cursor *c, uint64_t n)
{
	while (n) {
		const uint8_t *p;
		size_t left = mck_cursor_piece(c, &p), part = n < left ? (size_t)n : left;

		mck_blake3_update(h, p, part);
		c->at += part;
		n -= part;
	}
}

void mck_hash_stream(struct mck_blake3 *h, uint64_t *pos, struct mck_iov_cursor *c, uint64_t n,
		     uint8_t *gather)
{
	const uint64_t G = MCK_BLAKE3_SUBTREE_BYTES;
	uint8_t cvs[16 * MCK_BLAKE3_LEN];

	while (n) {
		uint64_t into = *pos % G;

		if (into || n <= G) {
			/* up to the next boundary; or all that is left, which
			 * holds the input's last chunk as far as we know */
			uint64_t part = into ? G - into : n;

			if (part > n)
				part = n;
			stream_bytes(h, c, part);
			*pos += part;
			n -= part;
			continue;
		}
		/* whole subtrees, each with more input after it */
		uint64_t k = (n - 1) / G;

		if (k > 16)
			k = 16;
		for (uint64_t j = 0; j < k; j++)
			mck_hash_subtree_at(c, *pos / G + j, gather, cvs + MCK_BLAKE3_LEN * j);
		mck_blake3_push_subtrees(h, cvs, (size_t)k);
		*pos += k * G;
		n -= k * G;
	}
}
