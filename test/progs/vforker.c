/*
 * vforker: a vfork in progress, which crpipe refuses to checkpoint (the
 * parent and child share one address space until the child calls exec or
 * exits).
 *
 *   vforker PROGRESS VERDICT
 *
 * The parent vforks; the child ticks with raw system calls (it runs on the
 * parent's memory and must not touch libc state) until it is killed. It
 * never writes a verdict.
 */
#include "state.h"

#include <sys/syscall.h>

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "vforker PROGRESS VERDICT");
	if (vfork() == 0) {
		for (uint64_t n = 1;; n++) {
			char line[21];
			uint64_t v = n;
			for (int i = 19; i >= 0; i--) {
				line[i] = v ? '0' + v % 10 : ' ';
				v /= 10;
			}
			line[20] = '\n';
			syscall(SYS_pwrite64, progress_fd, line, 21, 0);
			struct timespec ts = { 0, TICK_NS };
			syscall(SYS_nanosleep, &ts, NULL);
		}
	}
	return 0;
}
