/* test_epoch_reader.c: the epoch reader (csrc/epoch_reader.c, read_plan.c)
 * on packs written here, against a model of what each page must read as:
 * chains that override, zero and dedup pages, reads of a subset, fresh and
 * used destinations, damage (a flipped byte, a cut pack, records pointing
 * outside), compressed pages (a zstd frame and an lz4 block written by hand:
 * the test needs no codec library) and the same answer on 1 or N threads.
 *
 * Exit 0 = pass, 1 = fail, 77 = nothing could run. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "epoch_reader.h"
#include "memckpt.h"
#include "pack_format.h"
#include "check.h"

#define MAX_SOURCES 4

/* A chain being built: packs (anonymous files), records, and the model. */
struct chain {
	size_t ps;
	uint64_t npages;
	uint32_t nsources;
	int fd[MAX_SOURCES];
	uint64_t end[MAX_SOURCES];          /* pack size so far */
	struct mck_idx_record *recs[MAX_SOURCES];
	uint64_t nrecs[MAX_SOURCES];
	struct mck_read_source src[MAX_SOURCES];
	uint8_t *model;                     /* what each page must read as */
};

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);

	if (!p) {
		perror("calloc");
		exit(1);
	}
	return p;
}

static void chain_init(struct chain *c, size_t ps, uint64_t npages)
{
	memset(c, 0, sizeof(*c));
	c->ps = ps;
	c->npages = npages;
	c->model = xcalloc(npages, ps);
}

/* A new source (the next epoch): an unlinked file with a pack header's room. */
static uint32_t chain_source(struct chain *c)
{
	uint32_t s = c->nsources++;
	char path[] = "/tmp/mck-reader-XXXXXX";
	uint8_t header[MCK_PACK_HEADER_SIZE];

	c->fd[s] = mkostemp(path, O_CLOEXEC);
	if (c->fd[s] < 0) {
		perror("mkostemp");
		exit(1);
	}
	unlink(path);
	memset(header, 0xEE, sizeof(header)); /* the reader never looks at it */
	CHECK(pwrite(c->fd[s], header, sizeof(header), 0) == (ssize_t)sizeof(header), "header");
	c->end[s] = MCK_PACK_HEADER_SIZE;
	c->recs[s] = xcalloc(c->npages + 1, sizeof(struct mck_idx_record));
	return s;
}

static struct mck_idx_record *add_record(struct chain *c, uint32_t s, uint64_t page)
{
	struct mck_idx_record *r = &c->recs[s][c->nrecs[s]++];

	memset(r, 0, sizeof(*r));
	r->page = page;
	return r;
}

/* Store `data` (one page) as the next image of source s for `page`. */
static struct mck_idx_record *put_raw(struct chain *c, uint32_t s, uint64_t page,
				      const uint8_t *data)
{
	struct mck_idx_record *r = add_record(c, s, page);

	r->offset = c->end[s];
	r->length = (uint32_t)c->ps;
	CHECK(pwrite(c->fd[s], data, c->ps, (off_t)r->offset) == (ssize_t)c->ps, "pwrite");
	c->end[s] += c->ps;
	mck_blake3_pages(data, c->ps, 1, r->digest);
	memcpy(c->model + page * c->ps, data, c->ps);
	return r;
}

/* `page` reuses the image of an earlier record of the same source (dedup). */
static void put_dup(struct chain *c, uint32_t s, uint64_t page, const struct mck_idx_record *of)
{
	struct mck_idx_record *r = add_record(c, s, page);
	uint64_t from = of->page;

	r->offset = of->offset;
	r->length = of->length;
	r->flags = of->flags;
	memcpy(r->digest, of->digest, 32);
	memmove(c->model + page * c->ps, c->model + from * c->ps, c->ps);
}

static void put_zero(struct chain *c, uint32_t s, uint64_t page)
{
	struct mck_idx_record *r = add_record(c, s, page);
	uint8_t *z = xcalloc(1, c->ps);

	r->flags = MCK_PAGE_ZERO;
	mck_blake3_pages(z, c->ps, 1, r->digest);
	memset(c->model + page * c->ps, 0, c->ps);
	free(z);
}

/* A compressed image of a page whose content is `page_data`. */
static struct mck_idx_record *put_coded(struct chain *c, uint32_t s, uint64_t page,
					unsigned flag, const uint8_t *img, size_t len,
					const uint8_t *page_data)
{
	struct mck_idx_record *r = add_record(c, s, page);

	r->offset = c->end[s];
	r->length = (uint32_t)len;
	r->flags = flag;
	CHECK(pwrite(c->fd[s], img, len, (off_t)r->offset) == (ssize_t)len, "pwrite");
	c->end[s] += len;
	mck_blake3_pages(page_data, c->ps, 1, r->digest);
	memcpy(c->model + page * c->ps, page_data, c->ps);
	return r;
}

static const struct mck_read_source *chain_sources(struct chain *c)
{
	for (uint32_t s = 0; s < c->nsources; s++) {
		c->src[s].fd = c->fd[s];
		c->src[s].records = c->recs[s];
		c->src[s].nrecords = c->nrecs[s];
		c->src[s].pack_size = c->end[s];
	}
	return c->src;
}

static void chain_free(struct chain *c)
{
	for (uint32_t s = 0; s < c->nsources; s++) {
		close(c->fd[s]);
		free(c->recs[s]);
	}
	free(c->model);
}

static void random_page(uint8_t *p, size_t ps)
{
	for (size_t i = 0; i < ps; i += 8) {
		uint64_t v = rnd(&rng_state);

		memcpy(p + i, &v, 8);
	}
}

/* A destination: fresh (anonymous mapping, reads as zero) or used (filled with fill). */
struct dest {
	uint8_t *p;
	size_t len;
};

static struct dest dest_new(const struct chain *c, int fresh, int fill)
{
	struct dest d = {.len = c->npages * c->ps};

	d.p = mmap(NULL, d.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (d.p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	if (!fresh)
		memset(d.p, fill, d.len);
	return d;
}

static void dest_free(struct dest *d)
{
	munmap(d->p, d->len);
}

/* Plan and run a read; 0, or what failed (-errno), *f filled. */
static int read_chain(struct chain *c, struct dest *d, const uint64_t *want, uint64_t nwant,
		      unsigned flags, unsigned threads, struct mck_read_fault *f,
		      uint64_t *pages_done)
{
	struct mck_read_plan *plan;
	int rc = mck_read_plan_build(&plan, chain_sources(c), c->nsources, d->p, c->ps,
				     c->npages, want, nwant, flags, f);

	if (rc < 0)
		return rc;
	rc = mck_read_plan_run(plan, 0, mck_read_plan_units(plan), threads, f);
	if (pages_done)
		*pages_done = mck_read_plan_pages(plan, mck_read_plan_units(plan));
	mck_read_plan_free(plan);
	return rc;
}

/* How many pages of d differ from the model (wanted pages), or from `fill` (the others). */
static uint64_t pages_wrong(const struct chain *c, const struct dest *d, const uint64_t *want,
			    uint64_t nwant, int fill)
{
	uint64_t bad = 0, w = 0;
	uint8_t *other = xcalloc(1, c->ps);

	memset(other, fill, c->ps);
	for (uint64_t p = 0; p < c->npages; p++) {
		int wanted = !want || (w < nwant && want[w] == p);
		const uint8_t *expect = wanted ? c->model + p * c->ps : other;

		w += wanted && want;
		bad += memcmp(d->p + p * c->ps, expect, c->ps) != 0;
	}
	free(other);
	return bad;
}

/* A full epoch of random pages (every 7th absent: zero), then epochs that
 * rewrite, zero and dedup pages. */
static void build_chain(struct chain *c, size_t ps, uint64_t npages, uint32_t depth)
{
	uint8_t *page = xcalloc(1, ps);

	chain_init(c, ps, npages);
	chain_source(c);
	for (uint64_t p = 0; p < npages; p++) {
		if (p % 7 == 3)
			continue;
		random_page(page, ps);
		put_raw(c, 0, p, page);
	}
	for (uint32_t s = 1; s < depth; s++) {
		const struct mck_idx_record *first = NULL;

		chain_source(c);
		for (uint64_t p = 0; p < npages; p++) {
			uint64_t r = rnd(&rng_state) % 16;

			if (r == 0) {
				put_zero(c, s, p);
			} else if (r == 1 && first) {
				put_dup(c, s, p, first);
			} else if (r < 6) {
				const struct mck_idx_record *at;

				random_page(page, ps);
				at = put_raw(c, s, p, page);
				first = first ? first : at;
			}
		}
	}
	free(page);
}

static void test_full_epoch(struct test_ctx *ctx)
{
	struct chain c;
	struct mck_read_fault f;

	(void)ctx;
	build_chain(&c, 4096, 700, 1);
	for (int fresh = 0; fresh < 2; fresh++)
		for (unsigned threads = 1; threads <= 3; threads += 2) {
			struct dest d = dest_new(&c, fresh, 0xA5);
			uint64_t done = 0;
			unsigned flags = MCK_READ_VERIFY | (fresh ? MCK_READ_OUT_ZERO : 0);
			int rc = read_chain(&c, &d, NULL, 0, flags, threads, &f, &done);

			CHECK(rc == 0, "fresh %d threads %u: %s (fault %d)", fresh, threads,
			      strerror(-rc), f.kind);
			CHECK(pages_wrong(&c, &d, NULL, 0, 0) == 0, "fresh %d threads %u", fresh, threads);
			/* a fresh destination's absent pages are left alone, not written */
			CHECK(done == (fresh ? 600 : 700), "pages filled %llu", (unsigned long long)done);
			dest_free(&d);
		}
	chain_free(&c);
}

static void test_chain_newest_wins(struct test_ctx *ctx)
{
	struct chain c;
	struct mck_read_fault f;
	uint64_t want[300], nwant = 0;

	(void)ctx;
	build_chain(&c, 4096, 900, 4);
	for (uint64_t p = 0; p < c.npages && nwant < 300; p++)
		if (rnd(&rng_state) % 3 == 0)
			want[nwant++] = p;
	for (int fresh = 0; fresh < 2; fresh++) {
		struct dest d = dest_new(&c, fresh, 0x5C);
		unsigned flags = MCK_READ_VERIFY | (fresh ? MCK_READ_OUT_ZERO : 0);

		CHECK(read_chain(&c, &d, NULL, 0, flags, 2, &f, NULL) == 0, "whole, fresh %d", fresh);
		CHECK(pages_wrong(&c, &d, NULL, 0, 0) == 0, "whole, fresh %d", fresh);
		dest_free(&d);
		/* a subset: the other pages keep what they held */
		d = dest_new(&c, 0, 0x5C);
		CHECK(read_chain(&c, &d, want, nwant, MCK_READ_VERIFY, 2, &f, NULL) == 0, "subset");
		CHECK(pages_wrong(&c, &d, want, nwant, 0x5C) == 0, "subset");
		dest_free(&d);
	}
	chain_free(&c);
}

/* The first record of source s from i on whose image no other record shares. */
static const struct mck_idx_record *image_of_one(const struct chain *c, uint32_t s, uint64_t i)
{
	for (; i < c->nrecs[s]; i++) {
		const struct mck_idx_record *r = &c->recs[s][i];
		uint64_t users = 0;

		for (uint64_t j = 0; j < c->nrecs[s] && !(r->flags & MCK_PAGE_ZERO); j++)
			users += c->recs[s][j].offset == r->offset;
		if (users == 1)
			return r;
	}
	fprintf(stderr, "no record with an image of its own\n");
	exit(1);
}

/* The same bytes and the same fault whatever the thread count. */
static void test_threads_agree(struct test_ctx *ctx)
{
	struct chain c;
	struct mck_read_fault f, f1;
	struct dest one;
	const struct mck_idx_record *victim;
	uint8_t flip = 0x40;

	(void)ctx;
	build_chain(&c, 4096, 3000, 3);
	one = dest_new(&c, 0, 0);
	CHECK(read_chain(&c, &one, NULL, 0, MCK_READ_VERIFY, 1, &f, NULL) == 0, "1 thread");
	CHECK(pages_wrong(&c, &one, NULL, 0, 0) == 0, "1 thread");
	for (unsigned threads = 2; threads <= 7; threads += 5) {
		struct dest d = dest_new(&c, 0, 0x11);

		CHECK(read_chain(&c, &d, NULL, 0, MCK_READ_VERIFY, threads, &f, NULL) == 0, "%u", threads);
		CHECK(memcmp(d.p, one.p, one.len) == 0, "%u threads read other bytes than 1", threads);
		dest_free(&d);
	}
	/* damage two images of the newest source: the first in plan order is named */
	victim = image_of_one(&c, 2, c.nrecs[2] / 2);
	for (int k = 0; k < 2; k++) {
		const struct mck_idx_record *r = k ? image_of_one(&c, 2, c.nrecs[2] / 2 + 9) : victim;
		uint8_t b;

		CHECK(pread(c.fd[2], &b, 1, (off_t)r->offset + 100) == 1, "pread");
		b ^= flip;
		CHECK(pwrite(c.fd[2], &b, 1, (off_t)r->offset + 100) == 1, "pwrite");
	}
	CHECK(read_chain(&c, &one, NULL, 0, MCK_READ_VERIFY, 1, &f1, NULL) == -EBADMSG, "damaged");
	CHECK(f1.kind == MCK_READ_FAULT_DIGEST && f1.source == 2 && f1.page == victim->page &&
	      f1.record == (uint64_t)(victim - c.recs[2]) && f1.offset == victim->offset,
	      "fault kind %d source %u page %llu", f1.kind, f1.source, (unsigned long long)f1.page);
	for (unsigned threads = 2; threads <= 7; threads += 5) {
		CHECK(read_chain(&c, &one, NULL, 0, MCK_READ_VERIFY, threads, &f, NULL) == -EBADMSG,
		      "damaged, %u threads", threads);
		CHECK(f.kind == f1.kind && f.source == f1.source && f.record == f1.record &&
		      f.page == f1.page && f.offset == f1.offset && f.nbad == f1.nbad,
		      "%u threads name another fault", threads);
	}
	dest_free(&one);
	chain_free(&c);
}

static void test_verify_off(struct test_ctx *ctx)
{
	struct chain c;
	struct mck_read_fault f;
	struct dest d;
	uint8_t b;
	const struct mck_idx_record *r;

	(void)ctx;
	build_chain(&c, 4096, 64, 1);
	r = &c.recs[0][5];
	CHECK(pread(c.fd[0], &b, 1, (off_t)r->offset + 7) == 1, "pread");
	b ^= 1;
	CHECK(pwrite(c.fd[0], &b, 1, (off_t)r->offset + 7) == 1, "pwrite");
	d = dest_new(&c, 1, 0);
	CHECK(read_chain(&c, &d, NULL, 0, MCK_READ_VERIFY | MCK_READ_OUT_ZERO, 2, &f, NULL) == -EBADMSG &&
	      f.kind == MCK_READ_FAULT_DIGEST && f.page == r->page && f.nbad == 1, "verified read");
	/* unverified: the damage goes through, and only that byte differs */
	CHECK(read_chain(&c, &d, NULL, 0, MCK_READ_OUT_ZERO, 2, &f, NULL) == 0, "unverified read");
	CHECK(pages_wrong(&c, &d, NULL, 0, 0) == 1, "one page differs");
	CHECK(d.p[r->page * c.ps + 7] == (c.model[r->page * c.ps + 7] ^ 1), "the flipped byte");
	dest_free(&d);
	chain_free(&c);
}

static void test_cut_pack(struct test_ctx *ctx)
{
	struct chain c;
	struct mck_read_fault f;
	struct mck_read_plan *plan;
	struct dest d;
	uint64_t cut;

	(void)ctx;
	build_chain(&c, 4096, 40, 1);
	d = dest_new(&c, 1, 0);
	CHECK(mck_read_plan_build(&plan, chain_sources(&c), 1, d.p, c.ps, c.npages, NULL, 0,
				  MCK_READ_VERIFY | MCK_READ_OUT_ZERO, &f) == 0, "plan");
	cut = c.recs[0][20].offset + 1000;
	CHECK(ftruncate(c.fd[0], (off_t)cut) == 0, "ftruncate");
	CHECK(mck_read_plan_run(plan, 0, mck_read_plan_units(plan), 1, &f) == -EBADMSG, "cut");
	CHECK(f.kind == MCK_READ_FAULT_SHORT && f.offset == cut && f.page == c.recs[0][20].page,
	      "short at %llu (kind %d, page %llu)", (unsigned long long)f.offset, f.kind,
	      (unsigned long long)f.page);
	mck_read_plan_free(plan);
	dest_free(&d);
	chain_free(&c);
}

static void test_bad_records(struct test_ctx *ctx)
{
	struct chain c;
	struct mck_read_fault f;
	struct mck_read_plan *plan = NULL;
	struct dest d;
	uint64_t unsorted[] = {3, 2}, beyond[] = {1, 40};
	static const struct {
		const char *what;
		int field;          /* 0 page, 1 offset, 2 length, 3 flags */
		uint64_t value;
	} cases[] = {
		{"page beyond the arena", 0, 40},
		{"offset inside the header", 1, 8},
		{"bytes past the pack", 1, 32 + 39 * 4096 + 1},
		{"raw length not a page", 2, 4095},
		{"unknown flag", 3, 1u << 5},
		{"both codecs", 3, MCK_PAGE_ZSTD | MCK_PAGE_LZ4},
		{"zero and coded", 3, MCK_PAGE_ZERO | MCK_PAGE_LZ4},
	};

	(void)ctx;
	build_chain(&c, 4096, 40, 1);
	d = dest_new(&c, 1, 0);
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		struct mck_idx_record keep = c.recs[0][c.nrecs[0] - 1], *r = &c.recs[0][c.nrecs[0] - 1];

		if (cases[k].field == 0)
			r->page = cases[k].value;
		else if (cases[k].field == 1)
			r->offset = cases[k].value;
		else if (cases[k].field == 2)
			r->length = (uint32_t)cases[k].value;
		else
			r->flags = (uint32_t)cases[k].value;
		CHECK(mck_read_plan_build(&plan, chain_sources(&c), 1, d.p, c.ps, c.npages, NULL, 0,
					  MCK_READ_VERIFY, &f) == -EBADMSG && !plan, "%s", cases[k].what);
		CHECK(f.kind == MCK_READ_FAULT_RECORD && f.record == c.nrecs[0] - 1 && f.why[0],
		      "%s: kind %d record %llu", cases[k].what, f.kind, (unsigned long long)f.record);
		*r = keep;
	}
	CHECK(mck_read_plan_build(&plan, chain_sources(&c), 1, d.p, c.ps, c.npages, unsorted, 2,
				  0, &f) == -EINVAL, "unsorted want");
	CHECK(mck_read_plan_build(&plan, chain_sources(&c), 1, d.p, c.ps, c.npages, beyond, 2,
				  0, &f) == -EINVAL, "want beyond the arena");
	CHECK(mck_read_plan_build(&plan, chain_sources(&c), 1, d.p, 0, c.npages, NULL, 0,
				  0, &f) == -EINVAL, "page size 0");
	CHECK(mck_read_plan_build(&plan, chain_sources(&c), 1, d.p, c.ps, c.npages, NULL, 0,
				  0, &f) == 0, "healthy");
	CHECK(mck_read_plan_run(plan, 1, 0, 1, &f) == -EINVAL, "units backwards");
	CHECK(mck_read_plan_run(plan, 0, mck_read_plan_units(plan) + 1, 1, &f) == -EINVAL,
	      "units past the end");
	mck_read_plan_free(plan);
	dest_free(&d);
	chain_free(&c);
}

/* A zstd frame of one page of `byte`, written by hand: single segment, a
 * two-byte content size (size - 256), one RLE block. */
static size_t zstd_rle(uint8_t *out, size_t page_size, uint8_t byte)
{
	uint32_t block = (uint32_t)(page_size << 3) | (1u << 1) | 1u; /* size, RLE, last */
	uint16_t fcs = (uint16_t)(page_size - 256);

	out[0] = 0x28, out[1] = 0xB5, out[2] = 0x2F, out[3] = 0xFD;
	out[4] = 0x60; /* FCS field 2 bytes, single segment */
	out[5] = (uint8_t)fcs, out[6] = (uint8_t)(fcs >> 8);
	out[7] = (uint8_t)block, out[8] = (uint8_t)(block >> 8), out[9] = (uint8_t)(block >> 16);
	out[10] = byte;
	return 11;
}

/* An lz4 block of one page: "abcd", a match at distance 4 up to the last
 * five bytes, then five literals (the format's end rules). */
static size_t lz4_abcd(uint8_t *out, size_t page_size)
{
	size_t n = 0, match = page_size - 4 - 5, extra = match - 4 - 15;

	out[n++] = 0x4F;
	memcpy(out + n, "abcd", 4), n += 4;
	out[n++] = 4, out[n++] = 0;
	for (; extra >= 255; extra -= 255)
		out[n++] = 255;
	out[n++] = (uint8_t)extra;
	out[n++] = 0x50;
	memcpy(out + n, "abcda", 5), n += 5;
	return n;
}

static const char *need_codecs(const struct test_ctx *ctx)
{
	(void)ctx;
	return mck_read_codecs() == (MCK_PAGE_ZSTD | MCK_PAGE_LZ4)
		? NULL : "this build has no zstd or no lz4 (CMake found no library and header)";
}

static void test_coded(struct test_ctx *ctx)
{
	struct chain c;
	struct mck_read_fault f;
	struct dest d;
	uint8_t img[128], *page = xcalloc(1, 4096), *rle = xcalloc(1, 4096);
	size_t n;
	struct mck_read_plan *plan;
	uint32_t ds[4];
	uint64_t dr[4];

	(void)ctx;
	chain_init(&c, 4096, 8);
	chain_source(&c);
	for (size_t i = 0; i < 4096; i++)
		page[i] = (uint8_t)"abcd"[i % 4];
	memcpy(page + 4091, "abcda", 5);
	memset(rle, 0x5A, 4096);
	n = zstd_rle(img, 4096, 0x5A);
	put_coded(&c, 0, 1, MCK_PAGE_ZSTD, img, n, rle);
	n = lz4_abcd(img, 4096);
	put_coded(&c, 0, 2, MCK_PAGE_LZ4, img, n, page);
	random_page(page, 4096);
	put_raw(&c, 0, 3, page);                /* a raw page amid coded ones */
	n = zstd_rle(img, 4096, 0x5A);
	put_coded(&c, 0, 5, MCK_PAGE_ZSTD, img, n, rle);
	d = dest_new(&c, 0, 0x77);
	CHECK(read_chain(&c, &d, NULL, 0, MCK_READ_VERIFY, 2, &f, NULL) == 0, "coded: kind %d %s",
	      f.kind, f.why);
	CHECK(pages_wrong(&c, &d, NULL, 0, 0) == 0, "coded");
	/* deferred: the coded pages are listed, and left untouched */
	memset(d.p, 0x77, d.len);
	CHECK(mck_read_plan_build(&plan, chain_sources(&c), 1, d.p, c.ps, c.npages, NULL, 0,
				  MCK_READ_VERIFY | MCK_READ_DEFER_CODED, &f) == 0, "deferring plan");
	CHECK(mck_read_plan_deferred(plan, ds, dr, 4) == 3 && dr[0] == 0 && dr[1] == 1 && dr[2] == 3,
	      "deferred records");
	CHECK(mck_read_plan_run(plan, 0, mck_read_plan_units(plan), 1, &f) == 0, "deferring run");
	CHECK(d.p[1 * 4096] == 0x77 && d.p[2 * 4096] == 0x77 && d.p[5 * 4096] == 0x77 &&
	      memcmp(d.p + 3 * 4096, c.model + 3 * 4096, 4096) == 0 && d.p[0] == 0, "deferring");
	mck_read_plan_free(plan);
	/* a frame that claims two pages, and an lz4 block cut short */
	n = zstd_rle(img, 8192, 0x5A);
	CHECK(pwrite(c.fd[0], img, n, (off_t)c.recs[0][0].offset) == (ssize_t)n, "pwrite");
	c.recs[0][0].length = (uint32_t)n;
	CHECK(read_chain(&c, &d, NULL, 0, MCK_READ_VERIFY, 1, &f, NULL) == -EBADMSG &&
	      f.kind == MCK_READ_FAULT_DECODE && f.page == 1 && strstr(f.why, "8192"),
	      "frame of two pages: kind %d why %s", f.kind, f.why);
	n = zstd_rle(img, 4096, 0x5A);
	CHECK(pwrite(c.fd[0], img, n, (off_t)c.recs[0][0].offset) == (ssize_t)n, "pwrite");
	c.recs[0][1].length -= 3;
	CHECK(read_chain(&c, &d, NULL, 0, MCK_READ_VERIFY, 1, &f, NULL) == -EBADMSG &&
	      f.kind == MCK_READ_FAULT_DECODE && f.page == 2,
	      "cut lz4 block: kind %d page %llu why %s", f.kind, (unsigned long long)f.page, f.why);
	dest_free(&d);
	chain_free(&c);
	free(page);
	free(rle);
}

/* 512-byte pages: a unit of 1024 scattered pages is IOV_MAX iovecs. */
static void test_small_pages(struct test_ctx *ctx)
{
	struct chain c;
	struct mck_read_fault f;
	uint8_t page[512];

	(void)ctx;
	chain_init(&c, 512, 6000);
	chain_source(&c);
	for (uint64_t p = 0; p < c.npages; p += 2) {
		random_page(page, sizeof(page));
		put_raw(&c, 0, p, page);
	}
	for (int fresh = 0; fresh < 2; fresh++) {
		struct dest d = dest_new(&c, fresh, 0x33);
		unsigned flags = MCK_READ_VERIFY | (fresh ? MCK_READ_OUT_ZERO : 0);

		CHECK(read_chain(&c, &d, NULL, 0, flags, 2, &f, NULL) == 0, "512-byte pages");
		CHECK(pages_wrong(&c, &d, NULL, 0, 0) == 0, "512-byte pages, fresh %d", fresh);
		dest_free(&d);
	}
	chain_free(&c);
}

/* Sum of a smaps field (kB) over the VMAs that overlap [p, p + len), and how many there are. */
static long smaps_kb(const void *p, size_t len, const char *field, int *nvmas)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	uintptr_t lo = (uintptr_t)p, hi = lo + len;
	char line[512];
	size_t flen = strlen(field);
	long sum = 0;
	int in = 0;

	*nvmas = 0;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;

		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, ':') > strchr(line, ' ')) {
			in = s < hi && e > lo;
			*nvmas += in;
		} else if (in && !strncmp(line, field, flen) && line[flen] == ':') {
			sum += atol(line + flen + 1);
		}
	}
	fclose(f);
	return sum;
}

/* The chain of test_fill_huge: blocks 0, 2, 3, 4 whole; block 1 misses a
 * page; the tail is half a block, 3 pages of it stored. */
static void fill_chain(struct chain *c, uint64_t npages)
{
	const uint64_t per = (2u << 20) / 4096;
	uint8_t *page = xcalloc(1, 4096);

	chain_init(c, 4096, npages);
	chain_source(c);
	for (uint64_t p = 0; p < npages; p++) {
		if (p == per + 17 || p >= 5 * per + 3)
			continue;
		random_page(page, 4096);
		put_raw(c, 0, p, page);
	}
	free(page);
}

/* A fresh region read with MCK_READ_FILL_HUGE: prefault, run, split (or,
 * in_run, the blocks populated in the run by the threads that read them).
 * 0 or -errno; *huge_kb: the 2 MiB pages there before the split. */
static int fill_region(struct chain *c, struct mck_region *r, long *huge_kb, int in_run)
{
	struct mck_read_plan *plan;
	struct mck_read_fault f;
	uint64_t huge = 0;
	int rc, nvmas;

	rc = mck_region_create(r, c->npages * 4096, 0);
	if (rc < 0)
		return rc;
	rc = mck_read_plan_build(&plan, chain_sources(c), c->nsources, r->addr, 4096, c->npages,
				 NULL, 0, MCK_READ_VERIFY | MCK_READ_OUT_ZERO | MCK_READ_FILL_HUGE, &f);
	if (rc < 0)
		return rc;
	if (in_run) {
		rc = mck_read_plan_fill_in_run(plan);
		CHECK(rc == 4, "fill in run: %d blocks (want the 4 whole ones)", rc);
		/* the pages outside them are there already, as 4 KiB pages */
		CHECK(smaps_kb(r->addr, r->len, "Rss", &nvmas) == (long)(511 + 3) * 4,
		      "fill in run: Rss %ld kB before the run",
		      smaps_kb(r->addr, r->len, "Rss", &nvmas));
		CHECK(mck_read_plan_fill_in_run(plan) == -EBUSY, "fill in run set up twice");
		CHECK(mck_read_plan_prefault(plan, 2, NULL) == -EBUSY, "prefault after fill in run");
	} else {
		rc = mck_read_plan_prefault(plan, 2, &huge);
		CHECK(rc == 4, "prefault: %d blocks (want the 4 whole ones)", rc);
		*huge_kb = smaps_kb(r->addr, r->len, "AnonHugePages", &nvmas);
	}
	rc = mck_read_plan_run(plan, 0, mck_read_plan_units(plan), 2, &f);
	CHECK(rc == 0, "run: %s (fault %d)", strerror(-rc), f.kind);
	if (in_run) {
		huge = (uint64_t)mck_read_plan_fill_huge_blocks(plan);
		*huge_kb = smaps_kb(r->addr, r->len, "AnonHugePages", &nvmas);
	}
	CHECK(huge <= 4, "%llu blocks asked for as huge pages", (unsigned long long)huge);
	if (rc == 0)
		rc = mck_read_plan_split_huge(plan);
	mck_read_plan_free(plan);
	return rc;
}

/* Tracker b on a freshly filled region: exactly the 4 KiB pages written.
 * Soft-dirty too, here (no VMA change after it is armed): a 2 MiB page left
 * unsplit would report all 512 of its pages. Each tracker gets its own
 * region: the faults of one (uffd-sync, mprotect) split the pages they
 * write, which would hide what the next one sees. */
static void tracker_exact_after_fill(struct chain *c, int b, int in_run)
{
	struct mck_region r;
	struct mck_tracker *t;
	uint64_t *got = xcalloc(c->npages, sizeof(*got));
	uint64_t want[12];
	size_t nwant = 0;
	long huge_kb = 0;
	int64_t n;
	int rc = fill_region(c, &r, &huge_kb, in_run);

	CHECK(rc == 0, "fill for %s: %s", mck_backend_name(b), strerror(-rc));
	if (rc == 0 && mck_tracker_open(&t, b, r.addr, r.len) == 0) {
		mck_tracker_collect(t, got, c->npages);
		/* pages inside whole blocks (0, 2, 3: huge during the fill), sorted, distinct */
		for (uint64_t blk = 0; blk < 4; blk += (blk == 0 ? 2 : 1))
			for (uint64_t k = 0; k < 3; k++)
				want[nwant++] = blk * 512 + 7 + k * 100 + rnd(&rng_state) % 50;
		for (size_t i = 0; i < nwant; i++)
			((volatile uint64_t *)((uint8_t *)r.addr + want[i] * 4096))[3] += 1;
		n = mck_tracker_collect(t, got, c->npages);
		CHECK(n == (int64_t)nwant, "fill_huge: %s reports %lld pages, %zu written (%ld kB were huge)",
		      mck_backend_name(b), (long long)n, nwant, huge_kb);
		for (int64_t i = 0; n == (int64_t)nwant && i < n; i++)
			CHECK(got[i] == want[i], "fill_huge: %s reports page %llu, not %llu",
			      mck_backend_name(b), (unsigned long long)got[i],
			      (unsigned long long)want[i]);
		CHECK(mck_tracker_close(t) == 0, "fill_huge: close %s", mck_backend_name(b));
	} else if (rc == 0) {
		CHECK(0, "fill_huge: open %s", mck_backend_name(b));
	}
	mck_region_destroy(&r);
	free(got);
}

/* A fresh region filled with MCK_READ_FILL_HUGE: its whole 2 MiB blocks
 * prefaulted (as huge pages where the kernel has them), read, then split:
 * the bytes are the model's, no huge page is left, the region is one VMA
 * again, the pages no epoch holds were not faulted in, and every tracker
 * this kernel has sees exactly the 4 KiB pages written after. */
static void fill_huge(int in_run)
{
	const uint64_t per = (2u << 20) / 4096, npages = 5 * per + per / 2;
	const char *how = in_run ? "fill in run" : "fill_huge";
	struct chain c;
	struct mck_region r;
	long huge_kb = 0, rss_kb;
	char why[200];
	int rc, nvmas;

	fill_chain(&c, npages);
	rc = fill_region(&c, &r, &huge_kb, in_run);
	CHECK(rc == 0, "%s: %s", how, strerror(-rc));
	if (rc == 0) {
		struct dest d = {.p = r.addr, .len = r.len};

		CHECK((uintptr_t)r.addr % (2u << 20) == 0, "a region of 2 MiB or more is 2 MiB aligned");
		printf("  %s: %ld kB in huge pages before the split\n", how, huge_kb);
		CHECK(huge_kb <= 4 * 2048, "%s: %ld kB huge: more than the whole blocks", how, huge_kb);
		CHECK(smaps_kb(r.addr, r.len, "AnonHugePages", &nvmas) == 0,
		      "%s: huge pages left after the split", how);
		CHECK(nvmas == 1, "%s: the region is %d VMAs after the split", how, nvmas);
		rss_kb = smaps_kb(r.addr, r.len, "Rss", &nvmas);
		/* 4 whole blocks, block 1's 511 pages, the tail's 3 */
		CHECK(rss_kb == (long)(4 * per + per - 1 + 3) * 4, "%s: Rss %ld kB", how, rss_kb);
		CHECK(pages_wrong(&c, &d, NULL, 0, 0) == 0, "%s: bytes differ", how);
		mck_region_destroy(&r);
	}
	for (int b = 0; b < MCK_BACKEND_COUNT; b++) {
		if (mck_backend_status(b, why, sizeof(why)) == 1)
			tracker_exact_after_fill(&c, b, in_run);
		else
			printf("  %s: %s unavailable here: %s\n", how, mck_backend_name(b), why);
	}
	chain_free(&c);
}

static void test_fill_huge(struct test_ctx *ctx)
{
	(void)ctx;
	fill_huge(0);
}

/* The same with the blocks populated in the run, each by the thread about
 * to read into it. */
static void test_fill_in_run(struct test_ctx *ctx)
{
	(void)ctx;
	fill_huge(1);
}

/* A damaged page found by a thread that populated its own blocks: the run
 * names the first damaged page in plan order whatever the threads did, and
 * the split after the failed run still leaves no huge page and one VMA (a
 * caller that drops the region finds nothing half-done to mistake for a
 * restore: the run said -EBADMSG). */
static void test_fill_in_run_damage(struct test_ctx *ctx)
{
	const uint64_t per = (2u << 20) / 4096, npages = 5 * per + per / 2;
	const uint64_t bad[2] = {4 * per + 10, 2 * per + 300}; /* the second is first in plan order */
	struct chain c;

	(void)ctx;
	fill_chain(&c, npages);
	for (int k = 0; k < 2; k++)
		for (uint64_t i = 0; i < c.nrecs[0]; i++) {
			const struct mck_idx_record *r = &c.recs[0][i];
			uint8_t b;

			if (r->page != bad[k])
				continue;
			CHECK(pread(c.fd[0], &b, 1, (off_t)r->offset + 2000) == 1, "pread");
			b ^= 0x01;
			CHECK(pwrite(c.fd[0], &b, 1, (off_t)r->offset + 2000) == 1, "pwrite");
		}
	for (int round = 0; round < 6; round++) {
		unsigned threads = round % 3 + 1;
		struct mck_read_plan *plan;
		struct mck_read_fault f;
		struct mck_region r;
		int rc, nvmas;

		CHECK(mck_region_create(&r, npages * 4096, 0) == 0, "region");
		rc = mck_read_plan_build(&plan, chain_sources(&c), c.nsources, r.addr, 4096, npages,
					 NULL, 0, MCK_READ_VERIFY | MCK_READ_OUT_ZERO | MCK_READ_FILL_HUGE,
					 &f);
		CHECK(rc == 0, "plan: %s", strerror(-rc));
		CHECK(mck_read_plan_fill_in_run(plan) == 4, "fill in run");
		rc = mck_read_plan_run(plan, 0, mck_read_plan_units(plan), threads, &f);
		CHECK(rc == -EBADMSG && f.kind == MCK_READ_FAULT_DIGEST && f.source == 0 &&
		      f.page == bad[1] && f.nbad == 1,
		      "%u threads: rc %d, fault %d on page %llu (want the digest of page %llu)",
		      threads, rc, f.kind, (unsigned long long)f.page, (unsigned long long)bad[1]);
		CHECK(mck_read_plan_split_huge(plan) == 0, "split after the failed run");
		CHECK(smaps_kb(r.addr, r.len, "AnonHugePages", &nvmas) == 0,
		      "huge pages left after a failed run");
		CHECK(nvmas == 1, "the region is %d VMAs after a failed run", nvmas);
		mck_read_plan_free(plan);
		mck_region_destroy(&r);
	}
	chain_free(&c);
}

static const struct test_case tests[] = {
	{"full_epoch", test_full_epoch, {NULL}},
	{"chain_newest_wins", test_chain_newest_wins, {NULL}},
	{"threads_agree", test_threads_agree, {NULL}},
	{"verify_off", test_verify_off, {NULL}},
	{"cut_pack", test_cut_pack, {NULL}},
	{"bad_records", test_bad_records, {NULL}},
	{"coded", test_coded, {need_codecs}},
	{"small_pages", test_small_pages, {NULL}},
	{"fill_huge", test_fill_huge, {NULL}},
	{"fill_in_run", test_fill_in_run, {NULL}},
	{"fill_in_run_damage", test_fill_in_run_damage, {NULL}},
};

int main(int argc, char **argv)
{
	struct test_ctx ctx = {.backend = -1};

	test_start(argc, argv, "test_epoch_reader");
	RUN_TESTS(tests, &ctx);
	return test_finish("test_epoch_reader");
}
