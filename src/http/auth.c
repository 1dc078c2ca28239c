/* API keys and tenants: parsing and constant-time lookup. Pure apart from
 * reading the keys file; keys live here only as SHA-256 digests, and no
 * message built here contains a key or a tenant field. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "semgate/http/auth.h"
#include "semgate/core/digest.h"
#include "semgate/core/log.h"

struct auth_entry {
	unsigned char digest[32];
	char tenant[SG_AUTH_TENANT_MAX + 1];
};

struct auth_keys {
	struct auth_entry *v;
	size_t n, cap;
};

struct auth_keys *auth_create(void)
{
	return calloc(1, sizeof(struct auth_keys));
}

void auth_destroy(struct auth_keys *k)
{
	if (!k)
		return;
	if (k->v)
		OPENSSL_cleanse(k->v, k->cap * sizeof(*k->v));
	free(k->v);
	free(k);
}

size_t auth_count(const struct auth_keys *k)
{
	return k ? k->n : 0;
}

bool auth_tenant_valid(const char *t, size_t len)
{
	if (len < 1 || len > SG_AUTH_TENANT_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = t[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

static bool sha256(const void *data, size_t len, unsigned char out[32])
{
	unsigned int n = 0;
	return EVP_Digest(data, len, out, &n, sg_sha256(), NULL) == 1 && n == 32;
}

/* Visible ASCII only: a key is sent in a header and typed into configs. */
static bool key_chars_ok(const char *key, size_t len, bool allow_comma)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)key[i];
		if (c <= 0x20 || c >= 0x7f || (!allow_comma && c == ','))
			return false;
	}
	return true;
}

/* Validate and append one pair. where is "entry 3" or "line 7". */
static enum sg_err add_key(struct auth_keys *k, const char *key, size_t klen,
			   const char *tenant, size_t tlen, const char *source,
			   const char *where, bool allow_comma, bool admin, struct sg_error *e)
{
	if (klen == 0)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "%s: %s: the key is empty",
				    source, where);
	if (klen > SG_AUTH_KEY_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"%s: %s: the key is longer than %d bytes", source, where, SG_AUTH_KEY_MAX);
	if (!key_chars_ok(key, klen, allow_comma))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"%s: %s: the key may only hold visible ASCII characters%s", source,
			where, allow_comma ? "" : " other than ','");
	/* only SEMGATE_ADMIN_KEYS makes admin keys: "key:*" is no tenant */
	if (!admin && !auth_tenant_valid(tenant, tlen))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"%s: %s: the tenant must match [A-Za-z0-9._-]{1,64}", source, where);
	unsigned char d[32];
	if (!sha256(key, klen, d))
		return sg_error_set(e, SG_ERR_INTERNAL, "%s: cannot hash a key", source);
	/* start-up only, and the set is not secret from itself: a plain
	 * comparison is fine here */
	for (size_t i = 0; i < k->n; i++)
		if (memcmp(k->v[i].digest, d, sizeof(d)) == 0) {
			OPENSSL_cleanse(d, sizeof(d));
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: %s: duplicate key (the same key appears more than once)",
				source, where);
		}
	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 8;
		struct auth_entry *v = calloc(cap, sizeof(*v));
		if (!v)
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		if (k->v) {
			memcpy(v, k->v, k->n * sizeof(*v));
			OPENSSL_cleanse(k->v, k->cap * sizeof(*k->v));
			free(k->v);
		}
		k->v = v;
		k->cap = cap;
	}
	memcpy(k->v[k->n].digest, d, sizeof(d));
	memcpy(k->v[k->n].tenant, tenant, tlen);
	k->v[k->n].tenant[tlen] = '\0';
	k->n++;
	OPENSSL_cleanse(d, sizeof(d));
	return SG_OK;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* One entry of a comma-separated list starting at p: its trimmed span
 * [*a, *b); returns where the next entry starts, or NULL after the last. */
static const char *list_entry(const char *p, const char **a, const char **b)
{
	const char *end = strchr(p, ',');
	if (!end)
		end = p + strlen(p);
	*a = p;
	*b = end;
	while (*a < *b && is_blank(**a))
		(*a)++;
	while (*b > *a && is_blank((*b)[-1]))
		(*b)--;
	return *end ? end + 1 : NULL;
}

enum sg_err auth_parse_list(struct auth_keys *k, const char *spec, const char *source,
			    struct sg_error *e)
{
	const char *p = spec;
	for (int entry = 1; p; entry++) {
		const char *a, *b;
		p = list_entry(p, &a, &b);
		char where[32];
		snprintf(where, sizeof(where), "entry %d", entry);
		if (a == b)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: %s is empty (expected key:tenant,key:tenant)", source, where);
		const char *colon = NULL;
		for (const char *q = a; q < b; q++)
			if (*q == ':')
				colon = q;
		if (!colon)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: %s has no ':' (expected key:tenant)", source, where);
		enum sg_err rc = add_key(k, a, (size_t)(colon - a), colon + 1,
					 (size_t)(b - colon - 1), source, where, false, false, e);
		if (rc != SG_OK)
			return rc;
	}
	return SG_OK;
}

enum sg_err auth_parse_admin_list(struct auth_keys *k, const char *spec, const char *source,
				  struct sg_error *e)
{
	const char *p = spec;
	for (int entry = 1; p; entry++) {
		const char *a, *b;
		p = list_entry(p, &a, &b);
		char where[32];
		snprintf(where, sizeof(where), "entry %d", entry);
		enum sg_err rc = add_key(k, a, (size_t)(b - a), SG_AUTH_ADMIN, 1, source, where,
					 false, true, e);
		if (rc != SG_OK)
			return rc;
	}
	return SG_OK;
}

static int tenant_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

size_t auth_tenants(const struct auth_keys *k, const char **out, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; k && i < k->n; i++) {
		const char *t = k->v[i].tenant;
		bool seen = strcmp(t, SG_AUTH_ADMIN) == 0;
		for (size_t j = 0; j < n && !seen; j++)
			seen = strcmp(out[j], t) == 0;
		if (!seen && n < max)
			out[n++] = t;
	}
	qsort(out, n, sizeof(*out), tenant_cmp);
	return n;
}

enum sg_err auth_parse_text(struct auth_keys *k, const char *text, size_t len,
			    const char *source, struct sg_error *e)
{
	size_t pos = 0;
	for (int line = 1; pos < len; line++) {
		const char *s = text + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - s) : len - pos;
		pos += n + (nl ? 1 : 0);
		if (n && s[n - 1] == '\r')
			n--;
		size_t i = 0;
		while (i < n && is_blank(s[i]))
			i++;
		if (i == n || s[i] == '#')
			continue;
		char where[32];
		snprintf(where, sizeof(where), "line %d", line);
		size_t k0 = i;
		while (i < n && !is_blank(s[i]))
			i++;
		size_t k1 = i;
		while (i < n && is_blank(s[i]))
			i++;
		size_t t0 = i;
		while (i < n && !is_blank(s[i]))
			i++;
		size_t t1 = i;
		while (i < n && is_blank(s[i]))
			i++;
		if (t0 == t1 || i != n)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"%s: %s: expected 'key tenant' (two fields)", source, where);
		if (memchr(s, '\0', n))
			return sg_error_set(e, SG_ERR_BAD_REQUEST, "%s: %s: NUL byte", source, where);
		enum sg_err rc = add_key(k, s + k0, k1 - k0, s + t0, t1 - t0, source, where,
					 true, false, e);
		if (rc != SG_OK)
			return rc;
	}
	return SG_OK;
}

enum sg_err auth_parse_file(struct auth_keys *k, const char *path, const char *source,
			    struct sg_error *e)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "%s: cannot open '%s': %s", source,
				    path, strerror(errno));
	struct stat st;
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & (S_IROTH | S_IWOTH)))
		sg_log(SG_LOG_WARN, "%s: '%s' is readable by every user; chmod 600 it", source,
		       path);
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	enum sg_err rc = SG_OK;
	while (buf) {
		if (len == cap) {
			if (cap >= SG_AUTH_FILE_MAX) {
				rc = sg_error_set(e, SG_ERR_BAD_REQUEST,
					"%s: '%s' is larger than %u bytes", source, path,
					SG_AUTH_FILE_MAX);
				break;
			}
			char *nb = malloc(cap * 2);
			if (nb) {
				memcpy(nb, buf, len);
				OPENSSL_cleanse(buf, len);
			}
			free(buf);
			buf = nb;
			cap *= 2;
			continue;
		}
		size_t got = fread(buf + len, 1, cap - len, f);
		len += got;
		if (got == 0)
			break;
	}
	if (!buf)
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	else if (rc == SG_OK && ferror(f))
		rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "%s: cannot read '%s'", source, path);
	fclose(f);
	if (rc == SG_OK)
		rc = auth_parse_text(k, buf, len, source, e);
	if (buf) {
		OPENSSL_cleanse(buf, cap);
		free(buf);
	}
	return rc;
}

enum sg_err auth_load(const struct sg_config *cfg, struct auth_keys **out,
		      struct sg_error *e)
{
	*out = NULL;
	bool have_list = cfg->api_keys && cfg->api_keys[0];
	bool have_file = cfg->api_keys_file && cfg->api_keys_file[0];
	bool have_admin = cfg->admin_keys && cfg->admin_keys[0];
	if (!have_list && !have_file && !have_admin)
		return SG_OK;
	struct auth_keys *k = auth_create();
	if (!k)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	enum sg_err rc = SG_OK;
	if (have_list)
		rc = auth_parse_list(k, cfg->api_keys, "SEMGATE_API_KEYS", e);
	if (rc == SG_OK && have_file) {
		size_t before = k->n;
		rc = auth_parse_file(k, cfg->api_keys_file, "SEMGATE_API_KEYS_FILE", e);
		if (rc == SG_OK && k->n == before)
			rc = sg_error_set(e, SG_ERR_BAD_REQUEST,
				"SEMGATE_API_KEYS_FILE: '%s' holds no keys", cfg->api_keys_file);
	}
	if (rc == SG_OK && have_admin)
		rc = auth_parse_admin_list(k, cfg->admin_keys, "SEMGATE_ADMIN_KEYS", e);
	if (rc != SG_OK) {
		auth_destroy(k);
		return rc;
	}
	*out = k;
	return SG_OK;
}

const char *auth_lookup(const struct auth_keys *k, const char *token, size_t len)
{
	if (!k || k->n == 0 || !token)
		return NULL;
	unsigned char d[32];
	if (!sha256(token, len, d))
		return NULL;
	/* Compare with every key and select the match with masks, so neither
	 * the number of comparisons nor a branch depends on the match. */
	size_t idx = 0;
	unsigned found = 0;
	for (size_t i = 0; i < k->n; i++) {
		unsigned eq = (unsigned)(CRYPTO_memcmp(d, k->v[i].digest, sizeof(d)) == 0);
		size_t mask = (size_t)0 - (size_t)eq;
		idx = (idx & ~mask) | (i & mask);
		found |= eq;
	}
	OPENSSL_cleanse(d, sizeof(d));
	return found ? k->v[idx].tenant : NULL;
}

bool auth_bearer(const char *header, const char **token, size_t *len)
{
	if (!header)
		return false;
	while (is_blank(*header))
		header++;
	if (strncasecmp(header, "Bearer", 6) != 0 || !is_blank(header[6]))
		return false;
	const char *t = header + 7;
	while (is_blank(*t))
		t++;
	size_t n = strlen(t);
	while (n && is_blank(t[n - 1]))
		n--;
	if (n == 0)
		return false;
	*token = t;
	*len = n;
	return true;
}
