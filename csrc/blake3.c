/* blake3.c: BLAKE3 (unkeyed hash mode, 32-byte output), written from the
 * BLAKE3 specification, for the store's page digests.
 *
 * The input is split into 1024-byte chunks; each chunk is compressed block by
 * block (64-byte blocks, CHUNK_START on the first, CHUNK_END on the last) into
 * a chaining value (CV), and the CVs are merged pairwise (PARENT) into a
 * left-complete binary tree whose top node carries ROOT. The whole of a page
 * of 2^k >= 1 KiB bytes is a perfect tree of page/1024 chunks, so the chunks
 * of one page, or of several small pages, are independent work: they are
 * hashed side by side in SIMD lanes (blake3_lanes.h), then the parents of
 * each level likewise.
 *
 * Everything here is pure computation on caller memory (no heap, no locks, no
 * thread-local state): async-signal-safe, callable from a fork child. */
#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include "internal.h"

enum {
	B3_CHUNK_START = 1u << 0,
	B3_CHUNK_END = 1u << 1,
	B3_PARENT = 1u << 2,
	B3_ROOT = 1u << 3,
};

#define B3_BLOCK 64
#define B3_CHUNK 1024
/* chunks hashed per batch: their CVs (2 KiB) live on the stack */
#define B3_BATCH 64

static const uint32_t B3_IV[8] = {
	0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
	0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
};

/* The message word order of each of the 7 rounds: the spec's permutation
 * (2,6,3,10,7,0,4,13,1,11,12,5,9,14,15,8) applied r times, precomputed so
 * that no round moves the message itself. */
static const uint8_t B3_SCHEDULE[7][16] = {
	{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
	{2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
	{3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
	{10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
	{12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
	{9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
	{11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};

static inline uint32_t b3_load32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void b3_store32(uint8_t *p, uint32_t x)
{
	p[0] = (uint8_t)x;
	p[1] = (uint8_t)(x >> 8);
	p[2] = (uint8_t)(x >> 16);
	p[3] = (uint8_t)(x >> 24);
}

/* The quarter-round; works on scalars and on GCC vectors alike. */
#define B3_ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define B3_G(a, b, c, d, mx, my)                                               \
	do {                                                                   \
		a = a + b + (mx);                                              \
		d = B3_ROTR(d ^ a, 16);                                        \
		c = c + d;                                                     \
		b = B3_ROTR(b ^ c, 12);                                        \
		a = a + b + (my);                                              \
		d = B3_ROTR(d ^ a, 8);                                         \
		c = c + d;                                                     \
		b = B3_ROTR(b ^ c, 7);                                         \
	} while (0)

/* One compression; out = the first 8 words of the output (the CV, or for a
 * ROOT node the first 32 bytes of the digest). */
static void b3_compress(const uint32_t cv[8], const uint8_t block[B3_BLOCK], uint64_t ctr,
			uint32_t block_len, uint32_t flags, uint32_t out[8])
{
	uint32_t m[16], v[16];

	for (int w = 0; w < 16; w++)
		m[w] = b3_load32(block + 4 * w);
	memcpy(v, cv, 8 * sizeof(*v));
	memcpy(v + 8, B3_IV, 4 * sizeof(*v));
	v[12] = (uint32_t)ctr;
	v[13] = (uint32_t)(ctr >> 32);
	v[14] = block_len;
	v[15] = flags;
	/* unrolled, the schedule's indices are constants and m, v live in registers */
#pragma GCC unroll 7
	for (int r = 0; r < 7; r++) {
		const uint8_t *s = B3_SCHEDULE[r];

		B3_G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
		B3_G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
		B3_G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
		B3_G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
		B3_G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
		B3_G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
		B3_G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
		B3_G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
	}
	for (int w = 0; w < 8; w++)
		out[w] = v[w] ^ v[w + 8];
}

static void b3_words_to_bytes(const uint32_t w[8], uint8_t out[MCK_BLAKE3_LEN])
{
	for (int i = 0; i < 8; i++)
		b3_store32(out + 4 * i, w[i]);
}

/* The parent node of two child CVs (left || right is its one block). */
static void b3_parent(const uint8_t left[32], const uint8_t right[32], uint32_t flags,
		      uint8_t out[32])
{
	uint8_t block[B3_BLOCK];
	uint32_t w[8];

	memcpy(block, left, 32);
	memcpy(block + 32, right, 32);
	b3_compress(B3_IV, block, 0, B3_BLOCK, B3_PARENT | flags, w);
	b3_words_to_bytes(w, out);
}

/* ---- many inputs at once --------------------------------------------------
 * lanes_fn: see blake3_lanes.h. The scalar version is the portable path and
 * the reference the vector ones are tested against. */
typedef void lanes_fn(const uint8_t *const *in, const uint64_t *ctr, size_t nblocks,
		      uint32_t flags, uint32_t start, uint32_t end, uint8_t *out);

static void b3_lanes_1(const uint8_t *const *in, const uint64_t *ctr, size_t nblocks,
		       uint32_t flags, uint32_t start, uint32_t end, uint8_t *out)
{
	uint32_t cv[8];

	memcpy(cv, B3_IV, sizeof(cv));
	for (size_t b = 0; b < nblocks; b++) {
		uint32_t f = flags | (b == 0 ? start : 0) | (b + 1 == nblocks ? end : 0);

		b3_compress(cv, in[0] + B3_BLOCK * b, ctr[0], B3_BLOCK, f, cv);
	}
	b3_words_to_bytes(cv, out);
}

/* The lanes use GCC's vector extensions and __builtin_shuffle (clang spells
 * the latter differently: it gets the portable path). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define B3_HAVE_X86 1

#define LANES 4
#define LANES_FN b3_lanes_4
#define LANES_ATTR
#include "blake3_lanes.h"
#undef LANES
#undef LANES_FN
#undef LANES_ATTR

#define LANES 8
#define LANES_FN b3_lanes_8
#define LANES_ATTR __attribute__((target("avx2")))
#include "blake3_lanes.h"
#undef LANES
#undef LANES_FN
#undef LANES_ATTR

#define LANES 16
#define LANES_FN b3_lanes_16
#define LANES_ATTR __attribute__((target("avx512f")))
#include "blake3_lanes.h"
#undef LANES
#undef LANES_FN
#undef LANES_ATTR
#endif

enum b3_impl { B3_PORTABLE, B3_SSE2, B3_AVX2, B3_AVX512, B3_NIMPL };

static const char *const b3_impl_names[B3_NIMPL] = {"portable", "sse2", "avx2", "avx512"};

/* -1 = not decided yet. Deciding is pure computation (the CPU model libgcc
 * read at start-up), so two threads racing here store the same value. */
static atomic_int b3_impl_cur = -1;

static int b3_impl_best(void)
{
#ifdef B3_HAVE_X86
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2"))
		return B3_AVX512;
	if (__builtin_cpu_supports("avx2"))
		return B3_AVX2;
	return B3_SSE2;
#else
	return B3_PORTABLE;
#endif
}

static int b3_impl(void)
{
	int i = atomic_load_explicit(&b3_impl_cur, memory_order_relaxed);

	if (i < 0) {
		i = b3_impl_best();
		atomic_store_explicit(&b3_impl_cur, i, memory_order_relaxed);
	}
	return i;
}

const char *mck_blake3_impl(void)
{
	return b3_impl_names[b3_impl()];
}

int mck_blake3_set_impl(const char *name)
{
	int want = -1;

	if (!name) {
		atomic_store_explicit(&b3_impl_cur, b3_impl_best(), memory_order_relaxed);
		return 0;
	}
	for (int i = 0; i < B3_NIMPL; i++)
		if (!strcmp(name, b3_impl_names[i]))
			want = i;
	if (want < 0)
		return -EINVAL;
	if (want > b3_impl_best())
		return -ENOTSUP;
	atomic_store_explicit(&b3_impl_cur, want, memory_order_relaxed);
	return 0;
}

/* n independent inputs of nblocks blocks each, through the widest lanes the
 * current implementation allows, narrower ones for the remainder. */
static void b3_many(const uint8_t *const *in, const uint64_t *ctr, size_t n, size_t nblocks,
		    uint32_t flags, uint32_t start, uint32_t end, uint8_t *out)
{
	size_t i = 0;
	int impl = b3_impl();

#ifdef B3_HAVE_X86
	if (impl >= B3_AVX512)
		for (; i + 16 <= n; i += 16)
			b3_lanes_16(in + i, ctr + i, nblocks, flags, start, end, out + 32 * i);
	if (impl >= B3_AVX2)
		for (; i + 8 <= n; i += 8)
			b3_lanes_8(in + i, ctr + i, nblocks, flags, start, end, out + 32 * i);
	if (impl >= B3_SSE2)
		for (; i + 4 <= n; i += 4)
			b3_lanes_4(in + i, ctr + i, nblocks, flags, start, end, out + 32 * i);
#else
	(void)impl;
#endif
	for (; i < n; i++)
		b3_lanes_1(in + i, ctr + i, nblocks, flags, start, end, out + 32 * i);
}

/* cv[i] = parent(cv[2i], cv[2i+1]) for i < n, in place (each batch of lanes
 * reads all its children before it writes). */
static void b3_parents(uint8_t *cv, size_t n, uint32_t flags, uint8_t *out)
{
	static const uint64_t zero[B3_BATCH];
	const uint8_t *in[B3_BATCH];

	for (size_t i = 0; i < n; i++)
		in[i] = cv + 64 * i;
	b3_many(in, zero, n, 1, B3_PARENT | flags, 0, 0, out);
}

/* ---- streaming --------------------------------------------------------- */

void mck_blake3_init(struct mck_blake3 *h)
{
	memcpy(h->cv, B3_IV, sizeof(h->cv));
	h->chunk = 0;
	h->buf_len = 0;
	h->blocks = 0;
	h->stack_len = 0;
}

/* Push the CV of a complete subtree; done = how many subtrees of its size
 * the input holds up to and including it (for a chunk: the chunk count).
 * Since a CV is only pushed when more input follows, a merge here is never
 * the root. */
static void b3_push(struct mck_blake3 *h, const uint8_t cv[32], uint64_t done)
{
	memcpy(h->stack[h->stack_len++], cv, 32);
	/* every trailing zero bit of the chunk count closes one complete subtree */
	for (; !(done & 1); done >>= 1) {
		h->stack_len--;
		b3_parent(h->stack[h->stack_len - 1], h->stack[h->stack_len], 0,
			  h->stack[h->stack_len - 1]);
	}
}

/* Close the chunk being absorbed if it is complete: update keeps a complete
 * chunk open until more input comes, since the last chunk of all is the one
 * final() compresses (as the root, when it is the only one). */
static void b3_close_full_chunk(struct mck_blake3 *h)
{
	uint32_t w[8];
	uint8_t cv[32];

	if (h->blocks * B3_BLOCK + h->buf_len != B3_CHUNK)
		return;
	b3_compress(h->cv, h->buf, h->chunk, B3_BLOCK, B3_CHUNK_END, w);
	b3_words_to_bytes(w, cv);
	b3_push(h, cv, ++h->chunk);
	memcpy(h->cv, B3_IV, sizeof(h->cv));
	h->blocks = 0;
	h->buf_len = 0;
}

void mck_blake3_update(struct mck_blake3 *h, const void *data, size_t len)
{
	const uint8_t *p = data;

	while (len) {
		b3_close_full_chunk(h);
		if (!h->blocks && !h->buf_len && len > B3_CHUNK) {
			/* whole chunks with more input after them: hash them
			 * side by side and push their CVs */
			const uint8_t *in[B3_BATCH];
			uint64_t ctr[B3_BATCH];
			uint8_t cvs[B3_BATCH * 32];
			size_t k = (len - 1) / B3_CHUNK;

			if (k > B3_BATCH)
				k = B3_BATCH;
			for (size_t i = 0; i < k; i++) {
				in[i] = p + B3_CHUNK * i;
				ctr[i] = h->chunk + i;
			}
			b3_many(in, ctr, k, B3_CHUNK / B3_BLOCK, 0, B3_CHUNK_START, B3_CHUNK_END, cvs);
			if (k == B3_BATCH && h->chunk % B3_BATCH == 0) {
				/* an aligned full batch is a complete subtree: its
				 * parents go through the lanes too, and it enters
				 * the stack as one entry (no smaller one is there) */
				for (size_t c = B3_BATCH / 2; c >= 1; c /= 2)
					b3_parents(cvs, c, 0, cvs);
				h->chunk += B3_BATCH;
				b3_push(h, cvs, h->chunk / B3_BATCH);
			} else {
				for (size_t i = 0; i < k; i++)
					b3_push(h, cvs + 32 * i, ++h->chunk);
			}
			p += B3_CHUNK * k;
			len -= B3_CHUNK * k;
			continue;
		}
		if (h->buf_len == B3_BLOCK) {
			b3_compress(h->cv, h->buf, h->chunk, B3_BLOCK,
				    h->blocks ? 0 : B3_CHUNK_START, h->cv);
			h->blocks++;
			h->buf_len = 0;
		}
		size_t take = B3_BLOCK - h->buf_len;

		if (take > len)
			take = len;
		memcpy(h->buf + h->buf_len, p, take);
		h->buf_len += (uint32_t)take;
		p += take;
		len -= take;
	}
}

void mck_blake3_final(const struct mck_blake3 *h, uint8_t out[MCK_BLAKE3_LEN])
{
	uint8_t block[B3_BLOCK] = {0}, cv[32];
	uint32_t flags = B3_CHUNK_END | (h->blocks ? 0 : B3_CHUNK_START);
	uint32_t w[8];
	uint32_t sp = h->stack_len;

	memcpy(block, h->buf, h->buf_len);
	b3_compress(h->cv, block, h->chunk, h->buf_len, flags | (sp ? 0 : B3_ROOT), w);
	b3_words_to_bytes(w, cv);
	/* the last chunk joins the pending subtrees right to left */
	while (sp) {
		sp--;
		b3_parent(h->stack[sp], cv, sp ? 0 : B3_ROOT, cv);
	}
	memcpy(out, cv, MCK_BLAKE3_LEN);
}

/* ---- subtrees of one input, hashed apart -------------------------------------
 * A long input (a pack file) can be hashed by several threads: its aligned
 * subtrees of MCK_BLAKE3_SUBTREE_CHUNKS chunks are independent, and a
 * streaming hasher standing at a subtree boundary takes their CVs in order
 * as if it had absorbed their bytes. */

void mck_blake3_subtree(const uint8_t *const chunks[MCK_BLAKE3_SUBTREE_CHUNKS], uint64_t first_chunk,
			uint8_t cv[MCK_BLAKE3_LEN])
{
	uint64_t ctr[B3_BATCH];
	uint8_t cvs[B3_BATCH * 32];

	_Static_assert(MCK_BLAKE3_SUBTREE_CHUNKS == B3_BATCH, "one batch of lanes per subtree");
	for (size_t i = 0; i < B3_BATCH; i++)
		ctr[i] = first_chunk + i;
	b3_many(chunks, ctr, B3_BATCH, B3_CHUNK / B3_BLOCK, 0, B3_CHUNK_START, B3_CHUNK_END, cvs);
	for (size_t c = B3_BATCH / 2; c >= 1; c /= 2)
		b3_parents(cvs, c, 0, cvs);
	memcpy(cv, cvs, 32);
}

int mck_blake3_push_subtrees(struct mck_blake3 *h, const uint8_t *cvs, size_t n)
{
	b3_close_full_chunk(h);
	if (h->blocks || h->buf_len || h->chunk % B3_BATCH)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		h->chunk += B3_BATCH;
		b3_push(h, cvs + 32 * i, h->chunk / B3_BATCH);
	}
	return 0;
}

/* ---- pages ---------------------------------------------------------------- */

static inline const uint8_t *b3_page(const uint8_t *base, size_t ps, const uint64_t *idx, size_t i)
{
	return base + (idx ? idx[i] : i) * ps;
}

/* One page of 2^k > B3_BATCH chunks: batches of B3_BATCH chunks reduced to
 * one CV each, those merged as a streaming hasher merges chunk CVs. */
static void b3_big_page(const uint8_t *p, size_t ps, uint8_t out[32])
{
	const uint8_t *in[B3_BATCH];
	uint64_t ctr[B3_BATCH];
	uint8_t cvs[B3_BATCH * 32];
	uint8_t stack[MCK_BLAKE3_STACK][32];
	size_t ngroups = ps / B3_CHUNK / B3_BATCH, sp = 0;

	for (size_t g = 0; g < ngroups; g++) {
		for (size_t i = 0; i < B3_BATCH; i++) {
			in[i] = p + (g * B3_BATCH + i) * B3_CHUNK;
			ctr[i] = g * B3_BATCH + i;
		}
		b3_many(in, ctr, B3_BATCH, B3_CHUNK / B3_BLOCK, 0, B3_CHUNK_START, B3_CHUNK_END, cvs);
		for (size_t n = B3_BATCH / 2; n >= 1; n /= 2)
			b3_parents(cvs, n, 0, cvs);
		memcpy(stack[sp++], cvs, 32);
		for (size_t done = g + 1; !(done & 1); done >>= 1) {
			sp--;
			b3_parent(stack[sp - 1], stack[sp], sp == 1 && g + 1 == ngroups ? B3_ROOT : 0,
				  stack[sp - 1]);
		}
	}
	memcpy(out, stack[0], 32);
}

static void b3_pages(const uint8_t *base, size_t ps, const uint64_t *idx, size_t n, uint8_t *out)
{
	const uint8_t *in[B3_BATCH];
	uint64_t ctr[B3_BATCH];
	uint8_t cvs[B3_BATCH * 32];

	if (ps < 512 || (ps & (ps - 1))) {
		/* not a size the store makes; correct, not fast */
		for (size_t i = 0; i < n; i++) {
			struct mck_blake3 h;

			mck_blake3_init(&h);
			mck_blake3_update(&h, b3_page(base, ps, idx, i), ps);
			mck_blake3_final(&h, out + 32 * i);
		}
		return;
	}
	if (ps <= B3_CHUNK) {
		/* each page is one chunk, and the root */
		memset(ctr, 0, sizeof(ctr));
		for (size_t i = 0; i < n; i += B3_BATCH) {
			size_t k = n - i < B3_BATCH ? n - i : B3_BATCH;

			for (size_t j = 0; j < k; j++)
				in[j] = b3_page(base, ps, idx, i + j);
			b3_many(in, ctr, k, ps / B3_BLOCK, 0, B3_CHUNK_START,
				B3_CHUNK_END | B3_ROOT, out + 32 * i);
		}
		return;
	}
	if (ps > (size_t)B3_CHUNK * B3_BATCH) {
		for (size_t i = 0; i < n; i++)
			b3_big_page(b3_page(base, ps, idx, i), ps, out + 32 * i);
		return;
	}
	/* several whole pages per batch: all their chunks side by side, then
	 * each tree level; the last level is one ROOT parent per page */
	size_t cpp = ps / B3_CHUNK, per = B3_BATCH / cpp;

	for (size_t i = 0; i < n; i += per) {
		size_t k = n - i < per ? n - i : per, c = 0;

		for (size_t j = 0; j < k; j++) {
			const uint8_t *p = b3_page(base, ps, idx, i + j);

			for (size_t q = 0; q < cpp; q++, c++) {
				in[c] = p + q * B3_CHUNK;
				ctr[c] = q;
			}
		}
		b3_many(in, ctr, c, B3_CHUNK / B3_BLOCK, 0, B3_CHUNK_START, B3_CHUNK_END, cvs);
		for (c /= 2; c > k; c /= 2)
			b3_parents(cvs, c, 0, cvs);
		b3_parents(cvs, k, B3_ROOT, out + 32 * i);
	}
}

void mck_blake3_pages(const void *base, size_t page_size, size_t n, uint8_t *out)
{
	b3_pages(base, page_size, NULL, n, out);
}

void mck_blake3_pages_at(const void *base, size_t page_size, const uint64_t *idx, size_t n,
			 uint8_t *out)
{
	b3_pages(base, page_size, idx, n, out);
}
