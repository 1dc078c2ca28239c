/* The cluster key layout (see semgate/store/layout.h): CRC16 key slots,
 * hash tags, and the slot buckets. Pure; the bucket tag table is computed
 * once, deterministically, so every gateway process agrees on it. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/store/layout.h"

unsigned store_crc16(const char *buf, size_t len)
{
	uint16_t crc = 0;
	for (size_t i = 0; i < len; i++) {
		crc ^= (uint16_t)((unsigned char)buf[i] << 8);
		for (int b = 0; b < 8; b++)
			crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
	}
	return crc;
}

void store_hash_tag(const char *key, size_t len, const char **tag, size_t *tag_len)
{
	*tag = key;
	*tag_len = len;
	const char *open = memchr(key, '{', len);
	if (!open)
		return;
	size_t rest = len - (size_t)(open - key) - 1;
	const char *close = memchr(open + 1, '}', rest);
	if (!close || close == open + 1)
		return;
	*tag = open + 1;
	*tag_len = (size_t)(close - open - 1);
}

unsigned store_key_slot(const char *key, size_t len)
{
	const char *t;
	size_t n;
	store_hash_tag(key, len, &t, &n);
	return store_crc16(t, n) & (STORE_SLOTS - 1);
}

unsigned store_bucket_of(const char *tenant, const char *object_id)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)tenant; *p; p++)
		h = (h ^ *p) * 16777619u;
	h = (h ^ 0) * 16777619u; /* the separator: ("ab","c") != ("a","bc") */
	for (const unsigned char *p = (const unsigned char *)object_id; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % STORE_BUCKETS;
}

/* ---- the bucket tags ---- */

#define SLOTS_PER_BUCKET (STORE_SLOTS / STORE_BUCKETS)
/* Candidate tags are the decimal numbers below this bound. */
#define TAG_CANDIDATES 65536u

static char g_tags[STORE_BUCKETS][STORE_TAG_MAX + 1];
static pthread_once_t g_tags_once = PTHREAD_ONCE_INIT;

/* For each bucket, the decimal number whose slot is nearest the middle of
 * the bucket's slot range (the smallest such number on a tie). */
static void tags_init(void)
{
	unsigned best[STORE_BUCKETS];
	unsigned dist[STORE_BUCKETS];
	for (unsigned b = 0; b < STORE_BUCKETS; b++)
		dist[b] = ~0u;
	for (unsigned n = 0; n < TAG_CANDIDATES; n++) {
		char t[16];
		int len = snprintf(t, sizeof(t), "%u", n);
		unsigned slot = store_crc16(t, (size_t)len) & (STORE_SLOTS - 1);
		unsigned b = slot / SLOTS_PER_BUCKET;
		unsigned mid = b * SLOTS_PER_BUCKET + SLOTS_PER_BUCKET / 2;
		unsigned d = slot > mid ? slot - mid : mid - slot;
		if (d < dist[b]) {
			dist[b] = d;
			best[b] = n;
		}
	}
	for (unsigned b = 0; b < STORE_BUCKETS; b++)
		snprintf(g_tags[b], sizeof(g_tags[b]), "%u", best[b]);
}

const char *store_bucket_tag(unsigned bucket)
{
	pthread_once(&g_tags_once, tags_init);
	return g_tags[bucket % STORE_BUCKETS];
}

void store_entry_id_fit(const char *tenant, const char *sha, char *id)
{
	size_t len = strlen(id);
	if (!sha || !*sha || len < 8)
		return;
	unsigned want = store_bucket_of(tenant, sha);
	/* the last four hex digits take 65536 values: far more than enough to
	 * meet each of the STORE_BUCKETS buckets */
	for (unsigned v = 0; v < 65536u; v++) {
		if (store_bucket_of(tenant, id) == want)
			return;
		snprintf(id + len - 4, 5, "%04x", (unsigned)(strtoul(id + len - 4, NULL, 16) + 1) & 0xffff);
	}
}
