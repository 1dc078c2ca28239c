/* Server-Sent Events: a parser for upstream streams (bytes in, complete
 * events out, any split across reads) and the assembler that rebuilds a
 * chat completion from OpenAI chat.completion.chunk events. Pure logic, no
 * I/O; every buffer is capped. */
#ifndef SEMGATE_SSE_H
#define SEMGATE_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "semgate/core/buf.h"
#include "semgate/core/err.h"

/* Called once per complete event. raw/raw_len: the event's bytes as
 * received, without the blank line that ended it; data/data_len: the
 * concatenated "data:" field values (joined with '\n'), NUL-terminated.
 * Return non-zero to stop parsing. */
typedef int (*sse_event_fn)(void *ud, const char *raw, size_t raw_len,
			    const char *data, size_t data_len);

struct sse_parser {
	struct sg_buf pending;  /* bytes of the event being received */
	struct sg_buf data;     /* its data field so far */
	bool stopped;
	bool has_data;          /* the pending event has a data field */
	size_t resume;          /* pending[0..resume) is already taken */
};

/* cap bounds one event's size. */
void sse_parser_init(struct sse_parser *p, size_t cap);
void sse_parser_finish(struct sse_parser *p);

/* Feed bytes. SG_ERR_TOO_LARGE when one event exceeds the cap,
 * SG_ERR_CLIENT_GONE when the callback asked to stop. */
enum sg_err sse_parser_feed(struct sse_parser *p, const char *buf, size_t len,
			    sse_event_fn fn, void *ud);

/* Rebuilds the answer of a streamed chat completion. */
struct sse_answer {
	char id[128];
	char model[128];
	long long created;
	struct sg_buf content;   /* all content deltas of choice 0, capped */
	char finish_reason[32];
	cJSON *usage;            /* owned, or NULL */
	bool done;               /* data: [DONE] seen */
	bool tool_calls;         /* a delta carried tool calls */
	bool other_choices;      /* a choice index other than 0 appeared */
	bool bad_event;          /* an event that was not a JSON object */
	bool has_content_or_role;
};

void sse_answer_init(struct sse_answer *a, size_t cap);
void sse_answer_finish(struct sse_answer *a);

/* What one event was, as sse_answer_feed saw it. */
enum sse_event_kind {
	SSE_EVENT_OTHER = 0,   /* [DONE], or not a JSON object */
	SSE_EVENT_CHUNK,       /* a JSON object */
	SSE_EVENT_USAGE_ONLY,  /* a JSON object with usage and choices empty */
};

/* Take one event's data; says what it was. */
enum sse_event_kind sse_answer_feed(struct sse_answer *a, const char *data, size_t len);

/* Append one upstream event (raw, data, len as sse_event_fn has them; kind
 * from sse_answer_feed) to out as the client gets it, with the blank line
 * that ends it. strip_usage is for a client that did not ask for
 * stream_options.include_usage while the gateway did (to learn the
 * answer's tokens): it gets what the upstream would have sent it, so a
 * usage-only chunk is left out (nothing appended) and a chunk of one data
 * line loses its top-level "usage" member, every other byte kept. Any
 * other event is appended as it came. */
enum sg_err sse_client_event(const char *raw, size_t raw_len, const char *data, size_t len,
			     enum sse_event_kind kind, bool strip_usage, struct sg_buf *out);

/* True when the stream ended normally with a cacheable answer. */
bool sse_answer_complete(const struct sse_answer *a);

/* Render the answer as a chat.completion JSON (malloc'd) or NULL. */
char *sse_answer_render(const struct sse_answer *a);

/* Render a completion (chat.completion JSON) as chunk events ending in
 * "data: [DONE]\n\n", appended to out. with_usage adds the usage chunk.
 * id/created replace the completion's. SG_ERR_BAD_REQUEST when the
 * completion has no message content. */
enum sg_err sse_replay(const cJSON *completion, const char *id, long long created,
		       bool with_usage, struct sg_buf *out);

#endif
