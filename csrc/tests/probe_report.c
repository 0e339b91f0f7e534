/* probe_report.c: print what the C core probed and decided, one `key=value`
 * per line, so that a harness (scripts/kernel_matrix.py) can compare kernels
 * without a Python build. Uses the public header only.
 *
 * Keys: kernel, page_size, thp_mode, the struct mck_features fields (probe
 * states as ok/unsupported/error, errnos as "N (message)"), then for each
 * backend `backend.NAME` (available/unavailable/error) and
 * `backend.NAME.reason`, then `auto` and `auto.reason`.
 * A value is the rest of its line; newlines in reasons are flattened.
 *
 * Exit 0 when the probe ran (whatever it found), 1 when it could not. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

#include "memckpt.h"

static const char *state_name(int state)
{
	switch (state) {
	case MCK_PROBE_OK:
		return "ok";
	case MCK_PROBE_UNSUPPORTED:
		return "unsupported";
	case MCK_PROBE_ERROR:
		return "error";
	default:
		return "unknown";
	}
}

static const char *thp_name(int mode)
{
	switch (mode) {
	case MCK_THP_NEVER:
		return "never";
	case MCK_THP_MADVISE:
		return "madvise";
	case MCK_THP_ALWAYS:
		return "always";
	default:
		return "unknown";
	}
}

/* one line per key, whatever a reason contains */
static void put(const char *key, const char *value)
{
	printf("%s=", key);
	for (const char *c = value; *c; c++)
		putchar(*c == '\n' || *c == '\r' ? ' ' : *c);
	putchar('\n');
}

static void put_errno(const char *key, int err)
{
	char buf[160];

	if (err)
		snprintf(buf, sizeof(buf), "%d (%s)", err, strerror(err));
	else
		snprintf(buf, sizeof(buf), "0");
	put(key, buf);
}

int main(void)
{
	struct mck_features f;
	struct utsname u;
	char reason[1024], key[64];
	int rc;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (uname(&u) == 0)
		put("kernel", u.release);
	rc = mck_probe(&f);
	if (rc < 0) {
		put_errno("probe_error", -rc);
		return 1;
	}
	printf("page_size=%zu\n", f.page_size);
	put("thp_mode", thp_name(f.thp_mode));
	put("uffd", state_name(f.uffd));
	put_errno("uffd_errno", f.uffd_errno);
	printf("uffd_user_mode_only=%d\n", f.uffd_user_mode_only);
	printf("unprivileged_userfaultfd=%d\n", f.unprivileged_userfaultfd);
	printf("uffd_features=0x%" PRIx64 "\n", f.uffd_features);
	put("uffd_wp", state_name(f.uffd_wp));
	put("uffd_wp_async", state_name(f.uffd_wp_async));
	put("uffd_wp_unpopulated", state_name(f.uffd_wp_unpopulated));
	put("pagemap_scan", state_name(f.pagemap_scan));
	put_errno("pagemap_scan_errno", f.pagemap_scan_errno);
	put("soft_dirty", state_name(f.soft_dirty));
	put_errno("soft_dirty_errno", f.soft_dirty_errno);

	for (int b = 0; b < MCK_BACKEND_COUNT; b++) {
		const char *name = mck_backend_name(b);

		reason[0] = '\0';
		rc = mck_backend_status(b, reason, sizeof(reason));
		snprintf(key, sizeof(key), "backend.%s", name);
		put(key, rc == 1 ? "available" : rc == 0 ? "unavailable" : "error");
		snprintf(key, sizeof(key), "backend.%s.reason", name);
		if (rc < 0)
			snprintf(reason, sizeof(reason), "status failed: %s", strerror(-rc));
		put(key, reason);
	}

	reason[0] = '\0';
	rc = mck_backend_auto(reason, sizeof(reason));
	put("auto", rc >= 0 ? mck_backend_name(rc) : "none");
	put("auto.reason", reason);
	return 0;
}
