/* read_plan.c: resolving a chain to the units of an epoch read (see
 * epoch_reader.h). One pass over the records, newest source first: a page
 * belongs to the first source that has a record for it (a bitmap of pages
 * taken), so the work is O(records + pages / 64) whatever the chain's
 * depth. Within a source, records are in page order and their images in
 * the pack in the order of first use, so records stored back to back come
 * one after the other and join the same unit. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "page_codec.h"
#include "read_plan.h"

#define KNOWN_FLAGS (MCK_PAGE_ZERO | MCK_PAGE_ZSTD | MCK_PAGE_LZ4)

static inline int bit_get(const uint64_t *b, uint64_t i)
{
	return (int)((b[i / 64] >> (i % 64)) & 1u);
}

static inline void bit_set(uint64_t *b, uint64_t i)
{
	b[i / 64] |= 1ull << (i % 64);
}

/* Make room for `need` elements of `size` bytes in *arr (capacity *cap). */
static int reserve(void **arr, uint64_t *cap, uint64_t need, size_t size)
{
	uint64_t n = *cap ? *cap : 64;
	void *p;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	if (n > SIZE_MAX / size)
		return -ENOMEM;
	p = realloc(*arr, n * size);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = n;
	return 0;
}

static int record_fault(struct mck_read_fault *f, uint32_t source, uint64_t record,
			const struct mck_idx_record *r, const char *why)
{
	memset(f, 0, sizeof(*f));
	f->kind = MCK_READ_FAULT_RECORD;
	f->source = source;
	f->record = record;
	f->page = r->page;
	f->offset = r->offset;
	snprintf(f->why, sizeof(f->why), "%s", why);
	return -EBADMSG;
}

/* A record the reader can follow without leaving the arena or the pack
 * (the store's parser checks the same and more; this keeps the C safe on
 * its own). */
int mck_read_check_record(const struct mck_read_source *src, uint32_t s, uint64_t i,
			  size_t page_size, uint64_t npages, struct mck_read_fault *f)
{
	const struct mck_idx_record *r = (const struct mck_idx_record *)src->records + i;
	uint64_t pack = src->pack_size;
	char why[96];

	if (r->page >= npages) {
		snprintf(why, sizeof(why), "is beyond the arena's %llu pages",
			 (unsigned long long)npages);
		return record_fault(f, s, i, r, why);
	}
	if (r->flags & ~KNOWN_FLAGS)
		return record_fault(f, s, i, r, "has page flags this reader does not know");
	if (r->flags & MCK_PAGE_ZERO)
		return r->flags == MCK_PAGE_ZERO ? 0
			: record_fault(f, s, i, r, "is flagged zero and compressed");
	if ((r->flags & MCK_PAGE_COMPRESSED) == MCK_PAGE_COMPRESSED)
		return record_fault(f, s, i, r, "is flagged both zstd and lz4");
	if (r->flags ? (r->length == 0 || r->length > page_size) : r->length != page_size)
		return record_fault(f, s, i, r, "has a stored length that is not a page's");
	if (r->offset < MCK_PACK_HEADER_SIZE || r->offset > pack || r->length > pack - r->offset) {
		snprintf(why, sizeof(why), "points outside the pack's %llu bytes",
			 (unsigned long long)pack);
		return record_fault(f, s, i, r, why);
	}
	return 0;
}

static int check_record(const struct mck_read_plan *p, uint32_t s, uint64_t i,
			struct mck_read_fault *f)
{
	return mck_read_check_record(&p->sources[s], s, i, p->page_size, p->npages, f);
}

static int add_unit(struct mck_read_plan *p, const struct mck_read_unit *u)
{
	int rc = reserve((void **)&p->units, &p->units_cap, p->nunits + 1, sizeof(*u));

	if (rc < 0)
		return rc;
	p->units[p->nunits++] = *u;
	return 0;
}

/* Record i of source s (its page taken by this source, stored bytes):
 * into the last unit if it follows that unit's bytes in the same pack,
 * else into a new one. */
static int add_entry(struct mck_read_plan *p, uint32_t s, uint64_t i,
		     const struct mck_idx_record *r, int *open)
{
	struct mck_read_unit *u = *open ? &p->units[p->nunits - 1] : NULL;
	uint32_t kind = r->flags & MCK_PAGE_COMPRESSED ? MCK_UNIT_CODED : MCK_UNIT_RAW;
	int rc = reserve((void **)&p->entries, &p->entries_cap, p->nentries + 1,
			 sizeof(*p->entries));

	if (rc < 0)
		return rc;
	if (u && u->offset + u->bytes == r->offset && u->n < p->unit_pages) {
		u->contiguous &= p->entries[p->nentries - 1].page + 1 == r->page;
		u->bytes += r->length;
		u->n++;
		if (kind == MCK_UNIT_CODED)
			u->kind = MCK_UNIT_CODED;
	} else {
		struct mck_read_unit nu = {
			.first = p->nentries, .offset = r->offset, .bytes = r->length, .n = 1,
			.source = s, .kind = kind, .contiguous = 1,
		};

		rc = add_unit(p, &nu);
		if (rc < 0)
			return rc;
		*open = 1;
	}
	p->coded |= kind == MCK_UNIT_CODED;
	p->entries[p->nentries].page = r->page;
	p->entries[p->nentries].record = i;
	p->nentries++;
	return 0;
}

static int defer(struct mck_read_plan *p, uint32_t s, uint64_t i)
{
	uint64_t cap = p->deferred_cap;
	int rc = reserve((void **)&p->deferred_source, &cap, p->ndeferred + 1, sizeof(uint32_t));

	if (rc < 0)
		return rc;
	cap = p->deferred_cap;
	rc = reserve((void **)&p->deferred_record, &cap, p->ndeferred + 1, sizeof(uint64_t));
	if (rc < 0)
		return rc;
	p->deferred_cap = cap;
	p->deferred_source[p->ndeferred] = s;
	p->deferred_record[p->ndeferred++] = i;
	return 0;
}

/* Every source, newest first: each wanted page goes to the first that has it. */
static int take_pages(struct mck_read_plan *p, uint64_t *taken, uint64_t *zero,
		      const uint64_t *wanted, struct mck_read_fault *fault)
{
	unsigned decodes = p->flags & MCK_READ_DEFER_CODED ? 0 : mck_codec_flags();

	for (uint32_t s = p->nsources; s-- > 0;) {
		const struct mck_idx_record *recs = p->sources[s].records;
		int open = 0, rc;

		for (uint64_t i = 0; i < p->sources[s].nrecords; i++) {
			const struct mck_idx_record *r = &recs[i];

			rc = check_record(p, s, i, fault);
			if (rc < 0)
				return rc;
			/* (a unit grows only by bytes that follow its own, so
			 * skipping a record never joins what is not adjacent) */
			if ((wanted && !bit_get(wanted, r->page)) || bit_get(taken, r->page))
				continue;
			bit_set(taken, r->page);
			if (r->flags & MCK_PAGE_ZERO) {
				if (zero)
					bit_set(zero, r->page);
				continue;
			}
			if ((r->flags & MCK_PAGE_COMPRESSED) && !(r->flags & decodes))
				rc = defer(p, s, i);
			else
				rc = add_entry(p, s, i, r, &open);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

/* Units that zero the wanted pages no source holds, or holds as ZERO. */
static int zero_units(struct mck_read_plan *p, const uint64_t *taken, const uint64_t *zero,
		      const uint64_t *wanted)
{
	struct mck_read_unit u = {.kind = MCK_UNIT_ZERO, .contiguous = 1};
	uint64_t nwords = (p->npages + 63) / 64;
	int rc;

	for (uint64_t w = 0; w < nwords; w++) {
		uint64_t bits = (~taken[w] | zero[w]) & (wanted ? wanted[w] : ~0ull);

		if (w == nwords - 1 && p->npages % 64)
			bits &= (1ull << (p->npages % 64)) - 1;
		while (bits) {
			uint64_t page = w * 64 + (uint64_t)__builtin_ctzll(bits);

			bits &= bits - 1;
			if (u.n && page == u.first + u.n && u.n < p->unit_pages) {
				u.n++;
				continue;
			}
			if (u.n && (rc = add_unit(p, &u)) < 0)
				return rc;
			u.first = page;
			u.n = 1;
		}
	}
	return u.n ? add_unit(p, &u) : 0;
}

static int check_args(const struct mck_read_source *sources, uint32_t nsources, void *dest,
		      size_t page_size, uint64_t npages, const uint64_t *want, uint64_t nwant)
{
	if (!page_size || (nsources && !sources) || (npages && !dest) || (nwant && !want))
		return -EINVAL;
	if (npages > SIZE_MAX / page_size)
		return -EOVERFLOW;
	for (uint32_t s = 0; s < nsources; s++)
		if (sources[s].nrecords && !sources[s].records)
			return -EINVAL;
	for (uint64_t i = 0; i < nwant; i++)
		if (want[i] >= npages || (i && want[i] <= want[i - 1]))
			return -EINVAL;
	return 0;
}

static int finish(struct mck_read_plan *p)
{
	p->done = malloc((p->nunits + 1) * sizeof(*p->done));
	if (!p->done)
		return -ENOMEM;
	p->done[0] = 0;
	for (uint64_t i = 0; i < p->nunits; i++)
		p->done[i + 1] = p->done[i] + p->units[i].n;
	return 0;
}

int mck_read_plan_build(struct mck_read_plan **out, const struct mck_read_source *sources,
			uint32_t nsources, void *dest, size_t page_size, uint64_t npages,
			const uint64_t *want, uint64_t nwant, unsigned flags,
			struct mck_read_fault *fault)
{
	struct mck_read_plan *p;
	uint64_t *taken = NULL, *zero = NULL, *wanted = NULL, nwords = (npages + 63) / 64;
	int rc;

	*out = NULL;
	memset(fault, 0, sizeof(*fault));
	rc = check_args(sources, nsources, dest, page_size, npages, want, nwant);
	if (rc < 0)
		return rc;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->sources = sources;
	p->nsources = nsources;
	p->flags = flags;
	p->dest = dest;
	p->page_size = page_size;
	p->npages = npages;
	p->unit_pages = page_size >= MCK_UNIT_BYTES ? 1 : (uint32_t)(MCK_UNIT_BYTES / page_size);
	rc = -ENOMEM;
	taken = calloc(nwords ? nwords : 1, sizeof(uint64_t));
	if (!(flags & MCK_READ_OUT_ZERO))
		zero = calloc(nwords ? nwords : 1, sizeof(uint64_t));
	if (want)
		wanted = calloc(nwords ? nwords : 1, sizeof(uint64_t));
	if (!taken || (!(flags & MCK_READ_OUT_ZERO) && !zero) || (want && !wanted))
		goto out;
	for (uint64_t i = 0; i < nwant; i++)
		bit_set(wanted, want[i]);
	rc = take_pages(p, taken, zero, wanted, fault);
	if (rc == 0 && zero)
		rc = zero_units(p, taken, zero, wanted);
	if (rc == 0)
		rc = finish(p);
out:
	free(taken);
	free(zero);
	free(wanted);
	if (rc < 0) {
		mck_read_plan_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

uint64_t mck_read_plan_units(const struct mck_read_plan *p)
{
	return p->nunits;
}

uint64_t mck_read_plan_pages(const struct mck_read_plan *p, uint64_t end)
{
	return p->done[end < p->nunits ? end : p->nunits];
}

uint64_t mck_read_plan_deferred(const struct mck_read_plan *p, uint32_t *source,
				uint64_t *record, uint64_t cap)
{
	uint64_t n = p->ndeferred < cap ? p->ndeferred : cap;

	if (n) {
		memcpy(source, p->deferred_source, n * sizeof(*source));
		memcpy(record, p->deferred_record, n * sizeof(*record));
	}
	return p->ndeferred;
}

void mck_read_plan_free(struct mck_read_plan *p)
{
	if (!p)
		return;
	free(p->units);
	free(p->done);
	free(p->entries);
	free(p->deferred_source);
	free(p->deferred_record);
	mck_read_fill_free(p->fill);
	free(p);
}

unsigned mck_read_codecs(void)
{
	return mck_codec_flags();
}
