/* check.h: what every C test binary here shares. CHECK counts a failure and
 * goes on, so one run reports every broken case; rnd() is xorshift64*, so a
 * run is reproducible from the seed it prints. Each binary is one
 * translation unit: the counter is static to it.
 *
 * A binary lists its tests as a table of {name, function, needs} and runs
 * it with run_tests(), once, or once per backend (backend_pass()): a test
 * whose needs are not met here is not run, and a line `SKIP name: why` says
 * why (the kernel's selftests/mm/uffd-unit-tests.c does the same).
 * test_finish() gives the exit status the harnesses (tests/test_c_core.py,
 * scripts/kernel_matrix.py) read: 0 pass, 1 a CHECK failed, 77 nothing could
 * run here (the SKIP lines say why). `binary [seed [test]]` replays a seed,
 * and runs only the test named. */
#ifndef MCK_TEST_CHECK_H
#define MCK_TEST_CHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "memckpt.h"

static int failures;

#define CHECK(cond, ...)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			printf("FAIL %s:%d: ", __FILE__, __LINE__);            \
			printf(__VA_ARGS__);                                   \
			printf("\n");                                          \
			failures++;                                            \
		}                                                              \
	} while (0)

static inline uint64_t rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

/* ---- the table of tests ---------------------------------------------------- */

/* What a test runs with: the backend of this pass (-1 in a binary without
 * passes) and the binary's own state for it. */
struct test_ctx {
	int backend;
	const char *backend_name;
	void *fixture;
};

/* NULL if ctx (and this machine) meets the need, else why not. */
typedef const char *(*test_need)(const struct test_ctx *ctx);

struct test_case {
	const char *name;
	void (*fn)(struct test_ctx *ctx);
	test_need needs[3]; /* every one must be met; the rest NULL */
};

static uint64_t rng_state;        /* seeded by test_start */
static const char *test_only;     /* argv[2]: run just this test */
static int tests_ran, tests_matched;

/* Line-buffered output, the seed from argv[1] (else the clock) into
 * rng_state, argv[2] as the one test to run; prints the seed for replay. */
static inline uint64_t test_start(int argc, char **argv, const char *binary)
{
	uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0)
				 : (uint64_t)time(NULL) * 2654435761u;

	setvbuf(stdout, NULL, _IOLBF, 0);
	rng_state = seed | 1;
	test_only = argc > 2 ? argv[2] : NULL;
	printf("# %s, seed %llu\n", binary, (unsigned long long)seed);
	return seed;
}

/* One pass of the table over backend `name`: true if it is available here
 * (ctx set for it), else false with a SKIP line saying why. */
static inline bool backend_pass(struct test_ctx *ctx, const char *name)
{
	char reason[512] = "";
	int b = mck_backend_lookup(name), rc;

	ctx->backend = b;
	ctx->backend_name = name;
	if (b < 0) {
		CHECK(0, "unknown backend %s", name);
		return false;
	}
	rc = mck_backend_status(b, reason, sizeof(reason));
	if (rc < 0) {
		CHECK(0, "%s: status: %s", name, strerror(-rc));
		return false;
	}
	if (rc == 0) {
		printf("SKIP %s unavailable: %s\n", name, reason);
		return false;
	}
	printf("# %s: %s\n", name, reason);
	return true;
}

/* Run each test of tests[0..n) whose needs ctx meets; say why of the others. */
static inline void run_tests(const struct test_case *tests, size_t n, struct test_ctx *ctx)
{
	for (size_t i = 0; i < n; i++) {
		const struct test_case *tc = &tests[i];
		const char *why = NULL, *on = ctx->backend_name ? ctx->backend_name : "";
		const char *sep = ctx->backend_name ? " on " : "";
		int before = failures;

		if (test_only && strcmp(test_only, tc->name))
			continue;
		tests_matched++;
		for (size_t k = 0; k < sizeof(tc->needs) / sizeof(tc->needs[0]) && !why; k++)
			why = tc->needs[k] ? tc->needs[k](ctx) : NULL;
		if (why) {
			printf("SKIP %s%s%s: %s\n", tc->name, sep, on, why);
			continue;
		}
		tc->fn(ctx);
		tests_ran++;
		printf("# %s %s%s%s\n", failures == before ? "ok" : "FAILED", tc->name, sep, on);
	}
}

#define RUN_TESTS(table, ctx) run_tests((table), sizeof(table) / sizeof((table)[0]), (ctx))

/* The exit status, after a last line that says it. */
static inline int test_finish(const char *binary)
{
	if (test_only && !tests_matched)
		CHECK(0, "no test named %s", test_only);
	if (failures) {
		printf("FAIL %s (%d failures)\n", binary, failures);
		return 1;
	}
	if (!tests_ran) {
		/* not a SKIP line: the ones above say why, this only repeats it */
		printf("# %s: no test could run here\n", binary);
		return 77;
	}
	printf("PASS %s (%d run)\n", binary, tests_ran);
	return 0;
}

/* ---- needs every binary may list ------------------------------------------- */

static inline const char *need_root(const struct test_ctx *ctx)
{
	(void)ctx;
	return geteuid() == 0 ? NULL : "needs root (drops privileges, or reads page frames)";
}

/* Background capture over ctx's backend (or uffd-sync, in a binary without passes). */
static inline const char *need_bg(const struct test_ctx *ctx)
{
	static char reason[512];
	int b = ctx->backend >= 0 ? ctx->backend : mck_backend_lookup("uffd-sync");
	int rc = mck_bg_supported(b, reason, sizeof(reason));

	if (rc < 0)
		snprintf(reason, sizeof(reason), "background capture: %s", strerror(-rc));
	return rc == 1 ? NULL : reason;
}

#endif /* MCK_TEST_CHECK_H */
