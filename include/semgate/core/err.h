/* Error codes shared by every module, and the one place detail is written.
 * Functions that can fail return enum sg_err and may fill a caller-supplied
 * struct sg_error; nothing else writes into it. */
#ifndef SEMGATE_ERR_H
#define SEMGATE_ERR_H

enum sg_err {
	SG_OK = 0,
	SG_ERR_NOMEM,
	SG_ERR_BAD_REQUEST,  /* client input is malformed or out of range */
	SG_ERR_NOT_FOUND,    /* the named object does not exist */
	SG_ERR_TOO_LARGE,    /* a body or value exceeds its cap */
	SG_ERR_UNAUTHORIZED, /* missing or wrong API key */
	SG_ERR_RATE_LIMITED, /* the tenant's window is full */
	SG_ERR_REDIS,        /* Redis unreachable or answered an error */
	SG_ERR_REPLICAS,     /* written, but fewer replicas than required confirmed it */
	SG_ERR_ARCHIVE,      /* the archive's PostgreSQL unreachable or refusing */
	SG_ERR_UPSTREAM,     /* upstream unreachable or answered garbage */
	SG_ERR_TIMEOUT,      /* upstream or embedding call timed out */
	SG_ERR_CLIENT_GONE,  /* the client closed the connection */
	SG_ERR_INTERNAL,     /* a bug or an impossible state */
};

struct sg_error {
	enum sg_err code;
	char msg[256];
};

/* Human-readable name of a code; never NULL. */
const char *sg_strerror(enum sg_err code);

/* HTTP status that answers a request failing with this code. */
int sg_err_http_status(enum sg_err code);

/* OpenAI error "type" for this code (e.g. "invalid_request_error"). */
const char *sg_err_type(enum sg_err code);

/* Set e (may be NULL) to code and a printf-formatted message, truncating
 * safely. Returns code so callers can `return sg_error_set(...)`. */
enum sg_err sg_error_set(struct sg_error *e, enum sg_err code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
