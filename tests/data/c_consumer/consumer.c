/* consumer.c: a program that uses memckpt's installed C library, as a
 * simulator would: a region, a tracker (the backend named in argv[1], or the
 * best one here), pages written, the written pages collected and checked,
 * and page 0's BLAKE3 digest. Prints `backend: N pages collected, ...` and
 * `page 0 blake3 HEX`; exit 0 if the collect found what was written, 1 if
 * not, 77 if the backend is unavailable here. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <memckpt.h>

#define NPAGES 64

static const uint64_t written[] = { 0, 5, 6, 7, 40, 63 };
#define NWRITTEN (sizeof(written) / sizeof(written[0]))

static int fail(const char *what, int64_t rc)
{
	fprintf(stderr, "consumer: %s: %s\n", what, mck_strerror(rc));
	return 1;
}

int main(int argc, char **argv)
{
	char reason[256];
	struct mck_region r;
	struct mck_tracker *t;
	uint64_t pages[NPAGES];
	uint8_t digest[MCK_BLAKE3_LEN];
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	int backend = argc > 1 ? mck_backend_lookup(argv[1]) : mck_backend_auto(reason, sizeof(reason));
	int exact, ok = 1;
	int64_t n, rc;

	if (backend < 0)
		return fail(argc > 1 ? argv[1] : "auto", backend);
	rc = mck_backend_status(backend, reason, sizeof(reason));
	if (rc < 0)
		return fail("backend status", rc);
	if (rc == 0) {
		printf("%s unavailable: %s\n", mck_backend_name(backend), reason);
		return 77;
	}
	exact = (mck_backend_props(backend) & MCK_PROP_EXACT) != 0;
	if ((rc = mck_region_create(&r, NPAGES * ps, 0)) < 0)
		return fail("mck_region_create", rc);
	if ((rc = mck_tracker_open(&t, backend, r.addr, r.len)) < 0) {
		mck_region_destroy(&r);
		return fail("mck_tracker_open", rc);
	}
	for (size_t i = 0; i < NWRITTEN; i++)
		((unsigned char *)r.addr)[written[i] * ps + 100 + i] = (unsigned char)(1 + i);
	n = mck_tracker_collect(t, pages, NPAGES);
	if (n < 0) {
		ok = 0;
		fail("mck_tracker_collect", n);
	} else {
		/* an exact backend lists the pages written and no other; any
		 * backend lists every one of them */
		size_t found = 0;

		for (int64_t i = 0; i < n; i++)
			for (size_t k = 0; k < NWRITTEN; k++)
				found += pages[i] == written[k];
		ok = found == NWRITTEN && (!exact || (size_t)n == NWRITTEN);
	}
	printf("%s: %lld pages collected, %zu written: %s\n", mck_backend_name(backend),
	       (long long)n, NWRITTEN, ok ? "ok" : "WRONG");
	mck_blake3_pages(r.addr, ps, 1, digest);
	printf("page 0 blake3 ");
	for (int i = 0; i < MCK_BLAKE3_LEN; i++)
		printf("%02x", digest[i]);
	printf("\n");
	if ((rc = mck_tracker_close(t)) < 0)
		ok = !fail("mck_tracker_close", rc);
	if ((rc = mck_region_destroy(&r)) < 0)
		ok = !fail("mck_region_destroy", rc);
	return ok ? 0 : 1;
}
