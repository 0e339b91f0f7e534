/* tracker.c: the backend table, and the dispatch every backend shares. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* In order of preference: `auto` takes the first available. */
static const struct mck_tracker_ops *const backends[MCK_BACKEND_COUNT] = {
	[MCK_BACKEND_UFFD_ASYNC] = &mck_uffd_async_ops,
	[MCK_BACKEND_UFFD_SYNC] = &mck_uffd_sync_ops,
	[MCK_BACKEND_SOFT_DIRTY] = &mck_soft_dirty_ops,
	[MCK_BACKEND_MPROTECT] = &mck_mprotect_ops,
	[MCK_BACKEND_COMPARE] = &mck_compare_ops,
};

static const struct mck_tracker_ops *backend_ops(int backend)
{
	if (backend < 0 || backend >= MCK_BACKEND_COUNT)
		return NULL;
	return backends[backend];
}

const char *mck_backend_name(int backend)
{
	const struct mck_tracker_ops *ops = backend_ops(backend);

	return ops ? ops->name : NULL;
}

int mck_backend_lookup(const char *name)
{
	for (int b = 0; b < MCK_BACKEND_COUNT; b++)
		if (name && !strcmp(name, backends[b]->name))
			return b;
	return -EINVAL;
}

unsigned mck_backend_props(int backend)
{
	const struct mck_tracker_ops *ops = backend_ops(backend);

	return ops ? ops->props : 0;
}

unsigned mck_backend_caps(int backend)
{
	const struct mck_tracker_ops *ops = backend_ops(backend);

	return ops ? ops->caps : 0;
}

const struct mck_hold_ops *mck_tracker_hold(const struct mck_tracker *t)
{
	return t && (t->ops->caps & MCK_CAP_HOLD_WRITERS) ? t->ops->hold : NULL;
}

int mck_backend_status(int backend, char *reason, size_t len)
{
	const struct mck_tracker_ops *ops = backend_ops(backend);
	struct mck_features f;
	int rc;

	if (!ops)
		return -EINVAL;
	rc = mck_probe(&f);
	if (rc < 0)
		return rc;
	return ops->status(&f, reason, len);
}

int mck_backend_auto(char *reason, size_t len)
{
	char why[MCK_BACKEND_COUNT][160];
	char skipped[MCK_BACKEND_COUNT * 200] = "";
	size_t used = 0;

	for (int b = 0; b < MCK_BACKEND_COUNT; b++) {
		int rc = mck_backend_status(b, why[b], sizeof(why[b]));

		if (rc < 0)
			return rc;
		if (rc == 1) {
			if (b == 0)
				mck_reason(reason, len, "%s: the most preferred backend, and available",
					   backends[b]->name);
			else
				mck_reason(reason, len, "%s: the best available (%s)",
					   backends[b]->name, skipped);
			return b;
		}
		rc = snprintf(skipped + used, sizeof(skipped) - used, "%s%s unavailable: %s",
			      used ? "; " : "", backends[b]->name, why[b]);
		if (rc > 0 && (size_t)rc < sizeof(skipped) - used)
			used += (size_t)rc;
	}
	mck_reason(reason, len, "no backend available (%s)", skipped);
	return -ENOTSUP;
}

/* ---- fork safety (see memckpt.h) -------------------------------------------
 *
 * Why a pid check at every entry point rather than only a pthread_atfork
 * child handler that marks the trackers detached: the check needs no registry
 * of live trackers, whose lock would itself be a fork hazard; it also covers
 * children that run no atfork handler (_Fork, a raw clone: capture_fork.c's
 * child is one, and runs no tracker code, but a library's could); and it
 * costs one getpid() per collect, not per page. The atfork counter only
 * backs it up where a pid can lie: a grandchild whose pid is that of its
 * dead grandparent, the owner, would otherwise pass the check and join
 * threads it does not have. */
static _Atomic unsigned long fork_gen;
static pthread_once_t fork_gen_once = PTHREAD_ONCE_INIT;

static void fork_gen_child(void)
{
	atomic_fetch_add(&fork_gen, 1); /* async-signal-safe: fine in an atfork child */
}

static void fork_gen_register(void)
{
	pthread_atfork(NULL, NULL, fork_gen_child);
}

bool mck_detached(const struct mck_tracker *t)
{
	return t->owner != getpid() || t->fork_gen != atomic_load(&fork_gen);
}

int mck_tracker_detached(const struct mck_tracker *t)
{
	return t ? mck_detached(t) : -EINVAL;
}

int mck_tracker_owner(const struct mck_tracker *t)
{
	return t ? (int)t->owner : -EINVAL;
}

int mck_tracker_start(struct mck_tracker **out, const struct mck_tracker_ops *ops, int backend,
		      void *addr, size_t len, void *priv)
{
	struct mck_tracker *t;
	int rc;

	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->ops = ops;
	t->backend = backend;
	t->addr = addr;
	t->len = len;
	t->page_size = (size_t)sysconf(_SC_PAGESIZE);
	t->npages = len / t->page_size;
	t->priv = priv;
	pthread_once(&fork_gen_once, fork_gen_register);
	t->owner = getpid();
	t->fork_gen = atomic_load(&fork_gen);
	rc = ops->open(t);
	if (rc < 0) {
		free(t);
		return rc;
	}
	*out = t;
	return 0;
}

int mck_tracker_open(struct mck_tracker **out, int backend, void *addr, size_t len)
{
	const struct mck_tracker_ops *ops = backend_ops(backend);
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	int rc;

	*out = NULL;
	if (!ops || !addr || !len || (uintptr_t)addr % ps || len % ps)
		return -EINVAL;
	rc = mck_backend_status(backend, NULL, 0);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return -ENOTSUP;
	return mck_tracker_start(out, ops, backend, addr, len, NULL);
}

int64_t mck_tracker_collect(struct mck_tracker *t, uint64_t *out, size_t cap)
{
	if (!t || !out)
		return -EINVAL;
	if (mck_detached(t))
		return -ECHILD;
	if (cap < t->npages)
		return -ENOBUFS;
	return t->ops->collect(t, out, cap);
}

size_t mck_tracker_npages(const struct mck_tracker *t)
{
	return t ? t->npages : 0;
}

int mck_tracker_backend(const struct mck_tracker *t)
{
	return t ? t->backend : -EINVAL;
}

int mck_tracker_close(struct mck_tracker *t)
{
	if (!t)
		return 0;
	if (mck_detached(t))
		t->ops->forget(t);
	else
		t->ops->close(t);
	free(t);
	return 0;
}
