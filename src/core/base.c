/* Base layer: error names and status map, logging, the capped buffer and
 * strict JSON parsing. Depends on libc and cJSON only; never on a server
 * library, so every other module and every test can use it. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "semgate/core/buf.h"
#include "semgate/core/clock.h"
#include "semgate/core/err.h"
#include "semgate/core/json.h"
#include "semgate/core/log.h"

/* ---- clocks ---- */

double sg_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

int64_t sg_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- errors ---- */

const char *sg_strerror(enum sg_err code)
{
	switch (code) {
	case SG_OK: return "ok";
	case SG_ERR_NOMEM: return "out of memory";
	case SG_ERR_BAD_REQUEST: return "bad request";
	case SG_ERR_NOT_FOUND: return "not found";
	case SG_ERR_TOO_LARGE: return "too large";
	case SG_ERR_UNAUTHORIZED: return "unauthorized";
	case SG_ERR_RATE_LIMITED: return "rate limited";
	case SG_ERR_REDIS: return "redis unavailable";
	case SG_ERR_REPLICAS: return "write not confirmed by enough replicas";
	case SG_ERR_ARCHIVE: return "archive unavailable";
	case SG_ERR_UPSTREAM: return "upstream failure";
	case SG_ERR_TIMEOUT: return "timeout";
	case SG_ERR_CLIENT_GONE: return "client disconnected";
	case SG_ERR_INTERNAL: return "internal error";
	}
	return "unknown error";
}

int sg_err_http_status(enum sg_err code)
{
	switch (code) {
	case SG_OK: return 200;
	case SG_ERR_NOMEM: return 503;
	case SG_ERR_BAD_REQUEST: return 400;
	case SG_ERR_NOT_FOUND: return 404;
	case SG_ERR_TOO_LARGE: return 413;
	case SG_ERR_UNAUTHORIZED: return 401;
	case SG_ERR_RATE_LIMITED: return 429;
	case SG_ERR_REDIS: return 503;
	case SG_ERR_REPLICAS: return 503;
	case SG_ERR_ARCHIVE: return 503;
	case SG_ERR_UPSTREAM: return 502;
	case SG_ERR_TIMEOUT: return 504;
	case SG_ERR_CLIENT_GONE: return 499;
	case SG_ERR_INTERNAL: return 500;
	}
	return 500;
}

const char *sg_err_type(enum sg_err code)
{
	switch (code) {
	case SG_OK: return "ok";
	case SG_ERR_BAD_REQUEST: return "invalid_request_error";
	case SG_ERR_NOT_FOUND: return "not_found_error";
	case SG_ERR_TOO_LARGE: return "invalid_request_error";
	case SG_ERR_UNAUTHORIZED: return "authentication_error";
	case SG_ERR_RATE_LIMITED: return "rate_limit_exceeded";
	case SG_ERR_NOMEM:
	case SG_ERR_REDIS:
	case SG_ERR_REPLICAS: return "service_unavailable";
	case SG_ERR_ARCHIVE: return "service_unavailable";
	case SG_ERR_UPSTREAM:
	case SG_ERR_TIMEOUT: return "upstream_error";
	case SG_ERR_CLIENT_GONE:
	case SG_ERR_INTERNAL: return "server_error";
	}
	return "server_error";
}

enum sg_err sg_error_set(struct sg_error *e, enum sg_err code, const char *fmt, ...)
{
	if (!e)
		return code;
	e->code = code;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		e->msg[0] = '\0';
	return code;
}

/* ---- logging ---- */

static enum sg_log_level g_level = SG_LOG_INFO;
static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;

void sg_log_set_level(enum sg_log_level level) { g_level = level; }
enum sg_log_level sg_log_get_level(void) { return g_level; }

int sg_log_level_parse(const char *name)
{
	static const char *const names[] = { "debug", "info", "warn", "error" };
	for (int i = 0; i < 4; i++)
		if (strcasecmp(name, names[i]) == 0)
			return i;
	return -1;
}

void sg_log(enum sg_log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "debug", "info", "warn", "error" };
	if (level < g_level)
		return;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Keep every record on one line even if a message carries a newline. */
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	char when[32];
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	pthread_mutex_lock(&g_log_lock);
	fprintf(stderr, "%s.%03ldZ %s semgate: %s\n", when, ts.tv_nsec / 1000000,
		names[level], msg);
	pthread_mutex_unlock(&g_log_lock);
}

void sg_log_line(const char *line, size_t len)
{
	pthread_mutex_lock(&g_log_lock);
	while (len > 0) {
		ssize_t w = write(STDERR_FILENO, line, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		line += w;
		len -= (size_t)w;
	}
	pthread_mutex_unlock(&g_log_lock);
}

/* ---- capped buffer ---- */

void sg_buf_init(struct sg_buf *b, size_t cap)
{
	b->data = NULL;
	b->len = 0;
	b->alloc = 0;
	b->cap = cap;
	b->fixed = NULL;
}

void sg_buf_init_on(struct sg_buf *b, char *mem, size_t size, size_t cap)
{
	b->data = mem;
	b->len = 0;
	b->alloc = size;
	b->cap = cap;
	b->fixed = mem;
	mem[0] = '\0';
}

void sg_buf_finish(struct sg_buf *b)
{
	if (!b)
		return;
	if (b->data != b->fixed)
		free(b->data);
	b->data = NULL;
	b->len = b->alloc = 0;
}

void sg_buf_reset(struct sg_buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

enum sg_err sg_buf_append(struct sg_buf *b, const void *data, size_t len)
{
	if (b->cap && (len > b->cap || b->len > b->cap - len))
		return SG_ERR_TOO_LARGE;
	if (b->len + len + 1 > b->alloc) {
		size_t want = b->alloc ? b->alloc : 256;
		while (want < b->len + len + 1)
			want *= 2;
		char *p;
		if (b->data && b->data == b->fixed) {
			p = malloc(want);
			if (p)
				memcpy(p, b->data, b->len + 1);
		} else {
			p = realloc(b->data, want);
		}
		if (!p)
			return SG_ERR_NOMEM;
		b->data = p;
		b->alloc = want;
	}
	if (len)
		memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
	return SG_OK;
}

enum sg_err sg_buf_puts(struct sg_buf *b, const char *s)
{
	return sg_buf_append(b, s, strlen(s));
}

enum sg_err sg_buf_printf(struct sg_buf *b, const char *fmt, ...)
{
	char small[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return SG_ERR_INTERNAL;
	if ((size_t)n < sizeof(small))
		return sg_buf_append(b, small, (size_t)n);
	char *big = malloc((size_t)n + 1);
	if (!big)
		return SG_ERR_NOMEM;
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	enum sg_err rc = sg_buf_append(b, big, (size_t)n);
	free(big);
	return rc;
}

/* Write u in decimal (at least min digits, zero-padded) ending just
 * before end; returns where it starts. */
static char *digits_before(char *end, unsigned long long u, int min)
{
	for (int n = 0; n < min || u; n++) {
		*--end = (char)('0' + u % 10);
		u /= 10;
	}
	return end;
}

enum sg_err sg_buf_put_int(struct sg_buf *b, long long v)
{
	char tmp[24];
	/* (unsigned: LLONG_MIN has no positive counterpart) */
	unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
	char *p = digits_before(tmp + sizeof(tmp), u, 1);
	if (v < 0)
		*--p = '-';
	return sg_buf_append(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

enum sg_err sg_buf_put_fixed3(struct sg_buf *b, double v)
{
	if (!isfinite(v) || fabs(v) >= 9e15)
		return sg_buf_printf(b, "%.3f", v);
	unsigned long long m = (unsigned long long)llround(fabs(v) * 1000.0);
	char tmp[32];
	char *p = digits_before(tmp + sizeof(tmp), m % 1000, 3);
	*--p = '.';
	p = digits_before(p, m / 1000, 1);
	if (signbit(v))
		*--p = '-'; /* as printf: -0.0001 is "-0.000" */
	return sg_buf_append(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

char *sg_memdup0(const char *p, size_t n)
{
	char *out = malloc(n + 1);
	if (out) {
		memcpy(out, p, n);
		out[n] = '\0';
	}
	return out;
}

char *sg_buf_steal(struct sg_buf *b, size_t *len)
{
	if (!b->data && sg_buf_append(b, "", 0) != SG_OK)
		return NULL;
	char *p = b->data;
	if (p == b->fixed) {
		p = malloc(b->len + 1);
		if (!p)
			return NULL;
		memcpy(p, b->data, b->len + 1);
	}
	if (len)
		*len = b->len;
	b->data = NULL;
	b->len = b->alloc = 0;
	return p;
}

/* ---- strict JSON ---- */

bool sg_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;
	while (i < len) {
		unsigned c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t n;
		uint32_t cp;
		if (c >= 0xC2 && c <= 0xDF) {
			n = 1;
			cp = c & 0x1F;
		} else if (c >= 0xE0 && c <= 0xEF) {
			n = 2;
			cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (len - i <= n)
			return false;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3F);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
		    cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += n + 1;
	}
	return true;
}

/* One pass over the text before cJSON sees it: nesting depth, raw control
 * characters inside strings and between tokens (cJSON accepts both; between
 * tokens it takes any byte up to 0x20 for whitespace) and the escape
 * \u0000: cJSON keeps strings NUL-terminated, so "a\u0000b" would come
 * out as "a" -- two different questions would share one exact-cache key
 * and a stored turn would differ from what was sent. */
static bool is_hex4(const char *p)
{
	for (int k = 0; k < 4; k++)
		if (!((p[k] >= '0' && p[k] <= '9') || (p[k] >= 'a' && p[k] <= 'f') ||
		      (p[k] >= 'A' && p[k] <= 'F')))
			return false;
	return true;
}

static enum sg_err json_prescan(const char *s, size_t len, struct sg_error *e)
{
	int depth = 0;
	bool in_str = false, esc = false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (in_str) {
			if (esc) {
				esc = false;
				/* cJSON reads a \\u with bad hex digits as U+0000, and
				 * a string ends at its first NUL: the tree would differ
				 * from the text, as with \\u0000 itself. And it takes
				 * any byte after a backslash, a raw NUL included. */
				if (c == 'u' && (len - i <= 4 || !is_hex4(s + i + 1)))
					return sg_error_set(e, SG_ERR_BAD_REQUEST,
						"invalid JSON: bad \\u escape in a string at byte %zu",
						i - 1);
				if (c == 'u' && memcmp(s + i + 1, "0000", 4) == 0)
					return sg_error_set(e, SG_ERR_BAD_REQUEST,
						"invalid JSON: \\u0000 (NUL) in a string at byte %zu is "
						"not supported", i - 1);
				if (c != 'u' && (c == '\0' || !strchr("\"\\/bfnrt", c)))
					return sg_error_set(e, SG_ERR_BAD_REQUEST,
						"invalid JSON: bad escape in a string at byte %zu",
						i - 1);
			} else if (c == '\\') {
				esc = true;
			}
			else if (c == '"')
				in_str = false;
			else if (c < 0x20)
				return sg_error_set(e, SG_ERR_BAD_REQUEST,
					"invalid JSON: control character in string at byte %zu", i);
			continue;
		}
		if (c == '"') {
			in_str = true;
		} else if (c == '{' || c == '[') {
			if (++depth > SG_JSON_MAX_DEPTH)
				return sg_error_set(e, SG_ERR_BAD_REQUEST,
					"invalid JSON: nesting deeper than %d", SG_JSON_MAX_DEPTH);
		} else if (c == '}' || c == ']') {
			depth--;
		} else if (c == '\0') {
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"invalid JSON: NUL byte at %zu", i);
		} else if (c < 0x20 && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
			/* cJSON skips any byte up to 0x20 as whitespace; JSON allows four */
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"invalid JSON: control character at byte %zu", i);
		}
	}
	return SG_OK;
}

enum sg_err sg_json_parse(const char *data, size_t len, cJSON **out,
			  struct sg_error *e)
{
	*out = NULL;
	if (!sg_utf8_valid(data, len))
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "body is not valid UTF-8");
	enum sg_err rc = json_prescan(data, len, e);
	if (rc != SG_OK)
		return rc;
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(data, len, &end, 0);
	if (!root) {
		size_t at = (end && end >= data) ? (size_t)(end - data) : 0;
		if (len == 0)
			return sg_error_set(e, SG_ERR_BAD_REQUEST, "empty body: expected JSON");
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"invalid JSON near byte %zu", at);
	}
	size_t pos = (size_t)(end - data);
	while (pos < len && (data[pos] == ' ' || data[pos] == '\t' ||
			     data[pos] == '\r' || data[pos] == '\n'))
		pos++;
	if (pos != len) {
		cJSON_Delete(root);
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"invalid JSON: unexpected data after the value at byte %zu", pos);
	}
	*out = root;
	return SG_OK;
}

const char *sg_json_str(const cJSON *obj, const char *key)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsString(it) ? it->valuestring : NULL;
}

const cJSON *sg_json_obj(const cJSON *obj, const char *key)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsObject(it) ? it : NULL;
}

const cJSON *sg_json_arr(const cJSON *obj, const char *key)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsArray(it) ? it : NULL;
}

/* cJSON prints a number with 15 significant digits whenever that reads
 * back "close enough": a 64-bit seed loses its last digits and
 * 1.7976931348623157e308 comes back as infinity. Numbers are therefore
 * turned into raw items holding an exact spelling before printing:
 * integers below 1e19 as integers, others in the shortest %.Ng that reads
 * back as the same double. Non-finite numbers stay cJSON's null. */
static bool exact_numbers(cJSON *v)
{
	for (cJSON *c = v->child; c; c = c->next)
		if (!exact_numbers(c))
			return false;
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
		return true;
	double x = v->valuedouble;
	char buf[64];
	if (floor(x) == x && fabs(x) < 1e19) {
		snprintf(buf, sizeof(buf), "%.0f", x);
	} else {
		for (int prec = 15; prec <= 17; prec++) {
			snprintf(buf, sizeof(buf), "%.*g", prec, x);
			if (strtod(buf, NULL) == x)
				break;
		}
	}
	char *raw = strdup(buf);
	if (!raw)
		return false;
	v->type = cJSON_Raw | (v->type & ~0xFF);
	v->valuestring = raw;
	return true;
}

char *sg_json_render(const cJSON *item)
{
	cJSON *copy = cJSON_Duplicate(item, 1);
	char *out = NULL;
	if (copy && exact_numbers(copy))
		out = cJSON_PrintUnformatted(copy);
	cJSON_Delete(copy);
	return out;
}

static size_t skip_ws(const char *s, size_t len, size_t i)
{
	while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	return i;
}

/* s[i] is the opening quote; the index after the closing one. */
static size_t skip_string(const char *s, size_t len, size_t i, bool *escaped)
{
	for (i++; i < len && s[i] != '"'; i++) {
		if (s[i] == '\\') {
			*escaped = true;
			i++;
		}
	}
	return i < len ? i + 1 : len;
}

/* The index after the value starting at s[i]. */
static size_t skip_value(const char *s, size_t len, size_t i)
{
	bool esc = false;
	if (i < len && s[i] == '"')
		return skip_string(s, len, i, &esc);
	if (i < len && (s[i] == '{' || s[i] == '[')) {
		int depth = 0;
		while (i < len) {
			char ch = s[i];
			if (ch == '"') {
				i = skip_string(s, len, i, &esc);
				continue;
			}
			if (ch == '{' || ch == '[')
				depth++;
			else if ((ch == '}' || ch == ']') && --depth == 0)
				return i + 1;
			i++;
		}
		return len;
	}
	while (i < len && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' &&
	       s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
		i++;
	return i;
}

/* The first top-level member named key: its name's opening quote and its
 * value's span. 1 found, 0 absent, -1 not searchable (sg_json_member_span). */
static int find_member(const char *s, size_t len, const char *key, size_t *name_at,
		       size_t *start, size_t *end)
{
	size_t klen = strlen(key);
	size_t i = skip_ws(s, len, 0);
	if (i >= len || s[i] != '{')
		return -1; /* e.g. a byte-order mark cJSON skips: not ours to splice */
	i = skip_ws(s, len, i + 1);
	while (i < len && s[i] == '"') {
		bool escaped = false;
		size_t at = i, name = i + 1;
		i = skip_string(s, len, i, &escaped);
		if (escaped)
			return -1;
		bool match = i - 1 - name == klen && memcmp(s + name, key, klen) == 0;
		i = skip_ws(s, len, i);
		if (i >= len || s[i] != ':')
			return 0;
		i = skip_ws(s, len, i + 1);
		size_t v = i;
		i = skip_value(s, len, i);
		if (match) {
			*name_at = at;
			*start = v;
			*end = i;
			return 1;
		}
		i = skip_ws(s, len, i);
		if (i >= len || s[i] != ',')
			return 0;
		i = skip_ws(s, len, i + 1);
	}
	return 0;
}

int sg_json_member_span(const char *s, size_t len, const char *key, size_t *start,
			size_t *end)
{
	size_t name;
	return find_member(s, len, key, &name, start, end);
}

int sg_json_member_cut_span(const char *s, size_t len, const char *key, size_t *start,
			    size_t *end)
{
	size_t name, vs, ve;
	int found = find_member(s, len, key, &name, &vs, &ve);
	if (found != 1)
		return found;
	size_t before = name;
	while (before > 0 && (s[before - 1] == ' ' || s[before - 1] == '\t' ||
			      s[before - 1] == '\n' || s[before - 1] == '\r'))
		before--;
	if (before > 0 && s[before - 1] == ',') {
		/* the comma before it goes with it: {"a":1,"k":2} -> {"a":1} */
		*start = before - 1;
		*end = ve;
		return 1;
	}
	/* the first member takes the comma after it: {"k":2, "a":1} -> {"a":1} */
	size_t after = skip_ws(s, len, ve);
	if (after < len && s[after] == ',')
		ve = skip_ws(s, len, after + 1);
	*start = name;
	*end = ve;
	return 1;
}

char *sg_json_member_put(const char *s, size_t len, const char *key, const char *value)
{
	size_t name, vs, ve;
	int found = find_member(s, len, key, &name, &vs, &ve);
	if (found < 0)
		return NULL;
	struct sg_buf b;
	sg_buf_init(&b, 0);
	enum sg_err rc;
	if (found) {
		rc = sg_buf_append(&b, s, vs);
		if (rc == SG_OK)
			rc = sg_buf_puts(&b, value);
		if (rc == SG_OK)
			rc = sg_buf_append(&b, s + ve, len - ve);
	} else {
		/* an absent member goes right after the opening brace */
		size_t open = skip_ws(s, len, 0) + 1;
		size_t next = skip_ws(s, len, open);
		bool empty = next < len && s[next] == '}';
		rc = sg_buf_append(&b, s, open);
		if (rc == SG_OK)
			rc = sg_buf_printf(&b, "\"%s\":%s%s", key, value, empty ? "" : ",");
		if (rc == SG_OK)
			rc = sg_buf_append(&b, s + open, len - open);
	}
	char *out = rc == SG_OK ? sg_buf_steal(&b, NULL) : NULL;
	sg_buf_finish(&b);
	return out;
}

char *sg_json_error_body(const char *message, const char *type, const char *code)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *err = cJSON_AddObjectToObject(root, "error");
	char *out = NULL;
	if (err && cJSON_AddStringToObject(err, "message", message) &&
	    cJSON_AddStringToObject(err, "type", type) &&
	    cJSON_AddStringToObject(err, "code", code))
		out = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	return out;
}

bool sg_list_has(const char *list, char sep, const char *word)
{
	size_t n = strlen(word);
	for (const char *p = list; n && p && *p;) {
		const char *end = strchr(p, sep);
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len == n && memcmp(p, word, n) == 0)
			return true;
		p = end ? end + 1 : NULL;
	}
	return false;
}

enum sg_err sg_query_split(const char *query, const char *const *names, size_t n,
			   struct sg_param *out, struct sg_error *e)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (struct sg_param){ NULL, 0 };
	for (const char *p = query ? query : ""; *p;) {
		const char *amp = strchr(p, '&');
		size_t len = amp ? (size_t)(amp - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		size_t k = n;
		for (size_t i = 0; eq && i < n; i++)
			if ((size_t)(eq - p) == strlen(names[i]) && memcmp(p, names[i], eq - p) == 0)
				k = i;
		if (len > 0 && (k == n || out[k].value)) {
			char list[160] = "";
			size_t used = 0;
			for (size_t i = 0; i < n && used < sizeof(list); i++)
				used += (size_t)snprintf(list + used, sizeof(list) - used, "%s'%s'",
							 i == 0 ? "" : i + 1 == n ? " and " : ", ",
							 names[i]);
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
					    "unknown or repeated query parameter (only %s %s accepted)",
					    list, n == 1 ? "is" : "are");
		}
		if (len > 0) {
			out[k].value = eq + 1;
			out[k].len = len - (size_t)(eq + 1 - p);
		}
		p += len + (amp ? 1 : 0);
	}
	return SG_OK;
}
