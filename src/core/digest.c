/* Hex, random ids and the shared SHA-256 (digest.h). Depends on libc and
 * libcrypto only. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/random.h>
#include <time.h>

#include "semgate/core/digest.h"

/* Random bytes drawn per getrandom call: 16 ids of 16 bytes. */
#define POOL_BYTES 256
#define RANDOM_MAX 64

void sg_hex(char *out, const unsigned char *raw, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[raw[i] >> 4];
		out[2 * i + 1] = digits[raw[i] & 15];
	}
	out[2 * n] = '\0';
}

/* Fill raw[0..n) when getrandom fails: distinct per call in this process
 * (a counter) and across processes (the clock and the pool's address). */
static void fallback_bytes(unsigned char *raw, size_t n)
{
	static _Atomic uint64_t seq;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
		     ((uint64_t)(uintptr_t)raw << 7);
	uint64_t c = atomic_fetch_add(&seq, 1) + 1;
	for (size_t i = 0; i < n; i++) {
		uint64_t w = i < 8 ? x : c;
		raw[i] = (unsigned char)(w >> ((i % 8) * 8)) ^ (unsigned char)(i * 131);
	}
}

void sg_random_hex(char *out, size_t n)
{
	static _Thread_local unsigned char pool[POOL_BYTES];
	static _Thread_local size_t left;
	if (n > RANDOM_MAX)
		n = RANDOM_MAX;
	if (left < n)
		left = getrandom(pool, sizeof(pool), 0) == (ssize_t)sizeof(pool) ? sizeof(pool) : 0;
	if (left >= n) {
		sg_hex(out, pool + sizeof(pool) - left, n);
		left -= n;
		return;
	}
	unsigned char raw[RANDOM_MAX];
	fallback_bytes(raw, n);
	sg_hex(out, raw, n);
}

bool sg_digest_field(EVP_MD_CTX *ctx, char tag, const void *data, size_t len)
{
	unsigned char hdr[9];
	hdr[0] = (unsigned char)tag;
	for (int i = 0; i < 8; i++)
		hdr[1 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
	return EVP_DigestUpdate(ctx, hdr, sizeof(hdr)) == 1 &&
	       (!len || EVP_DigestUpdate(ctx, data, len) == 1);
}

bool sg_digest_hex(EVP_MD_CTX *ctx, char out[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	if (EVP_DigestFinal_ex(ctx, md, &n) != 1 || n != 32)
		return false;
	sg_hex(out, md, n);
	return true;
}

static EVP_MD *g_sha256;
static pthread_once_t g_sha256_once = PTHREAD_ONCE_INIT;

static void sha256_init(void)
{
	g_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

const EVP_MD *sg_sha256(void)
{
	pthread_once(&g_sha256_once, sha256_init);
	/* (a failed fetch leaves the implicit lookup, which then fails alike) */
	return g_sha256 ? g_sha256 : EVP_sha256();
}
