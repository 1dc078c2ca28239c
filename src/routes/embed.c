/* POST /v1/embeddings: an OpenAI-compatible pass-through with an exact
 * cache per input string, per tenant. Cached inputs are answered from
 * Redis; the rest go upstream in one call (deduplicated); the vectors come
 * back in the caller's order. Requests the cache cannot serve exactly
 * (token-array inputs, unknown fields) and every request while Redis is
 * down are passed through verbatim. Nothing is cached from a failed or
 * malformed upstream answer. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "semgate/app/app.h"
#include "semgate/http/auth.h"
#include "semgate/core/digest.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/core/metrics.h"
#include "semgate/routes/routes.h"
#include "semgate/store/store.h"
#include "semgate/upstream/upstream.h"

#define EMB_MAX_INPUTS 2048
#define EMB_MODEL_MAX 256
#define EMB_DIM_MAX 16384     /* the largest models today use 3072-8192 */

struct emb {
	struct sg_req *req;
	cJSON *body;
	const char *model;
	size_t n;               /* inputs */
	const char **text;      /* borrowed from body */
	bool base64;            /* encoding_format "base64" */
	long long dimensions;   /* 0: not given */
	bool cacheable;         /* false: pass the request through verbatim */
	char (*sha)[65];        /* per input: cache key digest */
	float **vec;            /* per input: the vector (owned), NULL until known */
	int *dim;
	size_t cached;          /* inputs answered from Redis */
	long long prompt_tokens, total_tokens;
	struct upstream_headers up_headers; /* of the upstream call that filled the misses */
	struct upstream_target target;
};

static void emb_finish(struct emb *m)
{
	if (m->vec)
		for (size_t i = 0; i < m->n; i++)
			free(m->vec[i]);
	free(m->vec);
	free(m->dim);
	free(m->sha);
	free(m->text);
	cJSON_Delete(m->body);
}

/* Where /v1/embeddings goes: the embedding API when one is configured (it
 * is the service meant for embeddings; chat-only servers often lack the
 * route), else the LLM upstream. Upstream timeouts, not the short
 * SEMGATE_EMBED_TIMEOUT_MS meant for cache lookups: a batch may be big. */
static void emb_target(const struct sg_config *cfg, struct upstream_target *t)
{
	bool own = cfg->embed_url[0] != '\0';
	*t = (struct upstream_target){
		.base_url = own ? cfg->embed_url : cfg->upstream_url,
		.api_key = own ? cfg->embed_api_key : cfg->upstream_api_key,
		.connect_timeout_ms = cfg->upstream_connect_timeout_ms,
		.timeout_ms = cfg->upstream_timeout_ms,
		.max_bytes = (size_t)cfg->max_upstream_bytes,
		.kind = UPSTREAM_KIND_EMBEDDING,
	};
}

/* The client's own key goes upstream only in open mode and only when the
 * gateway has no key for that service. */
static const char *client_bearer(const struct emb *m)
{
	const char *token;
	size_t len;
	if (m->req->app->auth || m->target.api_key[0])
		return NULL;
	const char *h = http_header(m->req, "Authorization");
	if (!auth_bearer(h, &token, &len) || token[len] != '\0')
		return NULL;
	return token;
}

static bool is_int_in(const cJSON *it, double lo, double hi)
{
	return cJSON_IsNumber(it) && it->valuedouble >= lo && it->valuedouble <= hi &&
	       it->valuedouble == floor(it->valuedouble);
}

/* A token array: non-empty integers. */
static bool is_tokens(const cJSON *a)
{
	if (!cJSON_IsArray(a) || !a->child)
		return false;
	const cJSON *t;
	cJSON_ArrayForEach(t, a)
		if (!is_int_in(t, 0, 4294967295.0))
			return false;
	return true;
}

static enum sg_err validate(struct emb *m, struct sg_error *e)
{
	const cJSON *b = m->body;
	if (!cJSON_IsObject(b))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "request body must be a JSON object");
	m->model = sg_json_str(b, "model");
	if (!m->model || !m->model[0] || strlen(m->model) > EMB_MODEL_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"model must be a non-empty string of at most %d bytes", EMB_MODEL_MAX);
	for (const char *p = m->model; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"model must not contain control characters");
	m->cacheable = true;
	const cJSON *in = cJSON_GetObjectItemCaseSensitive(b, "input");
	if (cJSON_IsString(in)) {
		m->n = 1;
	} else if (cJSON_IsArray(in)) {
		int n = cJSON_GetArraySize(in);
		if (n < 1 || n > EMB_MAX_INPUTS)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"input must hold 1 to %d items", EMB_MAX_INPUTS);
		m->n = (size_t)n;
		if (is_tokens(in)) {
			m->cacheable = false; /* one token array */
			m->n = 1;
		} else {
			int i = 0;
			bool strings = cJSON_IsString(in->child);
			const cJSON *it;
			cJSON_ArrayForEach(it, in) {
				if (strings ? !cJSON_IsString(it) : !is_tokens(it))
					return sg_error_set(e, SG_ERR_BAD_REQUEST,
						"input[%d] must be %s", i, strings ? "a string" :
						"a non-empty array of token ids (input must be a string, "
						"an array of strings or an array of token arrays)");
				i++;
			}
			m->cacheable = strings;
		}
	} else {
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"input must be a string or an array of strings");
	}
	if (m->cacheable) {
		m->text = calloc(m->n, sizeof(char *));
		if (!m->text)
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		size_t i = 0;
		const cJSON *it = cJSON_IsArray(in) ? in->child : in;
		for (; i < m->n; i++, it = it->next) {
			if (!it->valuestring[0] && !cJSON_IsArray(in))
				return sg_error_set(e, SG_ERR_BAD_REQUEST, "input must not be empty");
			if (!it->valuestring[0])
				return sg_error_set(e, SG_ERR_BAD_REQUEST,
					"input[%zu] must not be empty", i);
			m->text[i] = it->valuestring;
		}
	}
	const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(b, "encoding_format");
	if (fmt && !cJSON_IsNull(fmt)) {
		if (!cJSON_IsString(fmt) || (strcmp(fmt->valuestring, "float") != 0 &&
					     strcmp(fmt->valuestring, "base64") != 0))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"encoding_format must be \"float\" or \"base64\"");
		m->base64 = strcmp(fmt->valuestring, "base64") == 0;
	}
	const cJSON *dims = cJSON_GetObjectItemCaseSensitive(b, "dimensions");
	if (dims && !cJSON_IsNull(dims)) {
		if (!is_int_in(dims, 1, EMB_DIM_MAX))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"dimensions must be an integer from 1 to %d", EMB_DIM_MAX);
		m->dimensions = (long long)dims->valuedouble;
	}
	const cJSON *user = cJSON_GetObjectItemCaseSensitive(b, "user");
	if (user && !cJSON_IsNull(user) && !cJSON_IsString(user))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "user must be a string");
	/* a field this version does not know might change the vectors: serve
	 * such requests uncached rather than from the wrong cache entry */
	const cJSON *f;
	cJSON_ArrayForEach(f, b) {
		static const char *const known[] = { "model", "input", "encoding_format",
						     "dimensions", "user" };
		bool k = false;
		for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
			k |= strcmp(f->string, known[i]) == 0;
		if (!k)
			m->cacheable = false;
	}
	return SG_OK;
}

/* ---- vectors: float32 little-endian, the cache and base64 format ---- */

static void to_le(const float *v, int dim, unsigned char *out)
{
	memcpy(out, v, sizeof(float) * (size_t)dim);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	for (int i = 0; i < dim; i++) {
		unsigned char *p = out + 4 * i, t;
		t = p[0]; p[0] = p[3]; p[3] = t;
		t = p[1]; p[1] = p[2]; p[2] = t;
	}
#endif
}

/* A vector from little-endian float32 bytes; NULL when the length is not a
 * whole vector or a component is not finite (a corrupt value is a miss). */
static float *from_le(const unsigned char *p, size_t len, int *dim)
{
	if (len == 0 || len % 4 || len / 4 > EMB_DIM_MAX)
		return NULL;
	int n = (int)(len / 4);
	float *v = malloc(len);
	if (!v)
		return NULL;
	unsigned char *q = (unsigned char *)v;
	memcpy(q, p, len);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	for (int i = 0; i < n; i++) {
		unsigned char *r = q + 4 * i, t;
		t = r[0]; r[0] = r[3]; r[3] = t;
		t = r[1]; r[1] = r[2]; r[2] = t;
	}
#endif
	for (int i = 0; i < n; i++)
		if (!isfinite(v[i])) {
			free(v);
			return NULL;
		}
	*dim = n;
	return v;
}

static bool sha256_hex(const char *prefix, size_t plen, const char *s, size_t len,
		       char out[65])
{
	unsigned char md[32];
	unsigned int n = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestInit_ex(ctx, sg_sha256(), NULL) == 1 &&
		  (!plen || EVP_DigestUpdate(ctx, prefix, plen) == 1) &&
		  EVP_DigestUpdate(ctx, s, len) == 1 &&
		  EVP_DigestFinal_ex(ctx, md, &n) == 1 && n == 32;
	EVP_MD_CTX_free(ctx);
	if (ok)
		sg_hex(out, md, 32);
	return ok;
}

/* ---- the upstream call ---- */

/* The gateway's headers (at most 4 pairs) then the upstream's pacing
 * headers (Retry-After, x-ratelimit-*), NULL-terminated, in list. */
#define EMB_HDRS (8 + 2 * UPSTREAM_HDR_MAX + 1)
static void with_upstream_headers(const char **list, const char *const *own,
				  const struct upstream_headers *up)
{
	int n = 0;
	for (; own && own[n] && own[n + 1] && n < 8; n += 2) {
		list[n] = own[n];
		list[n + 1] = own[n + 1];
	}
	list[n] = NULL;
	upstream_headers_append(up, list, n, EMB_HDRS);
}

/* Relay a non-200 (or non-JSON) upstream answer the way the chat route
 * does: JSON bodies as they are, anything else as a clean JSON error;
 * either way with the upstream's pacing headers when its status is kept. */
static int relay_raw(struct sg_req *req, const struct upstream_resp *r,
		     const char *const *hdrs)
{
	const char *all[EMB_HDRS];
	with_upstream_headers(all, hdrs, &r->headers);
	cJSON *doc = NULL;
	if (sg_json_parse(r->body.data ? r->body.data : "", r->body.len, &doc, NULL) != SG_OK ||
	    !cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		if (r->status >= 400 && r->status <= 599)
			return http_send_error_headers(req, (int)r->status, "upstream_error",
						       "upstream_error",
						       "upstream answered with an error and no JSON body",
						       all);
		return http_send_error(req, 502, "upstream_error", "upstream_invalid_response",
				       "upstream answered with invalid JSON");
	}
	cJSON_Delete(doc);
	if (r->status < 100 || r->status > 599)
		return http_send(req, 502, "application/json", r->body.data, r->body.len, hdrs);
	return http_send(req, (int)r->status, "application/json", r->body.data, r->body.len,
			 all);
}

/* The whole request as the client sent it, answer as the upstream gave it. */
static int pass_through(struct emb *m, struct upstream *up)
{
	struct sg_req *req = m->req;
	struct sg_error e = { 0 };
	struct upstream_resp r = { 0 };
	static const char *const hdrs[] = { "X-Semgate-Cache", "bypass",
					    "X-Semgate-Embeddings-Cached", "0", NULL };
	req->cache_outcome = "bypass";
	metrics_add(SG_C_EMB_INPUTS_BYPASS, m->n);
	enum sg_err rc = upstream_post(up, &m->target, "/embeddings", req->body.data,
				       req->body.len, client_bearer(m), &r, &e);
	req->upstream_ms = r.ms;
	int status = rc != SG_OK ? http_send_sg_error(req, &e) : relay_raw(req, &r, hdrs);
	upstream_resp_finish(&r);
	return status;
}

static float *vector_from_json(const cJSON *emb, int *dim)
{
	if (cJSON_IsString(emb)) {
		/* an upstream that answers base64 although asked for floats */
		size_t len = strlen(emb->valuestring);
		if (len == 0 || len % 4 || len / 4 * 3 > (size_t)EMB_DIM_MAX * 4)
			return NULL;
		unsigned char *raw = malloc(len / 4 * 3 + 1);
		if (!raw)
			return NULL;
		int n = EVP_DecodeBlock(raw, (const unsigned char *)emb->valuestring, (int)len);
		float *v = NULL;
		if (n >= 0) {
			size_t pad = (emb->valuestring[len - 1] == '=') +
				     (emb->valuestring[len - 2] == '=');
			v = from_le(raw, (size_t)n - pad, dim);
		}
		free(raw);
		return v;
	}
	int n = cJSON_GetArraySize(emb);
	if (!cJSON_IsArray(emb) || n < 1 || n > EMB_DIM_MAX)
		return NULL;
	float *v = malloc(sizeof(float) * (size_t)n);
	if (!v)
		return NULL;
	int i = 0;
	const cJSON *x;
	cJSON_ArrayForEach(x, emb) {
		float f = cJSON_IsNumber(x) ? (float)x->valuedouble : NAN;
		if (!isfinite(f)) {
			free(v);
			return NULL;
		}
		v[i++] = f;
	}
	*dim = n;
	return v;
}

static long long usage_field(const cJSON *usage, const char *name)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(usage, name);
	return is_int_in(t, 0, 1e15) ? (long long)t->valuedouble : 0;
}

/* Ask the upstream for the nmiss distinct uncached inputs miss[] (input
 * indexes) and fill m->vec for each. Returns 0, or the status of the
 * response already sent (upstream failure or error answer). */
static int fetch_missing(struct emb *m, struct upstream *up, const size_t *miss,
			 size_t nmiss)
{
	struct sg_req *req = m->req;
	struct sg_error e = { 0 };
	int status = 0;
	char *body = NULL;
	cJSON *doc = NULL;
	struct upstream_resp r = { 0 };
	cJSON *out = cJSON_Duplicate(m->body, 1);
	cJSON *arr = cJSON_CreateArray();
	if (!out || !arr)
		goto nomem;
	for (size_t i = 0; i < nmiss; i++) {
		cJSON *s = cJSON_CreateStringReference(m->text[miss[i]]);
		if (!s)
			goto nomem;
		cJSON_AddItemToArray(arr, s);
	}
	if (!cJSON_ReplaceItemInObjectCaseSensitive(out, "input", arr))
		goto nomem;
	arr = NULL;
	/* floats are what every OpenAI-compatible server can answer */
	cJSON_DeleteItemFromObjectCaseSensitive(out, "encoding_format");
	body = cJSON_PrintUnformatted(out);
	if (!body)
		goto nomem;
	enum sg_err rc = upstream_post(up, &m->target, "/embeddings", body, strlen(body),
				       client_bearer(m), &r, &e);
	req->upstream_ms = r.ms;
	if (rc != SG_OK) {
		status = http_send_sg_error(req, &e);
		goto out;
	}
	if (r.status != 200) {
		status = relay_raw(req, &r, NULL);
		goto out;
	}
	const cJSON *data = NULL;
	if (sg_json_parse(r.body.data ? r.body.data : "", r.body.len, &doc, NULL) != SG_OK ||
	    !(data = sg_json_arr(doc, "data")) || (size_t)cJSON_GetArraySize(data) != nmiss)
		goto bad;
	const cJSON *item;
	cJSON_ArrayForEach(item, data) {
		const cJSON *idx = cJSON_GetObjectItemCaseSensitive(item, "index");
		if (!is_int_in(idx, 0, (double)nmiss - 1))
			goto bad;
		size_t at = miss[(size_t)idx->valuedouble];
		if (m->vec[at])
			goto bad; /* the same index twice */
		m->vec[at] = vector_from_json(cJSON_GetObjectItemCaseSensitive(item, "embedding"),
					      &m->dim[at]);
		if (!m->vec[at])
			goto bad;
	}
	m->up_headers = r.headers;
	const cJSON *usage = sg_json_obj(doc, "usage");
	m->prompt_tokens = usage_field(usage, "prompt_tokens");
	m->total_tokens = usage_field(usage, "total_tokens");
	goto out;
bad:
	status = http_send_error(req, 502, "upstream_error", "upstream_invalid_response",
				 "upstream answered an embeddings response the gateway cannot use");
	goto out;
nomem:
	status = http_send_error(req, 503, "server_error", "out_of_memory", "out of memory");
out:
	upstream_resp_finish(&r);
	cJSON_Delete(doc);
	cJSON_Delete(arr);
	cJSON_Delete(out);
	free(body);
	return status;
}

/* ---- the answer ---- */

static enum sg_err render_vector(struct sg_buf *b, const float *v, int dim, bool base64)
{
	enum sg_err rc = SG_OK;
	if (base64) {
		size_t raw_len = sizeof(float) * (size_t)dim;
		unsigned char *raw = malloc(raw_len);
		char *txt = malloc((raw_len + 2) / 3 * 4 + 1);
		if (raw && txt) {
			to_le(v, dim, raw);
			int n = EVP_EncodeBlock((unsigned char *)txt, raw, (int)raw_len);
			rc = sg_buf_puts(b, "\"");
			if (rc == SG_OK)
				rc = sg_buf_append(b, txt, (size_t)n);
			if (rc == SG_OK)
				rc = sg_buf_puts(b, "\"");
		} else {
			rc = SG_ERR_NOMEM;
		}
		free(raw);
		free(txt);
		return rc;
	}
	rc = sg_buf_puts(b, "[");
	for (int i = 0; i < dim && rc == SG_OK; i++)
		/* %.9g round-trips every float32 exactly */
		rc = sg_buf_printf(b, i ? ",%.9g" : "%.9g", (double)v[i]);
	if (rc == SG_OK)
		rc = sg_buf_puts(b, "]");
	return rc;
}

static int send_answer(struct emb *m, const char *outcome)
{
	struct sg_buf b;
	/* cached vectors add to what one upstream answer may hold: bound the
	 * whole answer too (a few times the upstream cap) */
	sg_buf_init(&b, 8 * (size_t)m->req->app->cfg->max_upstream_bytes);
	char *model = NULL;
	/* the requested model, so a hit and a miss read the same */
	cJSON *ms = cJSON_CreateString(m->model);
	if (ms)
		model = cJSON_PrintUnformatted(ms);
	cJSON_Delete(ms);
	enum sg_err rc = model ? sg_buf_puts(&b, "{\"object\":\"list\",\"data\":[") : SG_ERR_NOMEM;
	for (size_t i = 0; i < m->n && rc == SG_OK; i++) {
		rc = sg_buf_printf(&b, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":",
				   i ? "," : "", i);
		if (rc == SG_OK)
			rc = render_vector(&b, m->vec[i], m->dim[i], m->base64);
		if (rc == SG_OK)
			rc = sg_buf_puts(&b, "}");
	}
	if (rc == SG_OK)
		rc = sg_buf_printf(&b, "],\"model\":%s,\"usage\":{\"prompt_tokens\":%lld,"
				   "\"total_tokens\":%lld}}", model, m->prompt_tokens,
				   m->total_tokens);
	free(model);
	int status;
	if (rc == SG_ERR_TOO_LARGE) {
		status = http_send_error(m->req, 413, "invalid_request_error", "response_too_large",
					 "the embeddings answer would exceed the gateway's limit; "
					 "send fewer inputs per request");
	} else if (rc != SG_OK) {
		status = http_send_error(m->req, 503, "server_error", "out_of_memory",
					 "out of memory");
	} else {
		char cached[24];
		snprintf(cached, sizeof(cached), "%zu", m->cached);
		const char *const own[] = { "X-Semgate-Cache", outcome,
					    "X-Semgate-Embeddings-Cached", cached, NULL };
		const char *hdrs[EMB_HDRS];
		with_upstream_headers(hdrs, own, &m->up_headers);
		m->req->cache_outcome = outcome;
		status = http_send(m->req, 200, "application/json", b.data, b.len, hdrs);
	}
	sg_buf_finish(&b);
	return status;
}

/* ---- the pipeline ---- */

static int by_sha(const void *a, const void *b, void *ud)
{
	const char (*sha)[65] = ud;
	const size_t *x = a, *y = b;
	int c = strcmp(sha[*x], sha[*y]);
	return c ? c : (*x > *y) - (*x < *y);
}

/* The inputs with no cached vector, each distinct text once: equal
 * digests are grouped by sorting. miss must hold m->n entries; *nmiss gets
 * the count. dup_of[i] is the input whose vector input i shares, or i. */
static bool plan_misses(struct emb *m, size_t *miss, size_t *nmiss, size_t *dup_of)
{
	size_t *order = malloc(sizeof(size_t) * m->n);
	if (!order)
		return false;
	size_t k = 0;
	for (size_t i = 0; i < m->n; i++) {
		dup_of[i] = i;
		if (!m->vec[i])
			order[k++] = i;
	}
	qsort_r(order, k, sizeof(size_t), by_sha, m->sha);
	*nmiss = 0;
	for (size_t j = 0; j < k; j++) {
		size_t i = order[j];
		if (j > 0 && strcmp(m->sha[i], m->sha[order[j - 1]]) == 0)
			dup_of[i] = dup_of[order[j - 1]];
		else
			miss[(*nmiss)++] = i;
	}
	free(order);
	return true;
}

static int serve_cached(struct emb *m, struct store *s, struct upstream *up)
{
	struct sg_req *req = m->req;
	struct sg_error e = { 0 };
	size_t n = m->n;
	m->sha = calloc(n, sizeof(*m->sha));
	m->vec = calloc(n, sizeof(float *));
	m->dim = calloc(n, sizeof(int));
	char **blobs = calloc(n, sizeof(char *));
	size_t *lens = calloc(n, sizeof(size_t));
	const char **shas = calloc(n, sizeof(char *));
	size_t *miss = calloc(n, sizeof(size_t));
	size_t *dup_of = calloc(n, sizeof(size_t));
	unsigned char **put_raw = NULL;
	int status = 0;
	if (!m->sha || !m->vec || !m->dim || !blobs || !lens || !shas || !miss || !dup_of)
		goto nomem;
	/* vectors with a requested dimension differ: it joins the digest */
	char prefix[48] = "";
	if (m->dimensions)
		snprintf(prefix, sizeof(prefix), "dimensions=%lld\n", m->dimensions);
	for (size_t i = 0; i < n; i++) {
		if (!sha256_hex(prefix, strlen(prefix), m->text[i], strlen(m->text[i]),
				m->sha[i]))
			goto nomem;
		shas[i] = m->sha[i];
	}
	if (store_emb_get(s, req->tenant, m->model, shas, n, blobs, lens, &e) != SG_OK) {
		sg_log(SG_LOG_DEBUG, "embeddings cache bypassed: %s", e.msg);
		status = -1; /* pass through */
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		if (blobs[i] && (m->vec[i] = from_le((unsigned char *)blobs[i], lens[i],
						     &m->dim[i])))
			m->cached++;
	size_t nmiss = 0;
	if (!plan_misses(m, miss, &nmiss, dup_of))
		goto nomem;
	if (nmiss) {
		if ((status = fetch_missing(m, up, miss, nmiss)) != 0)
			goto out;
		/* keep what was fetched, for everyone of this tenant */
		put_raw = calloc(nmiss, sizeof(unsigned char *));
		size_t *put_len = calloc(nmiss, sizeof(size_t));
		const char **put_sha = calloc(nmiss, sizeof(char *));
		bool ok = put_raw && put_len && put_sha;
		for (size_t j = 0; ok && j < nmiss; j++) {
			size_t i = miss[j];
			put_len[j] = sizeof(float) * (size_t)m->dim[i];
			put_sha[j] = m->sha[i];
			if ((ok = (put_raw[j] = malloc(put_len[j])) != NULL))
				to_le(m->vec[i], m->dim[i], put_raw[j]);
		}
		if (!ok || store_emb_put(s, req->tenant, m->model, put_sha,
					 (const char *const *)put_raw, put_len, nmiss,
					 req->app->cfg->cache_ttl, &e) != SG_OK)
			sg_log(SG_LOG_WARN, "embeddings not cached: %s",
			       ok ? e.msg : "out of memory");
		for (size_t j = 0; put_raw && j < nmiss; j++)
			free(put_raw[j]);
		free(put_len);
		free(put_sha);
		/* duplicates of a fetched input share its vector */
		for (size_t i = 0; i < n; i++) {
			if (m->vec[i])
				continue;
			size_t src = dup_of[i];
			m->vec[i] = malloc(sizeof(float) * (size_t)m->dim[src]);
			if (!m->vec[i])
				goto nomem;
			memcpy(m->vec[i], m->vec[src], sizeof(float) * (size_t)m->dim[src]);
			m->dim[i] = m->dim[src];
		}
	}
	metrics_add(SG_C_EMB_INPUTS_CACHE, m->cached);
	metrics_add(SG_C_EMB_INPUTS_UPSTREAM, n - m->cached);
	status = send_answer(m, m->cached == n ? "hit" : m->cached ? "partial" : "miss");
	goto out;
nomem:
	status = http_send_error(req, 503, "server_error", "out_of_memory", "out of memory");
out:
	for (size_t i = 0; blobs && i < n; i++)
		free(blobs[i]);
	free(blobs);
	free(lens);
	free(shas);
	free(miss);
	free(dup_of);
	free(put_raw);
	return status;
}

int route_embeddings(struct sg_req *req)
{
	struct sg_error e = { 0 };
	struct emb m = { .req = req };
	int status;
	emb_target(req->app->cfg, &m.target);
	if (http_read_body(req, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	if (sg_json_parse(req->body.data, req->body.len, &m.body, &e) != SG_OK ||
	    validate(&m, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
		goto out;
	}
	struct upstream *up = worker_upstream(req->worker);
	struct store *s = worker_store(req->worker);
	if (!up) {
		status = http_send_error(req, 503, "service_unavailable", "out_of_memory",
					 "out of memory");
		goto out;
	}
	status = -1;
	if (m.cacheable && s)
		status = serve_cached(&m, s, up);
	if (status < 0)
		status = pass_through(&m, up);
out:
	emb_finish(&m);
	return status;
}
