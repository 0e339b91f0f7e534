/* check.h: what every C test binary here shares. CHECK counts a failure and
 * goes on, so one run reports every broken case; rnd() is xorshift64*, so a
 * run is reproducible from the seed it prints. Each binary is one
 * translation unit: the counter is static to it. */
#ifndef MCK_TEST_CHECK_H
#define MCK_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>

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

#endif /* MCK_TEST_CHECK_H */
