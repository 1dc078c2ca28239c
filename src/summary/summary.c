/* The summarizer (summary.h): a table of conversations with pending
 * messages, bounded, and 1 to 4 threads that take the one due first, call
 * the upstream and apply the answer. One mutex guards the table; no I/O
 * happens under it. Each thread owns its Redis connection and HTTP client. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/app/app.h"
#include "semgate/core/buf.h"
#include "semgate/core/clock.h"
#include "semgate/core/digest.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/core/metrics.h"
#include "semgate/core/prompts.h"
#include "semgate/memory/memory.h"
#include "semgate/store/store.h"
#include "semgate/summary/summary.h"
#include "semgate/upstream/upstream.h"

#define MAX_THREADS 4

/* One conversation the summarizer knows has pending messages. */
struct slot {
	char tenant[65];
	char conv[SG_CONV_ID_MAX + 1];
	bool used;
	bool running;     /* a thread works on it now */
	bool again;       /* kicked while running: look again afterwards */
	double due_ms;    /* monotonic; not before this */
	int failures;     /* consecutive failed calls */
};

struct summarizer {
	const struct sg_config *cfg;
	struct prompts *prompts;      /* the summarizer's own folder */
	const char *prompt;           /* borrowed from prompts */
	struct upstream_target target;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct slot *slots;
	size_t cap, used;
	bool stop;
	pthread_t th[MAX_THREADS];
	int nth;
	double next_sweep_ms;         /* thread 0 sweeps Redis when this is due */
	atomic_ullong written, failed, conflicts, queue_full;
};

/* ---- pure parts ---- */

/* Append the text of a stored message's content: a string, the text
 * parts of an array (other parts as "[type]"), or its tool calls. */
static enum sg_err message_text(const cJSON *m, struct sg_buf *b)
{
	const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
	size_t start = b->len;
	enum sg_err rc = SG_OK;
	if (cJSON_IsString(content)) {
		rc = sg_buf_puts(b, content->valuestring);
	} else if (cJSON_IsArray(content)) {
		bool first = true;
		const cJSON *p;
		cJSON_ArrayForEach(p, content) {
			const char *type = sg_json_str(p, "type");
			const char *text = sg_json_str(p, "text");
			if (!first && (rc = sg_buf_puts(b, " ")) != SG_OK)
				return rc;
			first = false;
			if (type && strcmp(type, "text") == 0 && text)
				rc = sg_buf_puts(b, text);
			else
				rc = sg_buf_printf(b, "[%s]", type ? type : "part");
			if (rc != SG_OK)
				return rc;
		}
	}
	const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
	if (rc == SG_OK && calls) {
		char *j = sg_json_render(calls);
		rc = j ? sg_buf_printf(b, "%s(tool calls: %s)", b->len > start ? " " : "", j)
		       : SG_ERR_NOMEM;
		free(j);
	}
	return rc;
}

/* Cut b back to at most len bytes, at the start of a UTF-8 sequence. */
static void cut_utf8(struct sg_buf *b, size_t len)
{
	if (b->len <= len)
		return;
	while (len > 0 && ((unsigned char)b->data[len] & 0xC0) == 0x80)
		len--;
	b->len = len;
	b->data[len] = '\0';
}

char *summary_transcript(const char *prev, size_t prev_len, const char *const *msgs,
			 const size_t *lens, size_t n, size_t max_bytes, size_t *used)
{
	struct sg_buf b, line;
	sg_buf_init(&b, 0);
	sg_buf_init(&line, 0);
	*used = 0;
	enum sg_err rc;
	if (prev && prev_len)
		rc = sg_buf_puts(&b, "The summary so far:\n<summary>\n");
	else
		rc = sg_buf_puts(&b, "There is no summary yet.\n");
	if (rc == SG_OK && prev && prev_len &&
	    ((rc = sg_buf_append(&b, prev, prev_len)) == SG_OK))
		rc = sg_buf_puts(&b, "\n</summary>\n");
	if (rc == SG_OK)
		rc = sg_buf_puts(&b, "\nMessages to fold into it, oldest first:\n<messages>\n");
	/* one message's text may take half the budget, so a huge one is cut
	 * rather than stalling the conversation's summary for good */
	size_t per_msg = max_bytes / 2, taken = 0;
	for (size_t i = 0; rc == SG_OK && i < n; i++) {
		cJSON *m = NULL;
		sg_buf_reset(&line);
		if (sg_json_parse(msgs[i], lens[i], &m, NULL) != SG_OK || !cJSON_IsObject(m)) {
			cJSON_Delete(m);
			(*used)++; /* not a message (written by something else): covered as nothing */
			continue;
		}
		const char *role = sg_json_str(m, "role");
		rc = sg_buf_printf(&line, "[%s] ", role ? role : "unknown");
		if (rc == SG_OK)
			rc = message_text(m, &line);
		cJSON_Delete(m);
		if (rc == SG_OK && line.len > per_msg) {
			cut_utf8(&line, per_msg);
			rc = sg_buf_puts(&line, " [...]");
		}
		if (rc != SG_OK)
			break;
		if (*used > 0 && taken + line.len + 1 > max_bytes)
			break; /* the rest waits for the next call */
		if ((rc = sg_buf_append(&b, line.data, line.len)) == SG_OK)
			rc = sg_buf_puts(&b, "\n");
		taken += line.len + 1;
		(*used)++;
	}
	if (rc == SG_OK)
		rc = sg_buf_puts(&b, "</messages>");
	char *out = rc == SG_OK ? sg_buf_steal(&b, NULL) : NULL;
	sg_buf_finish(&b);
	sg_buf_finish(&line);
	return out;
}

char *summary_request_body(const char *model, long long max_tokens, const char *prompt,
			   const char *transcript)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *msgs = cJSON_CreateArray();
	cJSON *sys = cJSON_CreateObject();
	cJSON *usr = cJSON_CreateObject();
	char *out = NULL;
	bool ok = o && msgs && sys && usr &&
		  cJSON_AddStringToObject(sys, "role", "system") &&
		  cJSON_AddStringToObject(sys, "content", prompt) &&
		  cJSON_AddStringToObject(usr, "role", "user") &&
		  cJSON_AddStringToObject(usr, "content", transcript);
	if (ok) {
		cJSON_AddItemToArray(msgs, sys);
		cJSON_AddItemToArray(msgs, usr);
		sys = usr = NULL;
		ok = cJSON_AddStringToObject(o, "model", model) != NULL;
		if (ok) {
			cJSON_AddItemToObject(o, "messages", msgs);
			msgs = NULL;
		}
		if (ok && max_tokens > 0)
			ok = cJSON_AddNumberToObject(o, "max_tokens", (double)max_tokens) != NULL;
		if (ok)
			ok = cJSON_AddNumberToObject(o, "temperature", 0) != NULL;
	}
	if (ok)
		out = sg_json_render(o);
	cJSON_Delete(sys);
	cJSON_Delete(usr);
	cJSON_Delete(msgs);
	cJSON_Delete(o);
	return out;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

enum sg_err summary_parse_answer(const char *body, size_t len, size_t max_bytes, char **text,
				 size_t *text_len, bool *cut, struct sg_error *e)
{
	*text = NULL;
	*text_len = 0;
	*cut = false;
	cJSON *doc = NULL;
	if (sg_json_parse(body ? body : "", len, &doc, NULL) != SG_OK || !cJSON_IsObject(doc)) {
		cJSON_Delete(doc);
		return sg_error_set(e, SG_ERR_UPSTREAM, "the summary answer is not a JSON object");
	}
	const cJSON *choices = sg_json_arr(doc, "choices");
	const cJSON *msg = sg_json_obj(cJSON_GetArrayItem(choices, 0), "message");
	const char *t = sg_json_str(msg, "content");
	enum sg_err rc = SG_OK;
	size_t a = 0, b = t ? strlen(t) : 0;
	while (t && a < b && is_space(t[a]))
		a++;
	while (t && b > a && is_space(t[b - 1]))
		b--;
	if (!t || a == b) {
		rc = sg_error_set(e, SG_ERR_UPSTREAM, "the summary answer has no text");
		goto out;
	}
	size_t n = b - a;
	if (n > max_bytes) {
		n = max_bytes;
		/* back off to the start of a UTF-8 sequence */
		while (n > 0 && ((unsigned char)t[a + n] & 0xC0) == 0x80)
			n--;
		*cut = true;
	}
	*text = malloc(n + 1);
	if (!*text) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(*text, t + a, n);
	(*text)[n] = '\0';
	*text_len = n;
out:
	cJSON_Delete(doc);
	return rc;
}

char *summary_context_text(const char *text, size_t text_len, long long covered)
{
	struct sg_buf b;
	sg_buf_init(&b, 0);
	enum sg_err rc = sg_buf_printf(&b, "Summary of the earlier part of this conversation "
				       "(%lld messages no longer shown):\n", covered);
	if (rc == SG_OK)
		rc = sg_buf_append(&b, text, text_len);
	char *out = rc == SG_OK ? sg_buf_steal(&b, NULL) : NULL;
	sg_buf_finish(&b);
	return out;
}

/* ---- the table ---- */

static struct slot *find_locked(struct summarizer *z, const char *tenant, const char *conv)
{
	for (size_t i = 0; i < z->cap; i++) {
		struct slot *sl = &z->slots[i];
		if (sl->used && strcmp(sl->conv, conv) == 0 && strcmp(sl->tenant, tenant) == 0)
			return sl;
	}
	return NULL;
}

void summarizer_kick(struct summarizer *z, const char *tenant, const char *conv)
{
	if (!z || strlen(tenant) >= sizeof(z->slots[0].tenant) ||
	    strlen(conv) >= sizeof(z->slots[0].conv))
		return;
	pthread_mutex_lock(&z->mu);
	struct slot *sl = find_locked(z, tenant, conv);
	if (sl) {
		/* queued or backing off: it will be looked at; a failing
		 * conversation keeps its back-off however busy it is */
		if (sl->running)
			sl->again = true;
	} else if (z->used < z->cap) {
		for (size_t i = 0; i < z->cap; i++)
			if (!z->slots[i].used) {
				sl = &z->slots[i];
				break;
			}
		memset(sl, 0, sizeof(*sl));
		sl->used = true;
		memcpy(sl->tenant, tenant, strlen(tenant) + 1);
		memcpy(sl->conv, conv, strlen(conv) + 1);
		sl->due_ms = sg_now_ms();
		z->used++;
		pthread_cond_signal(&z->cv);
	} else {
		unsigned long long n = atomic_fetch_add(&z->queue_full, 1);
		metrics_inc(SG_C_SUMMARY_QUEUE_FULL);
		if ((n & (n + 1)) == 0) /* the 1st, 2nd, 4th, 8th … time */
			sg_log(SG_LOG_WARN, "summarizer queue full (%zu conversations): "
			       "conversation %s keeps its messages pending until its next turn or sweep "
			       "(%llu times so far)", z->cap, conv, n + 1);
	}
	pthread_mutex_unlock(&z->mu);
}

/* ---- one summary call ---- */

enum outcome { RUN_DONE, RUN_MORE, RUN_FAILED };

static enum outcome run_one(struct summarizer *z, struct store *s, struct upstream *up,
			    const char *tenant, const char *conv)
{
	const struct sg_config *cfg = z->cfg;
	struct store_summary_snap sn;
	struct sg_error e = { 0 };
	struct upstream_resp r = { 0 };
	char *transcript = NULL, *body = NULL, *text = NULL;
	size_t text_len = 0;
	bool cut = false;
	enum outcome out = RUN_FAILED;
	if (store_summary_snapshot(s, tenant, conv, cfg->summary_batch, &sn, &e) != SG_OK) {
		sg_log(SG_LOG_WARN, "summary of conversation %s: cannot read it: %s", conv, e.msg);
		metrics_inc(SG_C_SUMMARY_FAILED);
		atomic_fetch_add(&z->failed, 1);
		return RUN_FAILED;
	}
	if (sn.pending.n == 0 || !sn.epoch[0]) {
		out = RUN_DONE; /* summarized by another gateway, deleted or expired */
		goto done;
	}
	size_t n = 0;
	transcript = summary_transcript(sn.text, sn.text_len, (const char *const *)sn.pending.v,
					sn.pending.len, sn.pending.n,
					(size_t)cfg->summary_input_bytes, &n);
	body = transcript ? summary_request_body(cfg->summary_model, cfg->summary_max_tokens,
						  z->prompt, transcript) : NULL;
	if (!body) {
		sg_error_set(&e, SG_ERR_NOMEM, "out of memory");
		goto failed;
	}
	if (upstream_post(up, &z->target, "/chat/completions", body, strlen(body), NULL, &r,
			  &e) != SG_OK)
		goto failed;
	if (r.status != 200) {
		sg_error_set(&e, SG_ERR_UPSTREAM, "upstream answered %ld", r.status);
		goto failed;
	}
	if (summary_parse_answer(r.body.data, r.body.len, (size_t)cfg->summary_max_bytes, &text,
				 &text_len, &cut, &e) != SG_OK)
		goto failed;
	if (cut)
		sg_log(SG_LOG_WARN, "summary of conversation %s: cut to %lld bytes "
		       "(SEMGATE_SUMMARY_MAX_BYTES)", conv, cfg->summary_max_bytes);
	long long left = -1;
	if (store_summary_apply(s, tenant, conv, &sn, n, text, text_len, sg_wall_ms(), &left,
				&e) != SG_OK)
		goto failed;
	if (left < 0) {
		/* deleted, trimmed at the bound or summarized elsewhere meanwhile:
		 * nothing written; read again */
		metrics_inc(SG_C_SUMMARY_CONFLICTS);
		atomic_fetch_add(&z->conflicts, 1);
		out = RUN_MORE;
		goto done;
	}
	metrics_inc(SG_C_SUMMARY_WRITTEN);
	metrics_add(SG_C_SUMMARY_COVERED, n);
	atomic_fetch_add(&z->written, 1);
	out = left > 0 ? RUN_MORE : RUN_DONE;
	goto done;
failed:
	metrics_inc(SG_C_SUMMARY_FAILED);
	atomic_fetch_add(&z->failed, 1);
	sg_log(SG_LOG_WARN, "summary of conversation %s failed: %s; its %zu messages stay "
	       "pending and are retried later", conv, e.msg, sn.pending.n);
done:
	upstream_resp_finish(&r);
	free(transcript);
	free(body);
	free(text);
	store_summary_snap_finish(&sn);
	return out;
}

/* The slot due first (not running), or NULL; *wait_ms how long until it is
 * due (0: now). */
static struct slot *next_locked(struct summarizer *z, double now, double *wait_ms)
{
	struct slot *best = NULL;
	for (size_t i = 0; i < z->cap; i++) {
		struct slot *sl = &z->slots[i];
		if (sl->used && !sl->running && (!best || sl->due_ms < best->due_ms))
			best = sl;
	}
	*wait_ms = best && best->due_ms > now ? best->due_ms - now : 0;
	return best;
}

static void timed_wait_locked(struct summarizer *z, double ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	long long ns = (long long)ts.tv_nsec + (long long)(ms * 1e6);
	ts.tv_sec += (time_t)(ns / 1000000000LL);
	ts.tv_nsec = (long)(ns % 1000000000LL);
	pthread_cond_timedwait(&z->cv, &z->mu, &ts);
}

static double backoff_ms(const struct sg_config *cfg, int failures)
{
	double ms = (double)cfg->summary_retry_ms;
	for (int i = 1; i < failures && ms < (double)cfg->summary_retry_max_ms; i++)
		ms *= 2;
	return ms < (double)cfg->summary_retry_max_ms ? ms : (double)cfg->summary_retry_max_ms;
}

static void sweep_found(void *ud, const char *tenant, const char *conv)
{
	summarizer_kick(ud, tenant, conv);
}

/* Kick every conversation Redis says has messages waiting: those a
 * restart, a full queue or another gateway left behind. */
static void sweep(struct summarizer *z, struct store *s)
{
	struct sg_error e = { 0 };
	size_t found = 0;
	if (store_summary_scan(s, sweep_found, z, &found, &e) != SG_OK)
		sg_log(SG_LOG_WARN, "summarizer sweep incomplete (%zu conversations found): %s",
		       found, e.msg);
	else if (found)
		sg_log(SG_LOG_INFO, "summarizer sweep: %zu conversations with messages waiting",
		       found);
}

/* Thread 0 sweeps when due (always once at start); the next sweep is
 * SEMGATE_SUMMARY_SWEEP_S later, or never when that is 0. Otherwise
 * *sleep (-1: until signalled) is shortened to when the sweep is due. */
static bool sweep_due_locked(struct summarizer *z, bool first_thread, double now,
			     double *sleep)
{
	if (!first_thread || z->next_sweep_ms < 0)
		return false;
	if (now >= z->next_sweep_ms) {
		z->next_sweep_ms = z->cfg->summary_sweep_s > 0
			? now + (double)z->cfg->summary_sweep_s * 1000.0 : -1;
		return true;
	}
	if (*sleep < 0 || z->next_sweep_ms - now < *sleep)
		*sleep = z->next_sweep_ms - now;
	return false;
}

static void *thread_main(void *arg)
{
	struct summarizer *z = arg;
	struct store *s = store_create(z->cfg);
	struct upstream *up = upstream_create();
	char tenant[65], conv[SG_CONV_ID_MAX + 1];
	pthread_mutex_lock(&z->mu);
	bool first_thread = pthread_equal(pthread_self(), z->th[0]);
	while (!z->stop) {
		double wait, now = sg_now_ms();
		struct slot *sl = next_locked(z, now, &wait);
		double sleep = !sl ? -1 : wait; /* 0: due now */
		if (s && sweep_due_locked(z, first_thread, now, &sleep)) {
			pthread_mutex_unlock(&z->mu);
			sweep(z, s);
			pthread_mutex_lock(&z->mu);
			continue;
		}
		if (!sl || wait > 0) {
			if (sleep >= 0)
				timed_wait_locked(z, sleep);
			else
				pthread_cond_wait(&z->cv, &z->mu);
			continue;
		}
		sl->running = true;
		sl->again = false;
		memcpy(tenant, sl->tenant, sizeof(tenant));
		memcpy(conv, sl->conv, sizeof(conv));
		pthread_mutex_unlock(&z->mu);
		enum outcome o = s && up ? run_one(z, s, up, tenant, conv) : RUN_FAILED;
		pthread_mutex_lock(&z->mu);
		sl->running = false;
		if (o == RUN_FAILED) {
			sl->failures++;
			sl->due_ms = sg_now_ms() + backoff_ms(z->cfg, sl->failures);
		} else if (o == RUN_MORE || sl->again) {
			sl->failures = 0;
			sl->due_ms = sg_now_ms();
		} else {
			sl->used = false;
			z->used--;
		}
	}
	pthread_mutex_unlock(&z->mu);
	store_destroy(s);
	upstream_destroy(up);
	return NULL;
}

/* ---- start, stop, stats ---- */

struct summarizer *summarizer_start(struct sg_app *app, struct sg_error *e)
{
	const struct sg_config *cfg = app->cfg;
	if (strcmp(cfg->summary, "on") != 0)
		return NULL;
	struct summarizer *z = calloc(1, sizeof(*z));
	char dir[4200];
	if (!z) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	z->cfg = cfg;
	snprintf(dir, sizeof(dir), "%s/%s", cfg->prompts_dir, SUMMARY_PROMPT_DIR);
	z->prompts = prompts_load(dir, e);
	if (!z->prompts)
		goto fail;
	z->prompt = prompts_get(z->prompts, SUMMARY_PROMPT_NAME);
	if (!z->prompt) {
		sg_error_set(e, SG_ERR_BAD_REQUEST, "SEMGATE_SUMMARY=on needs the summary prompt "
			     "%s/%s.txt", dir, SUMMARY_PROMPT_NAME);
		goto fail;
	}
	z->target = app->llm;
	z->target.timeout_ms = cfg->summary_timeout_ms;
	z->cap = (size_t)cfg->summary_queue;
	z->slots = calloc(z->cap, sizeof(*z->slots));
	if (!z->slots) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto fail;
	}
	pthread_mutex_init(&z->mu, NULL);
	pthread_cond_init(&z->cv, NULL);
	z->next_sweep_ms = sg_now_ms();
	/* the threads wait for the lock until every one has started, so
	 * thread 0 can tell itself by z->th[0] */
	pthread_mutex_lock(&z->mu);
	for (int i = 0; i < cfg->summary_threads && i < MAX_THREADS; i++) {
		if (pthread_create(&z->th[i], NULL, thread_main, z) != 0) {
			pthread_mutex_unlock(&z->mu);
			sg_error_set(e, SG_ERR_INTERNAL, "cannot start a summarizer thread");
			summarizer_stop(z);
			return NULL;
		}
		z->nth++;
	}
	pthread_mutex_unlock(&z->mu);
	if (!cfg->upstream_api_key[0])
		sg_log(SG_LOG_WARN, "summaries on without SEMGATE_UPSTREAM_API_KEY: summary calls "
		       "carry no key (a client's own key is never kept for them)");
	sg_log(SG_LOG_INFO, "summaries on: model %s, %lld summarizer threads", cfg->summary_model,
	       cfg->summary_threads);
	return z;
fail:
	prompts_destroy(z->prompts);
	free(z);
	return NULL;
}

void summarizer_stop(struct summarizer *z)
{
	if (!z)
		return;
	pthread_mutex_lock(&z->mu);
	z->stop = true;
	pthread_cond_broadcast(&z->cv);
	pthread_mutex_unlock(&z->mu);
	for (int i = 0; i < z->nth; i++)
		pthread_join(z->th[i], NULL);
	pthread_cond_destroy(&z->cv);
	pthread_mutex_destroy(&z->mu);
	prompts_destroy(z->prompts);
	free(z->slots);
	free(z);
}

void summarizer_get_stats(struct summarizer *z, struct summarizer_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!z)
		return;
	out->written = atomic_load(&z->written);
	out->failed = atomic_load(&z->failed);
	out->conflicts = atomic_load(&z->conflicts);
	out->queue_full = atomic_load(&z->queue_full);
	pthread_mutex_lock(&z->mu);
	out->backlog = z->used;
	pthread_mutex_unlock(&z->mu);
}

/* ---- the append ---- */

static void new_epoch(char out[33])
{
	sg_random_hex(out, 16);
}

enum sg_err summary_append(struct sg_app *app, struct store *s, const char *tenant,
			   const char *conv, const cJSON *msgs, long long *new_len,
			   struct sg_error *e)
{
	const struct sg_config *cfg = app->cfg;
	if (!app->summ)
		return memory_append(s, tenant, conv, msgs, cfg->history_max, cfg->history_ttl,
				     NULL, new_len, e);
	char epoch[33];
	new_epoch(epoch);
	struct store_capture cap = { .pending_max = cfg->summary_pending_max, .epoch = epoch };
	enum sg_err rc = memory_append(s, tenant, conv, msgs, cfg->history_max, cfg->history_ttl,
				       &cap, new_len, e);
	if (rc != SG_OK)
		return rc;
	metrics_add(SG_C_SUMMARY_CAPTURED, (uint64_t)cap.moved);
	if (cap.skipped > 0) {
		metrics_add(SG_C_SUMMARY_SKIPPED, (uint64_t)cap.skipped);
		sg_log(SG_LOG_WARN, "conversation %s: %lld pending messages dropped unsummarized "
		       "at SEMGATE_SUMMARY_PENDING_MAX=%lld (the summarizer is behind)", conv,
		       cap.skipped, cfg->summary_pending_max);
	}
	if (cap.pending > 0)
		summarizer_kick(app->summ, tenant, conv);
	return SG_OK;
}
