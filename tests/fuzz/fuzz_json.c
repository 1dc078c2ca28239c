/* Fuzz the strict JSON parser (sg_json_parse) and its UTF-8 check.
 * Invariants: sg_utf8_valid agrees with an independent decoder written
 * from Unicode's table of well-formed byte sequences; an accepted body is
 * valid UTF-8 and re-parses after rendering to the same canonical form; a
 * refused body always comes with a message. Every accepted document is also
 * judged as an upstream answer (cache_answer_cacheable/_tokens), which
 * must stay defined for any numbers in it; and an accepted object edited in
 * place (sg_json_member_put, sg_json_member_cut_span) is still strict JSON
 * with the edit made. */
#include <stdbool.h>
#include <string.h>

#include "semgate/cache/cache.h"
#include "semgate/core/json.h"
#include "semgate/cache/scope.h"
#include "fuzz.h"

/* Unicode 15, table 3-7: the well-formed UTF-8 byte sequences. */
static bool utf8_reference(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = s[i];
		unsigned char lo = 0x80, hi = 0xBF;
		size_t n;
		if (c <= 0x7F) {
			i++;
			continue;
		} else if (c >= 0xC2 && c <= 0xDF) {
			n = 1;
		} else if (c == 0xE0) {
			n = 2; lo = 0xA0;
		} else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
			n = 2;
		} else if (c == 0xED) {
			n = 2; hi = 0x9F;
		} else if (c == 0xF0) {
			n = 3; lo = 0x90;
		} else if (c >= 0xF1 && c <= 0xF3) {
			n = 3;
		} else if (c == 0xF4) {
			n = 3; hi = 0x8F;
		} else {
			return false;
		}
		if (n >= len - i)  /* the sequence runs past the end */
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= n; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xBF)
				return false;
		i += n + 1;
	}
	return true;
}

static char *canonical(const cJSON *v)
{
	struct sg_buf b;
	sg_buf_init(&b, 0);
	if (scope_canonical(v, &b) != SG_OK) {
		sg_buf_finish(&b);
		return NULL;
	}
	return sg_buf_steal(&b, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	FUZZ_CHECK(sg_utf8_valid(s, size) == utf8_reference(data, size));

	struct sg_error e = { 0 };
	cJSON *root = NULL;
	enum sg_err rc = sg_json_parse(s, size, &root, &e);
	if (rc != SG_OK) {
		FUZZ_CHECK(rc == SG_ERR_BAD_REQUEST);
		FUZZ_CHECK(root == NULL);
		FUZZ_CHECK(e.msg[0] != '\0');
		return 0;
	}
	FUZZ_CHECK(root != NULL);
	FUZZ_CHECK(utf8_reference(data, size));

	/* what the chat route asks of an upstream answer */
	(void)cache_answer_cacheable(root);
	long long tokens = cache_answer_tokens(root);
	FUZZ_CHECK(tokens >= 0 && tokens <= 1000000000000000LL);

	/* what the gateway renders from a tree it accepted, it accepts again */
	char *out = sg_json_render(root);
	FUZZ_CHECK(out != NULL);
	cJSON *again = NULL;
	FUZZ_CHECK(sg_json_parse(out, strlen(out), &again, NULL) == SG_OK);
	char *c1 = canonical(root), *c2 = canonical(again);
	FUZZ_CHECK(c1 && c2);
	FUZZ_CHECK(strcmp(c1, c2) == 0);
	/* the canonical form is itself strict JSON and a fixed point */
	cJSON *third = NULL;
	FUZZ_CHECK(sg_json_parse(c1, strlen(c1), &third, NULL) == SG_OK);
	char *c3 = canonical(third);
	FUZZ_CHECK(c3 && strcmp(c1, c3) == 0);
	if (cJSON_IsObject(root)) {
		static const char *const keys[] = { "usage", "stream_options", "a" };
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			cJSON *p = NULL;
			char *put = sg_json_member_put(s, size, keys[k], "{\"include_usage\":true}");
			if (put) {
				FUZZ_CHECK(sg_json_parse(put, strlen(put), &p, NULL) == SG_OK);
				FUZZ_CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
					cJSON_GetObjectItemCaseSensitive(p, keys[k]), "include_usage")));
				cJSON_Delete(p);
				p = NULL;
				free(put);
			}
			size_t b = 0, end = 0;
			if (sg_json_member_cut_span(s, size, keys[k], &b, &end) == 1) {
				struct sg_buf cut;
				sg_buf_init(&cut, 0);
				FUZZ_CHECK(b < end && end <= size);
				FUZZ_CHECK(sg_buf_append(&cut, s, b) == SG_OK &&
					   sg_buf_append(&cut, s + end, size - end) == SG_OK);
				FUZZ_CHECK(sg_json_parse(cut.data, cut.len, &p, NULL) == SG_OK);
				FUZZ_CHECK(cJSON_IsObject(p));
				FUZZ_CHECK(cJSON_GetArraySize(p) == cJSON_GetArraySize(root) - 1);
				cJSON_Delete(p);
				sg_buf_finish(&cut);
			}
		}
	}
	free(c1);
	free(c2);
	free(c3);
	free(out);
	cJSON_Delete(third);
	cJSON_Delete(again);
	cJSON_Delete(root);
	return 0;
}
