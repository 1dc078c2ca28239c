/* The cache as a service: validation of sidecar requests, sidecar scopes,
 * plain-text entries (lookup, store, delete, invalidate), hit and miss
 * accounting for both the sidecar and the chat route, and the JSON of
 * entries and stats. Bad input is refused before anything is written; a
 * caller-supplied vector is checked against its partition before Redis is
 * touched. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "semgate/app/app.h"
#include "semgate/cache/cache.h"
#include "semgate/cache/api.h"
#include "semgate/cache/series.h"
#include "semgate/cache/hotcache.h"
#include "semgate/core/clock.h"
#include "semgate/core/digest.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/store/layout.h"
#include "semgate/store/store.h"
#include "semgate/vindex/vindex.h"

/* ---- names ---- */

static bool name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == ':' || c == '-';
}

static bool chars_valid(const char *s, size_t max)
{
	size_t n = 0;
	if (!s)
		return false;
	for (; s[n]; n++)
		if (n >= max || !name_char(s[n]))
			return false;
	return n > 0;
}

bool cache_api_name_valid(const char *s)
{
	return chars_valid(s, CACHE_API_NAME_MAX);
}

bool cache_api_id_valid(const char *s)
{
	return chars_valid(s, VINDEX_ID_MAX);
}

/* ---- request validation ---- */

void cache_api_req_finish(struct cache_api_req *r)
{
	if (!r)
		return;
	free(r->metadata);
	free(r->vector);
	memset(r, 0, sizeof(*r));
}

enum field {
	F_QUERY, F_ANSWER, F_NAMESPACE, F_SCOPE, F_THRESHOLD, F_TTL, F_TAGS,
	F_METADATA, F_VECTOR, F_TAG, F_ID, F_VERDICT, F_COUNT
};

static const char *const field_names[F_COUNT] = {
	"query", "answer", "namespace", "scope", "threshold", "ttl", "tags",
	"metadata", "vector", "tag", "id", "verdict",
};

static unsigned fields_of(enum cache_api_op op)
{
#define B(f) (1u << (f))
	switch (op) {
	case CACHE_API_LOOKUP:
		return B(F_QUERY) | B(F_NAMESPACE) | B(F_SCOPE) | B(F_THRESHOLD) | B(F_VECTOR);
	case CACHE_API_STORE:
		return B(F_QUERY) | B(F_ANSWER) | B(F_NAMESPACE) | B(F_SCOPE) | B(F_TTL) |
		       B(F_TAGS) | B(F_METADATA) | B(F_VECTOR);
	case CACHE_API_INVALIDATE:
		return B(F_NAMESPACE) | B(F_TAG);
	case CACHE_API_FEEDBACK:
		return B(F_ID) | B(F_QUERY) | B(F_VERDICT);
	}
	return 0;
#undef B
}

static bool is_blank(const char *s)
{
	for (; *s; s++)
		if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r' && *s != '\f' &&
		    *s != '\v')
			return false;
	return true;
}

static enum sg_err parse_vector(const cJSON *it, struct cache_api_req *out,
				struct sg_error *e)
{
	int n = cJSON_GetArraySize(it);
	if (!cJSON_IsArray(it) || n < 1 || n > CACHE_API_DIM_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"'vector' must be a non-empty array of at most %d numbers",
			CACHE_API_DIM_MAX);
	float *v = malloc(sizeof(float) * (size_t)n);
	if (!v)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	int i = 0;
	for (const cJSON *x = it->child; x; x = x->next, i++) {
		if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble) ||
		    fabs(x->valuedouble) > FLT_MAX) {
			free(v);
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'vector[%d]' must be a finite number", i);
		}
		v[i] = (float)x->valuedouble;
	}
	if (vindex_normalize(v, n) == 0.0f) {
		free(v);
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"'vector' must not be all zeros");
	}
	out->vector = v;
	out->dim = n;
	return SG_OK;
}

static enum sg_err parse_tags(const cJSON *it, struct cache_api_req *out, struct sg_error *e)
{
	if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) > CACHE_API_TAGS_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"'tags' must be an array of at most %d strings", CACHE_API_TAGS_MAX);
	int i = 0;
	for (const cJSON *t = it->child; t; t = t->next, i++) {
		if (!cJSON_IsString(t) || !cache_api_name_valid(t->valuestring))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'tags[%d]' must match [A-Za-z0-9._:-]{1,%d}", i,
				CACHE_API_NAME_MAX);
		bool dup = false;
		for (size_t k = 0; k < out->ntags; k++)
			dup |= strcmp(out->tags[k], t->valuestring) == 0;
		if (!dup)
			out->tags[out->ntags++] = t->valuestring;
	}
	return SG_OK;
}

static enum sg_err parse_field(enum field f, const cJSON *it, struct cache_api_req *out,
			       struct sg_error *e)
{
	const char *name = field_names[f];
	switch (f) {
	case F_QUERY:
	case F_ANSWER: {
		size_t len = cJSON_IsString(it) ? strlen(it->valuestring) : 0;
		if (!cJSON_IsString(it) || len == 0 || is_blank(it->valuestring))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'%s' must be a non-blank string", name);
		if (f == F_QUERY && len > CACHE_API_QUERY_MAX)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'query' is longer than %d bytes", CACHE_API_QUERY_MAX);
		if (f == F_QUERY) {
			out->query = it->valuestring;
			out->query_len = len;
		} else {
			out->answer = it->valuestring;
			out->answer_len = len;
		}
		return SG_OK;
	}
	case F_NAMESPACE:
	case F_TAG:
		if (!cJSON_IsString(it) || !cache_api_name_valid(it->valuestring))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'%s' must match [A-Za-z0-9._:-]{1,%d}", name, CACHE_API_NAME_MAX);
		if (f == F_TAG) {
			out->tag = it->valuestring;
		} else {
			out->ns = it->valuestring;
			out->has_ns = true;
		}
		return SG_OK;
	case F_SCOPE:
		if (!cJSON_IsString(it) || strlen(it->valuestring) > CACHE_API_SCOPE_MAX)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'scope' must be a string of at most %d bytes", CACHE_API_SCOPE_MAX);
		out->scope = it->valuestring;
		return SG_OK;
	case F_THRESHOLD:
		if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble <= 0.0 ||
		    it->valuedouble > 1.0)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'threshold' must be a number in (0, 1]");
		out->threshold = it->valuedouble;
		return SG_OK;
	case F_TTL:
		if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) ||
		    floor(it->valuedouble) != it->valuedouble || it->valuedouble < 1 ||
		    it->valuedouble > (double)CACHE_API_TTL_MAX)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'ttl' must be an integer number of seconds in 1..%lld",
				CACHE_API_TTL_MAX);
		out->ttl = (long long)it->valuedouble;
		return SG_OK;
	case F_TAGS:
		return parse_tags(it, out, e);
	case F_METADATA: {
		if (!cJSON_IsObject(it))
			return sg_error_set(e, SG_ERR_BAD_REQUEST, "'metadata' must be an object");
		char *m = sg_json_render(it);
		if (!m)
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		size_t len = strlen(m);
		if (len > CACHE_API_METADATA_MAX) {
			free(m);
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'metadata' is larger than %d bytes", CACHE_API_METADATA_MAX);
		}
		out->metadata = m;
		out->metadata_len = len;
		return SG_OK;
	}
	case F_VECTOR:
		return parse_vector(it, out, e);
	case F_ID:
		if (!cJSON_IsString(it) || !cache_api_id_valid(it->valuestring))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'id' must be an entry id matching [A-Za-z0-9._:-]{1,%d}", VINDEX_ID_MAX);
		out->id = it->valuestring;
		return SG_OK;
	case F_VERDICT:
		if (!cJSON_IsString(it) || (strcmp(it->valuestring, "wrong") != 0 &&
					    strcmp(it->valuestring, "right") != 0))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'verdict' must be \"wrong\" or \"right\"");
		out->wrong = strcmp(it->valuestring, "wrong") == 0;
		out->has_verdict = true;
		return SG_OK;
	case F_COUNT:
		break;
	}
	return sg_error_set(e, SG_ERR_INTERNAL, "unknown field");
}

enum sg_err cache_api_parse(enum cache_api_op op, const cJSON *body,
			    struct cache_api_req *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	out->ns = "";
	out->scope = "";
	if (!cJSON_IsObject(body))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "the request body must be a JSON object");
	unsigned allowed = fields_of(op), seen = 0;
	enum sg_err rc = SG_OK;
	for (const cJSON *it = body->child; it && rc == SG_OK; it = it->next) {
		int f = 0;
		while (f < F_COUNT && strcmp(it->string, field_names[f]) != 0)
			f++;
		if (f == F_COUNT || !(allowed & (1u << f))) {
			rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "unknown field '%.64s'", it->string);
			break;
		}
		if (seen & (1u << f)) {
			rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "duplicate field '%s'",
					  field_names[f]);
			break;
		}
		seen |= 1u << f;
		if (!cJSON_IsNull(it))
			rc = parse_field((enum field)f, it, out, e);
	}
	if (rc == SG_OK && (op == CACHE_API_LOOKUP || op == CACHE_API_STORE) && !out->query)
		rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "'query' is required");
	if (rc == SG_OK && op == CACHE_API_STORE && !out->answer)
		rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "'answer' is required");
	if (rc == SG_OK && op == CACHE_API_FEEDBACK && !out->query)
		rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "'query' is required");
	if (rc == SG_OK && op == CACHE_API_FEEDBACK && !out->id)
		rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "'id' is required");
	if (rc == SG_OK && op == CACHE_API_FEEDBACK && !out->has_verdict)
		rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "'verdict' is required");
	if (rc == SG_OK && op == CACHE_API_INVALIDATE && !out->has_ns && !out->tag)
		rc = sg_error_set(e, SG_ERR_BAD_REQUEST,
				  "give 'namespace', 'tag' or both");
	if (rc != SG_OK)
		cache_api_req_finish(out);
	if (rc != SG_OK) {
		out->ns = "";
		out->scope = "";
	}
	return rc;
}

enum sg_err cache_api_parse_limit(const char *query, long *limit, struct sg_error *e)
{
	static const char *const names[] = { "limit" };
	struct sg_param v[1];
	*limit = CACHE_API_TOP_DEFAULT;
	enum sg_err rc = sg_query_split(query, names, 1, v, e);
	if (rc != SG_OK || !v[0].value)
		return rc;
	long n = 0;
	size_t i = 0;
	for (; i < v[0].len && v[0].value[i] >= '0' && v[0].value[i] <= '9' &&
	       n <= CACHE_API_TOP_MAX; i++)
		n = n * 10 + (v[0].value[i] - '0');
	if (v[0].len == 0 || i != v[0].len || n < 1 || n > CACHE_API_TOP_MAX)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "'limit' must be an integer in 1..%d",
				    CACHE_API_TOP_MAX);
	*limit = n;
	return SG_OK;
}

enum sg_err cache_api_parse_calibration(const char *query, char ns[CACHE_API_NAME_MAX + 1],
					double *target, struct sg_error *e)
{
	static const char *const names[] = { "namespace", "target" };
	struct sg_param v[2];
	ns[0] = '\0';
	*target = 0.99;
	enum sg_err rc = sg_query_split(query, names, 2, v, e);
	if (rc != SG_OK)
		return rc;
	if (v[0].value) {
		if (v[0].len < 1 || v[0].len > CACHE_API_NAME_MAX)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'namespace' must match [A-Za-z0-9._:-]{1,%d}", CACHE_API_NAME_MAX);
		memcpy(ns, v[0].value, v[0].len);
		ns[v[0].len] = '\0';
		if (!cache_api_name_valid(ns)) {
			ns[0] = '\0';
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"'namespace' must match [A-Za-z0-9._:-]{1,%d}", CACHE_API_NAME_MAX);
		}
	}
	if (v[1].value) {
		char t[32];
		char *end = NULL;
		double x = 0;
		if (v[1].len >= 1 && v[1].len < sizeof(t)) {
			memcpy(t, v[1].value, v[1].len);
			t[v[1].len] = '\0';
			x = strtod(t, &end);
		}
		if (!end || end == t || *end || !isfinite(x) || x <= 0.0 || x > 1.0)
			return sg_error_set(e, SG_ERR_BAD_REQUEST, "'target' must be a number in (0, 1]");
		*target = x;
	}
	return SG_OK;
}

cJSON *cache_api_calibration_json(const struct store_calibration *cal, double target)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *buckets = cJSON_AddArrayToObject(o, "buckets");
	cJSON *thresholds = cJSON_AddArrayToObject(o, "thresholds");
	if (!o || !buckets || !thresholds) {
		cJSON_Delete(o);
		return NULL;
	}
	long long samples = 0, agree = 0;
	for (int b = 0; b < STORE_CAL_BUCKETS; b++) {
		samples += cal->would_hit[b];
		agree += cal->agree[b] < cal->would_hit[b] ? cal->agree[b] : cal->would_hit[b];
	}
	bool ok = cJSON_AddNumberToObject(o, "target", target) &&
		  cJSON_AddNumberToObject(o, "samples", (double)samples) &&
		  cJSON_AddNumberToObject(o, "agree", (double)agree);
	/* from the top bucket down: each threshold's would-be hits are those
	 * at or above it; listed where a bucket has samples */
	long long cum_n = 0, cum_a = 0;
	double lowest = -1;
	cJSON *rows[STORE_CAL_BUCKETS] = { 0 };
	int nrows = 0;
	for (int b = STORE_CAL_BUCKETS - 1; ok && b >= 0; b--) {
		long long n = cal->would_hit[b];
		long long a = cal->agree[b] < n ? cal->agree[b] : n;
		if (n <= 0)
			continue;
		cum_n += n;
		cum_a += a;
		double precision = (double)cum_a / (double)cum_n;
		cJSON *bk = cJSON_CreateObject(), *th = cJSON_CreateObject();
		ok = bk && th && cJSON_AddNumberToObject(bk, "similarity", b / 100.0) &&
		     cJSON_AddNumberToObject(bk, "would_hit", (double)n) &&
		     cJSON_AddNumberToObject(bk, "agree", (double)a) &&
		     cJSON_AddNumberToObject(th, "threshold", b / 100.0) &&
		     cJSON_AddNumberToObject(th, "would_hit", (double)cum_n) &&
		     cJSON_AddNumberToObject(th, "agree", (double)cum_a) &&
		     cJSON_AddNumberToObject(th, "precision", round(precision * 1e6) / 1e6);
		if (ok) {
			cJSON_InsertItemInArray(buckets, 0, bk); /* ascending */
			rows[nrows++] = th;
		} else {
			cJSON_Delete(bk);
			cJSON_Delete(th);
		}
		if (precision >= target)
			lowest = b / 100.0;
	}
	/* thresholds ascending, as operators read them */
	for (int i = nrows - 1; i >= 0; i--)
		cJSON_AddItemToArray(thresholds, rows[i]);
	ok = ok && (lowest >= 0 ? cJSON_AddNumberToObject(o, "recommended_threshold", lowest) != NULL
				: cJSON_AddNullToObject(o, "recommended_threshold") != NULL);
	if (!ok) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* ---- sidecar scope ---- */

enum sg_err cache_api_scope(const char *tenant, const char *ns, const char *scope,
			    const char *query, size_t query_len, struct scope_info *out,
			    struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx &&
		EVP_DigestInit_ex(ctx, sg_sha256(), NULL) == 1 &&
		/* "semgate-sidecar-v1" never starts a chat scope ("semgate-scope-v1") */
		sg_digest_field(ctx, 'V', "semgate-sidecar-v1", 18) &&
		sg_digest_field(ctx, 'T', tenant, strlen(tenant)) &&
		sg_digest_field(ctx, 'N', ns ? ns : "", ns ? strlen(ns) : 0) &&
		sg_digest_field(ctx, 'S', scope ? scope : "", scope ? strlen(scope) : 0) &&
		sg_digest_hex(ctx, out->scope) &&
		EVP_DigestInit_ex(ctx, sg_sha256(), NULL) == 1 &&
		sg_digest_field(ctx, 'V', "semgate-sidecar-exact-v1", 24) &&
		sg_digest_field(ctx, 'S', out->scope, 64) &&
		sg_digest_field(ctx, 'Q', query, query_len) &&
		sg_digest_hex(ctx, out->exact);
	EVP_MD_CTX_free(ctx);
	if (ok && !(out->query = malloc(query_len + 1)))
		ok = false;
	if (!ok) {
		memset(out, 0, sizeof(*out));
		return sg_error_set(e, SG_ERR_NOMEM, "computing the cache scope failed");
	}
	memcpy(out->query, query, query_len);
	out->query[query_len] = '\0';
	out->query_len = query_len;
	out->cacheable = true;
	out->semantic_ok = true;
	return SG_OK;
}

/* ---- accounting ---- */

/* One lookup, counted now (the sidecar path, or the chat route when the
 * write-behind accounting is not running). */
static void record(struct sg_app *app, struct store *s, struct store_tenant_counts *tc,
		   const char *id, enum verify_reason rejected)
{
	struct sg_error e = { 0 };
	struct store_entry_hits eh = { .tenant = tc->tenant, .id = id, .hits = 1 };
	tc->lookups = 1;
	tc->minute = (long long)time(NULL) / 60;
	cache_series_reject(tc, rejected);
	if (store_record_counts(s, tc, 1, &eh, id ? 1 : 0, app->cfg->cache_ttl, NULL, &e) !=
	    SG_OK)
		sg_log(SG_LOG_DEBUG, "lookup%s%s not counted: %s", id ? " of " : "", id ? id : "",
		       e.msg);
}

void cache_api_record_hit(struct sg_app *app, struct store *s, const char *tenant,
			  const char *id, bool semantic, long long prompt_tokens,
			  long long completion_tokens, enum verify_reason rejected)
{
	struct store_tenant_counts tc = {
		.tenant = tenant, .hits_exact = !semantic, .hits_semantic = semantic,
		.tokens_prompt = prompt_tokens > 0 ? prompt_tokens : 0,
		.tokens_completion = completion_tokens > 0 ? completion_tokens : 0,
	};
	record(app, s, &tc, id, rejected);
}

void cache_api_record_miss(struct sg_app *app, struct store *s, const char *tenant,
			   enum verify_reason rejected)
{
	struct store_tenant_counts tc = { .tenant = tenant, .misses = 1 };
	record(app, s, &tc, NULL, rejected);
}

static long long usage_field(const cJSON *usage, const char *name)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(usage, name);
	if (!cJSON_IsNumber(t) || !isfinite(t->valuedouble) || t->valuedouble < 0 ||
	    t->valuedouble > 1e15)
		return 0;
	return (long long)t->valuedouble;
}

void cache_api_usage(const cJSON *completion, long long *prompt, long long *completion_tokens)
{
	const cJSON *usage = sg_json_obj(completion, "usage");
	*prompt = usage_field(usage, "prompt_tokens");
	*completion_tokens = usage_field(usage, "completion_tokens");
}

/* ---- lookup, store, delete ---- */

void cache_api_result_finish(struct cache_api_result *r)
{
	if (!r)
		return;
	store_entry_view_finish(&r->entry);
}

/* Read a candidate entry; true when it is a live text entry (out filled). */
static enum sg_err read_text(struct store *s, const char *tenant, const char *id,
			     struct store_entry_view *out, bool *ok, struct sg_error *e)
{
	bool found = false;
	*ok = false;
	enum sg_err rc = store_entry_read(s, tenant, id, out, &found, e);
	if (rc != SG_OK || !found)
		return rc;
	if (strcmp(out->kind, "text") != 0) {
		store_entry_view_finish(out);
		return SG_OK;
	}
	*ok = true;
	return SG_OK;
}

/* The caller's own vector was refused by the index (ve says why). */
static enum sg_err vector_misfit(struct sg_error *e, const struct sg_error *ve)
{
	return sg_error_set(e, SG_ERR_BAD_REQUEST, "'vector' does not fit the partition of "
			    "this namespace and scope: %s", ve->msg);
}

enum sg_err cache_api_lookup(struct sg_app *app, struct store *s, struct upstream *up,
			     const char *tenant, const struct cache_api_req *rq,
			     struct cache_api_result *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	out->best = -2.0;
	struct scope_info si;
	struct cache_result cr = { 0 };
	enum sg_err rc = cache_api_scope(tenant, rq->ns, rq->scope, rq->query, rq->query_len,
					 &si, e);
	if (rc != SG_OK)
		return rc;
	double threshold = rq->threshold > 0 ? rq->threshold : app->cfg->semantic_threshold;
	const float *vec = rq->vector;
	int dim = rq->dim;
	const char *model = CACHE_API_EXTERNAL_MODEL;
	bool ok = false;
	if (!vec) {
		/* exact first: a repeated question costs no embedding call */
		struct store_answer a;
		bool found = false;
		if ((rc = store_exact_get(s, tenant, si.exact, &a, &found, NULL, e)) != SG_OK)
			goto out;
		store_answer_finish(&a);
		if (found && strcmp(a.kind, "text") == 0) {
			if ((rc = read_text(s, tenant, a.id, &out->entry, &ok, e)) != SG_OK)
				goto out;
			if (ok) {
				out->hit = out->exact = true;
				out->best = 1.0;
				goto count;
			}
		}
		cache_embed_query(app, up, &si, &cr);
		if (!cr.vec) {
			out->embed_failed = true;
			goto count;
		}
		vec = cr.vec;
		dim = cr.dim;
		model = app->embedder.model;
	}
	char part[VINDEX_KEY_MAX];
	cache_partition_key(part, sizeof(part), tenant, si.scope, model);
	struct cache_match_req mr = {
		.tenant = tenant,
		.part = part,
		.vec = vec,
		.dim = dim,
		.threshold = threshold,
		.kind = "text",
		.verify = rq->verify,
		.query = rq->query,
		.query_len = rq->query_len,
		.candidates = (int)app->cfg->verify_candidates,
	};
	struct cache_match m;
	struct sg_error ve = { 0 };
	enum sg_err mrc = cache_match_find(app, s, &mr, &m, &ve);
	if (mrc == SG_ERR_BAD_REQUEST && rq->vector) {
		rc = vector_misfit(e, &ve);
		goto out;
	}
	if (mrc == SG_ERR_BAD_REQUEST) {
		sg_log(SG_LOG_WARN, "semantic lookup refused: %s", ve.msg);
	} else if (mrc != SG_OK) {
		rc = sg_error_set(e, mrc, "%s", ve.msg);
		goto out;
	} else {
		out->best = m.best;
		out->hit = m.hit;
		out->warming = m.warming;
		out->rejected = m.rejected;
		memcpy(out->rejected_id, m.rejected_id, sizeof(out->rejected_id));
		if (m.hit) {
			out->entry = m.entry;
			memset(&m.entry, 0, sizeof(m.entry));
		}
	}
	cache_match_finish(&m);
count:
	if (out->hit)
		cache_api_record_hit(app, s, tenant, out->entry.id, !out->exact, 0, 0, out->rejected);
	else
		cache_api_record_miss(app, s, tenant, out->rejected);
out:
	if (rc != SG_OK)
		store_entry_view_finish(&out->entry);
	cache_result_finish(&cr);
	scope_info_finish(&si);
	return rc;
}

enum sg_err cache_api_store(struct sg_app *app, struct store *s, struct upstream *up,
			    const char *tenant, const struct cache_api_req *rq,
			    char id_out[65], bool *indexed, struct sg_error *e)
{
	*indexed = false;
	id_out[0] = '\0';
	struct scope_info si;
	struct cache_result cr = { 0 };
	enum sg_err rc = cache_api_scope(tenant, rq->ns, rq->scope, rq->query, rq->query_len,
					 &si, e);
	if (rc != SG_OK)
		return rc;
	const float *vec = rq->vector;
	int dim = rq->dim;
	const char *model = CACHE_API_EXTERNAL_MODEL;
	if (!vec) {
		cache_embed_query(app, up, &si, &cr);
		vec = cr.vec;
		dim = cr.dim;
		model = app->embedder.model;
	}
	long long ttl = rq->ttl > 0 ? rq->ttl : app->cfg->cache_ttl;
	char id[65];
	cache_new_id(id);
	/* in the slot bucket of its exact key (semgate/store/layout.h) */
	store_entry_id_fit(tenant, si.exact, id);
	char part[VINDEX_KEY_MAX];
	cache_partition_key(part, sizeof(part), tenant, si.scope, model);
	if (vec) {
		/* Check the partition first with a row that is already expired,
		 * invisible to searches: a vector that does not fit is refused
		 * before Redis is touched, and no search can meet the id before
		 * its entry exists. */
		struct sg_error ve = { 0 };
		enum sg_err arc = vindex_add(app->vindex, part, dim, id, vec, 1, &ve);
		if (arc == SG_ERR_BAD_REQUEST && rq->vector) {
			rc = vector_misfit(e, &ve);
			goto out;
		}
		if (arc != SG_OK) {
			sg_log(SG_LOG_WARN, "entry stored without an index row: %s", ve.msg);
			vec = NULL;
		}
	}
	struct store_entry en = {
		.id = id,
		.query = rq->query,
		.query_len = rq->query_len,
		.answer = rq->answer,
		.answer_len = rq->answer_len,
		.scope = si.scope,
		.ns = rq->ns,
		.exact = si.exact,
		.vec = vec,
		.dim = dim,
		.emb_model = vec ? model : "",
		.created = (long long)time(NULL),
		.tokens = 0,
		.ttl_s = ttl,
		.kind = "text",
		.tags = rq->tags,
		.ntags = rq->ntags,
		.metadata = rq->metadata,
		.metadata_len = rq->metadata_len,
	};
	rc = store_entry_put(s, tenant, &en, e);
	char hkey[512];
	/* the exact key now names this entry: no hot copy of what it held */
	if (rc != SG_ERR_NOMEM &&
	    store_exact_keyname(app->cfg, tenant, si.exact, hkey, sizeof(hkey)))
		hot_invalidate(app->hot, hkey, strlen(hkey));
	if (rc == SG_ERR_REDIS && vec) {
		/* the EXEC may have run before the connection failed: keep a
		 * row (this process skips its own add events); a lookup that
		 * meets a row whose entry is missing drops it */
		vindex_add(app->vindex, part, dim, id, vec, sg_wall_ms() + ttl * 1000, NULL);
	}
	if (rc != SG_OK)
		goto out;
	if (vec) {
		struct sg_error ve = { 0 };
		if (vindex_add(app->vindex, part, dim, id, vec, sg_wall_ms() + ttl * 1000, &ve) != SG_OK)
			sg_log(SG_LOG_WARN, "entry %s stored without an index row: %s", id, ve.msg);
		else
			*indexed = true;
	}
	memcpy(id_out, id, sizeof(id));
out:
	cache_result_finish(&cr);
	scope_info_finish(&si);
	return rc;
}

static void unindex(void *ud, const char *id)
{
	struct sg_app *app = ud;
	vindex_remove(app->vindex, id);
}

enum sg_err cache_api_delete(struct sg_app *app, struct store *s, const char *tenant,
			     const char *id, bool *found, struct sg_error *e)
{
	enum sg_err rc = store_entry_delete(s, tenant, id, found, e);
	if (rc == SG_OK && *found)
		vindex_remove(app->vindex, id);
	/* the hot copies are keyed by exact key, not id: drop them all so
	 * this process never serves the entry after answering the delete
	 * (Redis's invalidation would drop them a moment later) */
	hot_clear(app->hot);
	return rc;
}

/* The threshold just above question q's similarity to entry v (0 when it
 * cannot be known: no vector, another embedding model, no embedder). */
static double raised_threshold(struct sg_app *app, struct upstream *up,
			       const struct store_entry_view *v, const char *q, size_t qlen)
{
	if (v->dim <= 0 || strcmp(v->model, app->embedder.model) != 0)
		return 0;
	struct scope_info si = { .query = (char *)q, .query_len = qlen };
	struct cache_result cr = { 0 };
	cache_embed_query(app, up, &si, &cr);
	float sim = 0;
	bool found = false;
	struct sg_error ve = { 0 };
	if (cr.vec && vindex_score(app->vindex, v->id, cr.dim, cr.vec, &sim, &found, &ve) != SG_OK)
		found = false;
	cache_result_finish(&cr);
	return found ? (double)nextafterf(sim, 2.0f) : 0;
}

enum sg_err cache_api_feedback(struct sg_app *app, struct store *s, struct upstream *up,
			       const char *tenant, const struct cache_api_req *rq,
			       struct cache_feedback_result *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	struct store_entry_view v;
	enum sg_err rc = store_entry_read(s, tenant, rq->id, &v, &out->found, e);
	if (rc != SG_OK || !out->found)
		return rc;
	char qk[17], own[17];
	cache_question_key(rq->query, rq->query_len, qk);
	cache_question_key(v.query, v.query_len, own);
	double min_sim = rq->wrong ? raised_threshold(app, up, &v, rq->query, rq->query_len) : 0;
	rc = store_entry_feedback(s, tenant, rq->id, rq->wrong, qk, min_sim, &out->wrong,
				  &out->right, &out->threshold, &out->found, e);
	if (rc == SG_OK && out->found && rq->wrong &&
	    (out->wrong >= CACHE_FEEDBACK_DELETE_AFTER || strcmp(qk, own) == 0)) {
		/* wrong for its own question, or wrong too often: gone */
		rc = cache_api_delete(app, s, tenant, rq->id, &out->deleted, e);
	}
	store_entry_view_finish(&v);
	return rc;
}

enum sg_err cache_api_invalidate(struct sg_app *app, struct store *s, const char *tenant,
				 const char *ns, const char *tag, long long *deleted,
				 struct sg_error *e)
{
	enum sg_err rc = store_invalidate(s, tenant, ns, tag, unindex, app, deleted, e);
	hot_clear(app->hot);
	return rc;
}

/* ---- JSON ---- */

cJSON *cache_api_entry_json(const struct store_entry_view *v)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *tags = cJSON_CreateArray();
	cJSON *meta = NULL;
	if (!o || !tags)
		goto fail;
	if (v->metadata && sg_json_parse(v->metadata, v->metadata_len, &meta, NULL) != SG_OK)
		meta = NULL;
	if (!meta && !(meta = cJSON_CreateNull()))
		goto fail;
	char *copy = strdup(v->tags ? v->tags : "");
	if (!copy)
		goto fail;
	char *save = NULL;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		cJSON *s = cJSON_CreateString(t);
		if (!s) {
			free(copy);
			goto fail;
		}
		cJSON_AddItemToArray(tags, s);
	}
	free(copy);
	if (!cJSON_AddStringToObject(o, "id", v->id) ||
	    !cJSON_AddStringToObject(o, "kind", v->kind) ||
	    !cJSON_AddStringToObject(o, "query", v->query) ||
	    !cJSON_AddStringToObject(o, "answer", v->answer) ||
	    !cJSON_AddStringToObject(o, "namespace", v->ns) ||
	    !cJSON_AddStringToObject(o, "scope", v->scope))
		goto fail;
	cJSON_AddItemToObject(o, "tags", tags);
	tags = NULL;
	cJSON_AddItemToObject(o, "metadata", meta);
	meta = NULL;
	if (!cJSON_AddNumberToObject(o, "created", (double)v->created) ||
	    !cJSON_AddNumberToObject(o, "hits", (double)v->hits) ||
	    !cJSON_AddNumberToObject(o, "ttl_seconds", (double)v->ttl_s) ||
	    !cJSON_AddNumberToObject(o, "dim", v->dim) ||
	    !cJSON_AddStringToObject(o, "model", v->model))
		goto fail;
	return o;
fail:
	cJSON_Delete(o);
	cJSON_Delete(tags);
	cJSON_Delete(meta);
	return NULL;
}

static double round6(double x)
{
	return round(x * 1e6) / 1e6;
}

cJSON *cache_api_stats_json(const struct store_stats *st, double price_prompt_per_1k,
			    double price_completion_per_1k)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	long long hits = st->hits_exact + st->hits_semantic;
	double rate = st->lookups > 0 ? (double)hits / (double)st->lookups : 0.0;
	double cost = (double)st->tokens_prompt / 1000.0 * price_prompt_per_1k +
		      (double)st->tokens_completion / 1000.0 * price_completion_per_1k;
	const struct {
		const char *name;
		double v;
	} f[] = {
		{ "entries", (double)st->entries },
		{ "indexed_entries", (double)st->indexed },
		{ "bytes", (double)st->bytes },
		{ "vector_bytes", (double)st->vector_bytes },
		{ "lookups", (double)st->lookups },
		{ "hits", (double)hits },
		{ "hits_exact", (double)st->hits_exact },
		{ "hits_semantic", (double)st->hits_semantic },
		{ "misses", (double)st->misses },
		{ "hit_rate", round6(rate) },
		{ "tokens_saved_prompt", (double)st->tokens_prompt },
		{ "tokens_saved_completion", (double)st->tokens_completion },
		{ "tokens_saved", (double)(st->tokens_prompt + st->tokens_completion) },
		{ "estimated_cost_saved", round6(cost) },
		{ "price_prompt_per_1k", price_prompt_per_1k },
		{ "price_completion_per_1k", price_completion_per_1k },
	};
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		if (!cJSON_AddNumberToObject(o, f[i].name, f[i].v)) {
			cJSON_Delete(o);
			return NULL;
		}
	}
	return o;
}
