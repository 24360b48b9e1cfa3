/*
 * demo-counter: the sample process of `make demo`.
 *
 *   demo-counter LOGFILE
 *
 * Appends "demo-counter pid P: count N" to LOGFILE every half second. The
 * count lives in the process's memory only, so after a checkpoint and a
 * restore the log shows it counting on from where it stopped.
 */
#include "common.h"

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 2) {
		fprintf(stderr, "usage: demo-counter LOGFILE\n");
		return 2;
	}
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	detach();
	for (unsigned long long n = 1;; n++) {
		dprintf(fd, "demo-counter pid %d: count %llu\n", getpid(), n);
		sleep_ns(500000000L, NULL);
	}
}
