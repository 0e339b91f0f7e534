/* read_threads.h: the threads an epoch read runs on (epoch_reader.c,
 * read_fill.c). */
#ifndef MEMCKPT_READ_THREADS_H
#define MEMCKPT_READ_THREADS_H

/* The CPUs this thread may run on (at least 1). */
unsigned mck_read_cpus(void);

/* fn(arg) on n threads, the calling thread among them; every thread is
 * joined before return. A thread that cannot start is no error: the ones
 * there share the work (fn takes work until none is left). The program's
 * asynchronous signals stay with its own threads. */
void mck_read_on_threads(void *(*fn)(void *), void *arg, unsigned n);

#endif /* MEMCKPT_READ_THREADS_H */
