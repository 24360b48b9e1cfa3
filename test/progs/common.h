/*
 * Helpers shared by crpipe's C test programs.
 *
 * Every program detaches from whoever started it (its own session, stdio on
 * /dev/null) so that a dump sees a self-contained process: ttys, pipes and
 * sockets are refused by cr-files for now, and a foreign session or process
 * group is a tree matter for a later issue.
 */
#ifndef CRPIPE_TEST_COMMON_H
#define CRPIPE_TEST_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* splitmix64's finalizer: cheap, and every input bit reaches every output bit. */
static inline uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/*
 * close_inherited closes every fd above stdio that the starter leaked to us
 * (a shell's or an IDE's pipes would otherwise be refused by the dump).
 * Call it first in main, before opening anything.
 */
static inline void close_inherited(void)
{
	close_range(3, ~0U, 0);
}

/* detach: own session, stdio on /dev/null. Call after argument checks. */
static inline void detach(void)
{
	int fd = open("/dev/null", O_RDWR);
	if (fd < 0) {
		perror("open /dev/null");
		exit(2);
	}
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
	/* Fails with EPERM when already a session leader: that is fine too. */
	setsid();
}

/*
 * sleep_ns sleeps for ns nanoseconds. An interruption (EINTR, e.g. a signal
 * or a checkpoint/restore around the call) resumes the sleep for the rest,
 * unless *stop became set meanwhile.
 */
static inline void sleep_ns(long ns, volatile int *stop)
{
	struct timespec req = { ns / 1000000000L, ns % 1000000000L }, rem;
	while (nanosleep(&req, &rem) != 0) {
		if (errno != EINTR || (stop && *stop))
			return;
		req = rem;
	}
}

#endif
