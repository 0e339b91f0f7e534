/* page_codec.h: one stored page image decoded into its page (zstd frame or
 * lz4 block), for the reader's threads, and one page encoded so, for the
 * writer's. The codecs are optional at build
 * time (MCK_HAVE_ZSTD, MCK_HAVE_LZ4: CMake defines them when it finds the
 * libraries); without one, its pages are left to the caller. */
#ifndef MEMCKPT_PAGE_CODEC_H
#define MEMCKPT_PAGE_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* The MCK_PAGE_* compression flags this build decodes. */
unsigned mck_codec_flags(void);

/* Per-thread decoding state (a zstd context); NULL-safe free. */
struct mck_codec;
int mck_codec_open(struct mck_codec **out);
void mck_codec_close(struct mck_codec *c);

/* Decode the len bytes at src, stored with `flags` (one of MCK_PAGE_ZSTD,
 * MCK_PAGE_LZ4), into exactly page_size bytes at dst. 0; -EBADMSG if they
 * do not decode to exactly one page (why says how, NUL-terminated);
 * -ENOTSUP if this build has no such codec. */
int mck_codec_decode(struct mck_codec *c, unsigned flags, const void *src, size_t len,
		     void *dst, size_t page_size, char *why, size_t whylen);

/* Encoding, for the epoch writer's threads (one encoder a thread). */
struct mck_encoder;
/* An encoder for `flags` (one of MCK_PAGE_ZSTD, MCK_PAGE_LZ4; zstd at
 * `level`): frames as the decoder above takes them (a zstd frame with its
 * content size, no checksum, no dictionary id; a bare lz4 block). 0;
 * -ENOTSUP if this build lacks the codec; -ENOMEM. */
int mck_encoder_open(unsigned flags, int level, struct mck_encoder **out);
void mck_encoder_close(struct mck_encoder *e);
/* The room one encoded page may need. */
size_t mck_encode_bound(unsigned flags, size_t page_size);
/* Encode one page into dst (cap bytes, mck_encode_bound() suffices): its
 * length, or 0 when it does not come out smaller than the page (store it
 * raw). Deterministic: the same bytes for the same page, on any thread. */
size_t mck_encode_page(struct mck_encoder *e, const void *src, size_t page_size, void *dst,
		       size_t cap);

#endif /* MEMCKPT_PAGE_CODEC_H */
