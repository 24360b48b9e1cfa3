/*
 * fd_inotify: inotify watches with their descriptors, masks and paths.
 *
 *   fd_inotify PROGRESS VERDICT DIR
 *
 *   20  inotify, O_NONBLOCK: watches on DIR/a (IN_CREATE|IN_DELETE) and
 *       DIR/b (IN_MODIFY|IN_ONESHOT), plus one on DIR/c added and removed
 *       first, so the descriptors are not 1 and 2; the events of the
 *       removal are read.
 * Check: the watch descriptors and masks (fdinfo) are as before; creating a
 * file in DIR/a and writing DIR/b report events with those descriptors.
 */
#include "fdprog.h"

#include <sys/inotify.h>

static int wd_a, wd_b;

static void setup(const char *arg)
{
	(void)arg;
	must(mkdir("a", 0755), "mkdir a");
	must(mkdir("c", 0755), "mkdir c");
	int fd = must(open("b", O_WRONLY | O_CREAT, 0644), "b");
	close(fd);
	at(must(inotify_init1(IN_NONBLOCK), "inotify_init1"), 20);
	int wd_c = must(inotify_add_watch(20, "c", IN_ALL_EVENTS), "watch c");
	must(inotify_rm_watch(20, wd_c), "rm watch c");
	wd_a = must(inotify_add_watch(20, "a", IN_CREATE | IN_DELETE), "watch a");
	wd_b = must(inotify_add_watch(20, "b", IN_MODIFY | IN_ONESHOT), "watch b");
	char buf[4096];
	while (read(20, buf, sizeof buf) > 0)
		;
}

static void check(void)
{
	char buf[4096] __attribute__((aligned(8)));
	if (read(20, buf, sizeof buf) != -1 || errno != EAGAIN)
		fail("inotify 20 has events queued, or blocks");
	char path[64], info[1024];
	snprintf(path, sizeof path, "/proc/self/fdinfo/20");
	int f = open(path, O_RDONLY);
	int n = read(f, info, sizeof info - 1);
	close(f);
	info[n > 0 ? n : 0] = 0;
	char want[64];
	snprintf(want, sizeof want, "inotify wd:%x ", wd_a);
	char *l = strstr(info, want);
	if (!l || !strstr(l, "mask:300 "))
		fail("no watch %d with mask IN_CREATE|IN_DELETE: %s", wd_a, info);
	snprintf(want, sizeof want, "inotify wd:%x ", wd_b);
	l = strstr(info, want);
	if (!l || !strstr(l, "mask:80000002 "))
		fail("no watch %d with mask IN_MODIFY|IN_ONESHOT: %s", wd_b, info);

	int fd = open("a/new", O_WRONLY | O_CREAT, 0644);
	close(fd);
	fd = open("b", O_WRONLY);
	if (write(fd, "x", 1) != 1)
		fail("write b");
	close(fd);
	int got_a = 0, got_b = 0;
	n = read(20, buf, sizeof buf);
	for (char *p = buf; n > 0 && p < buf + n;) {
		struct inotify_event *ev = (struct inotify_event *)p;
		if (ev->wd == wd_a && (ev->mask & IN_CREATE) && !strcmp(ev->name, "new"))
			got_a = 1;
		if (ev->wd == wd_b && (ev->mask & IN_MODIFY))
			got_b = 1;
		p += sizeof *ev + ev->len;
	}
	if (!got_a || !got_b)
		fail("events: create in a %s, modify b %s (%d bytes)", got_a ? "seen" : "missing", got_b ? "seen" : "missing", n);
}
