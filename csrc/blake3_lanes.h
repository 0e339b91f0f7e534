/* blake3_lanes.h: the BLAKE3 compression of LANES independent inputs at once,
 * one input per lane of a GCC vector of LANES 32-bit words. blake3.c includes
 * this file once per vector width, with these defined:
 *   LANES     lanes per vector (4, 8)
 *   LANES_FN  the function's name
 *   LANES_ATTR attributes of the function (a target("...") for wider ISAs)
 * Nothing else in the file may have external linkage. */

#define LV_CAT_(a, b) a##b
#define LV_CAT(a, b) LV_CAT_(a, b)
#define LV LV_CAT(LANES_FN, _vec)

typedef uint32_t LV __attribute__((vector_size(LANES * 4)));
typedef uint16_t LV_CAT(LV, 16) __attribute__((vector_size(LANES * 4)));
typedef uint8_t LV_CAT(LV, 8) __attribute__((vector_size(LANES * 4)));

/* Rotations by 16 and 8 are whole-byte moves: one shuffle instead of two
 * shifts and an or (byte shuffles need SSSE3, so the 4-lane SSE2 build
 * shifts for 8). */
#if LANES == 8
#define LV_ROT16(x) ((LV)__builtin_shuffle((LV_CAT(LV, 16))(x), \
	(LV_CAT(LV, 16)){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}))
#define LV_ROT8(x) ((LV)__builtin_shuffle((LV_CAT(LV, 8))(x), \
	(LV_CAT(LV, 8)){1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, \
			17, 18, 19, 16, 21, 22, 23, 20, 25, 26, 27, 24, 29, 30, 31, 28}))
#elif LANES == 4
#define LV_ROT16(x) ((LV)__builtin_shuffle((LV_CAT(LV, 16))(x), \
	(LV_CAT(LV, 16)){1, 0, 3, 2, 5, 4, 7, 6}))
#define LV_ROT8(x) B3_ROTR(x, 8)
#else
/* AVX-512 rotates a word in one instruction (vprord) */
#define LV_ROT16(x) B3_ROTR(x, 16)
#define LV_ROT8(x) B3_ROTR(x, 8)
#endif

#define LV_G(a, b, c, d, mx, my)                                               \
	do {                                                                   \
		a = a + b + (mx);                                              \
		d = LV_ROT16(d ^ a);                                           \
		c = c + d;                                                     \
		b = B3_ROTR(b ^ c, 12);                                        \
		a = a + b + (my);                                              \
		d = LV_ROT8(d ^ a);                                            \
		c = c + d;                                                     \
		b = B3_ROTR(b ^ c, 7);                                         \
	} while (0)

/* x[i] holds lane i's LANES consecutive words: afterwards x[w] holds word w
 * of every lane (the transpose is its own inverse). Lane order is x86's:
 * this file is only built there, little endian. */
static inline __attribute__((always_inline)) void LV_CAT(LV, _transpose)(LV *x)
{
	typedef int32_t M __attribute__((vector_size(LANES * 4)));
#if LANES == 16
	/* stage b swaps bit b of the row and the column index: rows i and
	 * i + b exchange the columns whose bit b differs from theirs */
	static const M lo[4] = {
		{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
		{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
		{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
		{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
	};
	static const M hi[4] = {
		{1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31},
		{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
		{4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
		{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
	};

#pragma GCC unroll 4
	for (int k = 0; k < 4; k++) {
		int b = 1 << k;

#pragma GCC unroll 16
		for (int i = 0; i < 16; i++) {
			if (i & b)
				continue;
			LV a = x[i], c = x[i + b];

			x[i] = __builtin_shuffle(a, c, lo[k]);
			x[i + b] = __builtin_shuffle(a, c, hi[k]);
		}
	}
#elif LANES == 8
	LV t[8], u[8];

	for (int i = 0; i < 8; i += 2) {
		t[i] = __builtin_shuffle(x[i], x[i + 1], (M){0, 8, 1, 9, 4, 12, 5, 13});
		t[i + 1] = __builtin_shuffle(x[i], x[i + 1], (M){2, 10, 3, 11, 6, 14, 7, 15});
	}
	for (int i = 0; i < 8; i += 4) {
		u[i] = __builtin_shuffle(t[i], t[i + 2], (M){0, 1, 8, 9, 4, 5, 12, 13});
		u[i + 1] = __builtin_shuffle(t[i], t[i + 2], (M){2, 3, 10, 11, 6, 7, 14, 15});
		u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], (M){0, 1, 8, 9, 4, 5, 12, 13});
		u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], (M){2, 3, 10, 11, 6, 7, 14, 15});
	}
	for (int i = 0; i < 4; i++) {
		x[i] = __builtin_shuffle(u[i], u[i + 4], (M){0, 1, 2, 3, 8, 9, 10, 11});
		x[i + 4] = __builtin_shuffle(u[i], u[i + 4], (M){4, 5, 6, 7, 12, 13, 14, 15});
	}
#else
	LV t[4];

	t[0] = __builtin_shuffle(x[0], x[1], (M){0, 4, 1, 5});
	t[1] = __builtin_shuffle(x[0], x[1], (M){2, 6, 3, 7});
	t[2] = __builtin_shuffle(x[2], x[3], (M){0, 4, 1, 5});
	t[3] = __builtin_shuffle(x[2], x[3], (M){2, 6, 3, 7});
	x[0] = __builtin_shuffle(t[0], t[2], (M){0, 1, 4, 5});
	x[1] = __builtin_shuffle(t[0], t[2], (M){2, 3, 6, 7});
	x[2] = __builtin_shuffle(t[1], t[3], (M){0, 1, 4, 5});
	x[3] = __builtin_shuffle(t[1], t[3], (M){2, 3, 6, 7});
#endif
}

/* For each lane i < LANES: compress the nblocks 64-byte blocks at in[i] as one
 * chain starting from the IV, block counter ctr[i]; the first block adds the
 * flag start, the last end, every block flags. The resulting chaining value
 * goes to out + 32*i (little endian). A chunk is 16 blocks with CHUNK_START
 * and CHUNK_END; a parent is 1 block (two child CVs) with PARENT. */
LANES_ATTR static void LANES_FN(const uint8_t *const *in, const uint64_t *ctr, size_t nblocks,
				uint32_t flags, uint32_t start, uint32_t end, uint8_t *out)
{
	LV h[8], m[16], v[16], ctr_lo, ctr_hi;

	for (int w = 0; w < 8; w++)
		h[w] = (LV){0} + B3_IV[w];
	for (int l = 0; l < LANES; l++) {
		ctr_lo[l] = (uint32_t)ctr[l];
		ctr_hi[l] = (uint32_t)(ctr[l] >> 32);
	}
	for (size_t b = 0; b < nblocks; b++) {
		uint32_t f = flags | (b == 0 ? start : 0) | (b + 1 == nblocks ? end : 0);

		/* LANES words of each lane's block at a time, transposed so
		 * that m[w] holds word w of every lane */
		for (int g = 0; g < 16; g += LANES) {
			for (int l = 0; l < LANES; l++)
				memcpy(&m[g + l], in[l] + 64 * b + 4 * g, sizeof(LV));
			LV_CAT(LV, _transpose)(m + g);
		}
		for (int w = 0; w < 8; w++)
			v[w] = h[w];
		for (int w = 0; w < 4; w++)
			v[8 + w] = (LV){0} + B3_IV[w];
		v[12] = ctr_lo;
		v[13] = ctr_hi;
		v[14] = (LV){0} + 64u;
		v[15] = (LV){0} + f;
#pragma GCC unroll 7
		for (int r = 0; r < 7; r++) {
			const uint8_t *s = B3_SCHEDULE[r];

			LV_G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
			LV_G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
			LV_G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
			LV_G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
			LV_G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
			LV_G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
			LV_G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
			LV_G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
		}
		for (int w = 0; w < 8; w++)
			h[w] = v[w] ^ v[w + 8];
	}
	/* back to one CV per lane: words g..g+LANES-1 of every lane */
#if LANES == 16
	LV t[16] = {h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]};

	LV_CAT(LV, _transpose)(t);
	for (int l = 0; l < 16; l++)
		memcpy(out + 32 * l, &t[l], 32);
#else
	for (int g = 0; g < 8; g += LANES) {
		LV_CAT(LV, _transpose)(h + g);
		for (int l = 0; l < LANES; l++)
			memcpy(out + 32 * l + 4 * g, &h[g + l], sizeof(LV));
	}
#endif
}

#undef LV_G
#undef LV_ROT8
#undef LV_ROT16
#undef LV
#undef LV_CAT
#undef LV_CAT_
