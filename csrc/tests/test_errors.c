/* test_errors.c: mck_strerror, the API's one error-string function:
 *  - success for 0 and every count;
 *  - the system's sentence for -errno, also for what real calls return;
 *  - "unknown error" for what no errno is (and for INT64_MIN), never NULL;
 *  - constant strings: a pointer kept stays the same text after other calls,
 *    from other threads too.
 *
 * Exit 0 = pass, 1 = fail. `test_errors [seed [test]]`. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "memckpt.h"
#include "check.h"

static void test_success(struct test_ctx *ctx)
{
	(void)ctx;
	CHECK(strcmp(mck_strerror(0), "success") == 0, "0: %s", mck_strerror(0));
	CHECK(strcmp(mck_strerror(4096), "success") == 0, "a count: %s", mck_strerror(4096));
	CHECK(strcmp(mck_strerror(INT64_MAX), "success") == 0, "INT64_MAX: %s",
	      mck_strerror(INT64_MAX));
}

static void test_errno(struct test_ctx *ctx)
{
	static const int codes[] = { EINVAL, ENOMEM, EBUSY, ECHILD, ENOBUFS, EOPNOTSUPP, EPERM };

	(void)ctx;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		char want[256];

		snprintf(want, sizeof(want), "%s", strerror(codes[i]));
		CHECK(strcmp(mck_strerror(-codes[i]), want) == 0, "-%d: \"%s\", strerror says \"%s\"",
		      codes[i], mck_strerror(-codes[i]), want);
	}
	CHECK(strcmp(mck_strerror(-EINVAL), "Invalid argument") == 0, "-EINVAL: %s",
	      mck_strerror(-EINVAL));
}

static void test_from_calls(struct test_ctx *ctx)
{
	struct mck_tracker *t = NULL;
	struct mck_region r;
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	int rc;

	(void)ctx;
	/* a range that is not page-aligned */
	rc = mck_tracker_open(&t, MCK_BACKEND_COMPARE, (void *)(uintptr_t)(ps + 1), ps);
	CHECK(rc == -EINVAL, "open on a misaligned range: %d", rc);
	CHECK(strcmp(mck_strerror(rc), strerror(EINVAL)) == 0, "%s", mck_strerror(rc));
	CHECK(mck_backend_lookup("no-such-backend") == -EINVAL, "lookup of no backend");
	rc = mck_region_create(&r, ps, 0);
	CHECK(rc == 0, "region: %s", mck_strerror(rc));
	if (rc == 0) {
		/* a collect into a buffer smaller than the range */
		uint64_t one[1];

		rc = mck_tracker_open(&t, MCK_BACKEND_COMPARE, r.addr, r.len);
		CHECK(rc == 0, "open: %s", mck_strerror(rc));
		if (rc == 0) {
			int64_t n = mck_tracker_collect(t, one, 0);

			CHECK(n == -ENOBUFS && strcmp(mck_strerror(n), strerror(ENOBUFS)) == 0,
			      "collect with cap 0: %lld %s", (long long)n, mck_strerror(n));
			mck_tracker_close(t);
		}
		mck_region_destroy(&r);
	}
}

static void test_unknown(struct test_ctx *ctx)
{
	static const int64_t odd[] = { -99999, -((int64_t)1 << 40), INT64_MIN, -(int64_t)INT32_MAX - 1 };

	(void)ctx;
	for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++)
		CHECK(strcmp(mck_strerror(odd[i]), "unknown error") == 0, "%lld: %s",
		      (long long)odd[i], mck_strerror(odd[i]));
	for (int64_t rc = -4200; rc < 0; rc++)
		CHECK(mck_strerror(rc) && *mck_strerror(rc), "%lld: NULL or empty", (long long)rc);
}

static void *other_thread(void *arg)
{
	(void)arg;
	for (int64_t rc = -300; rc < 0; rc++)
		(void)mck_strerror(rc);
	return NULL;
}

static void test_constant(struct test_ctx *ctx)
{
	const char *einval = mck_strerror(-EINVAL), *unknown = mck_strerror(-99999);
	char einval_text[256], unknown_text[256];
	pthread_t th;

	(void)ctx;
	snprintf(einval_text, sizeof(einval_text), "%s", einval);
	snprintf(unknown_text, sizeof(unknown_text), "%s", unknown);
	CHECK(pthread_create(&th, NULL, other_thread, NULL) == 0, "thread");
	other_thread(NULL);
	pthread_join(th, NULL);
	CHECK(mck_strerror(-EINVAL) == einval, "a second call gave another pointer");
	CHECK(strcmp(einval, einval_text) == 0, "the kept text changed: %s", einval);
	CHECK(strcmp(unknown, unknown_text) == 0, "the kept text changed: %s", unknown);
}

static const struct test_case tests[] = {
	{ "success", test_success, { NULL } },
	{ "errno", test_errno, { NULL } },
	{ "from_calls", test_from_calls, { NULL } },
	{ "unknown", test_unknown, { NULL } },
	{ "constant", test_constant, { NULL } },
};

int main(int argc, char **argv)
{
	struct test_ctx ctx = { .backend = -1 };

	test_start(argc, argv, "test_errors");
	RUN_TESTS(tests, &ctx);
	return test_finish("test_errors");
}
