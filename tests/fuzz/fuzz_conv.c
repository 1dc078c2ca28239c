/* Fuzz the conversations API input: the id (memory_id_valid) and the
 * append body ({"messages":[...]} -> scope_validate_messages), the way
 * route_conv_append reads them. The input is "<id>\n<body>".
 * Invariants: memory_id_valid agrees with [A-Za-z0-9._:-]{1,128} checked
 * independently, so no id can put ':' runs, globs or control bytes into a
 * key beyond that set; and every message that validation lets through is
 * stored in a form memory_load reads back (strict JSON object with a string
 * role) -- otherwise a stored turn would later be dropped silently. */
#include <stdbool.h>
#include <string.h>

#include "semgate/core/json.h"
#include "semgate/memory/memory.h"
#include "semgate/cache/scope.h"
#include "fuzz.h"

static bool id_reference(const char *s, size_t len)
{
	static const char ok[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
	if (len < 1 || len > 128)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\0' || !strchr(ok, s[i]))
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	const char *nl = memchr(s, '\n', size);
	size_t idlen = nl ? (size_t)(nl - s) : size;
	char *id = malloc(idlen + 1);
	FUZZ_CHECK(id != NULL);
	memcpy(id, s, idlen);
	id[idlen] = '\0';
	/* the route sees a C string: bytes after a NUL never reach it */
	FUZZ_CHECK(memory_id_valid(id) == id_reference(id, strlen(id)));
	free(id);
	if (!nl)
		return 0;

	const char *body = nl + 1;
	size_t blen = size - idlen - 1;
	cJSON *root = NULL;
	if (sg_json_parse(body, blen, &root, NULL) != SG_OK)
		return 0;
	const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
	struct sg_error e = { 0 };
	if (cJSON_IsObject(root) && msgs) {
		enum sg_err rc = scope_validate_messages(msgs, &e);
		FUZZ_CHECK(rc == SG_OK || (rc == SG_ERR_BAD_REQUEST && e.msg[0]));
		if (rc == SG_OK) {
			FUZZ_CHECK(cJSON_GetArraySize(msgs) >= 1);
			const cJSON *m;
			cJSON_ArrayForEach(m, msgs) {
				/* memory_append stores exactly this rendering */
				char *item = cJSON_PrintUnformatted(m);
				FUZZ_CHECK(item != NULL);
				cJSON *back = NULL;
				FUZZ_CHECK(sg_json_parse(item, strlen(item), &back, NULL) == SG_OK);
				FUZZ_CHECK(cJSON_IsObject(back) && sg_json_str(back, "role"));
				FUZZ_CHECK(strcmp(sg_json_str(back, "role"), sg_json_str(m, "role")) == 0);
				cJSON_Delete(back);
				free(item);
			}
		}
	}
	cJSON_Delete(root);
	return 0;
}
