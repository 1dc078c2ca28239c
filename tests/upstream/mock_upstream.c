/* mock_upstream.c — a deterministic OpenAI-compatible upstream (chat + embeddings)
 * for semgate's integration tests and benchmarks. It owns only in-memory controls,
 * counters and embedding overrides, all behind one mutex; it must never sleep
 * unless a request or control asked it to, and never outlive mg_stop(). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <civetweb.h>
#include <cjson/cJSON.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BODY_CAP ((size_t)8 << 20)
#define MAX_DIM 4096
#define MAX_CHOICES 128
#define MAX_WAIT_MS 3600000L
#define WAIT_SLICE_NS 10000000L
#define OVERRIDE_BUCKETS 4096
#define EXTRA_HEADERS_MAX 4096
#define TWO_PI 6.283185307179586476925286766559

/* ---------- growable byte buffer; an allocation failure sticks in .oom ---------- */

struct buf {
	char *p;
	size_t len;
	size_t cap;
	bool oom;
};

static bool buf_reserve(struct buf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (b->oom)
		return false;
	if (extra > SIZE_MAX / 2 - b->len) {
		b->oom = true;
		return false;
	}
	need = b->len + extra + 1;
	if (need <= b->cap)
		return true;
	cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap *= 2;
	p = realloc(b->p, cap);
	if (!p) {
		b->oom = true;
		return false;
	}
	b->p = p;
	b->cap = cap;
	return true;
}

static void buf_add(struct buf *b, const void *s, size_t n)
{
	if (!buf_reserve(b, n))
		return;
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_adds(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void buf_addf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;
	size_t room = b->cap > b->len ? b->cap - b->len : 0;

	va_start(ap, fmt);
	n = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->oom = true;
		return;
	}
	if ((size_t)n >= room) {
		if (!buf_reserve(b, (size_t)n))
			return;
		va_start(ap, fmt);
		vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	b->len += (size_t)n;
}

/* Appends s as a quoted JSON string; bytes >= 0x80 pass through unchanged. */
static void buf_add_json_str(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, run = 0;

	buf_add(b, "\"", 1);
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[7];
		size_t elen = 2;

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		buf_add(b, s + run, i - run);
		run = i + 1;
		esc[0] = '\\';
		switch (c) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		case '\b': esc[1] = 'b'; break;
		case '\f': esc[1] = 'f'; break;
		default:
			memcpy(esc + 1, "u00", 3);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			elen = 6;
			break;
		}
		buf_add(b, esc, elen);
	}
	buf_add(b, s + run, n - run);
	buf_add(b, "\"", 1);
}

static void buf_add_json_cstr(struct buf *b, const char *s)
{
	buf_add_json_str(b, s, strlen(s));
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* ---------- global state (one mutex) ---------- */

enum chat_mode { CHAT_OK, CHAT_FAIL, CHAT_HANG, CHAT_INVALID_JSON, CHAT_TRUNCATED };
static const char *const chat_mode_names[] = { "ok", "fail", "hang", "invalid_json",
					       "truncated" };

enum embed_mode { EMBED_OK, EMBED_FAIL, EMBED_HANG };
static const char *const embed_mode_names[] = { "ok", "fail", "hang" };

/* Summary calls (semgate's SEMGATE_SUMMARY) are chat requests for the model
 * SUMMARY_MODEL. They are counted and recorded apart from the other chat
 * requests, answered with a digest of the transcript (the previous summary
 * followed by the text of each message, space-separated) so a test can
 * tell exactly which messages a summary covered, and can be made to fail
 * or to hang until summary_mode changes (control summary_mode). */
#define SUMMARY_MODEL "mock-summary"
enum summary_mode { SUMMARY_OK, SUMMARY_FAIL, SUMMARY_HANG };
static const char *const summary_mode_names[] = { "ok", "fail", "hang" };

struct controls {
	enum chat_mode mode;
	long fail_status;
	long latency_ms;
	long hang_ms;
	long stream_chunk_delay_ms;
	enum embed_mode embed_mode;
	long embed_fail_status;
	long embed_latency_ms;
	enum summary_mode summary_mode;
	/* "Name: value\r\n" lines added to every chat and embeddings answer
	 * (control response_headers); values are sent exactly as given, so
	 * tests can hand the gateway values it must refuse */
	char headers[EXTRA_HEADERS_MAX];
};

static const struct controls default_controls = {
	.mode = CHAT_OK,
	.fail_status = 500,
	.latency_ms = 0,
	.hang_ms = 60000,
	.stream_chunk_delay_ms = 0,
	.embed_mode = EMBED_OK,
	.embed_fail_status = 500,
	.embed_latency_ms = 0,
	.summary_mode = SUMMARY_OK,
	.headers = "",
};

struct override {
	struct override *next;
	char *text;
	char *like;
	double similarity;
};

static struct {
	pthread_mutex_t lock;
	struct controls ctl;
	unsigned long long chat_requests;
	unsigned long long embedding_requests;
	unsigned long long embedding_inputs;
	char *last_chat;      /* raw, validated JSON text of the body, or NULL */
	char *last_embedding; /* same */
	char *last_auth;      /* Authorization header of the last chat request, or NULL */
	unsigned long long summary_requests;
	long summary_held;    /* summary calls being held (summary_mode hang) right now */
	char *last_summary;   /* raw body of the last summary call, or NULL */
	struct override *overrides[OVERRIDE_BUCKETS];
	size_t n_overrides;
} g = { .lock = PTHREAD_MUTEX_INITIALIZER };

static atomic_int g_stopping;
static int g_embed_dim = 384;

static uint64_t fnv1a64(const void *p, size_t n, uint64_t h)
{
	const unsigned char *s = p;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

#define FNV_OFFSET 0xcbf29ce484222325ULL

static struct override **override_slot_locked(const char *text)
{
	size_t bucket = fnv1a64(text, strlen(text), FNV_OFFSET) % OVERRIDE_BUCKETS;
	struct override **pp = &g.overrides[bucket];

	while (*pp && strcmp((*pp)->text, text) != 0)
		pp = &(*pp)->next;
	return pp;
}

static void override_free(struct override *o)
{
	if (!o)
		return;
	free(o->text);
	free(o->like);
	free(o);
}

/* Detaches everything resettable so the caller frees it outside the lock. */
struct detached {
	char *last_chat, *last_embedding, *last_auth, *last_summary;
	struct override *list;
};

static void reset_locked(struct detached *d)
{
	size_t i;

	d->last_chat = g.last_chat;
	d->last_embedding = g.last_embedding;
	d->last_auth = g.last_auth;
	d->last_summary = g.last_summary;
	d->list = NULL;
	for (i = 0; i < OVERRIDE_BUCKETS; i++) {
		struct override *o = g.overrides[i];

		while (o) {
			struct override *next = o->next;

			o->next = d->list;
			d->list = o;
			o = next;
		}
		g.overrides[i] = NULL;
	}
	g.n_overrides = 0;
	g.last_chat = g.last_embedding = g.last_auth = g.last_summary = NULL;
	g.chat_requests = g.embedding_requests = g.embedding_inputs = 0;
	g.summary_requests = 0;
	g.ctl = default_controls;
}

static void detached_free(struct detached *d)
{
	free(d->last_chat);
	free(d->last_embedding);
	free(d->last_auth);
	free(d->last_summary);
	while (d->list) {
		struct override *next = d->list->next;

		override_free(d->list);
		d->list = next;
	}
}

/* ---------- connection helpers ---------- */

struct req {
	struct mg_connection *conn;
	const struct mg_request_info *ri;
	bool keep_alive;
	int fd; /* -2: not looked up yet, -1: not found */
	const char *headers; /* extra "Name: value\r\n" lines for every answer, or NULL */
};

static const char *status_text(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	}
	return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
}

static bool header_has_token(const char *value, const char *token)
{
	size_t tl = strlen(token);
	const char *p = value;

	while (*p) {
		size_t n;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		n = strcspn(p, ",");
		while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n == tl && strncasecmp(p, token, tl) == 0)
			return true;
		p += strcspn(p, ",");
	}
	return false;
}

/* Mirrors civetweb's own keep-alive decision so the header we send matches it. */
static bool request_keep_alive(struct mg_connection *conn, const struct mg_request_info *ri)
{
	const char *h = mg_get_header(conn, "Connection");

	if (h)
		return header_has_token(h, "keep-alive");
	return ri->http_version && strcmp(ri->http_version, "1.1") == 0;
}

static int sockaddr_port(const struct sockaddr_storage *sa)
{
	if (sa->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	if (sa->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return -1;
}

static bool sockaddr_host_is(const struct sockaddr_storage *sa, const char *host)
{
	char s[INET6_ADDRSTRLEN];
	const void *a;

	if (sa->ss_family == AF_INET)
		a = &((const struct sockaddr_in *)sa)->sin_addr;
	else if (sa->ss_family == AF_INET6)
		a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
	else
		return false;
	return inet_ntop(sa->ss_family, a, s, sizeof(s)) && strcmp(s, host) == 0;
}

/* civetweb 1.15 exposes no way to close a server connection or get its socket, so
 * find the descriptor by its address 4-tuple. It cannot be closed or reused
 * under us: civetweb keeps it open while our handler runs. */
static int find_conn_fd(const struct mg_request_info *ri)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int found = -1, dfd;

	if (!d)
		return -1;
	dfd = dirfd(d);
	while ((e = readdir(d)) != NULL) {
		struct sockaddr_storage peer, local;
		socklen_t pl = sizeof(peer), ll = sizeof(local);
		char *end;
		long fd = strtol(e->d_name, &end, 10);

		if (end == e->d_name || *end || fd == dfd || fd < 0 || fd > INT32_MAX)
			continue;
		if (getpeername((int)fd, (struct sockaddr *)&peer, &pl) != 0 ||
		    getsockname((int)fd, (struct sockaddr *)&local, &ll) != 0)
			continue;
		if (sockaddr_port(&peer) != ri->remote_port ||
		    sockaddr_port(&local) != ri->server_port ||
		    !sockaddr_host_is(&peer, ri->remote_addr))
			continue;
		found = (int)fd;
		break;
	}
	closedir(d);
	return found;
}

static int req_fd(struct req *r)
{
	if (r->fd == -2)
		r->fd = find_conn_fd(r->ri);
	return r->fd;
}

/* Ends the TCP connection without a (complete) response; civetweb closes it
 * after the handler returns because its next read sees EOF. */
static void drop_connection(struct req *r)
{
	int fd = req_fd(r);

	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
	else
		fprintf(stderr, "sg-mock-upstream: cannot find socket to drop\n");
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Makes mg_stop() prompt: civetweb 1.15 checks its stop flag only every couple of
 * seconds while its master thread polls the listener and while workers wait for the
 * next request on idle keep-alive connections. SHUT_RD wakes both; a response that
 * is still being written can finish. */
static void shutdown_reads(int listen_port)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d)) != NULL) {
		struct sockaddr_storage peer, local;
		socklen_t pl = sizeof(peer), ll = sizeof(local);
		char *end;
		long fd = strtol(e->d_name, &end, 10);

		if (end == e->d_name || *end || fd == dirfd(d) || fd < 0 || fd > INT32_MAX)
			continue;
		int listening = 0;
		socklen_t ol = sizeof(listening);

		if (getsockname((int)fd, (struct sockaddr *)&local, &ll) != 0 ||
		    sockaddr_port(&local) != listen_port)
			continue;
		if (getpeername((int)fd, (struct sockaddr *)&peer, &pl) == 0 ||
		    (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ol) == 0 &&
		     listening))
			shutdown((int)fd, SHUT_RD);
	}
	closedir(d);
}

/* Sleeps ms in small slices. Returns false early when the server is stopping or
 * the client has hung up, so no worker outlives mg_stop() or a gone client. */
static bool wait_ms(struct req *r, long ms)
{
	int64_t deadline;
	int fd;

	if (ms <= 0)
		return true;
	fd = req_fd(r);
	deadline = now_ns() + (int64_t)ms * 1000000;
	for (;;) {
		int64_t left = deadline - now_ns();
		struct timespec ts;

		if (atomic_load(&g_stopping))
			return false;
		if (left <= 0)
			return true;
		if (left > WAIT_SLICE_NS)
			left = WAIT_SLICE_NS;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)left;
		if (fd >= 0) {
			struct pollfd p = { .fd = fd, .events = POLLRDHUP };

			if (ppoll(&p, 1, &ts, NULL) > 0 &&
			    (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
				return false;
		} else {
			nanosleep(&ts, NULL);
		}
	}
}

static bool write_all(struct req *r, const char *p, size_t n)
{
	while (n > 0) {
		size_t chunk = n > (1u << 30) ? (1u << 30) : n;
		int w = mg_write(r->conn, p, chunk);

		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
	}
	return true;
}

/* Header and body go out in one write: with TCP_NODELAY every write is a packet. */
static int send_response_len(struct req *r, int status, const char *ctype, const char *body,
			     size_t len, size_t content_length, const char *extra)
{
	struct buf out = { 0 };

	buf_addf(&out,
		 "HTTP/1.1 %d %s\r\n"
		 "Content-Type: %s\r\n"
		 "Content-Length: %zu\r\n"
		 "%s%s"
		 "Connection: %s\r\n\r\n",
		 status, status_text(status), ctype, content_length, extra ? extra : "",
		 r->headers ? r->headers : "", r->keep_alive ? "keep-alive" : "close");
	buf_add(&out, body, len);
	if (!out.oom)
		write_all(r, out.p, out.len);
	buf_free(&out);
	return status;
}

static int send_response(struct req *r, int status, const char *ctype, const char *body,
			 size_t len)
{
	return send_response_len(r, status, ctype, body, len, len, NULL);
}

static int send_oom(struct req *r)
{
	static const char msg[] = "{\"error\":{\"message\":\"out of memory\","
				  "\"type\":\"server_error\",\"code\":\"out_of_memory\"}}";

	return send_response(r, 503, "application/json", msg, sizeof(msg) - 1);
}

__attribute__((format(printf, 4, 5))) static int send_error(struct req *r, int status,
							     const char *code, const char *fmt, ...)
{
	char msg[512];
	struct buf b = { 0 };
	va_list ap;
	int ret;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	buf_adds(&b, "{\"error\":{\"message\":");
	buf_add_json_cstr(&b, msg);
	buf_adds(&b, ",\"type\":");
	buf_add_json_cstr(&b, status >= 500   ? "server_error"
			      : status == 429 ? "rate_limit_error"
			      : status == 401 ? "authentication_error"
					      : "invalid_request_error");
	buf_adds(&b, ",\"code\":");
	buf_add_json_cstr(&b, code);
	buf_adds(&b, "}}");
	ret = b.oom ? send_oom(r) : send_response(r, status, "application/json", b.p, b.len);
	buf_free(&b);
	return ret;
}

static int send_json(struct req *r, int status, struct buf *b)
{
	int ret = b->oom ? send_oom(r) : send_response(r, status, "application/json", b->p, b->len);

	buf_free(b);
	return ret;
}

/* Reads the whole body into a NUL-terminated heap buffer.
 * Returns 0, or the HTTP status to answer with (413 over BODY_CAP, 400, 503). */
static int read_body(struct req *r, char **out, size_t *out_len)
{
	long long cl = r->ri->content_length;
	size_t cap = cl >= 0 ? (size_t)cl : 4096, len = 0;
	char *p;

	*out = NULL;
	*out_len = 0;
	if (cl > (long long)BODY_CAP)
		return 413;
	p = malloc(cap + 1);
	if (!p)
		return 503;
	for (;;) {
		int n;

		if (len == cap) {
			char *np;

			if (cl >= 0)
				break;
			if (cap > BODY_CAP) {
				free(p);
				return 413;
			}
			cap = cap * 2 > BODY_CAP + 1 ? BODY_CAP + 1 : cap * 2;
			np = realloc(p, cap + 1);
			if (!np) {
				free(p);
				return 503;
			}
			p = np;
		}
		n = mg_read(r->conn, p + len, cap - len);
		if (n < 0) {
			free(p);
			return 400;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > BODY_CAP) {
		free(p);
		return 413;
	}
	if (cl >= 0 && len != (size_t)cl) {
		free(p);
		return 400;
	}
	p[len] = '\0';
	*out = p;
	*out_len = len;
	return 0;
}

static int send_body_status(struct req *r, int st)
{
	/* civetweb closes a connection whose body was not read to the end */
	r->keep_alive = false;
	if (st == 413)
		return send_error(r, 413, "request_too_large", "request body exceeds %zu bytes",
				  BODY_CAP);
	if (st == 503)
		return send_oom(r);
	return send_error(r, 400, "invalid_body", "could not read the request body");
}

/* Parses body as exactly one JSON value (only whitespace may follow it). */
static cJSON *parse_json(const char *body, size_t len)
{
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithOpts(body, &end, 0);

	if (!root)
		return NULL;
	while (end < body + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
		end++;
	if (end != body + len) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

/* Optional fields treat JSON null like absence, as OpenAI does. */
static const cJSON *opt_field(const cJSON *obj, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);

	return cJSON_IsNull(it) ? NULL : it;
}

static bool json_int(const cJSON *it, long lo, long hi, long *out)
{
	double d;

	if (!cJSON_IsNumber(it))
		return false;
	d = it->valuedouble;
	if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
		return false;
	*out = (long)d;
	return true;
}

static unsigned long long tokens_of(size_t bytes)
{
	return (bytes + 3) / 4;
}

/* ---------- chat completions ---------- */

struct chat_req {
	const char *model;
	struct buf user_text; /* text of the last user message; always allocated */
	size_t prompt_bytes;
	long n;
	bool stream;
	bool include_usage;
};

struct markers {
	long fail_status; /* 0: none */
	long latency_ms;
	bool hang, invalid_json, truncated, tool, length, brk, ratelimit;
};

/* Appends the text of a message's content (string, array of parts, or null). */
static const char *content_text(const cJSON *content, struct buf *out)
{
	const cJSON *part;
	bool first = true;

	if (!content || cJSON_IsNull(content))
		return NULL;
	if (cJSON_IsString(content)) {
		buf_adds(out, content->valuestring);
		return NULL;
	}
	if (!cJSON_IsArray(content))
		return "message content must be a string, an array of parts or null";
	cJSON_ArrayForEach(part, content) {
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
		const cJSON *text;

		if (!cJSON_IsObject(part) || !cJSON_IsString(type))
			return "each content part must be an object with a string 'type'";
		if (strcmp(type->valuestring, "text") != 0)
			continue;
		text = cJSON_GetObjectItemCaseSensitive(part, "text");
		if (!cJSON_IsString(text))
			return "a text content part needs a string 'text'";
		if (!first)
			buf_add(out, " ", 1);
		buf_adds(out, text->valuestring);
		first = false;
	}
	return NULL;
}

static const char *parse_chat(const cJSON *root, struct chat_req *c)
{
	const cJSON *it, *msg;
	struct buf tmp = { 0 };
	const char *err = NULL;

	c->n = 1;
	buf_add(&c->user_text, "", 0);
	if (!cJSON_IsObject(root))
		return "request body must be a JSON object";
	it = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (!cJSON_IsString(it))
		return "'model' must be a string";
	c->model = it->valuestring;
	if ((it = opt_field(root, "stream")) != NULL) {
		if (!cJSON_IsBool(it))
			return "'stream' must be a boolean";
		c->stream = cJSON_IsTrue(it);
	}
	if ((it = opt_field(root, "stream_options")) != NULL) {
		const cJSON *iu;

		if (!cJSON_IsObject(it))
			return "'stream_options' must be an object";
		if ((iu = opt_field(it, "include_usage")) != NULL) {
			if (!cJSON_IsBool(iu))
				return "'stream_options.include_usage' must be a boolean";
			c->include_usage = cJSON_IsTrue(iu);
		}
	}
	if ((it = opt_field(root, "n")) != NULL && !json_int(it, 1, MAX_CHOICES, &c->n))
		return "'n' must be an integer from 1 to 128";
	if ((it = opt_field(root, "max_tokens")) != NULL) {
		long ignored;

		if (!json_int(it, 0, INT32_MAX, &ignored))
			return "'max_tokens' must be a non-negative integer";
	}
	if ((it = opt_field(root, "tools")) != NULL && !cJSON_IsArray(it))
		return "'tools' must be an array";

	it = cJSON_GetObjectItemCaseSensitive(root, "messages");
	if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) == 0)
		return "'messages' must be a non-empty array";
	cJSON_ArrayForEach(msg, it) {
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");

		if (!cJSON_IsObject(msg) || !cJSON_IsString(role)) {
			err = "each message must be an object with a string 'role'";
			break;
		}
		tmp.len = 0;
		err = content_text(cJSON_GetObjectItemCaseSensitive(msg, "content"), &tmp);
		if (err)
			break;
		c->prompt_bytes += tmp.len;
		if (strcmp(role->valuestring, "user") == 0) {
			c->user_text.len = 0;
			buf_add(&c->user_text, tmp.p ? tmp.p : "", tmp.len);
		}
	}
	if (!err && (tmp.oom || c->user_text.oom))
		err = "out of memory";
	buf_free(&tmp);
	return err;
}

static long marker_number(const char *text, const char *prefix)
{
	const char *p = strstr(text, prefix);
	char *end;
	long v;

	if (!p)
		return -1;
	p += strlen(prefix);
	if (*p < '0' || *p > '9')
		return -1;
	errno = 0;
	v = strtol(p, &end, 10);
	if (errno || strncmp(end, "]]", 2) != 0)
		return -1;
	return v;
}

static void parse_markers(const char *t, struct markers *m)
{
	long v;

	memset(m, 0, sizeof(*m));
	v = marker_number(t, "[[fail:");
	if (v >= 200 && v <= 599)
		m->fail_status = v;
	v = marker_number(t, "[[latency:");
	if (v > 0)
		m->latency_ms = v > MAX_WAIT_MS ? MAX_WAIT_MS : v;
	m->hang = strstr(t, "[[hang]]") != NULL;
	m->invalid_json = strstr(t, "[[invalid_json]]") != NULL;
	m->truncated = strstr(t, "[[truncated]]") != NULL;
	m->tool = strstr(t, "[[tool]]") != NULL;
	m->length = strstr(t, "[[length]]") != NULL;
	m->brk = strstr(t, "[[break]]") != NULL;
	m->ratelimit = strstr(t, "[[ratelimit]]") != NULL;
}

/* What OpenAI sends with a 429 ([[ratelimit]]). */
static const char ratelimit_headers[] =
	"retry-after: 7\r\n"
	"x-ratelimit-limit-requests: 60\r\n"
	"x-ratelimit-remaining-requests: 0\r\n"
	"x-ratelimit-reset-requests: 6.5s\r\n"
	"x-ratelimit-limit-tokens: 150000\r\n"
	"x-ratelimit-remaining-tokens: 149960\r\n"
	"x-ratelimit-reset-tokens: 16ms\r\n";

struct chat_reply {
	unsigned long long id;
	long long created;
	const struct chat_req *c;
	const struct markers *m;
	struct buf answer;
	unsigned long long prompt_tokens, completion_tokens;
};

static const char *finish_reason(const struct markers *m)
{
	return m->tool ? "tool_calls" : m->length ? "length" : "stop";
}

static void add_usage(struct buf *b, const struct chat_reply *cr)
{
	buf_addf(b, "\"usage\":{\"prompt_tokens\":%llu,\"completion_tokens\":%llu,"
		 "\"total_tokens\":%llu}",
		 cr->prompt_tokens, cr->completion_tokens,
		 cr->prompt_tokens + cr->completion_tokens);
}

static void build_completion(struct buf *b, const struct chat_reply *cr)
{
	long i;

	buf_addf(b, "{\"id\":\"chatcmpl-mock-%llu\",\"object\":\"chat.completion\","
		 "\"created\":%lld,\"model\":", cr->id, cr->created);
	buf_add_json_cstr(b, cr->c->model);
	buf_adds(b, ",\"choices\":[");
	for (i = 0; i < cr->c->n; i++) {
		buf_addf(b, "%s{\"index\":%ld,\"message\":{\"role\":\"assistant\",", i ? "," : "", i);
		if (cr->m->tool) {
			buf_adds(b, "\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
				    "\"type\":\"function\",\"function\":{\"name\":\"lookup\","
				    "\"arguments\":\"{}\"}}]");
		} else {
			buf_adds(b, "\"content\":");
			buf_add_json_str(b, cr->answer.p, cr->answer.len);
		}
		buf_addf(b, "},\"logprobs\":null,\"finish_reason\":\"%s\"}", finish_reason(cr->m));
	}
	buf_adds(b, "],");
	add_usage(b, cr);
	buf_adds(b, "}");
}

static void chunk_begin(struct buf *b, const struct chat_reply *cr)
{
	buf_addf(b, "data: {\"id\":\"chatcmpl-mock-%llu\",\"object\":\"chat.completion.chunk\","
		 "\"created\":%lld,\"model\":", cr->id, cr->created);
	buf_add_json_cstr(b, cr->c->model);
}

/* Frames one SSE event as an HTTP chunk and writes it with one mg_write, after the
 * response head if given and, when last, with the terminating zero-length chunk. */
static bool send_event(struct req *r, const struct buf *head, const struct buf *ev, bool last)
{
	struct buf out = { 0 };
	bool ok;

	if (head)
		buf_add(&out, head->p, head->len);
	if (ev && ev->len) {
		buf_addf(&out, "%zx\r\n", ev->len);
		buf_add(&out, ev->p, ev->len);
		buf_add(&out, "\r\n", 2);
	}
	if (last)
		buf_add(&out, "0\r\n\r\n", 5);
	ok = !out.oom && write_all(r, out.p, out.len);
	buf_free(&out);
	return ok;
}

static bool send_choice_event(struct req *r, const struct buf *head, const struct chat_reply *cr,
			      long index, const char *delta, size_t delta_len, bool content,
			      const char *finish)
{
	struct buf ev = { 0 };
	bool ok;

	chunk_begin(&ev, cr);
	buf_addf(&ev, ",\"choices\":[{\"index\":%ld,\"delta\":", index);
	if (content) {
		buf_adds(&ev, "{\"content\":");
		buf_add_json_str(&ev, delta, delta_len);
		buf_adds(&ev, "}");
	} else {
		buf_add(&ev, delta, delta_len);
	}
	buf_adds(&ev, ",\"logprobs\":null,\"finish_reason\":");
	if (finish)
		buf_addf(&ev, "\"%s\"", finish);
	else
		buf_adds(&ev, "null");
	/* with include_usage OpenAI puts "usage":null on every other chunk */
	buf_adds(&ev, cr->c->include_usage ? "}],\"usage\":null}\n\n" : "}]}\n\n");
	ok = !ev.oom && send_event(r, head, &ev, false);
	buf_free(&ev);
	return ok;
}

static int stream_chat(struct req *r, const struct chat_reply *cr, const struct controls *ctl,
		       bool brk, bool invalid)
{
	static const char role_delta[] = "{\"role\":\"assistant\",\"content\":\"\"}";
	static const char tool_delta[] =
		"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,"
		"\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"lookup\","
		"\"arguments\":\"\"}}]}";
	static const char tool_args[] =
		"{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}";
	static const char bad_event[] = "data: {\"choices\": [\n\n";
	const struct chat_req *c = cr->c;
	struct buf head = { 0 }, ev = { 0 };
	const char *a = cr->answer.p;
	size_t alen = cr->answer.len, pos = 0;
	int pieces = 0;
	long i;

	buf_addf(&head, "HTTP/1.1 200 OK\r\n"
		 "Content-Type: text/event-stream\r\n"
		 "Cache-Control: no-cache\r\n"
		 "Transfer-Encoding: chunked\r\n"
		 "%sConnection: %s\r\n\r\n", r->headers ? r->headers : "",
		 r->keep_alive ? "keep-alive" : "close");
	if (head.oom) {
		buf_free(&head);
		return send_oom(r);
	}
	for (i = 0; i < c->n; i++) {
		const char *d = cr->m->tool ? tool_delta : role_delta;
		size_t dl = cr->m->tool ? sizeof(tool_delta) - 1 : sizeof(role_delta) - 1;

		if (!send_choice_event(r, i == 0 ? &head : NULL, cr, i, d, dl, false, NULL))
			goto out;
	}
	if (invalid) {
		buf_add(&ev, bad_event, sizeof(bad_event) - 1);
		send_event(r, NULL, &ev, false);
		ev.len = 0;
		buf_adds(&ev, "data: [DONE]\n\n");
		send_event(r, NULL, &ev, true);
		goto out;
	}
	if (cr->m->tool) {
		for (i = 0; i < c->n; i++)
			if (!send_choice_event(r, NULL, cr, i, tool_args, sizeof(tool_args) - 1,
					       false, NULL))
				goto out;
	} else {
		while (pos < alen) {
			size_t start = pos;

			while (pos < alen && a[pos] != ' ')
				pos++;
			while (pos < alen && a[pos] == ' ')
				pos++;
			if (!wait_ms(r, ctl->stream_chunk_delay_ms)) {
				drop_connection(r);
				goto out;
			}
			for (i = 0; i < c->n; i++)
				if (!send_choice_event(r, NULL, cr, i, a + start, pos - start, true,
						       NULL))
					goto out;
			pieces++;
			if (brk && (pieces == 2 || pos == alen)) {
				drop_connection(r);
				goto out;
			}
		}
	}
	if (brk) {
		drop_connection(r);
		goto out;
	}
	for (i = 0; i < c->n; i++)
		if (!send_choice_event(r, NULL, cr, i, "{}", 2, false, finish_reason(cr->m)))
			goto out;
	if (c->include_usage) {
		chunk_begin(&ev, cr);
		buf_adds(&ev, ",\"choices\":[],");
		add_usage(&ev, cr);
		buf_adds(&ev, "}\n\n");
		if (ev.oom || !send_event(r, NULL, &ev, false))
			goto out;
		ev.len = 0;
	}
	buf_adds(&ev, "data: [DONE]\n\n");
	if (!ev.oom)
		send_event(r, NULL, &ev, true);
out:
	buf_free(&head);
	buf_free(&ev);
	return 200;
}

static bool is_summary_call(const cJSON *root)
{
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");

	return cJSON_IsString(model) && strcmp(model->valuestring, SUMMARY_MODEL) == 0;
}

/* The digest of a summary call's transcript (its last user message):
 * the text inside <summary>…</summary>, then each "[role] text" line inside
 * <messages>…</messages> without its "[role] ", all joined by spaces. */
static void summary_digest(const char *t, struct buf *out)
{
	const char *p = strstr(t, "<summary>\n"), *end, *line;
	bool first = true;

	if (p && (end = strstr(p, "\n</summary>")) != NULL) {
		p += strlen("<summary>\n");
		buf_add(out, p, (size_t)(end - p));
		first = end == p;
	}
	p = strstr(t, "<messages>\n");
	end = p ? strstr(p, "</messages>") : NULL;
	if (!p || !end)
		return;
	for (line = p + strlen("<messages>\n"); line < end;) {
		const char *nl = memchr(line, '\n', (size_t)(end - line));
		const char *text = line[0] == '[' ? memchr(line, ']', (size_t)(end - line)) : NULL;

		if (!nl)
			nl = end;
		if (text && text < nl) {
			text += text + 1 < nl && text[1] == ' ' ? 2 : 1;
			if (!first)
				buf_add(out, " ", 1);
			buf_add(out, text, (size_t)(nl - text));
			first = false;
		}
		line = nl + 1;
	}
}

static enum summary_mode summary_mode_now(void)
{
	enum summary_mode m;

	pthread_mutex_lock(&g.lock);
	m = g.ctl.summary_mode;
	pthread_mutex_unlock(&g.lock);
	return m;
}

static int handle_summary(struct req *r, cJSON *root, char *body)
{
	const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages"), *m;
	const char *user = NULL;
	struct buf digest = { 0 }, b = { 0 };
	enum summary_mode mode;
	unsigned long long id;
	char *old;
	int ret;

	pthread_mutex_lock(&g.lock);
	id = ++g.summary_requests;
	old = g.last_summary;
	g.last_summary = body;
	mode = g.ctl.summary_mode;
	if (mode == SUMMARY_HANG)
		g.summary_held++;
	pthread_mutex_unlock(&g.lock);
	free(old);
	if (mode == SUMMARY_HANG) {
		/* held until the test changes summary_mode, the caller goes away
		 * or the mock stops */
		bool alive = true;

		while ((mode = summary_mode_now()) == SUMMARY_HANG && (alive = wait_ms(r, 10)))
			;
		pthread_mutex_lock(&g.lock);
		g.summary_held--;
		pthread_mutex_unlock(&g.lock);
		if (!alive) {
			drop_connection(r);
			cJSON_Delete(root);
			return 499;
		}
	}
	if (mode == SUMMARY_FAIL) {
		cJSON_Delete(root);
		return send_error(r, 500, "mock_failure", "mock summary failure");
	}
	cJSON_ArrayForEach(m, msgs) {
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");

		if (cJSON_IsString(role) && strcmp(role->valuestring, "user") == 0 &&
		    cJSON_IsString(content))
			user = content->valuestring;
	}
	summary_digest(user ? user : "", &digest);
	buf_add(&digest, "", 0);
	buf_addf(&b, "{\"id\":\"chatcmpl-mock-summary-%llu\",\"object\":\"chat.completion\","
		 "\"created\":%lld,\"model\":\"" SUMMARY_MODEL "\",\"choices\":[{\"index\":0,"
		 "\"message\":{\"role\":\"assistant\",\"content\":", id, (long long)time(NULL));
	buf_add_json_str(&b, digest.p, digest.len);
	buf_addf(&b, "},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":%llu,"
		 "\"completion_tokens\":%llu,\"total_tokens\":%llu}}",
		 tokens_of(strlen(user ? user : "")), tokens_of(digest.len),
		 tokens_of(strlen(user ? user : "")) + tokens_of(digest.len));
	ret = digest.oom ? send_oom(r) : send_json(r, 200, &b);
	if (digest.oom)
		buf_free(&b);
	buf_free(&digest);
	cJSON_Delete(root);
	return ret;
}

static int handle_chat(struct req *r)
{
	struct chat_req c = { 0 };
	struct chat_reply cr = { 0 };
	struct markers m;
	struct controls ctl;
	char headers[sizeof(ratelimit_headers) + EXTRA_HEADERS_MAX];
	const char *auth = mg_get_header(r->conn, "Authorization");
	char *body = NULL, *auth_copy = auth ? strdup(auth) : NULL, *old_body, *old_auth;
	size_t len = 0;
	cJSON *root = NULL;
	const char *err;
	long fail_status = 0;
	bool hang, invalid, truncated;
	int st, ret;

	st = read_body(r, &body, &len);
	if (st == 0 && !(root = parse_json(body, len))) {
		free(body);
		body = NULL;
	}
	if (root && is_summary_call(root)) {
		free(auth_copy);
		return handle_summary(r, root, body);
	}
	pthread_mutex_lock(&g.lock);
	cr.id = ++g.chat_requests;
	old_body = g.last_chat;
	old_auth = g.last_auth;
	g.last_chat = body; /* the tree in root does not point into body */
	g.last_auth = auth_copy;
	ctl = g.ctl;
	pthread_mutex_unlock(&g.lock);
	free(old_body);
	free(old_auth);

	if (st)
		return send_body_status(r, st);
	if (!root)
		return send_error(r, 400, "invalid_json", "request body is not valid JSON");
	err = parse_chat(root, &c);
	if (err) {
		ret = send_error(r, 400, "invalid_request", "%s", err);
		goto out;
	}
	parse_markers(c.user_text.p, &m);
	snprintf(headers, sizeof(headers), "%s%s", m.ratelimit ? ratelimit_headers : "",
		 ctl.headers);
	r->headers = headers;

	if (!wait_ms(r, ctl.latency_ms + m.latency_ms)) {
		ret = 499;
		goto out;
	}
	if (m.ratelimit) {
		ret = send_error(r, 429, "rate_limit_exceeded",
				 "mock rate limit reached for requests");
		goto out;
	}
	if (m.fail_status)
		fail_status = m.fail_status;
	else if (!m.hang && !m.invalid_json && !m.truncated && ctl.mode == CHAT_FAIL)
		fail_status = ctl.fail_status;
	hang = !fail_status && (m.hang || (ctl.mode == CHAT_HANG && !m.invalid_json &&
					   !m.truncated));
	invalid = !fail_status && !hang &&
		  (m.invalid_json || (ctl.mode == CHAT_INVALID_JSON && !m.truncated));
	truncated = !fail_status && !hang && !invalid &&
		    (m.truncated || ctl.mode == CHAT_TRUNCATED);
	if (fail_status) {
		ret = send_error(r, (int)fail_status, "mock_failure",
				 "mock upstream failure (status %ld)", fail_status);
		goto out;
	}
	if (hang) {
		wait_ms(r, ctl.hang_ms);
		drop_connection(r);
		ret = 499;
		goto out;
	}
	if (invalid && !c.stream) {
		ret = send_response(r, 200, "application/json", "{\"choices\": [", 13);
		goto out;
	}

	cr.created = (long long)time(NULL);
	cr.c = &c;
	cr.m = &m;
	buf_adds(&cr.answer, "Mock answer: ");
	buf_add(&cr.answer, c.user_text.p, c.user_text.len);
	cr.prompt_tokens = tokens_of(c.prompt_bytes);
	if (cr.prompt_tokens == 0)
		cr.prompt_tokens = 1;
	cr.completion_tokens = m.tool ? tokens_of(strlen("lookup{}")) : tokens_of(cr.answer.len);
	if (cr.completion_tokens == 0)
		cr.completion_tokens = 1;
	if (cr.answer.oom) {
		ret = send_oom(r);
		goto out;
	}
	if (c.stream) {
		ret = stream_chat(r, &cr, &ctl, m.brk || truncated, invalid);
	} else {
		struct buf b = { 0 };

		build_completion(&b, &cr);
		if (truncated && !b.oom) {
			send_response_len(r, 200, "application/json", b.p, b.len / 2, b.len, NULL);
			drop_connection(r);
			buf_free(&b);
			ret = 200;
		} else {
			ret = send_json(r, 200, &b);
		}
	}
out:
	buf_free(&cr.answer);
	buf_free(&c.user_text);
	cJSON_Delete(root);
	return ret;
}

/* ---------- embeddings ---------- */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void normalize(double *v, int dim)
{
	double n = 0;
	int i;

	for (i = 0; i < dim; i++)
		n += v[i] * v[i];
	n = sqrt(n);
	if (n == 0) {
		v[0] = 1;
		return;
	}
	for (i = 0; i < dim; i++)
		v[i] /= n;
}

/* Deterministic unit vector: Gaussian components (Box-Muller over splitmix64)
 * seeded by FNV-1a of the text bytes and the dimension. */
static void base_vector(const char *text, int dim, double *out)
{
	unsigned char d[4] = { (unsigned char)dim, (unsigned char)(dim >> 8),
			       (unsigned char)(dim >> 16), (unsigned char)(dim >> 24) };
	uint64_t s = fnv1a64(d, sizeof(d), fnv1a64(text, strlen(text), FNV_OFFSET));
	int i;

	for (i = 0; i < dim; i += 2) {
		double u1 = (double)((splitmix64(&s) >> 11) + 1) * 0x1.0p-53;
		double u2 = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;
		double rad = sqrt(-2.0 * log(u1));

		out[i] = rad * cos(TWO_PI * u2);
		if (i + 1 < dim)
			out[i + 1] = rad * sin(TWO_PI * u2);
	}
	normalize(out, dim);
}

static double dot(const double *a, const double *b, int dim)
{
	double s = 0;
	int i;

	for (i = 0; i < dim; i++)
		s += a[i] * b[i];
	return s;
}

/* out = s*base(like) + sqrt(1-s^2)*u, u = base(text) orthogonalised against
 * base(like); scratch holds dim doubles. */
static void override_vector(const char *text, const char *like, double s, int dim, double *out,
			    double *scratch)
{
	double *b = scratch, *a = out, d, n, c;
	int i, k;

	base_vector(like, dim, b);
	base_vector(text, dim, a);
	d = dot(a, b, dim);
	for (i = 0; i < dim; i++)
		a[i] -= d * b[i];
	n = sqrt(dot(a, a, dim));
	if (n < 1e-9) {
		/* text == like: take the axis least aligned with b instead. */
		for (k = 0, i = 1; i < dim; i++)
			if (fabs(b[i]) < fabs(b[k]))
				k = i;
		for (i = 0; i < dim; i++)
			a[i] = (i == k ? 1.0 : 0.0) - b[k] * b[i];
		n = sqrt(dot(a, a, dim));
	}
	c = sqrt(fmax(0.0, 1.0 - s * s));
	for (i = 0; i < dim; i++)
		out[i] = s * b[i] + (n > 1e-12 ? c * a[i] / n : 0.0);
	if (n <= 1e-12)
		normalize(out, dim);
}

static const uint64_t pow10_u64[20] = {
	1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
	100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
	10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
	100000000000000000ULL, 1000000000000000000ULL, 10000000000000000000ULL,
};

/* Writes exactly what snprintf("%.9g", (double)v) writes (at most 16 chars + NUL),
 * about ten times faster: the float's exact value m*2^e is scaled by 10^k and
 * rounded half-to-even in 128-bit integers. Values outside the exact fast range
 * (zero, subnormal, inf/nan, beyond 1e-19..1e9) go to snprintf. */
static size_t format_float9(float v, char *out)
{
	unsigned __int128 n, q, rem, half;
	uint32_t bits, ebits, q32;
	uint64_t m;
	int e, d, k, x, last, i;
	char dig[9], *o = out;

	memcpy(&bits, &v, sizeof(bits));
	ebits = (bits >> 23) & 0xff;
	if (ebits == 0 || ebits == 0xff)
		goto slow;
	m = (bits & 0x7fffff) | 0x800000;
	/* floor(E * log10(2)) for the binary exponent E; the loop below fixes the
	 * estimate, which may be one too low. */
	e = (int)ebits - 127;
	d = e >= 0 ? (e * 78913) >> 18 : -((-e * 78913 + (1 << 18) - 1) >> 18);
	e -= 23;
	for (;;) {
		k = 8 - d;
		if (k < 0 || k > 27 || e < -127)
			goto slow;
		n = (unsigned __int128)m * pow10_u64[k > 19 ? 19 : k];
		if (k > 19)
			n *= pow10_u64[k - 19];
		if (e >= 0) {
			q = n << e;
		} else {
			q = n >> -e;
			rem = n - (q << -e);
			half = (unsigned __int128)1 << (-e - 1);
			if (rem > half || (rem == half && (q & 1)))
				q++;
		}
		if (q >= 1000000000)
			d++;
		else if (q < 100000000)
			d--;
		else
			break;
	}
	q32 = (uint32_t)q;
	for (i = 8; i >= 0; i--) {
		dig[i] = (char)('0' + q32 % 10);
		q32 /= 10;
	}
	for (last = 8; dig[last] == '0'; last--)
		;
	x = d;
	if (bits >> 31)
		*o++ = '-';
	if (x < -4 || x >= 9) {
		*o++ = dig[0];
		if (last > 0) {
			*o++ = '.';
			memcpy(o, dig + 1, (size_t)last);
			o += last;
		}
		*o++ = 'e';
		*o++ = x < 0 ? '-' : '+';
		x = x < 0 ? -x : x;
		if (x >= 10) {
			*o++ = (char)('0' + x / 10);
		} else {
			*o++ = '0';
		}
		*o++ = (char)('0' + x % 10);
	} else if (x >= 0) {
		memcpy(o, dig, (size_t)x + 1);
		o += x + 1;
		if (last > x) {
			*o++ = '.';
			memcpy(o, dig + x + 1, (size_t)(last - x));
			o += last - x;
		}
	} else {
		*o++ = '0';
		*o++ = '.';
		for (i = 0; i < -x - 1; i++)
			*o++ = '0';
		memcpy(o, dig, (size_t)last + 1);
		o += last + 1;
	}
	*o = '\0';
	return (size_t)(o - out);
slow:
	return (size_t)snprintf(out, 24, "%.9g", (double)v);
}

static void buf_add_base64(struct buf *b, const unsigned char *p, size_t n)
{
	static const char tbl[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i;
	char *o;

	if (!buf_reserve(b, (n + 2) / 3 * 4))
		return;
	o = b->p + b->len;
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

		*o++ = tbl[v >> 18];
		*o++ = tbl[(v >> 12) & 63];
		*o++ = tbl[(v >> 6) & 63];
		*o++ = tbl[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);

		*o++ = tbl[v >> 18];
		*o++ = tbl[(v >> 12) & 63];
		*o++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
		*o++ = '=';
	}
	b->len = (size_t)(o - b->p);
	b->p[b->len] = '\0';
}

static bool append_embedding(struct buf *b, const char *text, int dim, bool base64,
			     double *vec, double *scratch, float *f)
{
	struct override *o;
	char *like = NULL;
	double sim = 0;
	int i;

	pthread_mutex_lock(&g.lock);
	o = *override_slot_locked(text);
	if (o) {
		like = strdup(o->like);
		sim = o->similarity;
	}
	pthread_mutex_unlock(&g.lock);
	if (o && !like)
		return false;
	if (like)
		override_vector(text, like, sim, dim, vec, scratch);
	else
		base_vector(text, dim, vec);
	free(like);
	for (i = 0; i < dim; i++)
		f[i] = (float)vec[i];
	if (base64) {
		buf_add(b, "\"", 1);
		buf_add_base64(b, (const unsigned char *)f, (size_t)dim * sizeof(float));
		buf_add(b, "\"", 1);
		return !b->oom;
	}
	if (!buf_reserve(b, (size_t)dim * 25 + 2))
		return false;
	b->p[b->len++] = '[';
	for (i = 0; i < dim; i++) {
		if (i)
			b->p[b->len++] = ',';
		b->len += format_float9(f[i], b->p + b->len);
	}
	b->p[b->len++] = ']';
	b->p[b->len] = '\0';
	return true;
}

static const char *parse_embeddings(const cJSON *root, const char **model, const cJSON **input,
				    long *dim, bool *base64)
{
	const cJSON *it, *s;

	if (!cJSON_IsObject(root))
		return "request body must be a JSON object";
	it = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (!cJSON_IsString(it))
		return "'model' must be a string";
	*model = it->valuestring;
	it = cJSON_GetObjectItemCaseSensitive(root, "input");
	if (cJSON_IsArray(it)) {
		if (cJSON_GetArraySize(it) == 0)
			return "'input' must not be an empty array";
		cJSON_ArrayForEach(s, it) {
			if (!cJSON_IsString(s))
				return "'input' must be a string or an array of strings";
		}
	} else if (!cJSON_IsString(it)) {
		return "'input' must be a string or an array of strings";
	}
	*input = it;
	*dim = g_embed_dim;
	if ((it = opt_field(root, "dimensions")) != NULL && !json_int(it, 1, MAX_DIM, dim))
		return "'dimensions' must be an integer from 1 to 4096";
	*base64 = false;
	if ((it = opt_field(root, "encoding_format")) != NULL) {
		if (!cJSON_IsString(it) || (strcmp(it->valuestring, "float") != 0 &&
					    strcmp(it->valuestring, "base64") != 0))
			return "'encoding_format' must be \"float\" or \"base64\"";
		*base64 = strcmp(it->valuestring, "base64") == 0;
	}
	return NULL;
}

static int handle_embeddings(struct req *r)
{
	struct controls ctl;
	struct buf b = { 0 };
	char *body = NULL, *old_body;
	size_t len = 0;
	cJSON *root = NULL;
	const cJSON *input = NULL, *s;
	const char *model = NULL, *err;
	unsigned long long tokens = 0;
	double *vec = NULL;
	float *f = NULL;
	long dim = 0, idx = 0, count = 0;
	bool base64 = false;
	int st, ret;

	st = read_body(r, &body, &len);
	if (st == 0 && !(root = parse_json(body, len))) {
		free(body);
		body = NULL;
	}
	err = root ? parse_embeddings(root, &model, &input, &dim, &base64) : NULL;
	if (root && !err)
		count = cJSON_IsArray(input) ? cJSON_GetArraySize(input) : 1;
	pthread_mutex_lock(&g.lock);
	g.embedding_requests++;
	g.embedding_inputs += (unsigned long long)count;
	old_body = g.last_embedding;
	g.last_embedding = body;
	ctl = g.ctl;
	pthread_mutex_unlock(&g.lock);
	free(old_body);
	r->headers = ctl.headers;

	if (st)
		return send_body_status(r, st);
	if (!root)
		return send_error(r, 400, "invalid_json", "request body is not valid JSON");
	if (err) {
		ret = send_error(r, 400, "invalid_request", "%s", err);
		goto out;
	}
	if (!wait_ms(r, ctl.embed_latency_ms)) {
		ret = 499;
		goto out;
	}
	if (ctl.embed_mode == EMBED_FAIL) {
		ret = send_error(r, (int)ctl.embed_fail_status, "mock_failure",
				 "mock embedding failure (status %ld)", ctl.embed_fail_status);
		goto out;
	}
	if (ctl.embed_mode == EMBED_HANG) {
		wait_ms(r, ctl.hang_ms);
		drop_connection(r);
		ret = 499;
		goto out;
	}

	vec = malloc(sizeof(double) * 2 * (size_t)dim);
	f = malloc(sizeof(float) * (size_t)dim);
	if (!vec || !f) {
		ret = send_oom(r);
		goto out;
	}
	buf_adds(&b, "{\"object\":\"list\",\"data\":[");
	for (s = cJSON_IsArray(input) ? input->child : input; s;
	     s = cJSON_IsArray(input) ? s->next : NULL) {
		buf_addf(&b, "%s{\"object\":\"embedding\",\"index\":%ld,\"embedding\":",
			 idx ? "," : "", idx);
		if (!append_embedding(&b, s->valuestring, (int)dim, base64, vec, vec + dim, f))
			b.oom = true;
		buf_adds(&b, "}");
		tokens += tokens_of(strlen(s->valuestring));
		idx++;
	}
	buf_adds(&b, "],\"model\":");
	buf_add_json_cstr(&b, model);
	buf_addf(&b, ",\"usage\":{\"prompt_tokens\":%llu,\"total_tokens\":%llu}}", tokens, tokens);
	ret = send_json(r, 200, &b);
out:
	buf_free(&b);
	free(vec);
	free(f);
	cJSON_Delete(root);
	return ret;
}

/* ---------- control, reset, stats, health ---------- */

static void add_controls_json(struct buf *b, const struct controls *c)
{
	buf_addf(b, "{\"mode\":\"%s\",\"fail_status\":%ld,\"latency_ms\":%ld,\"hang_ms\":%ld,"
		 "\"stream_chunk_delay_ms\":%ld,\"embed_mode\":\"%s\",\"embed_fail_status\":%ld,"
		 "\"embed_latency_ms\":%ld,\"summary_mode\":\"%s\",\"response_headers\":",
		 chat_mode_names[c->mode], c->fail_status, c->latency_ms, c->hang_ms,
		 c->stream_chunk_delay_ms, embed_mode_names[c->embed_mode], c->embed_fail_status,
		 c->embed_latency_ms, summary_mode_names[c->summary_mode]);
	buf_add_json_cstr(b, c->headers);
	buf_adds(b, "}");
}

static int mode_index(const cJSON *it, const char *const *names, int count)
{
	int i;

	if (!cJSON_IsString(it))
		return -1;
	for (i = 0; i < count; i++)
		if (strcmp(it->valuestring, names[i]) == 0)
			return i;
	return -1;
}

/* response_headers: {"Name": "value", …} replaces the extra headers. A name
 * is a token; a value is anything but a line break, so a test can send what
 * a careless or hostile upstream might (control bytes, bare CR, 8-bit). */
static const char *set_headers(struct controls *c, const cJSON *obj)
{
	const cJSON *h;
	size_t len = 0;

	if (!cJSON_IsObject(obj))
		return "must be an object of header names to string values";
	c->headers[0] = '\0';
	cJSON_ArrayForEach(h, obj) {
		const char *n = h->string;
		int w;

		if (!cJSON_IsString(h) || strchr(h->valuestring, '\n'))
			return "each value must be a string without a line feed";
		if (!n[0] || strcspn(n, ": \t\r\n") != strlen(n))
			return "each name must be a non-empty token";
		w = snprintf(c->headers + len, sizeof(c->headers) - len, "%s: %s\r\n", n,
			     h->valuestring);
		if (w < 0 || (size_t)w >= sizeof(c->headers) - len)
			return "the headers must fit in 4096 bytes";
		len += (size_t)w;
	}
	return NULL;
}

/* Applies one /control field to c; returns an error message or NULL. */
static const char *apply_control(struct controls *c, const cJSON *it)
{
	const char *k = it->string;
	int mode;

	if (strcmp(k, "mode") == 0) {
		mode = mode_index(it, chat_mode_names, 5);
		if (mode < 0)
			return "must be one of ok, fail, hang, invalid_json, truncated";
		c->mode = (enum chat_mode)mode;
	} else if (strcmp(k, "summary_mode") == 0) {
		mode = mode_index(it, summary_mode_names, 3);
		if (mode < 0)
			return "must be one of ok, fail, hang";
		c->summary_mode = (enum summary_mode)mode;
	} else if (strcmp(k, "embed_mode") == 0) {
		mode = mode_index(it, embed_mode_names, 3);
		if (mode < 0)
			return "must be one of ok, fail, hang";
		c->embed_mode = (enum embed_mode)mode;
	} else if (strcmp(k, "fail_status") == 0) {
		if (!json_int(it, 400, 599, &c->fail_status))
			return "must be an integer from 400 to 599";
	} else if (strcmp(k, "latency_ms") == 0) {
		if (!json_int(it, 0, MAX_WAIT_MS, &c->latency_ms))
			return "must be an integer from 0 to 3600000";
	} else if (strcmp(k, "hang_ms") == 0) {
		if (!json_int(it, 0, MAX_WAIT_MS, &c->hang_ms))
			return "must be an integer from 0 to 3600000";
	} else if (strcmp(k, "stream_chunk_delay_ms") == 0) {
		if (!json_int(it, 0, MAX_WAIT_MS, &c->stream_chunk_delay_ms))
			return "must be an integer from 0 to 3600000";
	} else if (strcmp(k, "embed_fail_status") == 0) {
		if (!json_int(it, 400, 599, &c->embed_fail_status))
			return "must be an integer from 400 to 599";
	} else if (strcmp(k, "response_headers") == 0) {
		return set_headers(c, it);
	} else if (strcmp(k, "embed_latency_ms") == 0) {
		if (!json_int(it, 0, MAX_WAIT_MS, &c->embed_latency_ms))
			return "must be an integer from 0 to 3600000";
	} else {
		return "unknown field";
	}
	return NULL;
}

static int handle_control_get(struct req *r)
{
	struct controls c;
	struct buf b = { 0 };

	pthread_mutex_lock(&g.lock);
	c = g.ctl;
	pthread_mutex_unlock(&g.lock);
	add_controls_json(&b, &c);
	return send_json(r, 200, &b);
}

static int handle_control_set(struct req *r)
{
	struct controls c;
	struct buf b = { 0 };
	const cJSON *it;
	const char *err = NULL, *bad = NULL;
	char *body;
	size_t len;
	cJSON *root;
	int st = read_body(r, &body, &len);

	if (st)
		return send_body_status(r, st);
	root = parse_json(body, len);
	free(body);
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return send_error(r, 400, "invalid_json", "body must be a JSON object");
	}
	pthread_mutex_lock(&g.lock);
	c = g.ctl;
	cJSON_ArrayForEach(it, root) {
		if ((err = apply_control(&c, it)) != NULL) {
			bad = it->string;
			break;
		}
	}
	if (!err)
		g.ctl = c;
	pthread_mutex_unlock(&g.lock);
	if (err) {
		st = send_error(r, 400, "invalid_control", "control '%s': %s", bad, err);
		cJSON_Delete(root);
		return st;
	}
	cJSON_Delete(root);
	add_controls_json(&b, &c);
	return send_json(r, 200, &b);
}

static int handle_control_embeddings(struct req *r)
{
	const cJSON *text, *like, *sim;
	struct override *o, **slot, *old = NULL;
	struct buf b = { 0 };
	size_t len, n;
	char *body;
	cJSON *root;
	int st = read_body(r, &body, &len);

	if (st)
		return send_body_status(r, st);
	root = parse_json(body, len);
	free(body);
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return send_error(r, 400, "invalid_json", "body must be a JSON object");
	}
	text = cJSON_GetObjectItemCaseSensitive(root, "text");
	like = cJSON_GetObjectItemCaseSensitive(root, "like");
	sim = cJSON_GetObjectItemCaseSensitive(root, "similarity");
	if (!cJSON_IsString(text) || !cJSON_IsString(like) || !cJSON_IsNumber(sim) ||
	    !(sim->valuedouble >= -1.0 && sim->valuedouble <= 1.0)) {
		cJSON_Delete(root);
		return send_error(r, 400, "invalid_request",
				  "need string 'text', string 'like' and 'similarity' in [-1, 1]");
	}
	o = calloc(1, sizeof(*o));
	if (o) {
		o->text = strdup(text->valuestring);
		o->like = strdup(like->valuestring);
		o->similarity = sim->valuedouble;
	}
	cJSON_Delete(root);
	if (!o || !o->text || !o->like) {
		override_free(o);
		return send_oom(r);
	}
	pthread_mutex_lock(&g.lock);
	slot = override_slot_locked(o->text);
	if (*slot) {
		old = *slot;
		o->next = old->next;
	} else {
		g.n_overrides++;
	}
	*slot = o;
	n = g.n_overrides;
	pthread_mutex_unlock(&g.lock);
	override_free(old);
	buf_addf(&b, "{\"ok\":true,\"overrides\":%zu}", n);
	return send_json(r, 200, &b);
}

static int handle_reset(struct req *r)
{
	struct detached d;

	pthread_mutex_lock(&g.lock);
	reset_locked(&d);
	pthread_mutex_unlock(&g.lock);
	detached_free(&d);
	return send_response(r, 200, "application/json", "{\"ok\":true}", 11);
}

static void add_raw_or_null(struct buf *b, const char *raw)
{
	if (raw)
		buf_adds(b, raw);
	else
		buf_adds(b, "null");
}

static int handle_stats(struct req *r)
{
	struct buf b = { 0 };

	pthread_mutex_lock(&g.lock);
	buf_addf(&b, "{\"chat_requests\":%llu,\"embedding_requests\":%llu,"
		 "\"embedding_inputs\":%llu,\"embedding_overrides\":%zu,\"last_chat_request\":",
		 g.chat_requests, g.embedding_requests, g.embedding_inputs, g.n_overrides);
	add_raw_or_null(&b, g.last_chat);
	buf_addf(&b, ",\"summary_requests\":%llu,\"summary_held\":%ld,\"last_summary_request\":",
		 g.summary_requests, g.summary_held);
	add_raw_or_null(&b, g.last_summary);
	buf_adds(&b, ",\"last_embedding_request\":");
	add_raw_or_null(&b, g.last_embedding);
	buf_adds(&b, ",\"last_authorization\":");
	if (g.last_auth)
		buf_add_json_cstr(&b, g.last_auth);
	else
		buf_adds(&b, "null");
	buf_adds(&b, ",\"controls\":");
	add_controls_json(&b, &g.ctl);
	pthread_mutex_unlock(&g.lock);
	buf_adds(&b, "}");
	return send_json(r, 200, &b);
}

static int handle_healthz(struct req *r)
{
	return send_response(r, 200, "application/json", "{\"ok\":true}", 11);
}

/* ---------- routing ---------- */

struct route {
	const char *method;
	const char *path;
	int (*fn)(struct req *r);
};

static const struct route routes[] = {
	{ "POST", "/v1/chat/completions", handle_chat },
	{ "POST", "/v1/embeddings", handle_embeddings },
	{ "GET", "/control", handle_control_get },
	{ "POST", "/control", handle_control_set },
	{ "POST", "/control/embeddings", handle_control_embeddings },
	{ "POST", "/reset", handle_reset },
	{ "GET", "/stats", handle_stats },
	{ "GET", "/healthz", handle_healthz },
};

static int dispatch(struct mg_connection *conn, void *cbdata)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	const char *path = ri->local_uri ? ri->local_uri : "";
	struct req r = { .conn = conn, .ri = ri, .keep_alive = request_keep_alive(conn, ri),
			 .fd = -2 };
	char allow[128] = "";
	size_t i;

	(void)cbdata;
	for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		if (strcmp(routes[i].path, path) != 0)
			continue;
		if (strcmp(routes[i].method, ri->request_method) == 0)
			return routes[i].fn(&r);
		if (strlen(allow) + strlen(routes[i].method) + 3 < sizeof(allow)) {
			if (allow[0])
				strcat(allow, ", ");
			strcat(allow, routes[i].method);
		}
	}
	if (allow[0]) {
		char extra[160];
		static const char body405[] = "{\"error\":{\"message\":\"method not allowed\","
					  "\"type\":\"invalid_request_error\","
					  "\"code\":\"method_not_allowed\"}}";

		snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
		return send_response_len(&r, 405, "application/json", body405,
					 sizeof(body405) - 1, sizeof(body405) - 1, extra);
	}
	return send_error(&r, 404, "not_found", "no route for %s %s", ri->request_method, path);
}

/* ---------- main ---------- */

static void usage(FILE *out)
{
	fprintf(out, "usage: sg-mock-upstream [--host 127.0.0.1] [--port N] [--port-file PATH]\n"
		     "                        [--embed-dim N] [--threads N]\n");
}

static bool parse_long_arg(const char *name, const char *v, long lo, long hi, long *out)
{
	char *end;
	long x;

	errno = 0;
	x = v ? strtol(v, &end, 10) : 0;
	if (!v || errno || end == v || *end || x < lo || x > hi) {
		fprintf(stderr, "sg-mock-upstream: %s must be an integer in [%ld, %ld], got '%s'\n",
			name, lo, hi, v ? v : "(missing)");
		return false;
	}
	*out = x;
	return true;
}

static bool write_port_file(const char *path, int port)
{
	char tmp[4096];
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
		return false;
	f = fopen(tmp, "w");
	if (!f)
		return false;
	if (fprintf(f, "%d\n", port) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0) {
		fclose(f);
		unlink(tmp);
		return false;
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *port_file = NULL;
	long port = 0, dim = 384, threads = 64;
	char listen[320], threads_s[16];
	struct mg_callbacks cb;
	struct mg_context *ctx;
	struct mg_server_port ports[4];
	struct detached d;
	sigset_t set;
	int i, n, sig = 0;

	/* every option takes one value */
	for (i = 1; i < argc; i += 2) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool ok = true;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--host") == 0 && v) {
			host = v;
		} else if (strcmp(a, "--port-file") == 0 && v) {
			port_file = v;
		} else if (strcmp(a, "--port") == 0) {
			ok = parse_long_arg(a, v, 0, 65535, &port);
		} else if (strcmp(a, "--embed-dim") == 0) {
			ok = parse_long_arg(a, v, 1, MAX_DIM, &dim);
		} else if (strcmp(a, "--threads") == 0) {
			ok = parse_long_arg(a, v, 1, 4096, &threads);
		} else {
			fprintf(stderr, "sg-mock-upstream: unknown or incomplete argument '%s'\n", a);
			ok = false;
		}
		if (!ok) {
			usage(stderr);
			return 2;
		}
	}
	g_embed_dim = (int)dim;
	g.ctl = default_controls;

	/* Block the stop signals before civetweb starts its threads so that only
	 * sigwait() below ever sees them. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (strchr(host, ':'))
		snprintf(listen, sizeof(listen), "[%s]:%ld", host, port);
	else
		snprintf(listen, sizeof(listen), "%s:%ld", host, port);
	snprintf(threads_s, sizeof(threads_s), "%ld", threads);
	{
		const char *options[] = {
			"listening_ports", listen,
			"num_threads", threads_s,
			"tcp_nodelay", "1",
			"enable_keep_alive", "yes",
			"keep_alive_timeout_ms", "5000",
			"listen_backlog", "1024",
			NULL,
		};

		mg_init_library(0);
		memset(&cb, 0, sizeof(cb));
		ctx = mg_start(&cb, NULL, options);
	}
	if (!ctx) {
		fprintf(stderr, "sg-mock-upstream: cannot listen on %s\n", listen);
		mg_exit_library();
		return 1;
	}
	mg_set_request_handler(ctx, "**", dispatch, NULL);

	memset(ports, 0, sizeof(ports));
	n = mg_get_server_ports(ctx, 4, ports);
	if (n < 1 || ports[0].port <= 0) {
		fprintf(stderr, "sg-mock-upstream: cannot determine the bound port\n");
		mg_stop(ctx);
		mg_exit_library();
		return 1;
	}
	if (port_file && !write_port_file(port_file, ports[0].port)) {
		fprintf(stderr, "sg-mock-upstream: cannot write port file %s: %s\n", port_file,
			strerror(errno));
		mg_stop(ctx);
		mg_exit_library();
		return 1;
	}
	if (strchr(host, ':'))
		printf("listening on http://[%s]:%d\n", host, ports[0].port);
	else
		printf("listening on http://%s:%d\n", host, ports[0].port);
	fflush(stdout);

	while (sigwait(&set, &sig) != 0)
		;
	atomic_store(&g_stopping, 1);
	shutdown_reads(ports[0].port);
	mg_stop(ctx);
	mg_exit_library();

	pthread_mutex_lock(&g.lock);
	reset_locked(&d);
	pthread_mutex_unlock(&g.lock);
	detached_free(&d);
	return 0;
}
