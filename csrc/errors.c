/* errors.c: a sentence for a return code of the API (mck_strerror).
 *
 * Every function of memckpt.h reports failure as -errno, so the sentence is
 * the system's description of that errno. It must be a constant string (the
 * caller may be any thread, and keeps the pointer): strerror() may write an
 * unknown errno's text into a static buffer, so glibc >= 2.32's
 * strerrordesc_np() is used, else the GNU strerror_r(), whose own buffer is
 * used only for an errno it does not know; musl's strerror() returns
 * constants. */
#include <limits.h>
#include <string.h>

#include "memckpt.h"

static const char unknown[] = "unknown error";

const char *mck_strerror(int64_t rc)
{
	const char *s;
	int err;

	if (rc >= 0)
		return "success";
	if (rc < -(int64_t)INT_MAX)
		return unknown;
	err = (int)-rc;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
	s = strerrordesc_np(err);
#elif defined(__GLIBC__)
	char buf[8];

	s = strerror_r(err, buf, sizeof(buf));
	if (s == buf)
		s = NULL;
#else
	s = strerror(err);
#endif
	return s ? s : unknown;
}
