/* Conversation memory on Redis lists, through store.h only. It validates
 * conversation ids before any key is built, so no client input can name a
 * key outside {prefix}chat:{tenant}:{id}. */
#include <stdlib.h>
#include <string.h>

#include "semgate/core/json.h"
#include "semgate/core/log.h"
#include "semgate/memory/memory.h"
#include "semgate/store/store.h"

bool memory_id_valid(const char *id)
{
	size_t n = 0;
	for (const char *p = id; *p; p++, n++) {
		char c = *p;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
			  c == '-';
		if (!ok || n >= SG_CONV_ID_MAX)
			return false;
	}
	return n > 0;
}

/* Parse the stored messages of l into a new array (caller deletes). */
static enum sg_err parse_history(struct store_strlist *l, const char *conv, cJSON **history,
				 struct sg_error *e)
{
	cJSON *arr = cJSON_CreateArray();
	if (!arr)
		return sg_error_set(e, SG_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < l->n; i++) {
		cJSON *m = NULL;
		if (sg_json_parse(l->v[i], l->len[i], &m, NULL) != SG_OK || !cJSON_IsObject(m) ||
		    !sg_json_str(m, "role")) {
			sg_log(SG_LOG_WARN, "conversation %s: skipping a stored entry that is "
			       "not a message", conv);
			cJSON_Delete(m);
			continue;
		}
		cJSON_AddItemToArray(arr, m);
	}
	*history = arr;
	return SG_OK;
}

enum sg_err memory_load(struct store *s, const char *tenant, const char *conv,
			cJSON **history, long long *ttl, struct sg_error *e)
{
	*history = NULL;
	struct store_strlist l;
	enum sg_err rc = store_history_get(s, tenant, conv, &l, ttl, e);
	if (rc != SG_OK)
		return rc;
	rc = parse_history(&l, conv, history, e);
	store_strlist_finish(&l);
	return rc;
}

enum sg_err memory_load_with_summary(struct store *s, const char *tenant, const char *conv,
				     cJSON **history, long long *ttl,
				     struct store_summary *sm, struct sg_error *e)
{
	*history = NULL;
	struct store_strlist l;
	enum sg_err rc = store_conv_read(s, tenant, conv, &l, ttl, sm, e);
	if (rc != SG_OK)
		return rc;
	rc = parse_history(&l, conv, history, e);
	store_strlist_finish(&l);
	if (rc != SG_OK)
		store_summary_finish(sm);
	return rc;
}

enum sg_err memory_append(struct store *s, const char *tenant, const char *conv,
			  const cJSON *msgs, long long max, long long ttl_s,
			  struct store_capture *cap, long long *new_len, struct sg_error *e)
{
	int n = cJSON_GetArraySize(msgs);
	char **items = calloc((size_t)n + 1, sizeof(char *));
	size_t *lens = calloc((size_t)n + 1, sizeof(size_t));
	enum sg_err rc = SG_OK;
	if (!items || !lens) {
		rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		goto out;
	}
	int k = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, msgs) {
		items[k] = sg_json_render(m);
		if (!items[k]) {
			rc = sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			goto out;
		}
		lens[k] = strlen(items[k]);
		k++;
	}
	if (k == 0) {
		rc = sg_error_set(e, SG_ERR_BAD_REQUEST, "no messages to append");
		goto out;
	}
	rc = store_history_append(s, tenant, conv, (const char *const *)items, lens,
				  (size_t)k, max, ttl_s, cap, new_len, e);
out:
	for (int i = 0; items && i < n; i++)
		free(items[i]);
	free(items);
	free(lens);
	return rc;
}

enum sg_err memory_delete(struct store *s, const char *tenant, const char *conv,
			  bool *existed, struct sg_error *e)
{
	return store_history_delete(s, tenant, conv, existed, e);
}
