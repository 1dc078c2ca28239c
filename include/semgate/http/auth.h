/* Gateway API keys and tenants: parsing SEMGATE_API_KEYS ("key:tenant,…")
 * and SEMGATE_API_KEYS_FILE ("key tenant" per line), and looking a
 * presented Bearer token up in constant time. Keys are kept only as
 * SHA-256 digests; no function here ever logs or formats a key (or, in an
 * error, a tenant field, which may be a misplaced key). */
#ifndef SEMGATE_AUTH_H
#define SEMGATE_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/config.h"
#include "semgate/core/err.h"

#define SG_AUTH_KEY_MAX 1024     /* longest key accepted, in bytes */
#define SG_AUTH_TENANT_MAX 64
#define SG_AUTH_FILE_MAX (16u << 20)
/* The tenant auth_lookup returns for an admin key (SEMGATE_ADMIN_KEYS): no
 * real tenant can be named so. */
#define SG_AUTH_ADMIN "*"

/* A set of keys. Read-only after loading; lookups are thread-safe. */
struct auth_keys;

/* An empty set; NULL on out of memory. Free with auth_destroy (accepts
 * NULL). */
struct auth_keys *auth_create(void);
void auth_destroy(struct auth_keys *k);

/* Number of keys held. */
size_t auth_count(const struct auth_keys *k);

/* True when t[0..len) matches [A-Za-z0-9._-]{1,64}. */
bool auth_tenant_valid(const char *t, size_t len);

/* Add the keys of a "key:tenant,key:tenant" list (whitespace around each
 * entry is ignored; the key is everything before the entry's last ':' and
 * may hold any visible ASCII except ','). source names the variable in
 * error messages. SG_ERR_BAD_REQUEST on an empty list entry, a missing
 * ':', an empty or over-long key, a key with spaces or control bytes, an
 * invalid tenant or a key already in the set; the message gives the entry
 * number, never the key. On failure the entries before the bad one stay
 * added: callers discard the set. */
enum sg_err auth_parse_list(struct auth_keys *k, const char *spec, const char *source,
			    struct sg_error *e);

/* Add the keys of a keys file's text[0..len): one "key tenant" per line,
 * separated by spaces or tabs; blank lines and lines whose first
 * non-blank character is '#' are skipped; CRLF is accepted. Errors as
 * auth_parse_list, with the line number. */
enum sg_err auth_parse_text(struct auth_keys *k, const char *text, size_t len,
			    const char *source, struct sg_error *e);

/* Read path (at most SG_AUTH_FILE_MAX bytes) and auth_parse_text it. */
enum sg_err auth_parse_file(struct auth_keys *k, const char *path, const char *source,
			    struct sg_error *e);

/* Add the admin keys of a "key,key" list (SEMGATE_ADMIN_KEYS): each is
 * held with the tenant SG_AUTH_ADMIN. Errors as auth_parse_list. */
enum sg_err auth_parse_admin_list(struct auth_keys *k, const char *spec, const char *source,
				  struct sg_error *e);

/* The distinct tenants of k's (non-admin) keys, sorted, into out[0..max)
 * (borrowed from k); returns how many. */
size_t auth_tenants(const struct auth_keys *k, const char **out, size_t max);

/* From cfg->api_keys, cfg->api_keys_file and cfg->admin_keys (both may be set; their keys
 * are merged and must not repeat). *out gets NULL when neither is set
 * (open mode), else a set the caller destroys. An empty key file is an
 * error (it would silently mean open mode). */
enum sg_err auth_load(const struct sg_config *cfg, struct auth_keys **out,
		      struct sg_error *e);

/* The tenant of token[0..len), or NULL when it is no key of k. Every key
 * is compared (CRYPTO_memcmp over SHA-256 digests, no early exit), so the
 * time taken does not depend on which key matched or how much of one
 * did. The result is borrowed from k. */
const char *auth_lookup(const struct auth_keys *k, const char *token, size_t len);

/* Split an Authorization header value "Bearer <token>" (scheme
 * case-insensitive, surrounding blanks ignored). False when the value is
 * NULL, another scheme, or the token is empty. token points into header. */
bool auth_bearer(const char *header, const char **token, size_t *len);

#endif
