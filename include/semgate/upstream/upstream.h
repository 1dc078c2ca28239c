/* HTTP client for OpenAI-compatible APIs (the LLM and embedding services)
 * over libcurl. One struct upstream per worker thread holds one easy handle,
 * so connections to the upstream stay alive between requests. Never logs a
 * key or a request body. */
#ifndef SEMGATE_UPSTREAM_H
#define SEMGATE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/buf.h"
#include "semgate/core/err.h"

/* Which latency histogram a call is recorded in (metrics.h). */
enum upstream_kind {
	UPSTREAM_KIND_LLM = 0,     /* semgate_upstream_duration_seconds */
	UPSTREAM_KIND_EMBEDDING,   /* semgate_embedding_duration_seconds */
};

/* Where and how to call. All fields borrowed. */
struct upstream_target {
	const char *base_url;      /* e.g. "https://api.openai.com/v1" */
	const char *api_key;       /* Bearer token, or "" for none */
	long long connect_timeout_ms;
	long long timeout_ms;
	size_t max_bytes;          /* cap on the response body */
	enum upstream_kind kind;   /* for metrics only */
};

/* The response headers a client needs to pace itself against the
 * upstream's limits, kept for the gateway to pass on: Retry-After and
 * x-ratelimit-* only, at most UPSTREAM_HDR_MAX of them (the first of each
 * name), each value printable ASCII without CR or LF, 1 to
 * UPSTREAM_HDR_VALUE_MAX bytes once trimmed. Every other header, and every
 * value that breaks these rules, is dropped, so nothing the upstream sends
 * can add a line to the gateway's answer. */
#define UPSTREAM_HDR_MAX 16
#define UPSTREAM_HDR_NAME_MAX 64
#define UPSTREAM_HDR_VALUE_MAX 128

struct upstream_hdr {
	char name[UPSTREAM_HDR_NAME_MAX + 1];   /* "Retry-After", or "x-ratelimit-…" lower case */
	char value[UPSTREAM_HDR_VALUE_MAX + 1];
};

struct upstream_headers {
	int n;
	bool folded;               /* private: the last line taken was kept */
	struct upstream_hdr h[UPSTREAM_HDR_MAX];
};

struct upstream_resp {
	long status;               /* HTTP status, 0 before any answer */
	struct sg_buf body;        /* capped at target->max_bytes */
	double ms;                 /* wall time of the call */
	struct upstream_headers headers; /* of the final answer, filled before its body */
};

/* Called for each piece of a streamed body as libcurl delivers it.
 * Return non-zero to abort the transfer (e.g. the client went away). */
typedef int (*upstream_data_fn)(void *ud, long status, const char *data, size_t len);

struct upstream;

/* Call once at start, before any thread uses the client. */
enum sg_err upstream_global_init(void);
void upstream_global_cleanup(void);

/* At shutdown: abort every transfer in progress (within about a second)
 * and fail every later one. Thread-safe; cannot be undone. */
void upstream_cancel_all(void);

/* NULL on out of memory. Owned by one thread. */
struct upstream *upstream_create(void);
void upstream_destroy(struct upstream *u);

void upstream_resp_finish(struct upstream_resp *r);

/* Take one header line as libcurl hands it over ("Name: value\r\n", not
 * NUL-terminated) and keep it when it passes the rules above. A status line
 * ("HTTP/…") begins another answer (after a 100 or a proxy's CONNECT) and
 * forgets what was kept; a folded continuation line drops the header it
 * continues. Pure; exported for the unit tests. */
void upstream_headers_take(struct upstream_headers *h, const char *line, size_t len);

/* Append h's headers to list, a NULL-terminated array of "Name", "value"
 * pairs (the form http.h's responses take) with n entries used out of cap
 * slots, as far as they fit, and keep it NULL-terminated. The pointers
 * borrow h. Returns the new number of entries used. */
int upstream_headers_append(const struct upstream_headers *h, const char **list, int n,
			    int cap);

/* POST body (JSON) to base_url + path. bearer overrides the target's key
 * when non-NULL (a client's own key passed through). On SG_OK out->status
 * holds whatever status the upstream answered (the caller judges it).
 * SG_ERR_UPSTREAM: unreachable, bad answer or body over the cap;
 * SG_ERR_TIMEOUT: the connect or total timeout passed. out must be
 * finished by the caller in every case. */
enum sg_err upstream_post(struct upstream *u, const struct upstream_target *t,
			  const char *path, const char *body, size_t len,
			  const char *bearer, struct upstream_resp *out,
			  struct sg_error *e);

/* Like upstream_post but hands the body to on_data piece by piece instead
 * of collecting it (out->body stays empty). SG_ERR_CLIENT_GONE when on_data
 * aborted. */
enum sg_err upstream_post_stream(struct upstream *u, const struct upstream_target *t,
				 const char *path, const char *body, size_t len,
				 const char *bearer, upstream_data_fn on_data, void *ud,
				 struct upstream_resp *out, struct sg_error *e);

#endif
