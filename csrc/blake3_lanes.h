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

		/* transpose: word w of every lane's block into m[w] */
		for (int l = 0; l < LANES; l++) {
			const uint8_t *p = in[l] + 64 * b;

			for (int w = 0; w < 16; w++)
				m[w][l] = b3_load32(p + 4 * w);
		}
		for (int w = 0; w < 8; w++)
			v[w] = h[w];
		for (int w = 0; w < 4; w++)
			v[8 + w] = (LV){0} + B3_IV[w];
		v[12] = ctr_lo;
		v[13] = ctr_hi;
		v[14] = (LV){0} + 64u;
		v[15] = (LV){0} + f;
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
			h[w] = v[w] ^ v[w + 8];
	}
	for (int l = 0; l < LANES; l++)
		for (int w = 0; w < 8; w++)
			b3_store32(out + 32 * l + 4 * w, h[w][l]);
}

#undef LV
#undef LV_CAT
#undef LV_CAT_
