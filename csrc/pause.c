/* pause.c: the snapshot of a checkpoint's pause, as one call.
 *
 * A capture mode that copies (or forks) after collecting must do both at one
 * instant of every writer, or the epoch mixes times: a page copied after a
 * writer changed it beside a page that writer changed too late to be
 * collected. Threads that write without the caller's knowledge cannot be
 * stopped from C; a Python program's threads can, by calling this with the
 * GIL held, which is why it is one call: collect, the pages of a failed epoch
 * merged in, the populated pages of a full epoch, and the copy, with nothing
 * in between that could hand the interpreter to another thread. */
#include <errno.h>
#include <string.h>

#include "internal.h"

/* dst = the sorted union of a[0..na) and b[0..nb) (each sorted, no
 * duplicates); returns its length. dst may not alias a or b. */
static size_t merge_sorted(const uint64_t *a, size_t na, const uint64_t *b, size_t nb,
			   uint64_t *dst)
{
	size_t i = 0, j = 0, n = 0;

	while (i < na && j < nb) {
		if (a[i] < b[j])
			dst[n++] = a[i++];
		else if (b[j] < a[i])
			dst[n++] = b[j++];
		else
			dst[n++] = a[i++], j++;
	}
	while (i < na)
		dst[n++] = a[i++];
	while (j < nb)
		dst[n++] = b[j++];
	return n;
}

int64_t mck_pause_pages(struct mck_tracker *t, const struct mck_pause_job *job,
			struct mck_pause_out *o)
{
	size_t npages = mck_tracker_npages(t);
	int64_t n;

	o->ndirty = o->reported = 0;
	if (o->cap < npages || (job->ncarry && (!job->carry || !o->tmp)) || (job->full && !o->full))
		return -EINVAL;
	for (size_t i = 0; i < job->ncarry; i++)
		if (job->carry[i] >= npages || (i && job->carry[i] <= job->carry[i - 1]))
			return -EINVAL;
	n = mck_tracker_collect(t, job->ncarry ? o->tmp : o->dirty, o->cap);
	if (n < 0)
		return n;
	o->reported = (size_t)n;
	if (job->ncarry)
		n = (int64_t)merge_sorted(o->tmp, (size_t)n, job->carry, job->ncarry, o->dirty);
	o->ndirty = (size_t)n;
	if (!job->full)
		return n;
	/* a full epoch: the pages that may hold data now, after the collect
	 * (a page the collect re-armed and a writer then filled is listed);
	 * every page where that cannot be read (no pagemap: a sandbox without
	 * /proc), or where asked */
	if (job->full == MCK_PAUSE_POPULATED) {
		n = mck_pages_populated(job->base, npages * job->page_size, o->full, o->cap, 0);
		if (n >= 0)
			return n;
	}
	for (size_t i = 0; i < npages; i++)
		o->full[i] = i;
	return (int64_t)npages;
}

int mck_copy_pages(const void *base, size_t page_size, const uint64_t *pages, size_t n,
		   void *out)
{
	const uint8_t *src = base;
	uint8_t *dst = out;
	size_t i = 0;

	while (i < n) {
		size_t j = i + 1;

		while (j < n && pages[j] == pages[j - 1] + 1)
			j++;
		memcpy(dst + i * page_size, src + pages[i] * page_size, (j - i) * page_size);
		i = j;
	}
	return 0;
}
