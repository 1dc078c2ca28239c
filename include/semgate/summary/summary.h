/* Running summaries beyond the conversation window (SEMGATE_SUMMARY=on).
 *
 * An append that trims messages out of a conversation's window moves them,
 * in the same transaction, to the conversation's pending list
 * (store_history_append with a capture). The summarizer — 1 to 4 threads
 * of its own, never a request thread — takes conversations that have
 * pending messages from a bounded in-memory queue, asks the chat upstream
 * (model SEMGATE_SUMMARY_MODEL, the prompt prompts/summarizer/summary.txt)
 * to fold the previous summary and the oldest pending messages into a new
 * summary, and writes it with one EVAL that also removes exactly the
 * messages it covered, only if nothing moved under it. A failed call
 * leaves everything pending and is retried with back-off. One thread also
 * sweeps Redis at start and every SEMGATE_SUMMARY_SWEEP_S for
 * conversations with messages still waiting (a restart, a full queue). */
#ifndef SEMGATE_SUMMARY_H
#define SEMGATE_SUMMARY_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>
#include "semgate/core/err.h"
#include "semgate/store/store.h"

struct sg_app;
struct summarizer;

/* The prompt file, relative to SEMGATE_PROMPTS_DIR. It sits in a folder of
 * its own so it is never a prompt a client can select with
 * X-Semgate-Prompt (prompts_load reads only the directory's own *.txt). */
#define SUMMARY_PROMPT_DIR "summarizer"
#define SUMMARY_PROMPT_NAME "summary"

/* Start the summarizer threads when app->cfg->summary is "on" (else
 * returns NULL with e untouched: summaries off). NULL with e set when the
 * prompt cannot be read or a thread cannot start. app is borrowed. */
struct summarizer *summarizer_start(struct sg_app *app, struct sg_error *e);
/* Stop and join the threads (a summary call in flight is abandoned, its
 * messages stay pending). Accepts NULL. */
void summarizer_stop(struct summarizer *z);

/* Note that tenant's conversation conv has pending messages. Never blocks
 * on I/O: a conversation already queued or backing off is left as it is;
 * when the queue is full the messages stay pending until the next kick or
 * the next sweep (counted). Accepts NULL. */
void summarizer_kick(struct summarizer *z, const char *tenant, const char *conv);

/* Append msgs to a conversation as memory_append does; with summaries on,
 * capture what the append trims into pending, count it, log a drop at the
 * pending bound and kick the summarizer. For the chat route and the
 * conversations API. */
enum sg_err summary_append(struct sg_app *app, struct store *s, const char *tenant,
			   const char *conv, const cJSON *msgs, long long *new_len,
			   struct sg_error *e);

struct summarizer_stats {
	unsigned long long written;    /* summaries written */
	unsigned long long failed;     /* summary calls that failed (retried later) */
	unsigned long long conflicts;  /* written nothing: the conversation changed under it */
	unsigned long long queue_full; /* kicks refused by a full queue */
	size_t backlog;                /* conversations queued, running or backing off */
};
void summarizer_get_stats(struct summarizer *z, struct summarizer_stats *out);

/* ---- pure parts (unit-tested) ---- */

/* The user message of a summary call: the previous summary (prev, may be
 * NULL or empty: none yet) and the first of the n stored messages (compact
 * JSON, as the pending list holds them), oldest first, one "[role] text"
 * line each, as many as keep the messages within max_bytes (always at
 * least one; a message's text longer than max_bytes / 2 is cut, marked
 * " [...]"). *used: how many of msgs it covers (entries that are not
 * messages count as covered). malloc'd; NULL on out of memory. */
char *summary_transcript(const char *prev, size_t prev_len, const char *const *msgs,
			 const size_t *lens, size_t n, size_t max_bytes, size_t *used);

/* The JSON body of a summary call. max_tokens 0: not sent. malloc'd. */
char *summary_request_body(const char *model, long long max_tokens, const char *prompt,
			   const char *transcript);

/* The summary text of an upstream answer (a chat completion): its first
 * choice's content, trimmed, cut to at most max_bytes at a UTF-8
 * boundary (*cut tells). SG_ERR_UPSTREAM when there is none. *text
 * malloc'd. */
enum sg_err summary_parse_answer(const char *body, size_t len, size_t max_bytes, char **text,
				 size_t *text_len, bool *cut, struct sg_error *e);

/* The content of the system message the chat route sends ahead of the
 * window. malloc'd; NULL on out of memory. */
char *summary_context_text(const char *text, size_t text_len, long long covered);

#endif
