/* lazy_fork.c: fork() during a lazy restore: the child would find missing
 * pages unregistered (zeros), so a fork waits for every lazy restore of
 * the process to drain first. */
#include "lazy_internal.h"

/* Lazy restores in flight, for fork(): the child would find their missing
 * pages unregistered (zeros), so fork waits for their drains. */
pthread_mutex_t lz_live_lock = PTHREAD_MUTEX_INITIALIZER;

struct mck_lazy *lz_live;

pthread_once_t lz_atfork_once = PTHREAD_ONCE_INIT;

static void before_fork(void)
{
	pthread_mutex_lock(&lz_live_lock);
	for (struct mck_lazy *l = lz_live; l; l = l->next_live)
		if (l->pid == getpid()) {
			mck_lazy_release(l);
			mck_lazy_wait(l, -1);
		}
}

static void after_fork_parent(void)
{
	pthread_mutex_unlock(&lz_live_lock);
}

static void after_fork_child(void)
{
	pthread_mutex_unlock(&lz_live_lock);
}

void lz_register_atfork(void)
{
	pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}
