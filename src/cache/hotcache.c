/* Hot exact cache (hotcache.h): a direct-mapped table of slots, each
 * guarded by one of a few striped locks. Every slot carries an epoch that
 * each invalidation of a key hashing to it advances, and the table a
 * global epoch that a flush advances; a fill must present the epochs it
 * saw before its Redis read, so an invalidation that overtook the read
 * (it arrives on another connection) always wins. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/clock.h"
#include "semgate/cache/hotcache.h"

#define NLOCKS 64

struct slot {
	char *key;          /* NULL: empty */
	char id[65];
	char *answer;
	size_t len;
	struct hot_meta meta;
	double expires;     /* sg_now_ms() clock */
	uint32_t epoch;
};

struct hotcache {
	struct slot *slots;
	size_t nslots;
	size_t max_answer;
	pthread_mutex_t locks[NLOCKS];
	atomic_bool enabled;
	atomic_uint_fast64_t epoch;
	atomic_ullong hits, fills, invalidations;
	atomic_size_t keys, bytes;
};

static uint64_t hash_key(const char *s, size_t len)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
	return h;
}

static size_t slot_of(const struct hotcache *hc, const char *key, size_t len)
{
	return (size_t)(hash_key(key, len) % hc->nslots);
}

static pthread_mutex_t *lock_of(struct hotcache *hc, size_t i)
{
	return &hc->locks[i % NLOCKS];
}

/* Under the slot's lock. */
static void slot_free(struct hotcache *hc, struct slot *s)
{
	if (!s->key)
		return;
	atomic_fetch_sub(&hc->keys, 1);
	atomic_fetch_sub(&hc->bytes, s->len);
	free(s->key);
	free(s->answer);
	s->key = NULL;
	s->answer = NULL;
	s->len = 0;
}

struct hotcache *hot_create(size_t slots, size_t max_answer)
{
	if (slots == 0)
		return NULL;
	struct hotcache *hc = calloc(1, sizeof(*hc));
	if (!hc)
		return NULL;
	hc->slots = calloc(slots, sizeof(*hc->slots));
	if (!hc->slots) {
		free(hc);
		return NULL;
	}
	hc->nslots = slots;
	hc->max_answer = max_answer;
	for (size_t i = 0; i < NLOCKS; i++)
		pthread_mutex_init(&hc->locks[i], NULL);
	atomic_init(&hc->enabled, false);
	atomic_init(&hc->epoch, 1);
	return hc;
}

void hot_destroy(struct hotcache *hc)
{
	if (!hc)
		return;
	for (size_t i = 0; i < hc->nslots; i++)
		slot_free(hc, &hc->slots[i]);
	for (size_t i = 0; i < NLOCKS; i++)
		pthread_mutex_destroy(&hc->locks[i]);
	free(hc->slots);
	free(hc);
}

void hot_clear(struct hotcache *hc)
{
	if (!hc)
		return;
	/* first the epoch: a fill racing with the sweep is refused */
	atomic_fetch_add(&hc->epoch, 1);
	for (size_t i = 0; i < hc->nslots; i++) {
		pthread_mutex_lock(lock_of(hc, i));
		slot_free(hc, &hc->slots[i]);
		pthread_mutex_unlock(lock_of(hc, i));
	}
}

void hot_set_enabled(struct hotcache *hc, bool on)
{
	if (!hc)
		return;
	if (!on)
		atomic_store(&hc->enabled, false);
	hot_clear(hc);
	if (on)
		atomic_store(&hc->enabled, true);
}

bool hot_enabled(struct hotcache *hc)
{
	return hc && atomic_load(&hc->enabled);
}

uint64_t hot_token(struct hotcache *hc, const char *key)
{
	if (!hc)
		return 0;
	size_t i = slot_of(hc, key, strlen(key));
	uint64_t global = atomic_load(&hc->epoch);
	pthread_mutex_lock(lock_of(hc, i));
	uint32_t local = hc->slots[i].epoch;
	pthread_mutex_unlock(lock_of(hc, i));
	return (global & 0xffffffffu) << 32 | local;
}

void hot_put(struct hotcache *hc, const char *key, uint64_t token, const char *id,
	     const char *answer, size_t len, long long ttl_ms, const struct hot_meta *meta)
{
	if (!hc || !atomic_load(&hc->enabled) || len > hc->max_answer || ttl_ms <= 0)
		return;
	char *k = strdup(key);
	char *a = malloc(len + 1);
	if (!k || !a) {
		free(k);
		free(a);
		return;
	}
	memcpy(a, answer, len);
	a[len] = '\0';
	size_t i = slot_of(hc, key, strlen(key));
	pthread_mutex_lock(lock_of(hc, i));
	struct slot *s = &hc->slots[i];
	bool fresh = atomic_load(&hc->enabled) &&
		     (atomic_load(&hc->epoch) & 0xffffffffu) == (token >> 32) &&
		     s->epoch == (uint32_t)token;
	if (fresh) {
		slot_free(hc, s);
		s->key = k;
		s->answer = a;
		s->len = len;
		s->meta = meta ? *meta : (struct hot_meta){ 0 };
		snprintf(s->id, sizeof(s->id), "%s", id);
		s->expires = sg_now_ms() + (double)ttl_ms;
		atomic_fetch_add(&hc->keys, 1);
		atomic_fetch_add(&hc->bytes, len);
		atomic_fetch_add(&hc->fills, 1);
		k = a = NULL;
	}
	pthread_mutex_unlock(lock_of(hc, i));
	free(k);
	free(a);
}

bool hot_get(struct hotcache *hc, const char *key, char id[65], char **answer,
	     size_t *len, struct hot_meta *meta)
{
	if (!hc || !atomic_load(&hc->enabled))
		return false;
	size_t i = slot_of(hc, key, strlen(key));
	bool found = false;
	pthread_mutex_lock(lock_of(hc, i));
	struct slot *s = &hc->slots[i];
	if (s->key && strcmp(s->key, key) == 0) {
		if (s->expires <= sg_now_ms()) {
			slot_free(hc, s);
		} else if ((*answer = malloc(s->len + 1))) {
			memcpy(*answer, s->answer, s->len + 1);
			*len = s->len;
			*meta = s->meta;
			memcpy(id, s->id, 65);
			found = true;
		}
	}
	pthread_mutex_unlock(lock_of(hc, i));
	if (found)
		atomic_fetch_add(&hc->hits, 1);
	return found;
}

void hot_invalidate(struct hotcache *hc, const char *key, size_t keylen)
{
	if (!hc)
		return;
	size_t i = slot_of(hc, key, keylen);
	pthread_mutex_lock(lock_of(hc, i));
	struct slot *s = &hc->slots[i];
	s->epoch++;
	if (s->key && strlen(s->key) == keylen && memcmp(s->key, key, keylen) == 0)
		slot_free(hc, s);
	pthread_mutex_unlock(lock_of(hc, i));
	atomic_fetch_add(&hc->invalidations, 1);
}

void hot_get_stats(struct hotcache *hc, struct hot_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!hc)
		return;
	out->hits = atomic_load(&hc->hits);
	out->fills = atomic_load(&hc->fills);
	out->invalidations = atomic_load(&hc->invalidations);
	out->keys = atomic_load(&hc->keys);
	out->bytes = atomic_load(&hc->bytes);
}
