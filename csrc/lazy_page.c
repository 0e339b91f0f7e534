/* lazy_page.c: a page's way into the arena: its record read from the pack,
 * decoded, checked against its digest, and mapped (UFFDIO_COPY,
 * UFFDIO_ZEROPAGE) or woken. */
#include "lazy_internal.h"

void *lz_page_addr(const struct mck_lazy *l, uint64_t p)
{
	return l->base + p * l->ps;
}

void lz_set_mapped(struct mck_lazy *l, uint64_t p, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		uint8_t want = PENDING;

		atomic_compare_exchange_strong(&l->state[p + i], &want, MAPPED);
	}
}

/* UFFDIO_COPY (src) or UFFDIO_ZEROPAGE (src NULL) of pages [p, p+n): the
 * number mapped before a failure in *done; -errno of that failure. */
int lz_map_ioctl(struct mck_lazy *l, uint64_t p, uint64_t n, const void *src, uint64_t *done)
{
	size_t len = n * l->ps;
	int rc;
	long long got;

	if (src) {
		struct uffdio_copy c = {.dst = (uintptr_t)lz_page_addr(l, p), .src = (uintptr_t)src,
					.len = len};

		rc = ioctl(l->fd, UFFDIO_COPY, &c) < 0 ? -errno : 0;
		got = c.copy;
	} else {
		struct uffdio_zeropage z = {.range = {.start = (uintptr_t)lz_page_addr(l, p), .len = len}};

		rc = ioctl(l->fd, UFFDIO_ZEROPAGE, &z) < 0 ? -errno : 0;
		got = z.zeropage;
	}
	*done = rc == 0 ? n : (got > 0 ? (uint64_t)got / l->ps : 0);
	return rc;
}

void lz_wake(struct mck_lazy *l, uint64_t p)
{
	struct uffdio_range r = {.start = (uintptr_t)lz_page_addr(l, p), .len = l->ps};

	ioctl(l->fd, UFFDIO_WAKE, &r);
}

const struct mck_idx_record *lz_record_of(const struct mck_lazy *l, uint32_t source,
					  uint64_t i)
{
	return (const struct mck_idx_record *)l->sources[source].records + i;
}

/* Room for npages pages; a decoder if `coded`. */
int lz_scratch_open(struct scratch *sc, uint32_t npages, size_t ps, int coded)
{
	size_t n = (size_t)npages * ps;

	memset(sc, 0, sizeof(*sc));
	sc->buf = aligned_alloc(ps, n);
	sc->pages = aligned_alloc(ps, n);
	sc->digests = malloc((size_t)npages * MCK_BLAKE3_LEN);
	if (!sc->buf || !sc->pages || !sc->digests)
		return -ENOMEM;
	return coded ? mck_codec_open(&sc->codec) : 0;
}

void lz_scratch_close(struct scratch *sc)
{
	free(sc->buf);
	free(sc->pages);
	free(sc->digests);
	mck_codec_close(sc->codec);
	memset(sc, 0, sizeof(*sc));
}

static int fault_at(struct mck_read_fault *f, int kind, uint32_t source, uint64_t record,
		    uint64_t page, uint64_t offset)
{
	memset(f, 0, sizeof(*f));
	f->kind = kind;
	f->source = source;
	f->record = record;
	f->page = page;
	f->offset = offset;
	return -EBADMSG;
}

int lz_pread_fully(struct mck_lazy *l, int fd, uint8_t *buf, uint64_t len, uint64_t off,
		   uint32_t source, const struct mck_read_entry *e, struct mck_read_fault *f)
{
	uint64_t at = 0;

	while (at < len) {
		ssize_t got = pread(fd, buf + at, len - at, (off_t)(off + at));

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			fault_at(f, MCK_READ_FAULT_IO, source, e->record, e->page, off + at);
			f->err = -errno;
			return -EBADMSG;
		}
		if (got == 0)
			return fault_at(f, MCK_READ_FAULT_SHORT, source, e->record, e->page, off + at);
		at += (uint64_t)got;
	}
	atomic_fetch_add(&l->n_bytes, len);
	return 0;
}

/* The page image of entry e (stored at src) into dst; -EBADMSG with f set. */
int lz_decode(struct mck_lazy *l, struct scratch *sc, uint32_t source,
	      const struct mck_read_entry *e, const uint8_t *src, uint8_t *dst,
	      struct mck_read_fault *f)
{
	const struct mck_idx_record *r = lz_record_of(l, source, e->record);
	char why[sizeof(f->why)];
	int rc;

	if (!(r->flags & MCK_PAGE_COMPRESSED)) {
		if (src != dst)
			memcpy(dst, src, l->ps);
		return 0;
	}
	rc = mck_codec_decode(sc->codec, r->flags & MCK_PAGE_COMPRESSED, src, r->length, dst,
			      l->ps, why, sizeof(why));
	if (rc == 0)
		return 0;
	fault_at(f, rc == -EBADMSG ? MCK_READ_FAULT_DECODE : MCK_READ_FAULT_IO, source, e->record,
		 e->page, r->offset);
	if (rc == -EBADMSG)
		memcpy(f->why, why, sizeof(why));
	else
		f->err = rc;
	return -EBADMSG;
}

int lz_check(struct mck_lazy *l, uint32_t source, const struct mck_read_entry *e,
	     const uint8_t *digest, struct mck_read_fault *f)
{
	const struct mck_idx_record *r = lz_record_of(l, source, e->record);

	if (!l->verify || memcmp(digest, r->digest, MCK_BLAKE3_LEN) == 0)
		return 0;
	fault_at(f, MCK_READ_FAULT_DIGEST, source, e->record, e->page, r->offset);
	f->nbad = 1;
	return -EBADMSG;
}
