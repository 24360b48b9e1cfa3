/*
 * crpipe restorer: a freestanding static-pie that executes syscalls on
 * command from cr-restore over a SOCK_SEQPACKET socket on fd 3.
 *
 * Every decision lives in the Go coordinator (lib/restore); this blob only
 * does what cannot be done from outside the task: clone3 with set_tid, and
 * syscalls that act on the calling task (mmap, munmap, mremap, prctl, dup3,
 * rt_sigaction, rseq, ...). It copies itself to an address the coordinator
 * chose (OP_RELOCATE) so that the dumped address space can be rebuilt around
 * it. It has no relocations and no absolute addresses, so a byte copy of its
 * image runs anywhere.
 *
 * Protocol: doc/restorer.md.
 */
typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef int i32;

#define NR_write 1
#define NR_close 3
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_exit_group 231
#define NR_dup3 292
#define NR_clone3 435
#define NR_wait4 61
#define ECHILD 10
#define WALL 0x40000000

#define OP_SYSCALLS 1
#define OP_RECV_FDS 2
#define OP_SET_CTL 3
#define OP_RELOCATE 4
#define OP_CLONE 5
#define OP_EXIT 6
#define OP_INIT 7

#define CLONE_FILES 0x400

#define MAX_MSG 32768
#define MAX_FDS 64

/* A syscall entry point with a labelled syscall instruction: the coordinator
 * injects its last syscall (munmap of this blob) at crp_syscall_insn. */
i64 crp_syscall(i64 nr, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f);
__asm__(
	".text\n"
	".globl crp_syscall\n"
	".type crp_syscall,@function\n"
	"crp_syscall:\n"
	"	mov %rdi, %rax\n"
	"	mov %rsi, %rdi\n"
	"	mov %rdx, %rsi\n"
	"	mov %rcx, %rdx\n"
	"	mov %r8, %r10\n"
	"	mov %r9, %r8\n"
	"	mov 8(%rsp), %r9\n"
	".globl crp_syscall_insn\n"
	"crp_syscall_insn:\n"
	"	syscall\n"
	"	ret\n");

/* Entry from exec: align the stack and run the command loop on fd 3. */
void crp_main(void);
__asm__(
	".globl _start\n"
	"_start:\n"
	"	xor %rbp, %rbp\n"
	"	and $-16, %rsp\n"
	"	call crp_main\n"
	"	hlt\n");

/* clone3 for a thread: the child starts on its own stack, so it cannot
 * return through C frames; it calls crp_thread_main(ctl) instead. */
i64 crp_clone_thread(void *args, u64 size, i64 ctl);
__asm__(
	".globl crp_clone_thread\n"
	"crp_clone_thread:\n"
	"	push %r12\n"       /* callee-saved: the parent gets it back */
	"	mov %rdx, %r12\n" /* ctl survives the syscall in the child */
	"	mov $435, %eax\n"
	"	syscall\n"
	"	test %rax, %rax\n"
	"	jnz 1f\n"
	"	xor %rbp, %rbp\n"
	"	mov %r12, %rdi\n"
	"	call crp_thread_main\n"
	"	hlt\n"
	"1:	pop %r12\n"
	"	ret\n");

/* Switch to a new stack and jump: used after the image is copied. */
void crp_jump(u64 sp, u64 target, i64 ctl) __attribute__((noreturn));
__asm__(
	".globl crp_jump\n"
	"crp_jump:\n"
	"	mov %rdi, %rsp\n"
	"	mov %rdx, %rdi\n"
	"	jmp *%rsi\n");

/* gcc may emit calls to these even when freestanding. */
void *memcpy(void *d, const void *s, u64 n)
{
	unsigned char *dd = d;
	const unsigned char *ss = s;
	while (n--)
		*dd++ = *ss++;
	return d;
}

void *memset(void *d, int c, u64 n)
{
	unsigned char *dd = d;
	while (n--)
		*dd++ = (unsigned char)c;
	return d;
}

struct iovec {
	void *base;
	u64 len;
};

struct msghdr {
	void *name;
	u32 namelen;
	struct iovec *iov;
	u64 iovlen;
	void *control;
	u64 controllen;
	u32 flags;
};

struct cmsghdr {
	u64 len;
	i32 level;
	i32 type;
};

#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define MSG_CTRUNC 8
#define MSG_CMSG_CLOEXEC 0x40000000

struct cmd_hdr {
	u32 op;
	u32 count;
};

struct syscall_req {
	u64 nr;
	u64 args[6];
};

struct clone_req {
	u64 flags;
	u64 exit_signal;
	u32 set_tid_size;
	u32 exit_parent; /* the parent replies, then exits */
	i32 set_tid[32];
	i64 child_ctl;   /* >= 0: the child serves this fd, the parent closes it */
	u64 stack;       /* threads: the child's stack */
	u64 stack_size;
};

struct clone_args {
	u64 flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

struct reply {
	i64 status; /* 0, or -errno of the failed entry */
	u32 done;   /* entries completed */
	u32 pad;
	i64 vals[MAX_MSG / 64];
};

extern char __ehdr_start[];
extern char _end[];

static void send_reply(i64 ctl, struct reply *r, u32 nvals)
{
	struct iovec iov = {r, 16 + 8 * (u64)nvals};
	struct msghdr m = {0};
	m.iov = &iov;
	m.iovlen = 1;
	crp_syscall(NR_sendmsg, ctl, (i64)&m, 0, 0, 0, 0);
}

static void loop(i64 ctl) __attribute__((noreturn, used));

/* Entry of a new thread (crp_clone_thread). */
void crp_thread_main(i64 ctl) __attribute__((noreturn, used));
void crp_thread_main(i64 ctl)
{
	loop(ctl);
}

/* Entry of the relocated copy: crp_jump lands here with ctl in rdi. */
void crp_relocated(i64 ctl) __attribute__((noreturn, used));
void crp_relocated(i64 ctl)
{
	struct reply r = {0};
	send_reply(ctl, &r, 0);
	loop(ctl);
}

static void loop(i64 ctl)
{
	for (;;) {
		union {
			struct cmd_hdr h;
			unsigned char b[MAX_MSG];
		} msg;
		union {
			struct cmsghdr h;
			unsigned char b[sizeof(struct cmsghdr) + 4 * MAX_FDS];
		} cbuf;
		struct reply r;
		struct iovec iov = {&msg, sizeof(msg)};
		struct msghdr m = {0};
		m.iov = &iov;
		m.iovlen = 1;
		m.control = &cbuf;
		m.controllen = sizeof(cbuf);
		i64 n = crp_syscall(NR_recvmsg, ctl, (i64)&m, MSG_CMSG_CLOEXEC, 0, 0, 0);
		if (n == -4 /* EINTR */)
			continue;
		if (n <= 0)
			crp_syscall(NR_exit_group, 127, 0, 0, 0, 0, 0);
		r.status = 0;
		r.done = 0;
		if (n < (i64)sizeof(struct cmd_hdr) || (m.flags & MSG_CTRUNC)) {
			r.status = -22; /* EINVAL */
			send_reply(ctl, &r, 0);
			continue;
		}
		switch (msg.h.op) {
		case OP_SYSCALLS: {
			struct syscall_req *q = (struct syscall_req *)(msg.b + sizeof(struct cmd_hdr));
			u32 cnt = msg.h.count;
			if (sizeof(struct cmd_hdr) + (u64)cnt * sizeof(*q) > (u64)n || cnt > MAX_MSG / 64) {
				r.status = -22;
				send_reply(ctl, &r, 0);
				break;
			}
			for (u32 i = 0; i < cnt; i++) {
				i64 ret = crp_syscall((i64)q[i].nr, (i64)q[i].args[0], (i64)q[i].args[1], (i64)q[i].args[2],
						      (i64)q[i].args[3], (i64)q[i].args[4], (i64)q[i].args[5]);
				r.vals[i] = ret;
				if (ret < 0 && ret > -4096) {
					r.status = ret;
					break;
				}
				r.done++;
			}
			send_reply(ctl, &r, r.done + (r.status ? 1 : 0));
			break;
		}
		case OP_RECV_FDS: {
			u32 nfd = 0;
			if (m.controllen >= sizeof(struct cmsghdr) && cbuf.h.level == SOL_SOCKET && cbuf.h.type == SCM_RIGHTS) {
				nfd = (u32)((cbuf.h.len - sizeof(struct cmsghdr)) / 4);
				i32 *fds = (i32 *)(cbuf.b + sizeof(struct cmsghdr));
				for (u32 i = 0; i < nfd; i++)
					r.vals[i] = fds[i];
			}
			r.done = nfd;
			send_reply(ctl, &r, nfd);
			break;
		}
		case OP_SET_CTL: {
			i64 nfd = (i64)msg.h.count;
			i64 ret = crp_syscall(NR_dup3, ctl, nfd, 0x80000 /* O_CLOEXEC */, 0, 0, 0);
			if (ret < 0) {
				r.status = ret;
				send_reply(ctl, &r, 0);
				break;
			}
			crp_syscall(NR_close, ctl, 0, 0, 0, 0, 0);
			ctl = nfd;
			send_reply(ctl, &r, 0);
			break;
		}
		case OP_RELOCATE: {
			/* payload: u64 dst (mapped writable and executable), u64 stack top */
			u64 *a = (u64 *)(msg.b + sizeof(struct cmd_hdr));
			if ((u64)n < sizeof(struct cmd_hdr) + 16) {
				r.status = -22;
				send_reply(ctl, &r, 0);
				break;
			}
			u64 dst = a[0], sp = a[1];
			u64 size = (u64)(_end - __ehdr_start);
			memcpy((void *)dst, __ehdr_start, size);
			u64 target = dst + (u64)((char *)crp_relocated - __ehdr_start);
			crp_jump(sp, target, ctl);
		}
		case OP_CLONE: {
			struct clone_req *c = (struct clone_req *)(msg.b + sizeof(struct cmd_hdr));
			if ((u64)n < sizeof(struct cmd_hdr) + sizeof(*c) || c->set_tid_size > 32) {
				r.status = -22;
				send_reply(ctl, &r, 0);
				break;
			}
			struct clone_args ca = {0};
			ca.flags = c->flags;
			ca.exit_signal = c->exit_signal;
			if (c->set_tid_size) {
				ca.set_tid = (u64)c->set_tid;
				ca.set_tid_size = c->set_tid_size;
			}
			i64 ret;
			if (c->stack) {
				ca.stack = c->stack;
				ca.stack_size = c->stack_size;
				ret = crp_clone_thread(&ca, sizeof(ca), c->child_ctl);
			} else {
				ret = crp_syscall(NR_clone3, (i64)&ca, sizeof(ca), 0, 0, 0, 0);
			}
			if (ret == 0) { /* the child (not a thread): serve its own socket */
				if (c->child_ctl >= 0) {
					crp_syscall(NR_close, ctl, 0, 0, 0, 0, 0);
					ctl = c->child_ctl;
				}
				break;
			}
			/* A thread shares the fd table: its socket must stay open. */
			if (c->child_ctl >= 0 && !(c->flags & CLONE_FILES))
				crp_syscall(NR_close, c->child_ctl, 0, 0, 0, 0, 0);
			if (ret < 0)
				r.status = ret;
			r.vals[0] = ret;
			send_reply(ctl, &r, 1);
			if (ret > 0 && c->exit_parent)
				crp_syscall(NR_exit_group, 0, 0, 0, 0, 0, 0);
			break;
		}
		case OP_INIT: {
			/* Init of a new PID namespace: reap everything, and leave
			 * with the root's status when the root goes (which ends the
			 * namespace, as it would end a container). */
			i64 root = (i64)msg.h.count;
			send_reply(ctl, &r, 0);
			crp_syscall(NR_close, ctl, 0, 0, 0, 0, 0);
			for (;;) {
				i32 status = 0;
				i64 p = crp_syscall(NR_wait4, -1, (i64)&status, WALL, 0, 0, 0);
				if (p == -ECHILD)
					crp_syscall(NR_exit_group, 0, 0, 0, 0, 0, 0);
				if (p != root)
					continue;
				if ((status & 0x7f) == 0)
					crp_syscall(NR_exit_group, (status >> 8) & 0xff, 0, 0, 0, 0, 0);
				crp_syscall(NR_exit_group, 128 + (status & 0x7f), 0, 0, 0, 0, 0);
			}
		}
		case OP_EXIT:
			crp_syscall(NR_exit_group, msg.h.count, 0, 0, 0, 0, 0);
			break;
		default:
			r.status = -38; /* ENOSYS */
			send_reply(ctl, &r, 0);
		}
	}
}

void crp_main(void)
{
	loop(3);
}
