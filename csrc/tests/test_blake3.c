/* test_blake3.c: the core's BLAKE3 against known answers computed with the
 * `blake3` Python package (the reference implementation's binding), for each
 * implementation this CPU has: one-shot and streaming in odd pieces, the page
 * functions at every page size the store allows up to 2 MiB, pages_at in any
 * order, and a fork child hashing with no help from the parent.
 *
 * Input bytes are (i + seed) % 251, as in BLAKE3's own test vectors.
 * Exit 0 = pass, 1 = fail. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"


/* BLAKE3(pattern(len, 0)) */
static const struct {
	size_t len;
	const char *hex;
} whole[] = {
	{0, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
	{1, "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"},
	{1023, "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11"},
	{1024, "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"},
	{1025, "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"},
	{2048, "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a"},
	{3072, "b98cb0ff3623be03326b373de6b9095218513e64f1ee2edd2525c7ad1e5cffd2"},
	{4096, "015094013f57a5277b59d8475c0501042c0b642e531b0a1c8f58d2163229e969"},
	{4097, "9b4052b38f1c5fc8b1f9ff7ac7b27cd242487b3d890d15c96a1c25b8aa0fb995"},
	{8192, "aae792484c8efe4f19e2ca7d371d8c467ffb10748d8a5a1ae579948f718a2a63"},
	{65536, "68d647e619a930e7b1082f74f334b0c65a315725569bdc123f0ee11881717bfe"},
	{1048576, "74cb441fd087764ca9c3694da742ebe30cbeb3060a17009ca81825c7a8d10343"},
};

/* BLAKE3 of the concatenated page digests of npages pages of pattern(.., 3) */
static const struct {
	size_t page_size, npages;
	const char *hex;
} paged[] = {
	{512, 9, "c29af7024357ea00f4ac9fb97914c59c20a2ccbf1abf1fb09a1e2b86118a6a00"},
	{1024, 9, "13969de7ce9d183a2ad30cf0a91a7ebef79ea927831e4d09ddd16c1e34830ee4"},
	{2048, 9, "8bbffc9932b58046d3c2fa57dbde8e6c7c7ba219c3b269bee277b600f79e4f5a"},
	{4096, 9, "a1538a807ca9c34669a016852a2553f4d6a6383b36aca5c5b8cb72904d1e387d"},
	{8192, 9, "1068b35f72fba5152b2572609d6f63e685d0912648b1b9ce1a2ee6c19550e194"},
	{16384, 9, "3ad16c97a9c17bf189a76251b822400e64149e6ce6cf70c29b1ad958a626538a"},
	{32768, 9, "32e295aee3b87e70c2c3f3065f8db4e0b11beaf8a8f5e1bc5b8c7a67e3d34d75"},
	{65536, 9, "b1cdc42213bb63369b1e81f3130498d5e58d84658956b26d64b6d02d9872d5e5"},
	{131072, 3, "4c13f783ce45460a955071f76399e71e2029cac6841ec46ecdaabab31293aba1"},
	{2097152, 3, "7ddb8f63f56047c91e5fcc26fc00640ec654d030c07815bf82ba3415cb083735"},
};

static uint8_t *pattern(size_t len, unsigned seed)
{
	uint8_t *p = malloc(len ? len : 1);

	if (!p) {
		perror("malloc");
		exit(1);
	}
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)((i + seed) % 251);
	return p;
}

static void hex(const uint8_t *d, char out[65])
{
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

static void oneshot(const void *data, size_t len, uint8_t out[32])
{
	struct mck_blake3 h;

	mck_blake3_init(&h);
	mck_blake3_update(&h, data, len);
	mck_blake3_final(&h, out);
}

static void test_whole(const char *impl)
{
	for (size_t t = 0; t < sizeof(whole) / sizeof(whole[0]); t++) {
		size_t len = whole[t].len;
		uint8_t *data = pattern(len, 0), d[32];
		char got[65];
		/* odd piece sizes: across block, chunk and batch boundaries */
		static const size_t pieces[] = {1, 63, 64, 65, 1000, 1024, 1025, 7, 4096, 70000};
		struct mck_blake3 h;

		oneshot(data, len, d);
		hex(d, got);
		CHECK(!strcmp(got, whole[t].hex), "%s: len %zu one shot: %s, want %s", impl, len, got,
		      whole[t].hex);
		for (size_t start = 0; start < sizeof(pieces) / sizeof(pieces[0]); start++) {
			size_t off = 0, k = start;

			mck_blake3_init(&h);
			while (off < len) {
				size_t n = pieces[k++ % (sizeof(pieces) / sizeof(pieces[0]))];

				if (n > len - off)
					n = len - off;
				mck_blake3_update(&h, data + off, n);
				off += n;
				if (k % 3 == 0)
					mck_blake3_update(&h, data, 0); /* empty updates change nothing */
			}
			mck_blake3_final(&h, d);
			hex(d, got);
			CHECK(!strcmp(got, whole[t].hex), "%s: len %zu in pieces from %zu: %s", impl, len,
			      start, got);
		}
		/* final does not consume: absorbing more after it continues the input */
		if (len >= 2) {
			mck_blake3_init(&h);
			mck_blake3_update(&h, data, len / 2);
			mck_blake3_final(&h, d);
			mck_blake3_update(&h, data + len / 2, len - len / 2);
			mck_blake3_final(&h, d);
			hex(d, got);
			CHECK(!strcmp(got, whole[t].hex), "%s: len %zu, final midway: %s", impl, len, got);
		}
		free(data);
	}
}

static void test_pages(const char *impl)
{
	for (size_t t = 0; t < sizeof(paged) / sizeof(paged[0]); t++) {
		size_t ps = paged[t].page_size, n = paged[t].npages;
		uint8_t *data = pattern(ps * n, 3), *out = malloc(32 * n), *out2 = malloc(32 * 2 * n);
		uint64_t *idx = malloc(sizeof(*idx) * 2 * n);
		uint8_t d[32];
		char got[65];

		if (!out || !out2 || !idx) {
			perror("malloc");
			exit(1);
		}
		mck_blake3_pages(data, ps, n, out);
		oneshot(out, 32 * n, d);
		hex(d, got);
		CHECK(!strcmp(got, paged[t].hex), "%s: pages of %zu: %s, want %s", impl, ps, got,
		      paged[t].hex);
		for (size_t i = 0; i < n; i++) {
			oneshot(data + i * ps, ps, d);
			CHECK(!memcmp(d, out + 32 * i, 32), "%s: page %zu of size %zu differs from streaming",
			      impl, i, ps);
		}
		/* any order, repeats included */
		for (size_t i = 0; i < 2 * n; i++)
			idx[i] = (i * 5 + 1) % n;
		mck_blake3_pages_at(data, ps, idx, 2 * n, out2);
		for (size_t i = 0; i < 2 * n; i++)
			CHECK(!memcmp(out2 + 32 * i, out + 32 * idx[i], 32),
			      "%s: pages_at[%zu] = page %llu of size %zu", impl, i,
			      (unsigned long long)idx[i], ps);
		/* every count up to n: batches that end early */
		for (size_t k = 0; k <= n; k++) {
			memset(out2, 0xa5, 32 * (k + 1));
			mck_blake3_pages(data, ps, k, out2);
			CHECK(!memcmp(out2, out, 32 * k), "%s: %zu pages of %zu", impl, k, ps);
			CHECK(out2[32 * k] == 0xa5 && out2[32 * k + 31] == 0xa5,
			      "%s: %zu pages of %zu wrote past the end", impl, k, ps);
		}
		free(idx);
		free(out2);
		free(out);
		free(data);
	}
	/* a size the store never makes still hashes correctly */
	{
		size_t ps = 4160;
		uint8_t *data = pattern(ps * 3, 1), out[96], d[32];

		mck_blake3_pages(data, ps, 3, out);
		for (int i = 0; i < 3; i++) {
			oneshot(data + i * ps, ps, d);
			CHECK(!memcmp(d, out + 32 * i, 32), "%s: odd page size %zu, page %d", impl, ps, i);
		}
		free(data);
	}
}

/* The fork-snapshot child's situation: hash pages after fork, no locks held
 * by the parent matter, the result travels through a pipe. */
static void test_fork_child(void)
{
	size_t ps = 4096, n = 64;
	uint8_t *data = pattern(ps * n, 9), want[64 * 32], got[64 * 32];
	int fd[2], status;
	pid_t pid;
	size_t off = 0;

	mck_blake3_pages(data, ps, n, want);
	if (pipe(fd) < 0) {
		CHECK(0, "pipe: %s", strerror(errno));
		free(data);
		return;
	}
	pid = fork();
	if (pid == 0) {
		mck_blake3_pages(data, ps, n, got);
		_exit(write(fd[1], got, sizeof(got)) == (ssize_t)sizeof(got) ? 0 : 1);
	}
	close(fd[1]);
	CHECK(pid > 0, "fork: %s", strerror(errno));
	while (pid > 0 && off < sizeof(got)) {
		ssize_t r = read(fd[0], got + off, sizeof(got) - off);

		if (r <= 0)
			break;
		off += (size_t)r;
	}
	close(fd[0]);
	if (pid > 0) {
		waitpid(pid, &status, 0);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
		CHECK(off == sizeof(got) && !memcmp(got, want, sizeof(got)), "child's digests differ");
	}
	free(data);
}

int main(void)
{
	static const char *const impls[] = {"portable", "sse2", "avx2", "avx512"};
	int tested = 0;

	printf("automatic choice: %s\n", mck_blake3_impl());
	CHECK(mck_blake3_set_impl("no-such-impl") == -EINVAL, "unknown impl accepted");
	for (size_t i = 0; i < sizeof(impls) / sizeof(impls[0]); i++) {
		int rc = mck_blake3_set_impl(impls[i]);

		if (rc == -ENOTSUP) {
			printf("impl %s: not on this CPU/build, skipped\n", impls[i]);
			continue;
		}
		CHECK(rc == 0, "set_impl(%s) = %d", impls[i], rc);
		CHECK(!strcmp(mck_blake3_impl(), impls[i]), "impl is %s after choosing %s",
		      mck_blake3_impl(), impls[i]);
		test_whole(impls[i]);
		test_pages(impls[i]);
		tested++;
		printf("impl %s: done\n", impls[i]);
	}
	CHECK(mck_blake3_set_impl(NULL) == 0, "back to the automatic choice");
	test_fork_child();
	CHECK(tested >= 1, "no implementation tested");
	printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
	return failures ? 1 : 0;
}
