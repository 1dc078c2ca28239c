/* A growable byte buffer with a hard cap, for everything filled from the
 * network: it refuses to grow past its cap instead of eating memory. */
#ifndef SEMGATE_BUF_H
#define SEMGATE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/err.h"

struct sg_buf {
	char *data;   /* always NUL-terminated when non-NULL */
	size_t len;
	size_t alloc;
	size_t cap;   /* maximum len; 0 means no limit (trusted data only) */
	char *fixed;  /* the caller's storage given to sg_buf_init_on, never freed */
};

/* Initialise on the caller's memory; no allocation happens yet. */
void sg_buf_init(struct sg_buf *b, size_t cap);
/* Initialise on the caller's storage mem[size] (size >= 1), used until the
 * contents outgrow it; then the buffer moves to the heap as usual. */
void sg_buf_init_on(struct sg_buf *b, char *mem, size_t size, size_t cap);
/* Free the storage; b may be reused after sg_buf_init. Accepts NULL. */
void sg_buf_finish(struct sg_buf *b);
/* Drop the contents, keep the storage. */
void sg_buf_reset(struct sg_buf *b);

/* Append; SG_ERR_TOO_LARGE past the cap (nothing appended), SG_ERR_NOMEM. */
enum sg_err sg_buf_append(struct sg_buf *b, const void *data, size_t len);
enum sg_err sg_buf_puts(struct sg_buf *b, const char *s);
enum sg_err sg_buf_printf(struct sg_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Append v in decimal, as "%lld" would, without printf's cost. */
enum sg_err sg_buf_put_int(struct sg_buf *b, long long v);
/* Append v with three decimals, as "%.3f" would (halfway cases of the
 * binary value round away from zero; printf rounds them to even). */
enum sg_err sg_buf_put_fixed3(struct sg_buf *b, double v);

/* Take ownership of the data (caller frees); the buffer becomes empty. */
char *sg_buf_steal(struct sg_buf *b, size_t *len);

/* A malloc'd NUL-terminated copy of the n bytes at p (which may hold NULs);
 * NULL when out of memory. */
char *sg_memdup0(const char *p, size_t n);

/* True when word (non-empty) is one of the sep-separated items of list
 * exactly, e.g. sg_list_has("a|bc", '|', "bc"). Both borrowed; NULL list:
 * false. */
bool sg_list_has(const char *list, char sep, const char *word);

/* One parameter of a raw query string: its value, not NUL-terminated. */
struct sg_param {
	const char *value; /* NULL: not given */
	size_t len;
};

/* Split a raw query string ("a=1&b=2", NULL or "" for none) into the n
 * parameters named by names (each at most once; borrowed): out[i] gets
 * names[i]'s value. Empty pieces ("a=1&&b=2") are skipped. Any other or
 * repeated name is SG_ERR_BAD_REQUEST with a message that lists the
 * accepted names. */
enum sg_err sg_query_split(const char *query, const char *const *names, size_t n,
			   struct sg_param *out, struct sg_error *e);

#endif
