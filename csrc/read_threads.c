/* read_threads.c: the threads an epoch read runs on (read_threads.h). */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include "read_threads.h"

#define MAX_THREADS 64

static const int sync_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP};

unsigned mck_read_cpus(void)
{
	cpu_set_t set;
	long n;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (unsigned)CPU_COUNT(&set);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (unsigned)n : 1;
}

void mck_read_on_threads(void *(*fn)(void *), void *arg, unsigned n)
{
	pthread_t tid[MAX_THREADS];
	sigset_t all, old;
	unsigned started = 0;

	if (n > MAX_THREADS)
		n = MAX_THREADS;
	/* the program's signals go to its own threads; a fault in a worker
	 * (a write into a page the program protected) is still delivered */
	sigfillset(&all);
	for (size_t i = 0; i < sizeof(sync_signals) / sizeof(sync_signals[0]); i++)
		sigdelset(&all, sync_signals[i]);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (; started + 1 < n; started++)
		if (pthread_create(&tid[started], NULL, fn, arg) != 0)
			break;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	fn(arg);
	for (unsigned i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
}
