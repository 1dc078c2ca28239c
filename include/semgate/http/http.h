/* HTTP layer over civetweb: the routing table, bounded body reading, JSON
 * and error responses, streamed (chunked) responses and the access log.
 * Routes see struct sg_req and these functions only, never civetweb. */
#ifndef SEMGATE_HTTP_H
#define SEMGATE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/buf.h"
#include "semgate/core/clock.h"
#include "semgate/core/err.h"

struct sg_app;
struct sg_worker;

#define SG_HTTP_MAX_PARAMS 2
#define SG_HTTP_PARAM_MAX 256

/* One request in flight. Owned by the HTTP layer; valid only during the
 * handler call. */
struct sg_req {
	const char *method;
	const char *path;            /* raw path, no query string */
	const char *query;           /* raw query string or NULL */
	const char *route;           /* route pattern that matched, for logs */
	char params[SG_HTTP_MAX_PARAMS][SG_HTTP_PARAM_MAX]; /* {x} segments */
	int nparams;
	struct sg_app *app;          /* borrowed: process-wide state */
	struct sg_worker *worker;    /* borrowed: this thread's connections */
	struct sg_buf body;          /* filled by http_read_body */
	char tenant[65];             /* "default" until auth sets it */
	bool admin;                  /* an admin key (SEMGATE_ADMIN_KEYS) was presented */
	/* filled by handlers for the access log */
	const char *cache_outcome;   /* static string or NULL */
	double similarity;           /* < -1 when not computed */
	const char *verify;          /* verifier's rejection reason (static) or NULL */
	double upstream_ms;          /* < 0 when no upstream call */
	int status;                  /* status sent, 0 before */
	bool streaming;              /* a chunked response has begun */
	bool keep_alive_on;          /* private to http.c: server keep-alive enabled */
	void *conn;                  /* private to http.c */
};

/* A handler sends its whole response through the functions below and
 * returns the status it sent. */
typedef int (*sg_handler)(struct sg_req *req);

struct sg_route {
	const char *method;  /* "GET", "POST", "DELETE" */
	const char *pattern; /* "/v1/conversations/{id}": {x} matches one segment */
	sg_handler fn;
};

/* Per-thread hooks: create returns this thread's worker state (or NULL),
 * destroy frees it. Called on civetweb worker threads only. */
typedef struct sg_worker *(*sg_worker_create_fn)(struct sg_app *app);
typedef void (*sg_worker_destroy_fn)(struct sg_worker *w);

/* Runs before the handler of every matched route whose pattern starts with
 * "/v1/" (auth, then rate limit). Returns 0 to let the handler run, or the
 * status of the response it sent itself. It may set req->tenant. */
typedef int (*sg_guard_fn)(struct sg_req *req);

struct sg_http_opts {
	const char *host;
	int port;                 /* 0: pick a free port */
	int threads;
	long long max_body_bytes;
	long long keepalive_ms;
	int request_timeout_ms;   /* reading one request's head and body */
	sg_guard_fn guard;        /* NULL: every route is open */
};

struct sg_http;

/* Once per process, before http_start / after the last http_stop. */
void http_global_init(void);
void http_global_cleanup(void);

/* Start serving. routes is borrowed and must outlive the server. Returns
 * NULL with e set when the port cannot be bound. */
struct sg_http *http_start(const struct sg_http_opts *opts,
			   const struct sg_route *routes, size_t nroutes,
			   struct sg_app *app, sg_worker_create_fn wcreate,
			   sg_worker_destroy_fn wdestroy, struct sg_error *e);

/* The port actually bound (useful with port 0). */
int http_port(const struct sg_http *h);

/* Stop accepting, wait for in-flight handlers, free. Accepts NULL.
 * Streams still running are cut: call http_drain first and give them
 * time. */
void http_stop(struct sg_http *h);

/* Stop accepting: from now on new connections are refused, while requests
 * and streams in flight (and open keep-alive connections) are served on.
 * http_stop must still be called. SG_ERR_INTERNAL when the listening
 * socket cannot be found (the caller just stops). */
enum sg_err http_drain(struct sg_http *h, struct sg_error *e);

/* Requests being handled right now (atomic; any thread). */
int http_inflight(const struct sg_http *h);

/* Request access. Header lookup is case-insensitive; result borrowed. */
const char *http_header(const struct sg_req *req, const char *name);

/* Read the whole body into req->body with the configured cap.
 * SG_ERR_TOO_LARGE over the cap, SG_ERR_CLIENT_GONE on a short read. */
enum sg_err http_read_body(struct sg_req *req, struct sg_error *e);

/* Extra response headers: a NULL-terminated array of "Name", "value"
 * pairs, e.g. { "X-Semgate-Cache", "miss", NULL }. Values containing CR or
 * LF are dropped, never sent. May be NULL. */

/* Send a complete response. Returns status. */
int http_send(struct sg_req *req, int status, const char *content_type,
	      const char *body, size_t len, const char *const *headers);
int http_send_json(struct sg_req *req, int status, const char *json,
		   const char *const *headers);

/* Send {"error":{"message","type","code"}} with the status mapped from
 * code (or status when > 0). Returns the status sent. */
int http_send_error(struct sg_req *req, int status, const char *type,
		    const char *code, const char *message);
/* The same with extra headers (as for http_send); a 503 gets the default
 * Retry-After: 1 only when headers have no Retry-After of their own. At
 * most SG_HTTP_ERROR_HEADERS pairs are sent. */
#define SG_HTTP_ERROR_HEADERS 32
int http_send_error_headers(struct sg_req *req, int status, const char *type,
			    const char *code, const char *message,
			    const char *const *headers);
int http_send_sg_error(struct sg_req *req, const struct sg_error *e);

/* Begin a chunked response (e.g. text/event-stream). */
enum sg_err http_stream_begin(struct sg_req *req, int status,
			      const char *content_type, const char *const *headers);
/* Write one chunk; SG_ERR_CLIENT_GONE when the client went away. */
enum sg_err http_stream_write(struct sg_req *req, const char *data, size_t len);
/* Write the final empty chunk. */
void http_stream_end(struct sg_req *req);

#endif
