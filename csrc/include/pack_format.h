/* pack_format.h: the store's binary files as C sees them (docs/format.md is
 * the reference; src/memckpt/store/binary.py the Python twin): the one place
 * in C that knows the layouts. Layouts only: which file is read or written
 * how is the reader's (epoch_reader.c), the writer's (epoch_writer.c,
 * pack_pages.c) and the fork child's (capture_fork.c) business.
 *
 * Every field is little-endian; this header is for little-endian hosts (the
 * static assertion below), where a record is read in place. */
#ifndef MEMCKPT_PACK_FORMAT_H
#define MEMCKPT_PACK_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the store's records are little-endian and read in place"
#endif

#define MCK_FORMAT_MAJOR 1
#define MCK_DATA_MINOR 0          /* what index and pack headers say */

/* pack: magic, u16 major, u16 minor, u32 header size, u32 page size,
 * u32 reserved (0), u64 epoch; then the stored page images back to back */
#define MCK_PACK_MAGIC "MCKPPACK"
#define MCK_PACK_HEADER_SIZE 32
/* index: magic, u16 major, u16 minor, u32 header size, u32 record size,
 * u32 page size, u64 epoch, u64 record count, u64 reserved; then the records */
#define MCK_IDX_MAGIC "MCKP-IDX"
#define MCK_IDX_HEADER_SIZE 48
#define MCK_IDX_COUNT_AT 32       /* byte offset of the record count in the index header */
#define MCK_IDX_RECORD_SIZE 56    /* a later minor may append bytes to a record */

/* page flags: at most one is set; unknown bits are refused by the parser */
#define MCK_PAGE_ZERO (1u << 0)   /* all zero, nothing stored */
#define MCK_PAGE_ZSTD (1u << 1)   /* one zstd frame of the page, content size in its header */
#define MCK_PAGE_LZ4 (1u << 2)    /* one lz4 block of the page, no size prefix */
#define MCK_PAGE_COMPRESSED (MCK_PAGE_ZSTD | MCK_PAGE_LZ4)
#define MCK_PAGE_KNOWN (MCK_PAGE_ZERO | MCK_PAGE_COMPRESSED)

/* One index record: where page `page` of the arena is stored in the pack. */
struct mck_idx_record {
	uint64_t page;        /* page number in the arena; strictly increasing in a file */
	uint64_t offset;      /* byte offset of the stored bytes in the pack (>= 32) */
	uint32_t length;      /* stored bytes: page size raw, less compressed, 0 if ZERO */
	uint32_t flags;       /* MCK_PAGE_* */
	uint8_t digest[32];   /* BLAKE3 of the uncompressed page */
};

_Static_assert(sizeof(struct mck_idx_record) == MCK_IDX_RECORD_SIZE, "record layout");
_Static_assert(offsetof(struct mck_idx_record, digest) == 24, "record layout");

#endif /* MEMCKPT_PACK_FORMAT_H */
