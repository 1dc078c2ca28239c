/* The cluster key layout, pure and thread-safe: Redis Cluster's CRC16 key
 * slot (with hash tags), and the fixed set of slot buckets every key of the
 * gateway lives in. A key's bucket decides its hash tag, so keys in the same
 * bucket share a slot (and a Redis Cluster node) and may be written in one
 * MULTI or EVAL. The same layout is used on a single Redis server.
 *
 *   bucket of an object = FNV-1a(tenant '\0' object id) % STORE_BUCKETS
 *   key                 = {prefix}{kind}:{<bucket tag>}:{tenant}[:{rest}]
 *
 * The bucket tags are chosen once (deterministically) so that the slots of
 * the STORE_BUCKETS tags are evenly spaced over 0..16383: bucket b's slot
 * lies in [b * 16384 / STORE_BUCKETS, (b + 1) * 16384 / STORE_BUCKETS), so
 * the buckets spread evenly over the masters whatever their slot ranges. */
#ifndef SEMGATE_STORE_LAYOUT_H
#define SEMGATE_STORE_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>

#define STORE_BUCKETS 64
#define STORE_SLOTS 16384
/* Longest bucket tag, without the braces. */
#define STORE_TAG_MAX 8

/* CRC16-CCITT (XMODEM) as Redis Cluster uses it. */
unsigned store_crc16(const char *buf, size_t len);

/* The hash slot of a key: CRC16 of its hash tag (the bytes between the
 * first '{' and the next '}', when that is not empty) or of the whole key,
 * modulo 16384. */
unsigned store_key_slot(const char *key, size_t len);

/* The bytes that are hashed for key (the hash tag or the whole key). */
void store_hash_tag(const char *key, size_t len, const char **tag, size_t *tag_len);

/* The bucket of an object of a tenant (a conversation id, an entry id, an
 * exact-key sha, or a name such as "h:<unix hour>"): 0..STORE_BUCKETS-1. */
unsigned store_bucket_of(const char *tenant, const char *object_id);

/* The hash tag string of a bucket (no braces), e.g. "1537"; static. */
const char *store_bucket_tag(unsigned bucket);

/* Change the last hex digits of a 32-hex-digit random entry id (in place,
 * NUL-terminated, at least 8 characters) so that its bucket is the bucket
 * of (tenant, sha): an entry and its exact key then share a slot, and every
 * key of the entry can be built from its id alone. Nothing is done when sha
 * is NULL or empty. */
void store_entry_id_fit(const char *tenant, const char *sha, char *id);

#endif
