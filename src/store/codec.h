/* Pure decoding of what the store reads back from Redis: the exact-cache
 * value "<id>\n<answer>", entry key names, and an entry's vector fields as
 * HMGET returns them. No I/O and no hiredis, so the fuzz tests can feed it
 * arbitrary bytes. Private to the store module and its tests.
 * Anything not in the shape the store writes is refused, never trusted. */
#ifndef SEMGATE_STORE_CODEC_H
#define SEMGATE_STORE_CODEC_H

#include <stdbool.h>
#include <stddef.h>

/* Largest vector dimension accepted from Redis (same as the index's). */
#define STORE_DIM_MAX 8192
/* Longest entry id (the store writes 32 hex characters). */
#define STORE_ID_MAX 64

/* True when id[0..len) is 1..STORE_ID_MAX characters of [A-Za-z0-9._:-]. */
bool store_codec_id_ok(const char *id, size_t len);

/* Split an exact-cache value val[0..len) ("<id>\n<answer>"). On success
 * id_out gets the NUL-terminated id and *answer and *answer_len the rest of
 * val (borrowed, may be empty). False when there is no '\n' or the id is
 * not a valid id: the caller treats it as a miss. */
bool store_codec_exact(const char *val, size_t len, char id_out[STORE_ID_MAX + 1],
		       const char **answer, size_t *answer_len);

/* Split an entry key "{prefix}e:{<tag>}:{tenant}:{id}" (key[0..len), need
 * not be NUL-terminated). tenant is everything after the tag up to the next
 * ':' (non-empty, shorter than tcap); id the rest (a valid id, shorter than
 * icap). Both are written NUL-terminated. The tag must be the bucket tag of
 * (tenant, id), the only key store_key() names for that entry. False for
 * any other key. */
bool store_codec_entry_key(const char *prefix, const char *key, size_t len,
			   char *tenant, size_t tcap, char *id, size_t icap);

/* Decode an entry's "dim" and "vector" fields: dim must be a decimal
 * integer 1..STORE_DIM_MAX with nothing else, and the blob exactly dim
 * little-endian float32s. On success *out receives a malloc'd, aligned copy
 * (caller frees) and *dim the dimension. False (nothing allocated) for a
 * missing, malformed or wrong-length field, or when out of memory. */
bool store_codec_vector(const char *dim_str, size_t dim_len, const char *blob,
			size_t blob_len, float **out, int *dim);

#endif
