/* Conversation memory: a conversation's recent messages kept in a capped
 * Redis list through the store. Messages are stored as compact JSON objects
 * exactly as the client or the LLM gave them (role, content and any other
 * fields such as name or tool_calls). Never stores system messages; the
 * caller filters them. */
#ifndef SEMGATE_MEMORY_H
#define SEMGATE_MEMORY_H

#include <stdbool.h>
#include <cjson/cJSON.h>
#include "semgate/core/err.h"
#include "semgate/store/store.h"

#define SG_CONV_ID_MAX 128

/* True when id matches [A-Za-z0-9._:-]{1,128}. */
bool memory_id_valid(const char *id);

/* Load the whole history as a new cJSON array (caller deletes) and its TTL
 * in seconds (-2 when the conversation does not exist). Entries that are
 * not JSON objects (written by something else) are skipped and logged.
 * SG_ERR_REDIS when Redis is unreachable. */
enum sg_err memory_load(struct store *s, const char *tenant, const char *conv,
			cJSON **history, long long *ttl, struct sg_error *e);

/* memory_load plus the conversation's running summary (sm, finished by the
 * caller; empty when there is none), read in the same round trip. */
enum sg_err memory_load_with_summary(struct store *s, const char *tenant, const char *conv,
				     cJSON **history, long long *ttl,
				     struct store_summary *sm, struct sg_error *e);

/* Append every object of msgs (a cJSON array, borrowed) in order, then trim
 * to the last max messages and set the TTL, all in one MULTI/EXEC. With
 * cap (summaries on) the trimmed messages move to the pending list in the
 * same transaction (store_history_append). *new_len receives the length
 * after trimming. */
enum sg_err memory_append(struct store *s, const char *tenant, const char *conv,
			  const cJSON *msgs, long long max, long long ttl_s,
			  struct store_capture *cap, long long *new_len, struct sg_error *e);

/* Delete the conversation (with its summary and pending messages); *existed tells whether it held anything. */
enum sg_err memory_delete(struct store *s, const char *tenant, const char *conv,
			  bool *existed, struct sg_error *e);

#endif
