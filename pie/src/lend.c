/*
 * lend: runs inside a frozen process that cr-pages dumps, on one of its
 * threads (lib/inject/lend.go). It checksums runs of the process's own
 * memory and puts the pages themselves into a pipe with vmsplice(2), so
 * that they reach the image without a copy: the dumper never reads them.
 *
 * The tracer lays out a struct lend_ctl with the runs to send, points the
 * thread at lend_entry with rdi = the ctl block and rsp = a stack of the
 * tracer's, and lets it run with every signal blocked. For each run, page
 * by page: pages of zeros are left out where the run allows it; the rest
 * is cut into frames of at most max_frame bytes. A frame's descriptor
 * (address, length, CRC-32C of its thirds) goes into the ring, then
 * `produced` is raised, then the frame's pages go into the pipe, where the
 * tracer reads them after the descriptor; while the pipe is full, the
 * next frames are checksummed and described meanwhile (up to AHEAD). At
 * the end the entry code sets `done` and parks in pause(2), as the batch
 * stub does.
 *
 * Where the CPU has 512-bit carry-less multiplies, the tracer sets
 * fold_ok and the fold constants (lib/internal/crc32c's), and the
 * checksum folds 256 bytes at a time in vector registers: ~3 times the
 * crc32 instruction's speed in the caches, the speed of reading memory
 * outside them (doc/performance.md, 71). The tracer saves the thread's
 * vector registers before and puts them back after (lib/inject/lend.go);
 * everything else here uses general registers only.
 *
 * Freestanding: no libc, no globals, no absolute addresses; the flat binary
 * (lend.bin) is copied into the stub's code page as it is.
 */

#include <immintrin.h>

typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;

struct lend_run {
	u64 addr, len;
	u64 zero; /* 1: pages of zeros may be left out */
};

struct lend_frame {
	u64 addr, len;
	u64 split;  /* the thirds: [0,split) [split,2 split) [2 split,len) */
	u32 crc[3]; /* CRC-32C of each third */
	u32 pad;
};

struct lend_ctl {
	u64 done;     /* set by lend_entry at the end */
	u64 fd;       /* the pipe's write end, in this process */
	u64 runs;     /* struct lend_run[nruns] */
	u64 nruns;
	u64 ring;     /* struct lend_frame[ring_size], ring_size a power of 2 */
	u64 ring_size;
	u64 max_frame;
	u64 produced; /* frames described so far */
	u64 zeros;    /* pages of zeros left out */
	i64 err;      /* a failed vmsplice's -errno */
	u64 pipe_size; /* asked of the pipe first (F_SETPIPE_SZ), if not 0 */
	u64 fold_ok;   /* 1: checksum with fold[] (the CPU folds) */
	u64 fold[14];  /* by 256, by 64, the lanes by 48/32/16/0, by 16 bytes */
};

struct iovec_ {
	u64 base, len;
};

#define PAGE 4096UL
#define NR_VMSPLICE 278
#define NR_FCNTL 72
#define F_SETPIPE_SZ 1031
#define EINTR 4
#define EAGAIN 11
#define SPLICE_F_NONBLOCK 2

void lend_entry(void);
__asm__(".pushsection .text.start,\"ax\",@progbits\n"
	".globl lend_entry\n"
	"lend_entry:\n"
	"	mov %rdi, %r13\n"
	"	call lend_main\n"
	"	movq $1, (%r13)\n"
	"1:	mov $34, %eax\n" /* pause */
	"	syscall\n"
	"	jmp 1b\n"
	".popsection\n");

static i64 vmsplice_(u64 fd, struct iovec_ *iov, u64 flags)
{
	i64 ret;
	register u64 r10 __asm__("r10") = flags;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"((u64)NR_VMSPLICE), "D"(fd), "S"(iov), "d"(1UL), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

static void set_pipe_size(u64 fd, u64 size)
{
	i64 ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"((u64)NR_FCNTL), "D"(fd), "S"((u64)F_SETPIPE_SZ), "d"(size)
			 : "rcx", "r11", "memory");
	(void)ret; /* a smaller pipe only means more, smaller moves */
}

static inline u64 crc8(u64 c, u64 v)
{
	__asm__("crc32q %1, %0" : "+r"(c) : "rm"(v));
	return c;
}

static int zero_page(const u64 *p)
{
	u64 acc = 0;
	if (p[0])
		return 0;
	for (u64 i = 0; i < PAGE / 8; i += 4)
		acc |= p[i] | p[i + 1] | p[i + 2] | p[i + 3];
	return acc == 0;
}

/* fold carries the crc32 state c (not inverted) over n >= 256 bytes at p,
 * as lib/internal/crc32c's updateFold does: four 512-bit accumulators
 * moved forward by 256 bytes each round, folded into one, its four lanes
 * into one, the last 16-byte pieces, then the 128 bits left and the last
 * bytes through the crc32 instruction. */
__attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))
static u32 fold(u32 c, const unsigned char *p, u64 n, const u64 *k)
{
	__m512i a0 = _mm512_loadu_si512((const void *)p), a1 = _mm512_loadu_si512((const void *)(p + 64));
	__m512i a2 = _mm512_loadu_si512((const void *)(p + 128)), a3 = _mm512_loadu_si512((const void *)(p + 192));
	a0 = _mm512_xor_si512(a0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)c)));
	p += 256;
	n -= 256;
	__m512i k4 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)k));
#define FOLD(x, next) _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k4, 0x00), _mm512_clmulepi64_epi128(x, k4, 0x11), next, 0x96)
	for (; n >= 256; p += 256, n -= 256) {
		a0 = FOLD(a0, _mm512_loadu_si512((const void *)p));
		a1 = FOLD(a1, _mm512_loadu_si512((const void *)(p + 64)));
		a2 = FOLD(a2, _mm512_loadu_si512((const void *)(p + 128)));
		a3 = FOLD(a3, _mm512_loadu_si512((const void *)(p + 192)));
	}
	k4 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(k + 2)));
	a1 = FOLD(a0, a1);
	a2 = FOLD(a1, a2);
	a3 = FOLD(a2, a3);
#undef FOLD
	__m512i kl = _mm512_loadu_si512((const void *)(k + 4));
	__m512i t = _mm512_xor_si512(_mm512_clmulepi64_epi128(a3, kl, 0x00), _mm512_clmulepi64_epi128(a3, kl, 0x11));
	__m128i x = _mm_ternarylogic_epi64(_mm512_extracti32x4_epi32(a3, 3), _mm512_extracti32x4_epi32(t, 1),
					   _mm512_extracti32x4_epi32(t, 2), 0x96);
	x = _mm_xor_si128(x, _mm512_castsi512_si128(t));
	__m128i k1 = _mm_loadu_si128((const __m128i *)(k + 12));
	for (; n >= 16; p += 16, n -= 16)
		x = _mm_ternarylogic_epi64(_mm_clmulepi64_si128(x, k1, 0x00), _mm_clmulepi64_si128(x, k1, 0x11),
					   _mm_loadu_si128((const __m128i *)p), 0x96);
	u64 r = _mm_crc32_u64(0, (u64)_mm_cvtsi128_si64(x));
	r = _mm_crc32_u64(r, (u64)_mm_extract_epi64(x, 1));
	for (; n >= 8; p += 8, n -= 8)
		r = _mm_crc32_u64(r, *(const u64 *)p);
	for (; n; p++, n--)
		r = _mm_crc32_u8((u32)r, *p);
	_mm256_zeroupper();
	return (u32)r;
}

/* Frames described but not yet all in the pipe: [sent, produced) of the
 * ring, the first with `off` bytes in already. */
struct backlog {
	u64 sent, off;
};

static int pump(struct lend_ctl *ctl, struct backlog *bl, int block);

/* STEP words of each stream between looks at the pipe (~12 µs). */
#define STEP 8192

/* Three interleaved streams keep the crc32 unit busy (its latency is three
 * times its throughput); the tracer combines them. Every STEP words the
 * backlog gets whatever room the dumper made in the pipe meanwhile, so the
 * pipe does not run dry while this runs ahead. */
static int checksum(struct lend_ctl *ctl, struct backlog *bl, struct lend_frame *f)
{
	const u64 *p = (const u64 *)f->addr;
	u64 third = (f->len / 3) & ~7UL, n = third / 8, total = f->len / 8;
	if (ctl->fold_ok) {
		/* Each third in pieces of STEP words, the backlog pumped between;
		 * frames are whole pages, so a third, and its last piece, hold
		 * the 256 bytes fold needs. */
		for (int k = 0; k < 3; k++) {
			const unsigned char *at = (const unsigned char *)f->addr + k * third;
			u64 left = k < 2 ? third : f->len - 2 * third;
			u32 c = ~0U;
			while (left) {
				u64 piece = left >= 2 * STEP * 8 ? STEP * 8 : left;
				c = fold(c, at, piece, ctl->fold);
				at += piece;
				left -= piece;
				if (bl->sent < ctl->produced && pump(ctl, bl, 0))
					return -1;
			}
			f->crc[k] = ~c;
		}
		f->split = third;
		return 0;
	}
	u64 a = ~0UL & 0xffffffff, b = a, c = a;
	const u64 *q = p + n, *r = p + 2 * n;
	for (u64 i = 0; i < n;) {
		u64 end = n - i > STEP ? i + STEP : n;
		for (; i < end; i++) {
			a = crc8(a, p[i]);
			b = crc8(b, q[i]);
			c = crc8(c, r[i]);
		}
		if (bl->sent < ctl->produced && pump(ctl, bl, 0))
			return -1;
	}
	for (u64 i = 3 * n; i < total; i++)
		c = crc8(c, p[i]);
	f->split = third;
	f->crc[0] = ~(u32)a;
	f->crc[1] = ~(u32)b;
	f->crc[2] = ~(u32)c;
	return 0;
}

/* pump moves the backlog's pages into the pipe: all of them when block,
 * else as much as the pipe takes now (SPLICE_F_NONBLOCK), so that while
 * the dumper drains the pipe this thread checksums the frames after. */
static int pump(struct lend_ctl *ctl, struct backlog *bl, int block)
{
	const struct lend_frame *ring = (const struct lend_frame *)ctl->ring;
	while (bl->sent < ctl->produced) {
		const struct lend_frame *f = ring + (bl->sent & (ctl->ring_size - 1));
		struct iovec_ iov = {f->addr + bl->off, f->len - bl->off};
		i64 n = vmsplice_(ctl->fd, &iov, block ? 0 : SPLICE_F_NONBLOCK);
		if (n == -EAGAIN && !block)
			return 0;
		if (n == -EINTR || n == -EAGAIN)
			continue;
		if (n <= 0) {
			ctl->err = n ? n : -1;
			return -1;
		}
		bl->off += n;
		if (bl->off == f->len) {
			bl->sent++;
			bl->off = 0;
		}
	}
	return 0;
}

/* The dumper reads a frame's descriptor before its pages: the ring holds
 * the frames in the pipe (at most a page each) and these, ahead. */
#define AHEAD 128

static int emit(struct lend_ctl *ctl, struct backlog *bl, u64 addr, u64 len)
{
	struct lend_frame *f = (struct lend_frame *)ctl->ring + (ctl->produced & (ctl->ring_size - 1));
	if (ctl->produced - bl->sent >= AHEAD && pump(ctl, bl, 1))
		return -1;
	f->addr = addr;
	f->len = len;
	if (checksum(ctl, bl, f))
		return -1;
	__asm__ volatile("" ::: "memory");
	*(volatile u64 *)&ctl->produced = ctl->produced + 1;
	return pump(ctl, bl, 0);
}

void lend_main(struct lend_ctl *ctl)
{
	const struct lend_run *runs = (const struct lend_run *)ctl->runs;
	struct backlog bl = {ctl->produced, 0};
	if (ctl->pipe_size)
		set_pipe_size(ctl->fd, ctl->pipe_size);
	for (u64 i = 0; i < ctl->nruns; i++) {
		u64 at = runs[i].addr, end = at + runs[i].len, start = at;
		for (; at < end; at += PAGE) {
			if (runs[i].zero && zero_page((const u64 *)at)) {
				if (at > start && emit(ctl, &bl, start, at - start))
					return;
				start = at + PAGE;
				ctl->zeros++;
				continue;
			}
			if (at + PAGE - start == ctl->max_frame) {
				if (emit(ctl, &bl, start, at + PAGE - start))
					return;
				start = at + PAGE;
			}
		}
		if (end > start && emit(ctl, &bl, start, end - start))
			return;
	}
	pump(ctl, &bl, 1);
}
