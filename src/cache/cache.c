/* The exact + semantic cache. Partition keys are built here from tenant,
 * scope and embedding model, so two requests of different scopes can never
 * meet in one partition; a hit whose entry is gone from Redis is dropped
 * from the index and treated as a miss. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "semgate/app/app.h"
#include "semgate/cache/api.h"
#include "semgate/cache/behind.h"
#include "semgate/cache/cache.h"
#include "semgate/core/clock.h"
#include "semgate/core/digest.h"
#include "semgate/embed/embed.h"
#include "semgate/cache/hotcache.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/core/metrics.h"
#include "semgate/store/layout.h"
#include "semgate/store/ops.h"
#include "semgate/store/store.h"
#include "semgate/vindex/vindex.h"

void cache_result_finish(struct cache_result *r)
{
	if (!r)
		return;
	free(r->answer);
	free(r->vec);
	r->answer = NULL;
	r->vec = NULL;
}

void cache_new_id(char out[65])
{
	sg_random_hex(out, 16);
}

static void partition_key(char *out, size_t cap, const char *tenant, const char *scope,
			  const char *model)
{
	snprintf(out, cap, "%s\x1f%s\x1f%s", tenant, scope, model);
}

void cache_partition_key(char *out, size_t cap, const char *tenant, const char *scope,
			 const char *model)
{
	partition_key(out, cap, tenant, scope, model);
}

/* The best row of partition part for vec at or above the similarity
 * floor (SEMGATE_SIMILARITY_FLOOR, or the threshold when that is lower):
 * one search, timed. Rows below the floor can be neither served nor worth
 * reporting, and leaving them out spares the search re-reading the codes
 * of every close rival of a miss (docs/PERFORMANCE.md). */
static enum sg_err search_best(struct sg_app *app, const char *part, const float *vec, int dim,
			       double threshold, struct vindex_hit *best, struct sg_error *e)
{
	double lo = app->cfg->similarity_floor < threshold ? app->cfg->similarity_floor : threshold;
	double t0 = sg_now_ms();
	enum sg_err rc = vindex_search_min(app->vindex, part, dim, vec, (float)lo,
					   sg_wall_ms(), best, e);
	metrics_observe(SG_H_SEARCH, sg_now_ms() - t0);
	return rc;
}

/* The exact key from Redis. With the local embedder the question is also
 * embedded and searched while the GET is on its way: a miss then pays one
 * round trip or one search, whichever is longer, not their sum. Only a
 * lookup the exact key answers wastes the search; a remote embedder is a
 * paid call, never made before the exact key has missed. *first_ok says
 * whether *first holds the search's answer. */
static enum sg_err exact_then_search(struct sg_app *app, struct store *s, struct upstream *up,
				     const char *tenant, const struct scope_info *si,
				     bool semantic, double threshold, const char *part,
				     long long *pttl, struct store_answer *a, bool *found,
				     struct cache_result *out, struct vindex_hit *first, bool *first_ok,
				     struct sg_error *e)
{
	*first_ok = false;
	enum sg_err rc = store_exact_send(s, tenant, si->exact, pttl != NULL, e);
	if (rc != SG_OK)
		return rc;
	if (semantic && app->embedder.local &&
	    !atomic_load_explicit(&app->warming, memory_order_acquire)) {
		cache_embed_query(app, up, si, out);
		struct sg_error se = { 0 };
		/* a refused search is searched (and reported) again by the match */
		*first_ok = out->vec && search_best(app, part, out->vec, out->dim, threshold, first,
						    &se) == SG_OK;
	}
	return store_exact_recv(s, a, found, pttl, e);
}

enum sg_err cache_lookup(struct sg_app *app, struct store *s, struct upstream *up,
			 const char *tenant, const struct scope_info *si,
			 bool semantic, double threshold, enum verify_mode verify,
			 struct cache_result *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	out->similarity = -2.0;
	struct store_answer a;
	bool found = false;
	/* the hot copy first (hotcache.h); a miss there asks Redis, and an
	 * answer Redis gives is kept for the next time */
	char hkey[512];
	bool hot = hot_enabled(app->hot) &&
		   store_exact_keyname(app->cfg, tenant, si->exact, hkey, sizeof(hkey));
	if (hot && hot_get(app->hot, hkey, out->id, &out->answer, &out->answer_len,
			   &out->meta)) {
		out->hit = true;
		out->similarity = 1.0;
		return SG_OK;
	}
	uint64_t token = hot ? hot_token(app->hot, hkey) : 0;
	long long pttl = -2;
	char part[VINDEX_KEY_MAX] = "";
	if (semantic)
		partition_key(part, sizeof(part), tenant, si->scope, app->embedder.model);
	struct vindex_hit first;
	bool first_ok = false;
	/* an answer whose store is still queued (behind.h) first: asked after
	 * Redis, it could be written and forgotten in between */
	bool pending = behind_get_exact(app->behind, tenant, si->exact, &a);
	found = pending;
	enum sg_err rc = pending ? SG_OK
				 : exact_then_search(app, s, up, tenant, si, semantic, threshold,
						     part, hot ? &pttl : NULL, &a, &found, out, &first,
						     &first_ok, e);
	if (rc != SG_OK)
		return rc;
	if (found && strcmp(a.kind, "chat") != 0) {
		/* a sidecar text answer is never served as a completion */
		store_answer_finish(&a);
		found = false;
	}
	if (found && hot && !pending) {
		struct hot_meta meta;
		cache_answer_meta(a.answer, a.answer_len, &meta);
		hot_put(app->hot, hkey, token, a.id, a.answer, a.answer_len, pttl, &meta);
	}
	if (found) {
		free(out->vec); /* searched ahead for nothing */
		out->vec = NULL;
		out->dim = 0;
		out->hit = true;
		memcpy(out->id, a.id, sizeof(out->id));
		out->answer = a.answer;
		out->answer_len = a.answer_len;
		out->similarity = 1.0;
		/* the token count lives in the entry; the exact value is what
		 * the answer's usage says, read by the caller from the answer */
		return SG_OK;
	}
	if (!semantic)
		return SG_OK;

	if (!out->vec && !out->embed_failed)
		cache_embed_query(app, up, si, out);
	if (!out->vec)
		return SG_OK;
	struct cache_match_req mr = {
		.tenant = tenant,
		.part = part,
		.vec = out->vec,
		.dim = out->dim,
		.threshold = threshold,
		.kind = "chat",
		.verify = verify,
		.query = si->query,
		.query_len = si->query_len,
		.candidates = (int)app->cfg->verify_candidates,
		.first = first_ok ? &first : NULL,
	};
	struct cache_match m;
	rc = cache_match_find(app, s, &mr, &m, e);
	if (rc == SG_ERR_BAD_REQUEST) {
		/* a dimension change of the embedding model: a miss, and the
		 * new vector cannot be stored in this partition either */
		sg_log(SG_LOG_WARN, "semantic lookup refused: %s", e->msg);
		free(out->vec);
		out->vec = NULL;
		return SG_OK;
	}
	if (rc != SG_OK)
		return rc;
	out->similarity = m.best;
	out->warming = m.warming;
	out->rejected = m.rejected;
	memcpy(out->rejected_id, m.rejected_id, sizeof(out->rejected_id));
	if (m.hit) {
		out->hit = true;
		out->semantic = true;
		memcpy(out->id, m.entry.id, sizeof(out->id));
		out->answer = m.entry.answer;
		out->answer_len = m.entry.answer_len;
		out->tokens = m.entry.tokens;
		m.entry.answer = NULL;
	}
	cache_match_finish(&m);
	return SG_OK;
}

void cache_match_finish(struct cache_match *m)
{
	if (m)
		store_entry_view_finish(&m->entry);
}

void cache_question_key(const char *q, size_t len, char out[17])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestInit_ex(ctx, sg_sha256(), NULL) == 1;
	/* ASCII lowercased, runs of white space as one space, none at the ends */
	bool space = false, any = false;
	for (size_t i = 0; ok && i < len; i++) {
		unsigned char c = (unsigned char)q[i];
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
			space = any;
			continue;
		}
		char b[2] = { ' ', (char)(c >= 'A' && c <= 'Z' ? c + 32 : c) };
		ok = EVP_DigestUpdate(ctx, space ? b : b + 1, space ? 2 : 1) == 1;
		space = false;
		any = true;
	}
	ok = ok && EVP_DigestFinal_ex(ctx, md, &n) == 1 && n >= 8;
	EVP_MD_CTX_free(ctx);
	for (int i = 0; i < 8; i++) {
		out[2 * i] = ok ? hex[md[i] >> 4] : '0';
		out[2 * i + 1] = ok ? hex[md[i] & 15] : '0';
	}
	out[16] = '\0';
}

/* Has feedback refused question key k for entry v? */
static bool refused(const struct store_entry_view *v, const char k[17])
{
	for (const char *p = v->refused; p && (p = strstr(p, k)); p += 16)
		if ((p == v->refused || p[-1] == ' ') && (p[16] == ' ' || p[16] == '\0'))
			return true;
	return false;
}

/* The verdict on candidate v, sim similar to rq's question: PASS, a
 * verifier rule, FEEDBACK (an operator said this entry is wrong for this
 * question, or sim is below the entry's own raised threshold; in every
 * verifier mode), or (for an entry of the wrong kind)
 * SG_VERIFY_REASON_COUNT, which is no verdict. */
static enum verify_reason judge(const struct cache_match_req *rq,
				const struct store_entry_view *v, double sim)
{
	if (strcmp(v->kind, rq->kind) != 0)
		return SG_VERIFY_REASON_COUNT; /* never a text entry as a completion */
	if (v->min_sim > 0 && sim < v->min_sim)
		return SG_VERIFY_FEEDBACK;
	if (v->refused && v->refused[0]) {
		char k[17];
		cache_question_key(rq->query, rq->query_len, k);
		if (refused(v, k))
			return SG_VERIFY_FEEDBACK;
	}
	return verify_pair(rq->verify, rq->query, rq->query_len, v->query, v->query_len);
}

/* Record candidate v's verdict r in out; true when it is served (v moved
 * into out->entry). */
static bool take(struct cache_match *out, enum verify_reason r, struct store_entry_view *v)
{
	if (r == SG_VERIFY_PASS) {
		out->hit = true;
		out->entry = *v;
		memset(v, 0, sizeof(*v));
		return true;
	}
	if (r != SG_VERIFY_REASON_COUNT && out->rejected == SG_VERIFY_PASS) {
		out->rejected = r;
		memcpy(out->rejected_id, v->id, sizeof(out->rejected_id));
	}
	return false;
}

/* store_entry_read_many, with the entries whose store is still queued
 * (behind.h) read from there first: asked after Redis, one could be
 * written and forgotten in between, and its row dropped as if deleted. */
static enum sg_err read_entries(struct sg_app *app, struct store *s, const char *tenant,
				const char **ids, size_t m, struct store_entry_view *views,
				bool *found, struct sg_error *e)
{
	const char *rest[VINDEX_TOPK_MAX];
	size_t at[VINDEX_TOPK_MAX], n = 0;
	for (size_t i = 0; i < m; i++)
		if (!(found[i] = behind_get_entry(app->behind, tenant, ids[i], &views[i]))) {
			at[n] = i;
			rest[n++] = ids[i];
		}
	if (n == 0)
		return SG_OK;
	struct store_entry_view rv[VINDEX_TOPK_MAX];
	bool rf[VINDEX_TOPK_MAX];
	enum sg_err rc = store_entry_read_many(s, tenant, rest, n, rv, rf, e);
	if (rc != SG_OK) {
		for (size_t i = 0; i < m; i++)
			if (found[i])
				store_entry_view_finish(&views[i]);
		return rc;
	}
	for (size_t k = 0; k < n; k++) {
		views[at[k]] = rv[k];
		found[at[k]] = rf[k];
	}
	return SG_OK;
}

/* The best row was refused: try the next ones at or above the threshold,
 * read in one round trip, best first. */
static enum sg_err match_more(struct sg_app *app, struct store *s,
			      const struct cache_match_req *rq, const char *first,
			      struct cache_match *out, struct sg_error *e)
{
	struct vindex_hit hits[VINDEX_TOPK_MAX];
	int n = 0;
	struct sg_error ve = { 0 };
	double t0 = sg_now_ms();
	enum sg_err rc = vindex_search_top(app->vindex, rq->part, rq->dim, rq->vec,
					   (float)rq->threshold, rq->candidates, sg_wall_ms(),
					   hits, &n, &ve);
	metrics_observe(SG_H_SEARCH, sg_now_ms() - t0);
	if (rc != SG_OK)
		return SG_OK; /* keep the miss the first search gave */
	const char *ids[VINDEX_TOPK_MAX];
	double sims[VINDEX_TOPK_MAX];
	size_t m = 0;
	for (int i = 0; i < n; i++)
		if ((double)hits[i].similarity >= rq->threshold && strcmp(hits[i].id, first) != 0) {
			sims[m] = hits[i].similarity;
			ids[m++] = hits[i].id;
		}
	struct store_entry_view views[VINDEX_TOPK_MAX];
	bool found[VINDEX_TOPK_MAX];
	if ((rc = read_entries(app, s, rq->tenant, ids, m, views, found, e)) != SG_OK)
		return rc;
	for (size_t i = 0; i < m; i++) {
		if (!found[i])
			vindex_remove(app->vindex, ids[i]); /* expired or deleted */
		else if (!out->hit && take(out, judge(rq, &views[i], sims[i]), &views[i]))
			out->best = sims[i];
		store_entry_view_finish(&views[i]);
	}
	return SG_OK;
}

enum sg_err cache_match_find(struct sg_app *app, struct store *s, const struct cache_match_req *rq,
			     struct cache_match *out, struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	out->best = -2.0;
	/* a partly loaded index would serve a lesser match than the one still
	 * to come, or none, depending on the moment: no search until it is whole */
	if (atomic_load_explicit(&app->warming, memory_order_acquire)) {
		out->warming = true;
		return SG_OK;
	}
	/* The best row alone first: a miss costs one search, as without the
	 * verifier, and a hit that passes one search and one read. */
	for (int attempt = 0; attempt < 3; attempt++) {
		struct vindex_hit best;
		enum sg_err rc = SG_OK;
		if (attempt == 0 && rq->first)
			best = *rq->first;
		else
			rc = search_best(app, rq->part, rq->vec, rq->dim, rq->threshold, &best, e);
		if (rc != SG_OK)
			return rc;
		if (!best.found)
			return SG_OK;
		out->best = best.similarity;
		if ((double)best.similarity < rq->threshold)
			return SG_OK;
		struct store_entry_view v;
		bool found = false;
		if (!(found = behind_get_entry(app->behind, rq->tenant, best.id, &v)) &&
		    (rc = store_entry_read(s, rq->tenant, best.id, &v, &found, e)) != SG_OK)
			return rc;
		if (!found) {
			/* expired or deleted in Redis: forget it and look again */
			vindex_remove(app->vindex, best.id);
			out->best = -2.0;
			continue;
		}
		enum verify_reason r = judge(rq, &v, best.similarity);
		bool served = take(out, r, &v);
		store_entry_view_finish(&v);
		if (served || r == SG_VERIFY_REASON_COUNT || rq->candidates < 2)
			break;
		if ((rc = match_more(app, s, rq, best.id, out, e)) != SG_OK) {
			store_entry_view_finish(&out->entry);
			out->hit = false;
			return rc;
		}
		break;
	}
	if (out->rejected != SG_VERIFY_PASS)
		metrics_verify_rejection(verify_reason_name(out->rejected));
	return SG_OK;
}

void cache_embed_query(struct sg_app *app, struct upstream *up,
		       const struct scope_info *si, struct cache_result *out)
{
	struct sg_error ee = { 0 };
	float *vec = NULL;
	int dim = 0;
	if (!up || embedder_embed(&app->embedder, up, si->query, si->query_len, &vec, &dim,
				  &ee) != SG_OK) {
		sg_log(SG_LOG_WARN, "embedding failed, continuing without the semantic cache: %s",
		       ee.msg);
		out->embed_failed = true;
		return;
	}
	if (vindex_normalize(vec, dim) == 0.0f) {
		free(vec);
		out->embed_failed = true;
		return;
	}
	out->vec = vec;
	out->dim = dim;
}

/* choices[0].message.content of a completion, or NULL. */
static const char *answer_text(const cJSON *completion)
{
	const cJSON *c0 = cJSON_GetArrayItem(sg_json_arr(completion, "choices"), 0);
	return sg_json_str(sg_json_obj(c0, "message"), "content");
}

bool cache_shadow_agrees(struct sg_app *app, struct upstream *up, const char *cached,
			 size_t len, const cJSON *fresh, double agree_min, double *answer_sim)
{
	*answer_sim = -2.0;
	cJSON *old = NULL;
	if (sg_json_parse(cached, len, &old, NULL) != SG_OK)
		return false;
	const char *a = answer_text(old), *b = answer_text(fresh);
	bool agree = false;
	if (a && b && strcmp(a, b) == 0) {
		*answer_sim = 1.0;
		agree = true;
	} else if (a && b && up) {
		float *va = NULL, *vb = NULL;
		int da = 0, db = 0;
		struct sg_error ee = { 0 };
		if (embedder_embed(&app->embedder, up, a, strlen(a), &va, &da, &ee) == SG_OK &&
		    embedder_embed(&app->embedder, up, b, strlen(b), &vb, &db, &ee) == SG_OK &&
		    da == db && vindex_normalize(va, da) > 0 && vindex_normalize(vb, db) > 0) {
			double d = 0;
			for (int i = 0; i < da; i++)
				d += (double)va[i] * vb[i];
			*answer_sim = d;
			agree = d >= agree_min;
		} else if (ee.msg[0]) {
			sg_log(SG_LOG_WARN, "shadow comparison not counted: %s", ee.msg);
		}
		free(va);
		free(vb);
	}
	cJSON_Delete(old);
	return agree;
}

enum sg_err cache_shadow_record(struct store *s, const char *tenant, const char *ns,
				double sim, bool agree, struct sg_error *e)
{
	/* at the 6 decimals similarities are shown with, so a float 0.96
	 * (0.959999978) lands in bucket 96 */
	int bucket = (int)floor(round(sim * 1e6) / 1e4);
	if (bucket < 0)
		bucket = 0;
	if (bucket > STORE_CAL_BUCKETS - 1)
		bucket = STORE_CAL_BUCKETS - 1;
	metrics_shadow(agree);
	return store_calibration_add(s, tenant, ns, bucket, agree, e);
}

bool cache_answer_cacheable(const cJSON *completion)
{
	const cJSON *choices = sg_json_arr(completion, "choices");
	if (cJSON_GetArraySize(choices) != 1)
		return false;
	const cJSON *c0 = cJSON_GetArrayItem(choices, 0);
	const char *fr = sg_json_str(c0, "finish_reason");
	if (!fr || (strcmp(fr, "stop") != 0 && strcmp(fr, "length") != 0))
		return false;
	const cJSON *msg = sg_json_obj(c0, "message");
	if (!msg || !sg_json_str(msg, "content"))
		return false;
	const cJSON *tc = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
	if (tc && !cJSON_IsNull(tc) && !(cJSON_IsArray(tc) && cJSON_GetArraySize(tc) == 0))
		return false;
	const cJSON *fc = cJSON_GetObjectItemCaseSensitive(msg, "function_call");
	return !fc || cJSON_IsNull(fc);
}

long long cache_answer_tokens(const cJSON *completion)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(sg_json_obj(completion, "usage"),
							  "total_tokens");
	/* the upstream's number: 1e999 (infinity) or 1e300 would be undefined
	 * to convert */
	return cJSON_IsNumber(t) && t->valuedouble >= 0 && t->valuedouble <= 1e15 ?
		(long long)t->valuedouble : 0;
}

enum sg_err cache_store(struct sg_app *app, struct store *s, const char *tenant,
			const char *ns, const struct scope_info *si, bool exact,
			const char *answer, size_t answer_len, long long tokens,
			const float *vec, int dim, long long ttl_s, char id_out[65],
			struct sg_error *e)
{
	cache_new_id(id_out);
	/* in the slot bucket of its exact key (semgate/store/layout.h) */
	store_entry_id_fit(tenant, si->exact, id_out);
	return cache_store_as(app, s, tenant, ns, si, exact, answer, answer_len, tokens, vec, dim,
			      ttl_s, id_out, e);
}

enum sg_err cache_store_send(struct sg_app *app, struct store *s, const char *tenant,
			     const char *ns, const struct scope_info *si, bool exact,
			     const char *answer, size_t answer_len, long long tokens,
			     const float *vec, int dim, long long ttl_s, const char *id,
			     struct store_put *p, struct sg_error *e)
{
	struct store_entry en = {
		.id = id,
		.query = si->query,
		.query_len = si->query_len,
		.answer = answer,
		.answer_len = answer_len,
		.scope = si->scope,
		.ns = ns ? ns : "",
		.exact = exact ? si->exact : NULL,
		.vec = vec,
		.dim = dim,
		.emb_model = vec ? app->embedder.model : "",
		.created = (long long)time(NULL),
		.tokens = tokens,
		.ttl_s = ttl_s,
	};
	return store_entry_put_send(s, tenant, &en, p, e);
}

enum sg_err cache_store_recv(struct sg_app *app, struct store *s, const char *tenant,
			     const struct scope_info *si, bool exact, struct store_put *p,
			     struct sg_error *e)
{
	enum sg_err rc = store_pipeline_lost(s)
		? sg_error_set(e, SG_ERR_REDIS, "redis connection lost before the reply")
		: store_entry_put_recv(s, p, e);
	char hkey[512];
	/* a newer answer under an exact key: this process's next lookup must
	 * see it at once, not when Redis's invalidation arrives */
	if (exact && app->hot &&
	    store_exact_keyname(app->cfg, tenant, si->exact, hkey, sizeof(hkey)))
		hot_invalidate(app->hot, hkey, strlen(hkey));
	return rc;
}

enum sg_err cache_store_redis(struct sg_app *app, struct store *s, const char *tenant,
			      const char *ns, const struct scope_info *si, bool exact,
			      const char *answer, size_t answer_len, long long tokens,
			      const float *vec, int dim, long long ttl_s, const char *id,
			      struct sg_error *e)
{
	struct store_put p;
	enum sg_err rc = cache_store_send(app, s, tenant, ns, si, exact, answer, answer_len,
					  tokens, vec, dim, ttl_s, id, &p, e);
	if (rc == SG_OK)
		rc = cache_store_recv(app, s, tenant, si, exact, &p, e);
	if (rc == SG_OK)
		store_entry_put_finish(s, tenant, id, &p);
	return rc;
}

enum sg_err cache_index_add(struct sg_app *app, const char *tenant, const char *scope,
			    const float *vec, int dim, long long ttl_s, const char *id,
			    struct sg_error *e)
{
	char part[VINDEX_KEY_MAX];
	partition_key(part, sizeof(part), tenant, scope, app->embedder.model);
	return vindex_add(app->vindex, part, dim, id, vec, sg_wall_ms() + ttl_s * 1000, e);
}

enum sg_err cache_store_as(struct sg_app *app, struct store *s, const char *tenant,
			   const char *ns, const struct scope_info *si, bool exact,
			   const char *answer, size_t answer_len, long long tokens,
			   const float *vec, int dim, long long ttl_s, const char *id,
			   struct sg_error *e)
{
	enum sg_err rc = cache_store_redis(app, s, tenant, ns, si, exact, answer, answer_len,
					   tokens, vec, dim, ttl_s, id, e);
	/* SG_ERR_REDIS: the EXEC may have run before the connection failed,
	 * and this process skips its own add events, so it keeps a row; a
	 * semantic match on a row whose entry is missing drops it */
	if ((rc != SG_OK && rc != SG_ERR_REDIS) || !vec)
		return rc;
	struct sg_error ve = { 0 };
	if (cache_index_add(app, tenant, si->scope, vec, dim, ttl_s, id, &ve) != SG_OK &&
	    rc == SG_OK)
		sg_log(SG_LOG_WARN, "entry %s stored without an index row: %s", id, ve.msg);
	return rc;
}

static int count_members(const cJSON *obj, const char *key)
{
	int n = 0;
	for (const cJSON *it = obj->child; it; it = it->next)
		n += it->string && strcmp(it->string, key) == 0;
	return n;
}

/* Set member key of obj to item (replacing the first one, or adding it). */
static void set_member(cJSON *obj, const char *key, cJSON *item)
{
	/* (cJSON_HasObjectItem would match "crEated" too) */
	if (cJSON_GetObjectItemCaseSensitive(obj, key))
		cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item);
	else
		cJSON_AddItemToObject(obj, key, item);
}

/* A fresh completion id and created for a hit. */
struct fresh {
	char cid[80], quoted[90], created[24];
	long long now;
};

static void fresh_make(struct fresh *f)
{
	char id[65];
	cache_new_id(id);
	snprintf(f->cid, sizeof(f->cid), "chatcmpl-sg%.24s", id);
	snprintf(f->quoted, sizeof(f->quoted), "\"%s\"", f->cid);
	f->now = (long long)time(NULL);
	snprintf(f->created, sizeof(f->created), "%lld", f->now);
}

/* The stored bytes with f's values replaced in place (absent ones added
 * first, id before created); NULL when not possible (a member name with an
 * escape) or out of memory. */
static char *splice_fresh(const char *answer, size_t len, const struct fresh *f)
{
	char *step = sg_json_member_put(answer, len, "created", f->created);
	char *out = step ? sg_json_member_put(step, strlen(step), "id", f->quoted) : NULL;
	free(step);
	return out;
}

/* A stored answer that names id or created twice keeps only the new one,
 * rendered from the tree. */
static bool has_duplicate_fresh(const cJSON *doc)
{
	return count_members(doc, "id") > 1 || count_members(doc, "created") > 1;
}

char *cache_render_hit_spliced(const char *answer, size_t len)
{
	struct fresh f;
	fresh_make(&f);
	return splice_fresh(answer, len, &f);
}

void cache_answer_usage(const cJSON *doc, struct hot_meta *m)
{
	m->tokens = cache_answer_tokens(doc);
	cache_api_usage(doc, &m->prompt, &m->completion);
}

void cache_answer_meta(const char *answer, size_t len, struct hot_meta *m)
{
	/* whether a splice succeeds depends on the stored bytes, not on the
	 * values spliced in: placeholders of the same shape spare an id */
	static const struct fresh probe = { .cid = "chatcmpl-sg", .quoted = "\"chatcmpl-sg\"",
					    .created = "0", .now = 0 };
	cJSON *doc = NULL;
	*m = (struct hot_meta){ 0 };
	if (sg_json_parse(answer, len, &doc, NULL) != SG_OK || !cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		return;
	}
	char *spliced = has_duplicate_fresh(doc) ? NULL : splice_fresh(answer, len, &probe);
	m->spliceable = spliced != NULL;
	free(spliced);
	cache_answer_usage(doc, m);
	m->known = true;
	cJSON_Delete(doc);
}

char *cache_render_hit(const char *answer, size_t len, cJSON **doc_out)
{
	cJSON *doc = NULL;
	*doc_out = NULL;
	if (sg_json_parse(answer, len, &doc, NULL) != SG_OK || !cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		return NULL;
	}
	struct fresh f;
	fresh_make(&f);
	cJSON *nid = cJSON_CreateString(f.cid);
	cJSON *ncreated = cJSON_CreateNumber((double)f.now);
	if (!nid || !ncreated) {
		cJSON_Delete(nid);
		cJSON_Delete(ncreated);
		cJSON_Delete(doc);
		return NULL;
	}
	bool dup = has_duplicate_fresh(doc);
	while (dup && cJSON_GetObjectItemCaseSensitive(doc, "id"))
		cJSON_DeleteItemFromObjectCaseSensitive(doc, "id");
	while (dup && cJSON_GetObjectItemCaseSensitive(doc, "created"))
		cJSON_DeleteItemFromObjectCaseSensitive(doc, "created");
	set_member(doc, "id", nid);
	set_member(doc, "created", ncreated);

	/* The bytes sent are the stored bytes with the two values replaced
	 * in place (absent ones added first, id before created); only when
	 * that is not possible (a member name with an escape, a duplicate)
	 * are they rendered from the tree. */
	char *out = dup ? NULL : splice_fresh(answer, len, &f);
	if (!out)
		out = sg_json_render(doc);
	if (!out) {
		cJSON_Delete(doc);
		return NULL;
	}
	*doc_out = doc;
	return out;
}

struct rebuild {
	struct sg_app *app;
	size_t added;
	void (*seen)(void *ud, const char *id);
	void *ud;
};

static void rebuild_one(void *ud, const char *tenant, const char *id, const char *scope,
			const char *emb_model, const float *vec, int dim, long long pttl_ms)
{
	struct rebuild *rb = ud;
	char part[VINDEX_KEY_MAX];
	partition_key(part, sizeof(part), tenant, scope, emb_model);
	int64_t expires = pttl_ms > 0 ? sg_wall_ms() + pttl_ms : 0;
	if (vindex_add(rb->app->vindex, part, dim, id, vec, expires, NULL) == SG_OK)
		rb->added++;
	if (rb->seen)
		rb->seen(rb->ud, id);
}

enum sg_err cache_rebuild(struct sg_app *app, struct store *s,
			  void (*seen)(void *ud, const char *id), void *ud,
			  const atomic_bool *stop, size_t *loaded, struct sg_error *e)
{
	struct rebuild rb = { .app = app, .seen = seen, .ud = ud };
	size_t scanned = 0;
	/* entries of the layout before slot buckets move first, so the scan
	 * finds them (one GET once that is done); a failure is retried on the
	 * next rebuild and does not hold up this one */
	struct store_legacy_counts lc;
	struct sg_error le = { 0 };
	if (store_legacy_migrate(s, &lc, &le) != SG_OK)
		sg_log(SG_LOG_WARN, "moving the old-layout cache stopped after %zu entries: %s; "
		       "retried at the next resync", lc.entries, le.msg);
	enum sg_err rc = store_scan_entries(s, rebuild_one, &rb, stop, &scanned, e);
	*loaded = rb.added;
	return rc;
}
