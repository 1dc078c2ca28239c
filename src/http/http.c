/* civetweb adapter: one catch-all handler dispatches over the route table,
 * bounds body reads, writes JSON/error/chunked responses and one JSON access
 * log line per request. The only file that includes civetweb.h. It never
 * logs header values, so keys sent by clients cannot reach the log. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <dirent.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <civetweb.h>
#include <cjson/cJSON.h>

#include "semgate/http/http.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/core/metrics.h"

struct sg_http {
	struct mg_context *ctx;
	const struct sg_route *routes;
	size_t nroutes;
	struct sg_app *app;
	sg_worker_create_fn wcreate;
	sg_worker_destroy_fn wdestroy;
	sg_guard_fn guard;
	long long max_body;
	bool keep_alive;
	int port;
	atomic_int inflight;   /* requests inside dispatch() */
	int wake_port;         /* after http_drain: the loopback listener polled instead */
	atomic_bool draining;  /* after http_drain: answers say Connection: close */
};

/* ---- worker stacks ----
 * Debian's civetweb creates its worker threads with 100 KiB stacks
 * (pthread_attr_setstacksize(102400)) and uses most of that itself, which
 * leaves handlers about 14 KiB: libcurl overflows it, and under ASan so
 * does civetweb's own error path. The executable's definition of
 * pthread_attr_setstacksize is found before libc's, so requests for small
 * stacks are raised to SG_MIN_THREAD_STACK here; on_thread_init checks that
 * it worked. Stack pages are only touched as used. */

#define SG_MIN_THREAD_STACK ((size_t)1024 * 1024)

int pthread_attr_setstacksize(pthread_attr_t *attr, size_t size);
int pthread_attr_setstacksize(pthread_attr_t *attr, size_t size)
{
	static int (*real)(pthread_attr_t *, size_t);
	if (!real)
		real = (int (*)(pthread_attr_t *, size_t))dlsym(RTLD_NEXT,
								"pthread_attr_setstacksize");
	if (!real)
		return EINVAL;
	return real(attr, size < SG_MIN_THREAD_STACK ? SG_MIN_THREAD_STACK : size);
}

static size_t current_stack_size(void)
{
	pthread_attr_t attr;
	size_t size = 0;
	if (pthread_getattr_np(pthread_self(), &attr) == 0) {
		pthread_attr_getstacksize(&attr, &size);
		pthread_attr_destroy(&attr);
	}
	return size;
}

/* ---- routing ---- */

/* Match path against pattern segment by segment; {x} captures one
 * non-empty segment. Returns true on a match. */
static bool route_match(const char *pattern, const char *path, struct sg_req *req)
{
	const char *p = pattern, *s = path;
	int np = 0;
	while (*p && *s) {
		if (*p == '{') {
			const char *pe = strchr(p, '}');
			const char *se = strchr(s, '/');
			size_t slen = se ? (size_t)(se - s) : strlen(s);
			if (!pe || slen == 0 || np >= SG_HTTP_MAX_PARAMS)
				return false;
			/* an overlong segment still matches but captures "", which
			 * every route refuses as an invalid id */
			if (slen >= SG_HTTP_PARAM_MAX) {
				req->params[np][0] = '\0';
			} else {
				memcpy(req->params[np], s, slen);
				req->params[np][slen] = '\0';
			}
			np++;
			p = pe + 1;
			s += slen;
			continue;
		}
		if (*p != *s)
			return false;
		p++;
		s++;
	}
	if (*p || *s)
		return false;
	req->nparams = np;
	return true;
}

/* ---- request access ---- */

const char *http_header(const struct sg_req *req, const char *name)
{
	return mg_get_header((struct mg_connection *)req->conn, name);
}

enum sg_err http_read_body(struct sg_req *req, struct sg_error *e)
{
	struct mg_connection *conn = req->conn;
	const struct mg_request_info *ri = mg_get_request_info(conn);
	size_t cap = req->body.cap;
	if (ri->content_length >= 0 && (unsigned long long)ri->content_length > cap)
		return sg_error_set(e, SG_ERR_TOO_LARGE,
			"request body of %lld bytes exceeds the limit of %zu bytes",
			ri->content_length, cap);
	char chunk[16384];
	for (;;) {
		int n = mg_read(conn, chunk, sizeof(chunk));
		if (n == 0)
			break;
		if (n < 0)
			return sg_error_set(e, SG_ERR_CLIENT_GONE,
				"connection closed while reading the body");
		enum sg_err rc = sg_buf_append(&req->body, chunk, (size_t)n);
		if (rc == SG_ERR_TOO_LARGE)
			return sg_error_set(e, rc,
				"request body exceeds the limit of %zu bytes", cap);
		if (rc != SG_OK)
			return sg_error_set(e, rc, "out of memory reading the body");
	}
	if (ri->content_length >= 0 && (long long)req->body.len != ri->content_length)
		return sg_error_set(e, SG_ERR_CLIENT_GONE, "body shorter than Content-Length");
	if (!req->body.data && sg_buf_append(&req->body, "", 0) != SG_OK)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	return SG_OK;
}

/* ---- responses ---- */

static bool header_value_ok(const char *v)
{
	for (; *v; v++)
		if (*v == '\r' || *v == '\n' || (unsigned char)*v < 0x20)
			return false;
	return true;
}

/* The Date header value, formatted once per second per thread. */
static const char *http_date(void)
{
	static _Thread_local time_t last;
	static _Thread_local char date[40];
	time_t now = time(NULL);
	if (now != last || !date[0]) {
		struct tm tm;
		gmtime_r(&now, &tm);
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
		last = now;
	}
	return date;
}

/* True when the client may send another request on this connection; the
 * same decision civetweb makes after the handler returns (keep-alive is
 * on, and the client asked for it or speaks HTTP/1.1 without asking to
 * close). */
static bool keep_alive(const struct sg_req *req)
{
	if (!req->keep_alive_on)
		return false;
	const struct mg_request_info *ri = mg_get_request_info(req->conn);
	const char *h = http_header(req, "Connection");
	if (h) {
		/* comma-separated tokens, each trimmed: "foo keep-alive" is one
		 * token that is not keep-alive (civetweb reads it so); civetweb
		 * also closes after a request that asks for an Upgrade */
		bool keep = false;
		for (const char *p = h; *p;) {
			p += strspn(p, " \t,");
			size_t n = strcspn(p, ",");
			size_t t = n;
			while (t && (p[t - 1] == ' ' || p[t - 1] == '\t'))
				t--;
			if (t == 10 && strncasecmp(p, "keep-alive", 10) == 0)
				keep = true;
			else if (t == 7 && strncasecmp(p, "upgrade", 7) == 0)
				return false;
			p += n;
		}
		return keep;
	}
	return ri->http_version && strcmp(ri->http_version, "1.1") == 0;
}

/* Status line and headers, ending in the blank line. civetweb's own
 * mg_response_header_* send every line with its own send(): with
 * tcp_nodelay each is a TCP segment and a wake-up of the client, so the
 * gateway formats the head itself and writes head and body at once. */
static enum sg_err format_head(struct sg_req *req, struct sg_buf *out, int status,
			       const char *content_type, const char *length,
			       const char *cache_control, const char *const *headers)
{
	const struct mg_request_info *ri = mg_get_request_info(req->conn);
	const char *version = ri->http_version && strcmp(ri->http_version, "1.0") == 0 ?
		"1.0" : "1.1";
	bool close = status == 413 || !keep_alive(req);
	enum sg_err rc = sg_buf_printf(out,
		"HTTP/%s %d %s\r\nContent-Type: %s\r\n%s%s%sCache-Control: %s\r\n"
		"Date: %s\r\nConnection: %s\r\n",
		version, status, mg_get_response_code_text(req->conn, status), content_type,
		length ? "Content-Length: " : "Transfer-Encoding: ", length ? length : "chunked",
		"\r\n", cache_control, http_date(), close ? "close" : "keep-alive");
	for (size_t i = 0; rc == SG_OK && headers && headers[i] && headers[i + 1]; i += 2) {
		if (!header_value_ok(headers[i]) || !header_value_ok(headers[i + 1]))
			continue;
		if ((rc = sg_buf_puts(out, headers[i])) == SG_OK &&
		    (rc = sg_buf_append(out, ": ", 2)) == SG_OK &&
		    (rc = sg_buf_puts(out, headers[i + 1])) == SG_OK)
			rc = sg_buf_append(out, "\r\n", 2);
	}
	if (rc == SG_OK)
		rc = sg_buf_append(out, "\r\n", 2);
	return rc;
}

static bool write_all(struct sg_req *req, const char *p, size_t n)
{
	while (n > 0) {
		size_t part = n > (1u << 30) ? (1u << 30) : n;
		int w = mg_write(req->conn, p, part);
		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
	}
	return true;
}

int http_send(struct sg_req *req, int status, const char *content_type,
	      const char *body, size_t len, const char *const *headers)
{
	char clen[32];
	snprintf(clen, sizeof(clen), "%zu", len);
	bool with_body = len && strcmp(req->method, "HEAD") != 0;
	char stack[4096];
	struct sg_buf out;
	sg_buf_init_on(&out, stack, sizeof(stack), 0);
	req->status = status;
	if (format_head(req, &out, status, content_type, clen, "no-store", headers) != SG_OK ||
	    (with_body && sg_buf_append(&out, body, len) != SG_OK)) {
		/* out of memory: a bare answer from fixed memory, then close */
		static const char oom[] = "HTTP/1.1 503 Service Unavailable\r\n"
			"Content-Length: 0\r\nConnection: close\r\n\r\n";
		sg_buf_finish(&out);
		write_all(req, oom, sizeof(oom) - 1);
		req->status = 503;
		return 503;
	}
	write_all(req, out.data, out.len);
	sg_buf_finish(&out);
	return status;
}

int http_send_json(struct sg_req *req, int status, const char *json,
		   const char *const *headers)
{
	return http_send(req, status, "application/json", json, strlen(json), headers);
}

int http_send_error_headers(struct sg_req *req, int status, const char *type,
			    const char *code, const char *message,
			    const char *const *headers)
{
	char *body = sg_json_error_body(message, type, code);
	static const char fallback[] =
		"{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
		"\"code\":\"out_of_memory\"}}";
	int sent = body ? status : 503;
	const char *all[2 * SG_HTTP_ERROR_HEADERS + 3];
	size_t n = 0;
	bool retry = false;
	for (size_t i = 0; headers && headers[i] && headers[i + 1] &&
			   n < 2 * SG_HTTP_ERROR_HEADERS; i += 2) {
		retry |= strcasecmp(headers[i], "Retry-After") == 0;
		all[n++] = headers[i];
		all[n++] = headers[i + 1];
	}
	if (sent == 503 && !retry) {
		all[n++] = "Retry-After";
		all[n++] = "1";
	}
	all[n] = NULL;
	int rc = http_send(req, sent, "application/json", body ? body : fallback,
			   body ? strlen(body) : strlen(fallback), all);
	free(body);
	return rc;
}

int http_send_error(struct sg_req *req, int status, const char *type,
		    const char *code, const char *message)
{
	return http_send_error_headers(req, status, type, code, message, NULL);
}

static const char *err_code_name(enum sg_err code)
{
	switch (code) {
	case SG_OK: return "ok";
	case SG_ERR_NOMEM: return "out_of_memory";
	case SG_ERR_BAD_REQUEST: return "invalid_request";
	case SG_ERR_NOT_FOUND: return "not_found";
	case SG_ERR_TOO_LARGE: return "request_too_large";
	case SG_ERR_UNAUTHORIZED: return "invalid_api_key";
	case SG_ERR_RATE_LIMITED: return "rate_limit_exceeded";
	case SG_ERR_REDIS: return "redis_unavailable";
	case SG_ERR_REPLICAS: return "replicas_unconfirmed";
	case SG_ERR_ARCHIVE: return "archive_unavailable";
	case SG_ERR_UPSTREAM: return "upstream_unavailable";
	case SG_ERR_TIMEOUT: return "upstream_timeout";
	case SG_ERR_CLIENT_GONE: return "client_closed_request";
	case SG_ERR_INTERNAL: return "internal_error";
	}
	return "internal_error";
}

int http_send_sg_error(struct sg_req *req, const struct sg_error *e)
{
	return http_send_error(req, sg_err_http_status(e->code), sg_err_type(e->code),
			       err_code_name(e->code),
			       e->msg[0] ? e->msg : sg_strerror(e->code));
}

enum sg_err http_stream_begin(struct sg_req *req, int status,
			      const char *content_type, const char *const *headers)
{
	char stack[1024];
	struct sg_buf out;
	sg_buf_init_on(&out, stack, sizeof(stack), 0);
	req->status = status;
	req->streaming = true;
	enum sg_err rc = format_head(req, &out, status, content_type, NULL, "no-cache",
				     headers);
	if (rc == SG_OK && !write_all(req, out.data, out.len))
		rc = SG_ERR_CLIENT_GONE;
	sg_buf_finish(&out);
	return rc;
}

/* One chunk (size line, data, CRLF) in one write. */
enum sg_err http_stream_write(struct sg_req *req, const char *data, size_t len)
{
	if (len == 0)
		return SG_OK;
	char small[4096];
	char head[24];
	int hl = snprintf(head, sizeof(head), "%zx\r\n", len);
	size_t total = (size_t)hl + len + 2;
	char *buf = total <= sizeof(small) ? small : malloc(total);
	bool ok;
	if (buf) {
		memcpy(buf, head, (size_t)hl);
		memcpy(buf + hl, data, len);
		memcpy(buf + hl + len, "\r\n", 2);
		ok = write_all(req, buf, total);
		if (buf != small)
			free(buf);
	} else {
		ok = write_all(req, head, (size_t)hl) && write_all(req, data, len) &&
		     write_all(req, "\r\n", 2);
	}
	return ok ? SG_OK : SG_ERR_CLIENT_GONE;
}

void http_stream_end(struct sg_req *req)
{
	write_all(req, "0\r\n\r\n", 5);
}

/* ---- access log ---- */

/* Append s as a JSON string: quotes, backslashes and control characters
 * escaped (the callers pass valid UTF-8). */
static enum sg_err buf_json_string(struct sg_buf *b, const char *s)
{
	enum sg_err rc = sg_buf_append(b, "\"", 1);
	const char *run = s;
	for (const char *p = s; rc == SG_OK && *p; p++) {
		unsigned char ch = (unsigned char)*p;
		if (ch >= 0x20 && ch != '"' && ch != '\\')
			continue;
		rc = sg_buf_append(b, run, (size_t)(p - run));
		if (rc == SG_OK)
			rc = ch == '"' ? sg_buf_append(b, "\\\"", 2) :
			     ch == '\\' ? sg_buf_append(b, "\\\\", 2) :
			     sg_buf_printf(b, "\\u%04x", ch);
		run = p + 1;
	}
	if (rc == SG_OK)
		rc = sg_buf_puts(b, run);
	if (rc == SG_OK)
		rc = sg_buf_append(b, "\"", 1);
	return rc;
}

/* The access log's time, 2026-01-31T23:59:59.999Z: the part up to the
 * seconds formatted once per second per thread. */
static enum sg_err log_time(struct sg_buf *b)
{
	static _Thread_local time_t last;
	static _Thread_local char secs[32];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (ts.tv_sec != last || !secs[0]) {
		struct tm tm;
		gmtime_r(&ts.tv_sec, &tm);
		strftime(secs, sizeof(secs), "%Y-%m-%dT%H:%M:%S", &tm);
		last = ts.tv_sec;
	}
	long msec = ts.tv_nsec / 1000000;
	char frac[6] = { '.', (char)('0' + msec / 100), (char)('0' + msec / 10 % 10),
			 (char)('0' + msec % 10), 'Z', 0 };
	enum sg_err rc = sg_buf_puts(b, secs);
	return rc == SG_OK ? sg_buf_append(b, frac, 5) : rc;
}

/* ,"name":ms with three decimals */
static enum sg_err put_ms(struct sg_buf *b, const char *name, double ms)
{
	enum sg_err rc = sg_buf_append(b, ",\"", 2);
	if (rc == SG_OK && (rc = sg_buf_puts(b, name)) == SG_OK &&
	    (rc = sg_buf_append(b, "\":", 2)) == SG_OK)
		rc = sg_buf_put_fixed3(b, ms);
	return rc;
}

/* One JSON line per request, formatted directly (no tree) and written
 * with one write. Durations in ms with microsecond resolution. */
static void access_log(const struct sg_req *req, double ms)
{
	if (sg_log_get_level() > SG_LOG_INFO)
		return;
	char stack[1024];
	struct sg_buf b;
	sg_buf_init_on(&b, stack, sizeof(stack), 0);
	/* the raw path is client data: keep it short and valid UTF-8 */
	char path[256];
	snprintf(path, sizeof(path), "%s", req->path);
	if (!sg_utf8_valid(path, strlen(path)))
		snprintf(path, sizeof(path), "(invalid utf-8)");
	enum sg_err rc = sg_buf_puts(&b, "{\"time\":\"");
	if (rc == SG_OK)
		rc = log_time(&b);
	if (rc == SG_OK)
		rc = sg_buf_puts(&b, "\",\"msg\":\"request\",\"method\":");
	if (rc == SG_OK)
		rc = buf_json_string(&b, req->method);
	if (rc == SG_OK)
		rc = sg_buf_puts(&b, ",\"path\":");
	if (rc == SG_OK)
		rc = buf_json_string(&b, path);
	if (rc == SG_OK)
		rc = sg_buf_puts(&b, ",\"route\":");
	if (rc == SG_OK)
		rc = buf_json_string(&b, req->route ? req->route : "-");
	if (rc == SG_OK && (rc = sg_buf_puts(&b, ",\"status\":")) == SG_OK &&
	    (rc = sg_buf_put_int(&b, req->status)) == SG_OK)
		rc = sg_buf_puts(&b, ",\"tenant\":");
	if (rc == SG_OK)
		rc = buf_json_string(&b, req->tenant);
	if (rc == SG_OK && req->cache_outcome) {
		rc = sg_buf_puts(&b, ",\"cache\":");
		if (rc == SG_OK)
			rc = buf_json_string(&b, req->cache_outcome);
	}
	if (rc == SG_OK && req->similarity >= -1.0)
		rc = sg_buf_printf(&b, ",\"similarity\":%.9g", req->similarity);
	if (rc == SG_OK && req->verify) {
		rc = sg_buf_puts(&b, ",\"verify\":");
		if (rc == SG_OK)
			rc = buf_json_string(&b, req->verify);
	}
	if (rc == SG_OK)
		rc = put_ms(&b, "ms", ms);
	if (rc == SG_OK && req->upstream_ms >= 0)
		rc = put_ms(&b, "upstream_ms", req->upstream_ms);
	/* this request's embedding, vector search and Redis time (metrics.h) */
	static const struct { enum sg_hist h; const char *name; } per_req[] = {
		{ SG_H_EMBED, "embed_ms" }, { SG_H_SEARCH, "search_ms" },
		{ SG_H_REDIS, "redis_ms" },
	};
	for (size_t i = 0; rc == SG_OK && i < sizeof(per_req) / sizeof(per_req[0]); i++) {
		unsigned cnt;
		double v = metrics_req_ms(per_req[i].h, &cnt);
		if (cnt)
			rc = put_ms(&b, per_req[i].name, v);
	}
	if (rc == SG_OK)
		rc = sg_buf_append(&b, "}\n", 2);
	if (rc == SG_OK)
		sg_log_line(b.data, b.len);
	sg_buf_finish(&b);
}

/* ---- dispatch ---- */

static int dispatch(struct mg_connection *conn, void *cbdata)
{
	struct sg_http *h = cbdata;
	const struct mg_request_info *ri = mg_get_request_info(conn);
	atomic_fetch_add(&h->inflight, 1);
	double t0 = sg_now_ms();
	metrics_req_begin();
	metrics_inflight(1);
	struct sg_req req;
	memset(&req, 0, sizeof(req));
	req.method = ri->request_method;
	req.path = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
	req.query = ri->query_string;
	req.app = h->app;
	req.worker = mg_get_thread_pointer(conn);
	req.conn = conn;
	req.keep_alive_on = h->keep_alive && !atomic_load(&h->draining);
	req.similarity = -2.0;
	req.upstream_ms = -1.0;
	snprintf(req.tenant, sizeof(req.tenant), "default");
	sg_buf_init(&req.body, (size_t)h->max_body);

	const struct sg_route *hit = NULL;
	bool path_known = false;
	for (size_t i = 0; i < h->nroutes; i++) {
		if (!route_match(h->routes[i].pattern, req.path, &req))
			continue;
		path_known = true;
		req.route = h->routes[i].pattern;
		if (strcmp(h->routes[i].method, req.method) == 0) {
			hit = &h->routes[i];
			break;
		}
	}
	if (ri->num_headers >= MG_MAX_HEADERS) {
		/* civetweb keeps the first MG_MAX_HEADERS header lines and drops
		 * the rest without a word: a key or X-Conversation-Id past them
		 * would be silently ignored */
		http_send_error(&req, 431, "invalid_request_error", "too_many_headers",
				"a request may carry fewer than 64 header lines");
	} else if (hit) {
		if (!req.worker)
			http_send_error(&req, 503, "service_unavailable", "no_worker_state",
					"worker thread has no state (out of memory)");
		else if (!h->guard || strncmp(hit->pattern, "/v1/", 4) != 0 ||
			 h->guard(&req) == 0)
			hit->fn(&req);
	} else if (path_known) {
		char allow[64] = "";
		for (size_t i = 0; i < h->nroutes; i++) {
			struct sg_req tmp;
			memset(&tmp, 0, sizeof(tmp));
			if (route_match(h->routes[i].pattern, req.path, &tmp) &&
			    strlen(allow) + strlen(h->routes[i].method) + 3 < sizeof(allow)) {
				if (allow[0])
					strcat(allow, ", ");
				strcat(allow, h->routes[i].method);
			}
		}
		char msg[128];
		snprintf(msg, sizeof(msg), "method %.16s is not allowed here (allowed: %s)",
			 req.method, allow);
		const char *hdr[] = { "Allow", allow, NULL };
		char *body = sg_json_error_body(msg, "invalid_request_error",
						"method_not_allowed");
		if (body)
			http_send(&req, 405, "application/json", body, strlen(body), hdr);
		else
			http_send_error(&req, 503, "server_error", "out_of_memory", "out of memory");
		free(body);
	} else {
		req.route = NULL;
		http_send_error(&req, 404, "invalid_request_error", "not_found",
				"no such route");
	}
	if (req.status == 0) {
		/* a handler must answer; make a missing answer visible, not a hang */
		sg_log(SG_LOG_ERROR, "handler for %s sent no response", req.route);
		http_send_error(&req, 500, "server_error", "internal_error",
				"handler sent no response");
	}
	double ms = sg_now_ms() - t0;
	metrics_request(req.method, req.route, req.status, ms);
	metrics_inflight(-1);
	access_log(&req, ms);
	sg_buf_finish(&req.body);
	atomic_fetch_sub(&h->inflight, 1);
	return req.status;
}

/* ---- lifecycle ---- */

void http_global_init(void)
{
	mg_init_library(0);
}

void http_global_cleanup(void)
{
	mg_exit_library();
}

static void *on_thread_init(const struct mg_context *ctx, int thread_type)
{
	struct sg_http *h = mg_get_user_data(ctx);
	if (thread_type != 1 || !h)
		return NULL;
	size_t stack = current_stack_size();
	if (stack && stack < SG_MIN_THREAD_STACK / 2)
		sg_log(SG_LOG_WARN, "worker thread stack is only %zu bytes; deep requests "
		       "may crash", stack);
	return h->wcreate ? h->wcreate(h->app) : NULL;
}

static void on_thread_exit(const struct mg_context *ctx, int thread_type, void *ptr)
{
	struct sg_http *h = mg_get_user_data(ctx);
	if (thread_type == 1 && h && h->wdestroy && ptr)
		h->wdestroy(ptr);
}

/* Every request comes through here before civetweb's own handling, so
 * nothing is served by civetweb's defaults, not even during start-up. */
static int on_begin_request(struct mg_connection *conn)
{
	struct sg_http *h = mg_get_user_data(mg_get_context(conn));
	return dispatch(conn, h);
}

static int on_log_message(const struct mg_connection *conn, const char *message)
{
	(void)conn;
	sg_log(SG_LOG_DEBUG, "civetweb: %s", message);
	return 1;
}

struct sg_http *http_start(const struct sg_http_opts *opts,
			   const struct sg_route *routes, size_t nroutes,
			   struct sg_app *app, sg_worker_create_fn wcreate,
			   sg_worker_destroy_fn wdestroy, struct sg_error *e)
{
	struct sg_http *h = calloc(1, sizeof(*h));
	if (!h) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	h->routes = routes;
	h->nroutes = nroutes;
	h->app = app;
	h->wcreate = wcreate;
	h->wdestroy = wdestroy;
	h->guard = opts->guard;
	h->max_body = opts->max_body_bytes;
	h->keep_alive = opts->keepalive_ms > 0;

	char ports[300], threads[16], keepalive[24], reqto[24];
	if (strchr(opts->host, ':'))
		snprintf(ports, sizeof(ports), "[%s]:%d", opts->host, opts->port);
	else
		snprintf(ports, sizeof(ports), "%s:%d", opts->host, opts->port);
	snprintf(threads, sizeof(threads), "%d", opts->threads);
	snprintf(keepalive, sizeof(keepalive), "%lld", opts->keepalive_ms);
	snprintf(reqto, sizeof(reqto), "%d", opts->request_timeout_ms);
	const char *options[] = {
		"listening_ports", ports,
		"num_threads", threads,
		"tcp_nodelay", "1",
		"enable_keep_alive", opts->keepalive_ms > 0 ? "yes" : "no",
		"keep_alive_timeout_ms", keepalive,
		"request_timeout_ms", reqto,
		"decode_url", "no",
		"listen_backlog", "1024",
		"connection_queue", "1024",
		NULL,
	};
	struct mg_callbacks cb;
	memset(&cb, 0, sizeof(cb));
	cb.begin_request = on_begin_request;
	cb.init_thread = on_thread_init;
	cb.exit_thread = on_thread_exit;
	cb.log_message = on_log_message;
	h->ctx = mg_start(&cb, h, options);
	if (!h->ctx) {
		sg_error_set(e, SG_ERR_INTERNAL, "cannot listen on %s (address in use?)", ports);
		free(h);
		return NULL;
	}
	struct mg_server_port sp[4];
	int n = mg_get_server_ports(h->ctx, 4, sp);
	h->port = n > 0 ? sp[0].port : opts->port;
	atomic_init(&h->inflight, 0);
	h->wake_port = 0;
	atomic_init(&h->draining, false);
	return h;
}

int http_port(const struct sg_http *h)
{
	return h->port;
}

/* civetweb's master thread polls the listening socket with a 2 s timeout
 * and only then notices the stop flag; a loopback connection wakes it at
 * once, so shutdown takes milliseconds instead of up to two seconds. */
struct waker {
	int port;
	atomic_bool done;
};

static void *wake_master(void *arg)
{
	struct waker *w = arg;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)w->port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < 100 && !atomic_load(&w->done); i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0) {
			connect(fd, (struct sockaddr *)&sa, sizeof(sa));
			close(fd);
		}
		const struct timespec pause = { 0, 20 * 1000 * 1000 };
		nanosleep(&pause, NULL);
	}
	return NULL;
}

void http_stop(struct sg_http *h)
{
	if (!h)
		return;
	struct waker w = { .port = h->wake_port ? h->wake_port : h->port };
	atomic_init(&w.done, false);
	pthread_t t;
	bool have_waker = pthread_create(&t, NULL, wake_master, &w) == 0;
	mg_stop(h->ctx);
	atomic_store(&w.done, true);
	if (have_waker)
		pthread_join(t, NULL);
	free(h);
}

/* A listening socket on a free loopback port, with one connection of ours
 * already queued (*client, to be closed by the caller). -1 on failure. */
static int queued_listener(int *port, int *client)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) != 0)
		goto fail;
	*client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*client < 0)
		goto fail;
	if (connect(*client, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(*client);
		goto fail;
	}
	*port = ntohs(sa.sin_port);
	return fd;
fail:
	close(fd);
	return -1;
}

/* Connect to the listening socket (its own address, loopback when it is
 * bound to any) just to wake a poll() sleeping on it. */
static void poke(const struct sockaddr_storage *ss)
{
	struct sockaddr_storage to = *ss;
	socklen_t len = sizeof(struct sockaddr_in);
	if (to.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&to;
		if (a->sin_addr.s_addr == htonl(INADDR_ANY))
			a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&to;
		if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
			a->sin6_addr = in6addr_loopback;
		len = sizeof(struct sockaddr_in6);
	}
	int fd = socket(to.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		connect(fd, (struct sockaddr *)&to, len);
		close(fd);
	}
}

/* civetweb has no call to stop accepting while handlers run on (mg_stop
 * also makes every write of a stream in progress fail). So the descriptor
 * number of the listening socket is pointed at a private loopback
 * listener and the real socket is shut down, which refuses new
 * connections at once. civetweb's master thread sleeps in poll() on the
 * old socket: it is woken there, finds the private listener ready with a
 * dummy connection of ours (served as an empty request and closed), and
 * from then on polls the private one, which only http_stop's waker
 * connects to; mg_stop closes it as civetweb's own. */
enum sg_err http_drain(struct sg_http *h, struct sg_error *e)
{
	if (h->wake_port)
		return SG_OK;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return sg_error_set(e, SG_ERR_INTERNAL, "/proc/self/fd: %s", strerror(errno));
	int found = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		char *end;
		long fd = strtol(de->d_name, &end, 10);
		if (*end || end == de->d_name || fd == dirfd(d))
			continue;
		int listening = 0;
		socklen_t ol = sizeof(listening);
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ol) != 0 ||
		    !listening || getsockname((int)fd, (struct sockaddr *)&ss, &sl) != 0 ||
		    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
			continue;
		int port = ss.ss_family == AF_INET ?
			ntohs(((struct sockaddr_in *)&ss)->sin_port) :
			ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		if (port != h->port)
			continue;
		int wport = 0, client = -1;
		int repl = queued_listener(&wport, &client);
		/* keep the real socket open through a descriptor of our own
		 * until it is shut down, so nothing slips in between */
		int keep = repl >= 0 ? dup((int)fd) : -1;
		if (keep < 0 || dup3(repl, (int)fd, O_CLOEXEC) < 0) {
			if (keep >= 0)
				close(keep);
			if (repl >= 0) {
				close(repl);
				close(client);
			}
			continue;
		}
		close(repl);
		poke(&ss);
		shutdown(keep, SHUT_RDWR);
		close(keep);
		close(client);
		h->wake_port = wport;
		atomic_store(&h->draining, true);
		found++;
	}
	closedir(d);
	if (!found)
		return sg_error_set(e, SG_ERR_INTERNAL, "listening socket on port %d not found",
				    h->port);
	return SG_OK;
}

int http_inflight(const struct sg_http *h)
{
	return atomic_load(&((struct sg_http *)h)->inflight);
}
