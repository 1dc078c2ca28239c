/* libcurl adapter for OpenAI-compatible HTTP APIs; the only file that
 * includes curl.h. Handles are per thread and reused so
 * keep-alive connections survive between requests; keys travel only in the
 * Authorization header and are never logged. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "semgate/core/clock.h"
#include "semgate/core/log.h"
#include "semgate/core/metrics.h"
#include "semgate/upstream/upstream.h"

struct upstream {
	CURL *h;
};

struct xfer {
	CURL *h;
	struct upstream_resp *out;
	upstream_data_fn on_data;
	void *ud;
	bool too_large;
	bool aborted;
};

enum sg_err upstream_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? SG_OK : SG_ERR_INTERNAL;
}

void upstream_global_cleanup(void)
{
	curl_global_cleanup();
}

struct upstream *upstream_create(void)
{
	struct upstream *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->h = curl_easy_init();
	if (!u->h) {
		free(u);
		return NULL;
	}
	return u;
}

void upstream_destroy(struct upstream *u)
{
	if (!u)
		return;
	curl_easy_cleanup(u->h);
	free(u);
}

void upstream_resp_finish(struct upstream_resp *r)
{
	if (r)
		sg_buf_finish(&r->body);
}

/* ---- the response headers passed on to clients (upstream.h) ---- */

static bool is_ows(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* True for a header the gateway passes on: Retry-After, and
 * x-ratelimit-<ASCII letters, digits, dashes>; out gets the name to send. */
static bool kept_name(const char *name, size_t len, char out[UPSTREAM_HDR_NAME_MAX + 1])
{
	static const char prefix[] = "x-ratelimit-";
	size_t plen = sizeof(prefix) - 1;
	if (len == 11 && strncasecmp(name, "retry-after", 11) == 0) {
		memcpy(out, "Retry-After", 12);
		return true;
	}
	if (len <= plen || len > UPSTREAM_HDR_NAME_MAX || strncasecmp(name, prefix, plen) != 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		char ch = name[i];
		if (ch >= 'A' && ch <= 'Z')
			ch = (char)(ch - 'A' + 'a');
		else if (!(ch >= 'a' && ch <= 'z') && !(ch >= '0' && ch <= '9') && ch != '-')
			return false;
		out[i] = ch;
	}
	out[len] = '\0';
	return true;
}

void upstream_headers_take(struct upstream_headers *h, const char *line, size_t len)
{
	bool folded = h->folded;
	h->folded = false;
	if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
		h->n = 0;
		return;
	}
	while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	if (len && is_ows(line[0])) {
		/* obs-fold: the value goes on, so what was kept is only part of it */
		if (folded)
			h->n--;
		return;
	}
	const char *colon = memchr(line, ':', len);
	if (!colon || h->n >= UPSTREAM_HDR_MAX)
		return;
	struct upstream_hdr *hd = &h->h[h->n];
	if (!kept_name(line, (size_t)(colon - line), hd->name))
		return;
	const char *v = colon + 1, *end = line + len;
	while (v < end && is_ows(*v))
		v++;
	while (end > v && is_ows(end[-1]))
		end--;
	size_t vlen = (size_t)(end - v);
	if (vlen == 0 || vlen > UPSTREAM_HDR_VALUE_MAX)
		return;
	for (size_t i = 0; i < vlen; i++)
		if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
			return;
	for (int i = 0; i < h->n; i++)
		if (strcmp(h->h[i].name, hd->name) == 0)
			return; /* the first of a name is the one passed on */
	memcpy(hd->value, v, vlen);
	hd->value[vlen] = '\0';
	h->n++;
	h->folded = true;
}

int upstream_headers_append(const struct upstream_headers *h, const char **list, int n,
			    int cap)
{
	for (int i = 0; i < h->n && n + 2 < cap; i++) {
		list[n++] = h->h[i].name;
		list[n++] = h->h[i].value;
	}
	if (n < cap)
		list[n] = NULL;
	return n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
	upstream_headers_take(ud, buf, size * nitems);
	return size * nitems;
}

/* Set once at shutdown when the grace period is over: every transfer still
 * running (a hanging upstream included) is aborted within about a second,
 * libcurl's progress interval, so the worker threads can be joined. */
static atomic_bool g_cancel;

void upstream_cancel_all(void)
{
	atomic_store(&g_cancel, true);
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	(void)ud; (void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
	return atomic_load(&g_cancel) ? 1 : 0;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	size_t n = size * nmemb;
	if (x->on_data) {
		long status = 0;
		curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
		if (x->on_data(x->ud, status, ptr, n) != 0) {
			x->aborted = true;
			return 0;
		}
		return n;
	}
	if (sg_buf_append(&x->out->body, ptr, n) != SG_OK) {
		x->too_large = true;
		return 0;
	}
	return n;
}

static enum sg_err perform(struct upstream *u, const struct upstream_target *t,
			   const char *path, const char *body, size_t len,
			   const char *bearer, struct xfer *x, struct sg_error *e)
{
	CURL *h = u->h;
	struct upstream_resp *out = x->out;
	out->status = 0;
	out->headers.n = 0;
	out->headers.folded = false;
	sg_buf_init(&out->body, t->max_bytes);
	char *url = NULL;
	if (asprintf(&url, "%s%s", t->base_url, path) < 0)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	struct curl_slist *hdrs = NULL;
	hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
	hdrs = curl_slist_append(hdrs, "Expect:");
	const char *key = bearer ? bearer : t->api_key;
	char *auth = NULL;
	if (key && key[0]) {
		if (asprintf(&auth, "Authorization: Bearer %s", key) < 0)
			auth = NULL;
		if (auth)
			hdrs = curl_slist_append(hdrs, auth);
	}
	curl_easy_reset(h);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)t->connect_timeout_ms);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)t->timeout_ms);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &out->headers);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "semgate/" "0.1");
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	double t0 = sg_now_ms();
	CURLcode cc = curl_easy_perform(h);
	out->ms = sg_now_ms() - t0;
	bool emb = t->kind == UPSTREAM_KIND_EMBEDDING;
	metrics_observe(emb ? SG_H_EMBED : SG_H_UPSTREAM, out->ms);
	if (cc != CURLE_OK && !x->aborted)
		metrics_inc(emb ? SG_C_UPSTREAM_ERRORS_EMBED : SG_C_UPSTREAM_ERRORS_LLM);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
	/* forget the header list and body pointers before they are freed */
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
	curl_slist_free_all(hdrs);
	if (auth) {
		memset(auth, 0, strlen(auth));
		free(auth);
	}
	free(url);

	switch (cc) {
	case CURLE_OK:
		return SG_OK;
	case CURLE_OPERATION_TIMEDOUT:
		return sg_error_set(e, SG_ERR_TIMEOUT, "upstream did not answer within %lld ms",
				    t->timeout_ms);
	case CURLE_WRITE_ERROR:
		if (x->aborted)
			return sg_error_set(e, SG_ERR_CLIENT_GONE, "transfer stopped by the gateway");
		if (x->too_large)
			return sg_error_set(e, SG_ERR_UPSTREAM,
				"upstream response exceeds %zu bytes", t->max_bytes);
		break;
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
		return sg_error_set(e, SG_ERR_UPSTREAM, "upstream unreachable: %s",
				    curl_easy_strerror(cc));
	default:
		break;
	}
	return sg_error_set(e, SG_ERR_UPSTREAM, "upstream call failed: %s",
			    curl_easy_strerror(cc));
}

enum sg_err upstream_post(struct upstream *u, const struct upstream_target *t,
			  const char *path, const char *body, size_t len,
			  const char *bearer, struct upstream_resp *out,
			  struct sg_error *e)
{
	struct xfer x = { .h = u->h, .out = out };
	return perform(u, t, path, body, len, bearer, &x, e);
}

enum sg_err upstream_post_stream(struct upstream *u, const struct upstream_target *t,
				 const char *path, const char *body, size_t len,
				 const char *bearer, upstream_data_fn on_data, void *ud,
				 struct upstream_resp *out, struct sg_error *e)
{
	struct xfer x = { .h = u->h, .out = out, .on_data = on_data, .ud = ud };
	return perform(u, t, path, body, len, bearer, &x, e);
}
