/* page_codec.h: one stored page image decoded into its page (zstd frame or
 * lz4 block), for the reader's threads. The codecs are optional at build
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

#endif /* MEMCKPT_PAGE_CODEC_H */
