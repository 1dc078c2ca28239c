/* POST /v1/chat/completions: validate, apply gateway headers (memory mode,
 * prompts, cache controls), answer from the cache or call the LLM upstream,
 * store what may be cached, then append the turn to the conversation.
 * Never forwards a body it has not validated, never calls the LLM in memory
 * mode without the history, never caches or appends a failed answer. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "semgate/app/app.h"
#include "semgate/cache/behind.h"
#include "semgate/cache/cache.h"
#include "semgate/cache/api.h"
#include "semgate/cache/flight.h"
#include "semgate/core/clock.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/memory/memory.h"
#include "semgate/core/metrics.h"
#include "semgate/core/prompts.h"
#include "semgate/routes/routes.h"
#include "semgate/cache/scope.h"
#include "semgate/http/sse.h"
#include "semgate/store/store.h"
#include "semgate/summary/summary.h"
#include "semgate/cache/tally.h"
#include "semgate/upstream/upstream.h"
#include "semgate/vindex/vindex.h"

struct chat {
	struct sg_req *req;
	cJSON *body;            /* the client's request */
	const char *conv;       /* X-Conversation-Id, validated, or NULL */
	bool had_history;       /* memory mode: the conversation had messages */
	double t0;              /* when the route began (sg_now_ms) */
	bool miss_pending;      /* the lookup missed: count it unless a flight answers */
	const char *prompt;     /* system prompt text to prepend, or NULL */
	cJSON *turn;            /* this turn's non-system messages (to store) */
	char *upstream_body;    /* rendered request when it differs from the client's */
	bool stream;            /* "stream": true */
	bool stream_usage;      /* stream_options.include_usage */
	/* cache controls */
	bool no_cache;          /* Cache-Control: no-cache: skip lookup, still store */
	bool no_store;          /* Cache-Control: no-store: neither */
	double threshold;
	enum verify_mode verify; /* SEMGATE_VERIFY or X-Semgate-Verify */
	bool shadow;            /* SEMGATE_SHADOW or X-Semgate-Shadow */
	long long ttl;
	const char *ns;         /* X-Semgate-Namespace or "" */
	/* cache state */
	struct scope_info si;
	struct cache_result cr;
	const char *outcome;    /* hit-exact, hit-semantic, miss, bypass */
	/* shadow mode: the would-be semantic hit, sent upstream anyway */
	char *shadow_answer;    /* its stored completion (owned), or NULL */
	size_t shadow_len;
	double shadow_sim;      /* the question's similarity to it */
	struct flight *flight;  /* this miss leads a flight (flight.h) */
	char entry[65];         /* entry stored or served */
	/* response header values */
	char hdr_len[24];
	char hdr_sim[24];
	char hdr_tokens[24];
	char hdr_verify[32];
	char hdr_shadow[96];
	const char *hdrs[20 + 2 * UPSTREAM_HDR_MAX];
	int nh;
};

static void add_hdr(struct chat *c, const char *name, const char *value)
{
	if (c->nh + 2 < (int)(sizeof(c->hdrs) / sizeof(c->hdrs[0]))) {
		c->hdrs[c->nh++] = name;
		c->hdrs[c->nh++] = value;
		c->hdrs[c->nh] = NULL;
	}
}

/* Pass the upstream's pacing headers (Retry-After, x-ratelimit-*) on with
 * an answer that carries the upstream's status. */
static void add_upstream_headers(struct chat *c, const struct upstream_resp *r)
{
	c->nh = upstream_headers_append(&r->headers, c->hdrs, c->nh,
					(int)(sizeof(c->hdrs) / sizeof(c->hdrs[0])));
}

static bool has_token(const char *list, const char *token)
{
	size_t n = strlen(token);
	for (const char *p = list; (p = strcasestr(p, token)); p += n) {
		bool start = p == list || p[-1] == ',' || p[-1] == ' ' || p[-1] == '\t';
		char after = p[n];
		if (start && (after == '\0' || after == ',' || after == ' ' || after == ';' ||
			      after == '\t'))
			return true;
	}
	return false;
}

/* The client's own Bearer token, passed through only in open mode when
 * the gateway has no upstream key of its own. With gateway keys the
 * client's token is a gateway key and never leaves the gateway. */
static const char *client_bearer(const struct sg_req *req)
{
	if (req->app->cfg->upstream_api_key[0] || req->app->auth)
		return NULL;
	const char *auth = http_header(req, "Authorization");
	if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
		return NULL;
	return auth + 7;
}

static bool is_system(const cJSON *m)
{
	const char *role = sg_json_str(m, "role");
	return role && (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0);
}

/* Read the gateway's request headers. */
static enum sg_err read_headers(struct chat *c, struct sg_error *e)
{
	struct sg_req *req = c->req;
	const char *conv = http_header(req, "X-Conversation-Id");
	if (conv) {
		if (!memory_id_valid(conv))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"X-Conversation-Id must match [A-Za-z0-9._:-]{1,128}");
		c->conv = conv;
	}
	const struct sg_config *cfg = req->app->cfg;
	c->threshold = cfg->semantic_threshold;
	c->ttl = cfg->cache_ttl;
	c->ns = "";
	const char *cc = http_header(req, "Cache-Control");
	if (cc) {
		c->no_store = has_token(cc, "no-store");
		c->no_cache = c->no_store || has_token(cc, "no-cache");
	}
	const char *th = http_header(req, "X-Semgate-Threshold");
	if (th) {
		char *end = NULL;
		errno = 0;
		double v = strtod(th, &end);
		if (errno || end == th || *end || !isfinite(v) || v <= 0.0 || v > 1.0)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"X-Semgate-Threshold must be a number in (0, 1]");
		c->threshold = v;
	}
	enum sg_err rc = route_verify_mode(req, &c->verify, e);
	if (rc != SG_OK)
		return rc;
	c->shadow = cfg->shadow != 0;
	const char *sh = http_header(req, "X-Semgate-Shadow");
	if (sh) {
		if (strcmp(sh, "1") != 0 && strcmp(sh, "0") != 0)
			return sg_error_set(e, SG_ERR_BAD_REQUEST, "X-Semgate-Shadow must be 1 or 0");
		c->shadow = sh[0] == '1';
	}
	const char *ttl = http_header(req, "X-Semgate-TTL");
	if (ttl) {
		char *end = NULL;
		errno = 0;
		long long v = strtoll(ttl, &end, 10);
		if (errno || end == ttl || *end || v < 1 || v > 31536000)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"X-Semgate-TTL must be an integer number of seconds in 1..31536000");
		c->ttl = v;
	}
	const char *ns = http_header(req, "X-Semgate-Namespace");
	if (ns) {
		if (!memory_id_valid(ns))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"X-Semgate-Namespace must match [A-Za-z0-9._:-]{1,128}");
		c->ns = ns;
	}
	const char *name = http_header(req, "X-Semgate-Prompt");
	if (!name && req->app->cfg->default_prompt[0])
		name = req->app->cfg->default_prompt;
	if (name) {
		if (!prompts_name_valid(name))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"X-Semgate-Prompt must match [A-Za-z0-9_-]{1,64}");
		c->prompt = prompts_get(req->app->prompts, name);
		if (!c->prompt)
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"unknown prompt '%s'", name);
	}
	return SG_OK;
}

/* The system message that carries a conversation's running summary, or
 * NULL on out of memory. */
static cJSON *summary_message(const struct store_summary *sm)
{
	char *text = summary_context_text(sm->text, sm->text_len, sm->covered);
	cJSON *sys = text ? cJSON_CreateObject() : NULL;
	if (sys && (!cJSON_AddStringToObject(sys, "role", "system") ||
		    !cJSON_AddStringToObject(sys, "content", text))) {
		cJSON_Delete(sys);
		sys = NULL;
	}
	free(text);
	return sys;
}

/* Build the messages the LLM sees: the new turn's system messages (or the
 * named prompt when it has none), the conversation's running summary when
 * it has one (SEMGATE_SUMMARY=on), the stored history, then the rest of
 * the new turn. Records the turn to store in c->turn. */
static enum sg_err build_request(struct chat *c, struct sg_error *e)
{
	cJSON *msgs = cJSON_GetObjectItemCaseSensitive(c->body, "messages");
	bool has_system = false;
	const cJSON *m;
	cJSON_ArrayForEach(m, msgs)
		has_system |= is_system(m);
	if (has_system)
		c->prompt = NULL;
	if (!c->conv && !c->prompt)
		return SG_OK; /* forward the client's bytes untouched */
	c->turn = cJSON_CreateArray();
	if (!c->turn)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");

	cJSON *history = NULL;
	struct store_summary sm = { 0 };
	if (c->conv) {
		struct store *s = worker_store(c->req->worker);
		long long ttl;
		if (!s)
			return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		enum sg_err rc = c->req->app->summ
			? memory_load_with_summary(s, c->req->tenant, c->conv, &history, &ttl, &sm, e)
			: memory_load(s, c->req->tenant, c->conv, &history, &ttl, e);
		if (rc != SG_OK) {
			if (rc == SG_ERR_REDIS)
				sg_error_set(e, SG_ERR_REDIS,
					"conversation memory is unavailable (Redis): not calling the LLM without the history");
			return rc;
		}
	}
	cJSON *out = cJSON_CreateArray();
	if (!out)
		goto nomem;
	if (c->prompt) {
		cJSON *sys = cJSON_CreateObject();
		if (!sys || !cJSON_AddStringToObject(sys, "role", "system") ||
		    !cJSON_AddStringToObject(sys, "content", c->prompt)) {
			cJSON_Delete(sys);
			goto nomem;
		}
		cJSON_AddItemToArray(out, sys);
	}
	cJSON_ArrayForEach(m, msgs)
		if (is_system(m))
			cJSON_AddItemToArray(out, cJSON_Duplicate(m, 1));
	if (sm.text) {
		/* part of the body, so of the cache scope too: another summary
		 * never shares this turn's entries */
		cJSON *sys = summary_message(&sm);
		if (!sys)
			goto nomem;
		cJSON_AddItemToArray(out, sys);
	}
	c->had_history = cJSON_GetArraySize(history) > 0 || sm.text;
	store_summary_finish(&sm);
	if (history) {
		cJSON *h;
		while ((h = cJSON_DetachItemFromArray(history, 0)))
			cJSON_AddItemToArray(out, h);
	}
	cJSON_ArrayForEach(m, msgs) {
		if (is_system(m))
			continue;
		cJSON_AddItemToArray(out, cJSON_Duplicate(m, 1));
		cJSON_AddItemToArray(c->turn, cJSON_Duplicate(m, 1));
	}
	cJSON_Delete(history);
	cJSON_ReplaceItemInObjectCaseSensitive(c->body, "messages", out);
	c->upstream_body = sg_json_render(c->body);
	if (!c->upstream_body)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	return SG_OK;
nomem:
	store_summary_finish(&sm);
	cJSON_Delete(history);
	cJSON_Delete(out);
	return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
}

/* The assistant message of a completed answer, ready to store, or NULL. */
static cJSON *answer_message(const cJSON *doc)
{
	const cJSON *choices = sg_json_arr(doc, "choices");
	const cJSON *msg = sg_json_obj(cJSON_GetArrayItem(choices, 0), "message");
	if (!msg || !sg_json_str(msg, "role"))
		return NULL;
	cJSON *copy = cJSON_Duplicate(msg, 1);
	if (!copy)
		return NULL;
	/* drop null members (refusal: null, …): they carry nothing */
	for (cJSON *it = copy->child, *next; it; it = next) {
		next = it->next;
		if (cJSON_IsNull(it) && strcmp(it->string, "content") != 0)
			cJSON_DeleteItemFromObjectCaseSensitive(copy, it->string);
	}
	return copy;
}

/* Append this turn and the answer to the conversation; sets the
 * X-Semgate-Memory header. */
static void remember(struct chat *c, const cJSON *doc)
{
	if (!c->conv)
		return;
	cJSON *ans = answer_message(doc);
	if (!ans) {
		add_hdr(c, "X-Semgate-Memory", "not-stored");
		return;
	}
	cJSON_AddItemToArray(c->turn, ans);
	struct sg_error e = { 0 };
	long long len = 0;
	struct store *s = worker_store(c->req->worker);
	enum sg_err rc = s ? summary_append(c->req->app, s, c->req->tenant, c->conv, c->turn,
					    &len, &e) : SG_ERR_NOMEM;
	if (rc != SG_OK) {
		sg_log(SG_LOG_WARN, "conversation %s: the answer was sent but the turn "
		       "could not be stored: %s", c->conv, e.msg);
		/* on the master but not on enough replicas: not acknowledged */
		add_hdr(c, "X-Semgate-Memory", rc == SG_ERR_REPLICAS ? "unconfirmed" : "not-stored");
		return;
	}
	snprintf(c->hdr_len, sizeof(c->hdr_len), "%lld", len);
	add_hdr(c, "X-Semgate-Memory", "stored");
	add_hdr(c, "X-Semgate-History-Length", c->hdr_len);
}

/* The outcome the log and the metrics count: "warming" for a miss whose
 * semantic lookup was skipped while the index loads. X-Semgate-Cache keeps
 * saying "miss" (clients need not learn a new value) and X-Semgate-Index
 * says why. */
static const char *counted_outcome(const struct chat *c)
{
	return c->cr.warming && strcmp(c->outcome, "miss") == 0 ? "warming" : c->outcome;
}

static void add_cache_headers(struct chat *c)
{
	c->req->cache_outcome = counted_outcome(c);
	metrics_cache_outcome(c->req->cache_outcome);
	if (strcmp(c->outcome, "bypass") == 0 && c->req->app->tally)
		tally_bypass(c->req->app->tally, c->req->tenant); /* the series counts it */
	add_hdr(c, "X-Semgate-Cache", c->outcome);
	if (c->cr.warming)
		add_hdr(c, "X-Semgate-Index", "warming");
	if (c->cr.similarity >= -1.0) {
		if (c->cr.similarity == 1.0) /* every exact hit: no printf */
			memcpy(c->hdr_sim, "1.000000", sizeof("1.000000"));
		else
			snprintf(c->hdr_sim, sizeof(c->hdr_sim), "%.6f", c->cr.similarity);
		add_hdr(c, "X-Semgate-Similarity", c->hdr_sim);
		c->req->similarity = c->cr.similarity;
	}
	if (c->entry[0])
		add_hdr(c, "X-Semgate-Entry", c->entry);
	if (!c->cr.hit && c->cr.rejected != SG_VERIFY_PASS) {
		const char *why = verify_reason_name(c->cr.rejected);
		snprintf(c->hdr_verify, sizeof(c->hdr_verify), "rejected=%s", why);
		add_hdr(c, "X-Semgate-Verify", c->hdr_verify);
		c->req->verify = why;
	}
}

/* Send a cached completion as chat.completion.chunk events. */
static int replay_stream(struct chat *c, const cJSON *doc)
{
	struct sg_buf out;
	sg_buf_init(&out, 0);
	const char *id = sg_json_str(doc, "id");
	const cJSON *created = cJSON_GetObjectItemCaseSensitive(doc, "created");
	if (sse_replay(doc, id ? id : "chatcmpl-sg",
		       cJSON_IsNumber(created) ? (long long)created->valuedouble : 0,
		       c->stream_usage, &out) != SG_OK) {
		sg_buf_finish(&out);
		return http_send_error(c->req, 500, "server_error", "internal_error",
				       "cached answer could not be replayed");
	}
	if (http_stream_begin(c->req, 200, "text/event-stream", c->hdrs) == SG_OK &&
	    http_stream_write(c->req, out.data, out.len) == SG_OK)
		http_stream_end(c->req);
	sg_buf_finish(&out);
	return 200;
}

/* Count a lookup that found nothing (written behind, see tally.h). */
static void record_miss(struct chat *c)
{
	struct sg_req *req = c->req;
	struct store *s = worker_store(req->worker);
	if (req->app->tally)
		tally_miss(req->app->tally, req->tenant, c->cr.rejected);
	else if (s)
		cache_api_record_miss(req->app, s, req->tenant, c->cr.rejected);
}

/* Count this request's upstream call in the tenant's series, before its
 * answer goes out (so a read right after it sees it). A hit's time rides
 * with its tally_hit. */
static void count_upstream_latency(struct chat *c)
{
	struct sg_req *req = c->req;
	if (req->app->tally && req->upstream_ms >= 0)
		tally_upstream_latency(req->app->tally, req->tenant, req->upstream_ms);
}

/* Send a cached answer (rendered as body; freed here) as outcome for entry
 * id: headers, savings, the tenant's counts (with the verifier's refusal
 * of a better candidate, if any), the turn in memory mode. doc is its
 * parsed tree (freed here), or NULL and meta says what the hit needs of it
 * (a hot copy's, neither streamed nor in memory mode). Returns the status
 * sent. */
static int send_hit(struct chat *c, const char *outcome, const char *id, bool semantic,
		    enum verify_reason rejected, cJSON *doc, const struct hot_meta *meta,
		    char *body)
{
	struct sg_req *req = c->req;
	struct store *s = worker_store(req->worker);
	c->outcome = outcome;
	snprintf(c->entry, sizeof(c->entry), "%s", id);
	struct hot_meta m = { 0 };
	if (doc)
		cache_answer_usage(doc, &m);
	else
		m = *meta;
	long long tokens = m.tokens, saved_prompt = m.prompt, saved_completion = m.completion;
	route_metrics_hit_tokens(saved_prompt, saved_completion);
	snprintf(c->hdr_tokens, sizeof(c->hdr_tokens), "%lld", tokens);
	add_cache_headers(c);
	add_hdr(c, "X-Semgate-Tokens-Saved", c->hdr_tokens);
	if (req->app->tally && id[0])
		tally_hit(req->app->tally, req->tenant, id, semantic, saved_prompt,
			  saved_completion, rejected, sg_now_ms() - c->t0);
	else if (s && id[0])
		cache_api_record_hit(req->app, s, req->tenant, id, semantic, saved_prompt,
				     saved_completion, rejected);
	if (doc)
		remember(c, doc);
	int status = c->stream ? replay_stream(c, doc)
			       : http_send(req, 200, "application/json", body, strlen(body), c->hdrs);
	cJSON_Delete(doc);
	free(body);
	return status;
}

/* Look the request up. Returns true when a hit was sent (*status set). */
static bool try_cache(struct chat *c, int *status)
{
	struct sg_req *req = c->req;
	struct sg_error e = { 0 };
	c->outcome = "bypass";
	if (c->no_store)
		return false; /* neither looked up nor stored: no scope needed */
	/* A later memory-mode turn's scope holds the whole history, so no
	 * other request can ever share it: by default it is not cached
	 * (SEMGATE_MEMORY_CACHE, docs/DESIGN-NOTES.md). */
	const char *mc = req->app->cfg->memory_cache;
	if (c->conv && (strcmp(mc, "off") == 0 || (strcmp(mc, "first") == 0 && c->had_history)))
		return false;
	if (scope_compute(req->tenant, c->ns, c->body, &c->si, &e) != SG_OK) {
		sg_log(SG_LOG_WARN, "scope not computed, bypassing the cache: %s", e.msg);
		return false;
	}
	if (!c->si.cacheable || c->si.n_gt_1)
		return false;
	struct store *s = worker_store(req->worker);
	struct upstream *up = worker_upstream(req->worker);
	if (!s)
		return false;
	if (c->no_cache) {
		c->outcome = "miss";
		if (c->si.semantic_ok)
			cache_embed_query(req->app, up, &c->si, &c->cr);
		return false;
	}
	if (cache_lookup(req->app, s, up, req->tenant, &c->si, c->si.semantic_ok && up,
			 c->threshold, c->verify, &c->cr, &e) != SG_OK) {
		sg_log(SG_LOG_DEBUG, "cache bypassed: %s", e.msg);
		return false;
	}
	c->outcome = "miss";
	if (c->cr.hit && c->cr.semantic && c->shadow) {
		/* shadow: keep the would-be answer to compare with the fresh one */
		c->shadow_answer = c->cr.answer;
		c->shadow_len = c->cr.answer_len;
		c->shadow_sim = c->cr.similarity;
		c->cr.answer = NULL;
		c->cr.hit = false;
		snprintf(c->hdr_shadow, sizeof(c->hdr_shadow), "entry=%s", c->cr.id);
		add_hdr(c, "X-Semgate-Shadow", c->hdr_shadow);
	}
	if (!c->cr.hit) {
		c->miss_pending = true; /* counted once no flight answers it */
		return false;
	}
	const char *outcome = c->cr.semantic ? "hit-semantic" : "hit-exact";
	/* a hot copy's meta says what the answer holds: no parse to send it */
	if (c->cr.meta.known && c->cr.meta.spliceable && !c->stream && !c->conv) {
		char *body = cache_render_hit_spliced(c->cr.answer, c->cr.answer_len);
		if (body) {
			*status = send_hit(c, outcome, c->cr.id, c->cr.semantic, c->cr.rejected,
					   NULL, &c->cr.meta, body);
			return true;
		}
	}
	cJSON *doc = NULL;
	char *body = cache_render_hit(c->cr.answer, c->cr.answer_len, &doc);
	if (!body) {
		sg_log(SG_LOG_WARN, "cache entry %s is corrupt; answering from upstream", c->cr.id);
		record_miss(c);
		return false;
	}
	*status = send_hit(c, outcome, c->cr.id, c->cr.semantic, c->cr.rejected, doc, NULL,
			   body);
	return true;
}

/* Store a cacheable upstream answer. */
/* Shadow mode: compare the fresh answer doc with the would-be hit and
 * count the outcome; a non-streamed answer's header says it. */
static void shadow_compare(struct chat *c, const cJSON *doc)
{
	struct sg_req *req = c->req;
	struct store *s = worker_store(req->worker);
	double answer_sim = -2.0;
	bool agree = cache_shadow_agrees(req->app, worker_upstream(req->worker), c->shadow_answer,
					 c->shadow_len, doc, req->app->cfg->shadow_agree,
					 &answer_sim);
	struct sg_error e = { 0 };
	if (answer_sim < -1.0 || !s)
		return; /* nothing to compare: not counted */
	if (cache_shadow_record(s, req->tenant, c->ns, c->shadow_sim, agree, &e) != SG_OK)
		sg_log(SG_LOG_WARN, "shadow outcome not counted: %s", e.msg);
	size_t n = strlen(c->hdr_shadow);
	snprintf(c->hdr_shadow + n, sizeof(c->hdr_shadow) - n, "; %s",
		 agree ? "agree" : "disagree");
}

/* Store a miss's answer behind the reply (behind.h): the entry is named,
 * indexed and readable from this process now, and written to Redis by the
 * store writer. False when it must be stored inline: no writer, or out of
 * memory. */
static bool store_behind(struct chat *c, const cJSON *doc, const struct upstream_resp *r)
{
	struct sg_app *app = c->req->app;
	if (!app->behind)
		return false;
	struct behind_store in = {
		.tenant = c->req->tenant,
		.ns = c->ns,
		.si = &c->si,
		.answer = r->body.data,
		.answer_len = r->body.len,
		.tokens = cache_answer_tokens(doc),
		.vec = c->cr.vec,
		.dim = c->cr.dim,
		.ttl_s = c->ttl,
	};
	return behind_queue(app->behind, &in, c->entry);
}

static void store_answer(struct chat *c, const cJSON *doc, const struct upstream_resp *r)
{
	if (c->shadow_answer) {
		shadow_compare(c, doc); /* shadowed: the cache already has an answer */
		return;
	}
	if (strcmp(c->outcome, "miss") != 0 || !cache_answer_cacheable(doc))
		return;
	struct sg_req *req = c->req;
	struct store *s = worker_store(req->worker);
	struct sg_error e = { 0 };
	bool behind = store_behind(c, doc, r);
	if (!behind && (!s || cache_store(req->app, s, req->tenant, c->ns, &c->si, true,
					  r->body.data, r->body.len, cache_answer_tokens(doc),
					  c->cr.vec, c->cr.dim, c->ttl, c->entry, &e) != SG_OK)) {
		c->entry[0] = '\0';
		sg_log(SG_LOG_WARN, "answer not cached: %s", e.msg);
	}
	if (c->flight) {
		/* stored (or readable while its store is queued) first, so a
		 * follower's repeat finds the entry */
		flight_land(req->app->flights, c->flight, r->body.data, r->body.len, c->entry);
		c->flight = NULL;
	}
}

/* Serve the answer of the flight this miss joined (hit-coalesced). */
static int serve_coalesced(struct chat *c, struct flight_answer *fa)
{
	cJSON *doc = NULL;
	char *body = cache_render_hit(fa->answer, fa->len, &doc);
	if (!body)
		return -1;
	c->cr.similarity = fa->similarity;
	if (c->req->app->tally)
		tally_coalesced(c->req->app->tally, c->req->tenant);
	return send_hit(c, "hit-coalesced", fa->id, fa->similarity < 1.0, c->cr.rejected, doc,
			NULL, body);
}

/* A miss about to go upstream: lead its flight, or wait for the one that
 * answers it. Returns true when a coalesced answer was sent. */
static bool join_flight(struct chat *c, int *status)
{
	struct sg_req *req = c->req;
	if (!req->app->flights || strcmp(c->outcome, "miss") != 0 || c->no_cache ||
	    c->shadow_answer)
		return false;
	char part[VINDEX_KEY_MAX];
	cache_partition_key(part, sizeof(part), req->tenant, c->si.scope,
			    req->app->embedder.model);
	struct flight_req fr = {
		.part = part,
		.exact = c->si.exact,
		.vec = c->cr.vec,
		.dim = c->cr.dim,
		.threshold = c->threshold,
		.verify = c->verify,
		.query = c->si.query,
		.query_len = c->si.query_len,
		.wait_ms = (int)req->app->cfg->coalesce_wait_ms,
	};
	struct flight_answer fa;
	enum flight_role role = flight_join(req->app->flights, &fr, &c->flight, &fa);
	bool sent = false;
	if (role == FLIGHT_ANSWERED) {
		int st = serve_coalesced(c, &fa);
		if (st >= 0) {
			*status = st;
			sent = true;
		}
	}
	flight_answer_finish(&fa);
	return sent;
}

/* Relay an upstream answer: JSON bodies as they are with the upstream's
 * status; anything else becomes a clean JSON error. */
static int relay(struct chat *c, const struct upstream_resp *r)
{
	struct sg_req *req = c->req;
	cJSON *doc = NULL;
	if (sg_json_parse(r->body.data ? r->body.data : "", r->body.len, &doc, NULL) != SG_OK ||
	    !cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		if (r->status >= 400) {
			add_upstream_headers(c, r);
			return http_send_error_headers(req, (int)r->status, "upstream_error",
						       "upstream_error",
						       "upstream answered with an error and no JSON body",
						       c->hdrs);
		}
		return http_send_error(req, 502, "upstream_error", "upstream_invalid_response",
				       "upstream answered with invalid JSON");
	}
	int status = (r->status >= 100 && r->status <= 599) ? (int)r->status : 502;
	if (status == 200) {
		store_answer(c, doc, r);
		remember(c, doc);
	}
	add_cache_headers(c);
	if (status == (int)r->status)
		add_upstream_headers(c, r);
	cJSON_Delete(doc);
	count_upstream_latency(c);
	return http_send(req, status, "application/json", r->body.data, r->body.len, c->hdrs);
}

/* ---- streamed answers ---- */

struct stream_relay {
	struct chat *c;
	const struct upstream_resp *resp; /* its headers are in before the body */
	long status;
	bool started;
	bool client_gone;
	bool strip_usage;          /* the gateway asked for usage, the client did not */
	struct sg_buf errbody;     /* a non-200 answer, relayed as JSON */
	struct sg_buf ev;          /* one event as it goes to the client */
	struct sse_parser parser;
	struct sse_answer answer;
};

static int on_event(void *ud, const char *raw, size_t raw_len, const char *data, size_t len)
{
	struct stream_relay *st = ud;
	enum sse_event_kind kind = sse_answer_feed(&st->answer, data, len);
	sg_buf_reset(&st->ev);
	if (sse_client_event(raw, raw_len, data, len, kind, st->strip_usage, &st->ev) != SG_OK ||
	    (st->ev.len && http_stream_write(st->c->req, st->ev.data, st->ev.len) != SG_OK)) {
		st->client_gone = true;
		return 1;
	}
	return 0;
}

static int on_stream_data(void *ud, long status, const char *data, size_t len)
{
	struct stream_relay *st = ud;
	st->status = status;
	if (status != 200)
		return sg_buf_append(&st->errbody, data, len) == SG_OK ? 0 : 1;
	if (!st->started) {
		add_cache_headers(st->c);
		add_upstream_headers(st->c, st->resp);
		st->started = true;
		if (http_stream_begin(st->c->req, 200, "text/event-stream", st->c->hdrs) != SG_OK) {
			st->client_gone = true;
			return 1;
		}
	}
	enum sg_err rc = sse_parser_feed(&st->parser, data, len, on_event, st);
	if (rc == SG_ERR_CLIENT_GONE)
		return 1;
	if (rc != SG_OK)
		st->answer.bad_event = true; /* an oversized event: relay stops */
	return rc == SG_OK ? 0 : 1;
}

/* After a complete stream: cache the assembled answer, append the turn. */
static void finish_stream(struct chat *c, struct stream_relay *st)
{
	if (!sse_answer_complete(&st->answer))
		return;
	char *json = sse_answer_render(&st->answer);
	cJSON *doc = NULL;
	if (json && sg_json_parse(json, strlen(json), &doc, NULL) == SG_OK) {
		struct upstream_resp fake = { .status = 200 };
		sg_buf_init(&fake.body, 0);
		fake.body.data = json;
		fake.body.len = strlen(json);
		store_answer(c, doc, &fake);
		remember(c, doc);
	}
	cJSON_Delete(doc);
	free(json);
}

/* The body to stream upstream for a request whose answer will be cached
 * while its client did not ask for stream_options.include_usage: the same
 * with include_usage set, so the stored answer knows its tokens and its
 * hits report what they saved (on_event strips the usage again). Edited in
 * place, so every other byte goes as the client sent it; rendered from the
 * tree when a member name holds an escape. NULL (the body goes as it is)
 * when stream_options appears twice, since which one the upstream reads is
 * its own choice, or on out of memory. */
static char *ask_for_usage(struct chat *c, const char *body, size_t len)
{
	int n = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, c->body)
		n += strcmp(it->string, "stream_options") == 0;
	if (n > 1)
		return NULL;
	const cJSON *so = cJSON_GetObjectItemCaseSensitive(c->body, "stream_options");
	cJSON *opts = cJSON_IsObject(so) ? cJSON_Duplicate(so, 1) : cJSON_CreateObject();
	char *val = NULL, *out = NULL;
	while (opts && cJSON_GetObjectItemCaseSensitive(opts, "include_usage"))
		cJSON_DeleteItemFromObjectCaseSensitive(opts, "include_usage");
	if (opts && cJSON_AddTrueToObject(opts, "include_usage") && (val = sg_json_render(opts)))
		out = sg_json_member_put(body, len, "stream_options", val);
	if (!out && val) {
		bool set = so ? cJSON_ReplaceItemInObjectCaseSensitive(c->body, "stream_options", opts)
			      : cJSON_AddItemToObject(c->body, "stream_options", opts);
		if (set) {
			opts = NULL; /* c->body's now */
			out = sg_json_render(c->body);
		}
	}
	cJSON_Delete(opts);
	free(val);
	return out;
}

static int stream_upstream(struct chat *c, struct upstream *up, const char *body, size_t len)
{
	struct sg_req *req = c->req;
	struct sg_error e = { 0 };
	struct upstream_resp r = { 0 };
	struct stream_relay st = { .c = c, .resp = &r };
	char *asked = NULL;
	if (!c->stream_usage && strcmp(c->outcome, "miss") == 0 &&
	    (asked = ask_for_usage(c, body, len))) {
		body = asked;
		len = strlen(asked);
		st.strip_usage = true;
	}
	sg_buf_init(&st.errbody, 1 << 20);
	sg_buf_init(&st.ev, 0);
	sse_parser_init(&st.parser, (size_t)req->app->cfg->max_upstream_bytes);
	sse_answer_init(&st.answer, (size_t)req->app->cfg->max_upstream_bytes);
	enum sg_err rc = upstream_post_stream(up, &req->app->llm, "/chat/completions", body,
					      len, client_bearer(req), on_stream_data, &st,
					      &r, &e);
	req->upstream_ms = r.ms;
	req->cache_outcome = counted_outcome(c);
	int status;
	if (st.started) {
		status = 200;
		if (rc == SG_OK && !st.client_gone) {
			finish_stream(c, &st);
		} else if (!st.client_gone) {
			/* the upstream broke off: tell the client in-band, store nothing */
			char *err = sg_json_error_body(e.msg[0] ? e.msg : "upstream stream broke off",
						       "upstream_error", "upstream_stream_error");
			if (err) {
				char *ev = NULL;
				if (asprintf(&ev, "data: %s\n\n", err) >= 0) {
					http_stream_write(req, ev, strlen(ev));
					free(ev);
				}
				free(err);
			}
		}
		count_upstream_latency(c);
		if (!st.client_gone)
			http_stream_end(req);
	} else if (rc != SG_OK && !(rc == SG_ERR_CLIENT_GONE && st.status != 200)) {
		status = http_send_sg_error(req, &e);
	} else {
		r.status = st.status ? st.status : r.status;
		sg_buf_finish(&r.body);
		r.body = st.errbody;
		sg_buf_init(&st.errbody, 0);
		if (r.status == 200)  /* 200 with an empty body */
			status = http_send_error(req, 502, "upstream_error",
						 "upstream_invalid_response",
						 "upstream answered an empty stream");
		else
			status = relay(c, &r);
	}
	upstream_resp_finish(&r);
	free(asked);
	sg_buf_finish(&st.errbody);
	sg_buf_finish(&st.ev);
	sse_parser_finish(&st.parser);
	sse_answer_finish(&st.answer);
	return status;
}

int route_chat_completions(struct sg_req *req)
{
	struct sg_error e = { 0 };
	struct chat c = { .req = req, .outcome = "bypass", .t0 = sg_now_ms() };
	c.cr.similarity = -2.0; /* "not computed" until a lookup runs */
	int status;
	if (http_read_body(req, &e) != SG_OK)
		return http_send_sg_error(req, &e);
	if (sg_json_parse(req->body.data, req->body.len, &c.body, &e) != SG_OK ||
	    scope_validate_chat(c.body, &e) != SG_OK ||
	    read_headers(&c, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
		goto out;
	}
	c.stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c.body, "stream"));
	c.stream_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
		sg_json_obj(c.body, "stream_options"), "include_usage"));
	if (build_request(&c, &e) != SG_OK) {
		status = http_send_sg_error(req, &e);
		goto out;
	}
	if (try_cache(&c, &status) || join_flight(&c, &status))
		goto out;
	if (c.miss_pending)
		record_miss(&c);
	struct upstream *up = worker_upstream(req->worker);
	if (!up) {
		status = http_send_error(req, 503, "service_unavailable", "out_of_memory",
					 "out of memory");
		goto out;
	}
	const char *body = c.upstream_body ? c.upstream_body : req->body.data;
	size_t len = c.upstream_body ? strlen(c.upstream_body) : req->body.len;
	if (c.stream) {
		status = stream_upstream(&c, up, body, len);
		goto out;
	}
	struct upstream_resp r = { 0 };
	enum sg_err rc = upstream_post(up, &req->app->llm, "/chat/completions", body, len,
				       client_bearer(req), &r, &e);
	req->upstream_ms = r.ms;
	req->cache_outcome = counted_outcome(&c);
	if (rc != SG_OK)
		status = http_send_sg_error(req, &e);
	else
		status = relay(&c, &r);
	upstream_resp_finish(&r);
out:
	if (c.flight) /* no cacheable answer: the followers go upstream themselves */
		flight_land(req->app->flights, c.flight, NULL, 0, NULL);
	scope_info_finish(&c.si);
	cache_result_finish(&c.cr);
	free(c.shadow_answer);
	free(c.upstream_body);
	cJSON_Delete(c.turn);
	cJSON_Delete(c.body);
	return status;
}
