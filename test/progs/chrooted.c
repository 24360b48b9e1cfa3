/*
 * chrooted: a process that opened a file, then chroot()ed into a directory
 * beside it, as a daemon that drops into a jail does; its libraries and
 * that file stay mapped and open from outside the jail.
 *
 *   chrooted PROGRESS VERDICT DIR
 *
 * It writes "outside" into DIR/outside, keeps it open as fd 20, makes
 * DIR/jail with a file "marker" in it, and chroots there. On SIGTERM it
 * checks that fd 20 still reads "outside", that / is the jail (/marker is
 * there) and that its working directory is /.
 */
#include "state.h"

#include <sys/stat.h>

static const char *check(char *why, size_t n)
{
	char buf[16] = { 0 }, cwd[256];
	if (pread(20, buf, 7, 0) != 7 || strcmp(buf, "outside")) {
		snprintf(why, n, "fd 20 reads %s", buf);
		return why;
	}
	if (access("/marker", F_OK)) {
		snprintf(why, n, "/marker is not there: / is not the jail");
		return why;
	}
	if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, "/")) {
		snprintf(why, n, "the working directory is not /");
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 4, "chrooted PROGRESS VERDICT DIR");
	char p[4096];
	snprintf(p, sizeof p, "%s/outside", argv[3]);
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, "outside", 7) != 7 || dup2(fd, 20) != 20)
		die("outside");
	close(fd);
	snprintf(p, sizeof p, "%s/jail", argv[3]);
	if (mkdir(p, 0755))
		die("mkdir jail");
	snprintf(p, sizeof p, "%s/jail/marker", argv[3]);
	close(open(p, O_CREAT | O_WRONLY, 0644));
	snprintf(p, sizeof p, "%s/jail", argv[3]);
	if (chroot(p) || chdir("/"))
		die("chroot");
	return state_run("chrooted", check);
}
