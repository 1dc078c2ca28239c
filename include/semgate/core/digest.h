/* Hex, random ids and SHA-256: what every module that names things or
 * keys them by content shares. */
#ifndef SEMGATE_DIGEST_H
#define SEMGATE_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <openssl/evp.h>

/* Write raw[0..n) as 2n lowercase hex digits and a NUL to out. */
void sg_hex(char *out, const unsigned char *raw, size_t n);

/* Write n (at most 64) unpredictable bytes as hex, as sg_hex does. The
 * bytes come from getrandom, drawn a few ids at a time into a per-thread
 * pool whose bytes are each used once; should getrandom ever fail, a
 * clock-and-counter mix keeps the ids distinct (not unpredictable). */
void sg_random_hex(char *out, size_t n);

/* Feed one field to a digest as tag byte, 8-byte big-endian length,
 * bytes: a prefix-free encoding, so no two different field sequences
 * collide. False when libcrypto fails. */
bool sg_digest_field(EVP_MD_CTX *ctx, char tag, const void *data, size_t len);

/* Finish a SHA-256 digest as 64 hex digits and a NUL. */
bool sg_digest_hex(EVP_MD_CTX *ctx, char out[65]);

/* SHA-256, looked up once per process: EVP_sha256() in OpenSSL 3 looks
 * the algorithm up again at every digest init, a few per cent of an
 * exact hit. Never NULL once libcrypto is usable. */
const EVP_MD *sg_sha256(void);

#endif
