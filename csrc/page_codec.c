/* page_codec.c: decoding one stored page image, and encoding one (see
 * page_codec.h). A page decodes to exactly one page or it is damage: a frame
 * that claims another size is refused before anything is allocated or
 * written past the page. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "pack_format.h"
#include "page_codec.h"

#ifdef MCK_HAVE_ZSTD
#include <zstd.h>
#endif
#ifdef MCK_HAVE_LZ4
#include <lz4.h>
#endif

struct mck_codec {
#ifdef MCK_HAVE_ZSTD
	ZSTD_DCtx *zstd; /* created on first use */
#endif
	int unused; /* a struct needs a member in a build without codecs */
};

unsigned mck_codec_flags(void)
{
	unsigned f = 0;

#ifdef MCK_HAVE_ZSTD
	f |= MCK_PAGE_ZSTD;
#endif
#ifdef MCK_HAVE_LZ4
	f |= MCK_PAGE_LZ4;
#endif
	return f;
}

int mck_codec_open(struct mck_codec **out)
{
	struct mck_codec *c = calloc(1, sizeof(*c));

	*out = NULL;
	if (!c)
		return -ENOMEM;
	*out = c;
	return 0;
}

void mck_codec_close(struct mck_codec *c)
{
	if (!c)
		return;
#ifdef MCK_HAVE_ZSTD
	ZSTD_freeDCtx(c->zstd);
#endif
	free(c);
}

#ifdef MCK_HAVE_ZSTD
static int decode_zstd(struct mck_codec *c, const void *src, size_t len, void *dst,
		       size_t page_size, char *why, size_t whylen)
{
	unsigned long long claimed = ZSTD_getFrameContentSize(src, len);
	size_t got;

	if (claimed != page_size) {
		if (claimed == ZSTD_CONTENTSIZE_ERROR)
			snprintf(why, whylen, "not a zstd frame");
		else if (claimed == ZSTD_CONTENTSIZE_UNKNOWN)
			snprintf(why, whylen, "the zstd frame does not say its size");
		else
			snprintf(why, whylen, "the zstd frame holds %llu bytes, not one page", claimed);
		return -EBADMSG;
	}
	if (!c->zstd) {
		c->zstd = ZSTD_createDCtx();
		if (!c->zstd)
			return -ENOMEM;
	}
	got = ZSTD_decompressDCtx(c->zstd, dst, page_size, src, len);
	if (ZSTD_isError(got)) {
		snprintf(why, whylen, "zstd: %s", ZSTD_getErrorName(got));
		return -EBADMSG;
	}
	if (got != page_size) {
		snprintf(why, whylen, "decompresses to %zu bytes, not %zu", got, page_size);
		return -EBADMSG;
	}
	return 0;
}
#endif

#ifdef MCK_HAVE_LZ4
static int decode_lz4(const void *src, size_t len, void *dst, size_t page_size, char *why,
		      size_t whylen)
{
	int got;

	if (len > (size_t)LZ4_MAX_INPUT_SIZE || page_size > (size_t)LZ4_MAX_INPUT_SIZE) {
		snprintf(why, whylen, "lz4: block of %zu bytes is too large", len);
		return -EBADMSG;
	}
	/* LZ4_decompress_safe never writes past page_size, whatever the block says */
	got = LZ4_decompress_safe(src, dst, (int)len, (int)page_size);
	if (got < 0) {
		snprintf(why, whylen, "lz4: the block is malformed");
		return -EBADMSG;
	}
	if ((size_t)got != page_size) {
		snprintf(why, whylen, "decompresses to %d bytes, not %zu", got, page_size);
		return -EBADMSG;
	}
	return 0;
}
#endif

int mck_codec_decode(struct mck_codec *c, unsigned flags, const void *src, size_t len,
		     void *dst, size_t page_size, char *why, size_t whylen)
{
	if (whylen)
		why[0] = 0;
	(void)c, (void)src, (void)len, (void)dst, (void)page_size;
#ifdef MCK_HAVE_ZSTD
	if (flags == MCK_PAGE_ZSTD)
		return decode_zstd(c, src, len, dst, page_size, why, whylen);
#endif
#ifdef MCK_HAVE_LZ4
	if (flags == MCK_PAGE_LZ4)
		return decode_lz4(src, len, dst, page_size, why, whylen);
#endif
	snprintf(why, whylen, "no decoder for page flags %#x in this build", flags);
	return -ENOTSUP;
}

/* ---- encoding (the epoch writer's threads: one encoder each) ------------------ */

struct mck_encoder {
	unsigned flags;
#ifdef MCK_HAVE_ZSTD
	ZSTD_CCtx *zstd;
#endif
};

size_t mck_encode_bound(unsigned flags, size_t page_size)
{
	(void)flags;
#ifdef MCK_HAVE_ZSTD
	if (flags == MCK_PAGE_ZSTD)
		return ZSTD_compressBound(page_size);
#endif
#ifdef MCK_HAVE_LZ4
	if (flags == MCK_PAGE_LZ4 && page_size <= (size_t)LZ4_MAX_INPUT_SIZE)
		return (size_t)LZ4_compressBound((int)page_size);
#endif
	return page_size;
}

int mck_encoder_open(unsigned flags, int level, struct mck_encoder **out)
{
	struct mck_encoder *e;

	*out = NULL;
	if (!(flags & mck_codec_flags()) || (flags & (flags - 1)))
		return -ENOTSUP;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->flags = flags;
	(void)level;
#ifdef MCK_HAVE_ZSTD
	if (flags == MCK_PAGE_ZSTD) {
		/* one frame per page that says its size, with no checksum and no
		 * dictionary id: what the reader (and Python's decoder) expects */
		e->zstd = ZSTD_createCCtx();
		if (!e->zstd ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(e->zstd, ZSTD_c_compressionLevel, level)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(e->zstd, ZSTD_c_contentSizeFlag, 1)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(e->zstd, ZSTD_c_checksumFlag, 0)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(e->zstd, ZSTD_c_dictIDFlag, 0))) {
			mck_encoder_close(e);
			return -ENOMEM;
		}
	}
#endif
	*out = e;
	return 0;
}

void mck_encoder_close(struct mck_encoder *e)
{
	if (!e)
		return;
#ifdef MCK_HAVE_ZSTD
	ZSTD_freeCCtx(e->zstd);
#endif
	free(e);
}

size_t mck_encode_page(struct mck_encoder *e, const void *src, size_t page_size, void *dst,
		       size_t cap)
{
	size_t got = 0;

	(void)src, (void)dst, (void)cap;
#ifdef MCK_HAVE_ZSTD
	if (e->flags == MCK_PAGE_ZSTD) {
		got = ZSTD_compress2(e->zstd, dst, cap, src, page_size);
		if (ZSTD_isError(got))
			got = 0;
	}
#endif
#ifdef MCK_HAVE_LZ4
	if (e->flags == MCK_PAGE_LZ4 && page_size <= (size_t)LZ4_MAX_INPUT_SIZE &&
	    cap <= (size_t)LZ4_MAX_INPUT_SIZE) {
		int n = LZ4_compress_default(src, dst, (int)page_size, (int)cap);

		got = n > 0 ? (size_t)n : 0;
	}
#endif
	/* a page that does not shrink is stored raw */
	return got < page_size ? got : 0;
}
