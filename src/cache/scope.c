/* Chat request validation and cache scope hashing. Pure functions over a
 * parsed request: no I/O, no shared state. A scope bug serves one user's
 * answer to a different question, so when in doubt a field stays in scope. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "semgate/core/digest.h"
#include "semgate/core/json.h"
#include "semgate/cache/scope.h"

/* ---- validation ---- */

enum rule_type { R_BOOL, R_INT, R_NUM, R_STOP, R_ARR, R_OBJ };

struct field_rule {
	const char *key;
	enum rule_type type;
	double min, max;    /* inclusive; R_INT and R_NUM only */
	const char *what;   /* completes "'key' must be ..." */
};

/* 0x1.fffffffffffffp62 is the largest double below 2^63, so a seed that
 * passes fits an int64_t wherever it is converted later. */
static const struct field_rule rules[] = {
	{ "stream", R_BOOL, 0, 0, "a boolean" },
	{ "n", R_INT, 1, SG_SCOPE_MAX_N, "an integer between 1 and 128" },
	{ "temperature", R_NUM, 0, 2, "a number between 0 and 2" },
	{ "top_p", R_NUM, 0, 1, "a number between 0 and 1" },
	{ "max_tokens", R_INT, 1, 0x1p53, "an integer >= 1" },
	{ "max_completion_tokens", R_INT, 1, 0x1p53, "an integer >= 1" },
	{ "stop", R_STOP, 0, 0, "a string or an array of strings" },
	{ "seed", R_INT, -0x1p63, 0x1.fffffffffffffp62, "a 64-bit integer" },
	{ "tools", R_ARR, 0, 0, "an array" },
	{ "stream_options", R_OBJ, 0, 0, "an object" },
};

static bool number_in(const cJSON *it, double lo, double hi, bool integral)
{
	if (!cJSON_IsNumber(it))
		return false;
	double x = it->valuedouble;
	if (!isfinite(x) || x < lo || x > hi)
		return false;
	return !integral || floor(x) == x;
}

static bool rule_ok(const struct field_rule *r, const cJSON *it)
{
	switch (r->type) {
	case R_BOOL:
		return cJSON_IsBool(it);
	case R_INT:
		return number_in(it, r->min, r->max, true);
	case R_NUM:
		return number_in(it, r->min, r->max, false);
	case R_STOP:
		if (cJSON_IsString(it))
			return true;
		if (!cJSON_IsArray(it))
			return false;
		for (const cJSON *s = it->child; s; s = s->next)
			if (!cJSON_IsString(s))
				return false;
		return true;
	case R_ARR:
		return cJSON_IsArray(it);
	case R_OBJ:
		return cJSON_IsObject(it);
	}
	return false;
}

static bool key_is(const cJSON *it, const char *key)
{
	return it->string && strcmp(it->string, key) == 0;
}

static bool present(const cJSON *it)
{
	return it && !cJSON_IsNull(it);
}

static enum sg_err validate_parts(const cJSON *parts, int i, struct sg_error *e)
{
	int j = 0;
	for (const cJSON *p = parts->child; p; p = p->next, j++) {
		if (!cJSON_IsObject(p))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"messages[%d].content[%d] must be an object", i, j);
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
		if (!cJSON_IsString(type) || !type->valuestring[0])
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"messages[%d].content[%d].type must be a non-empty string",
				i, j);
		if (strcmp(type->valuestring, "text") == 0 &&
		    !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(p, "text")))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"messages[%d].content[%d].text must be a string", i, j);
	}
	return SG_OK;
}

static enum sg_err validate_message(const cJSON *m, int i, struct sg_error *e)
{
	if (!cJSON_IsObject(m))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"messages[%d] must be an object", i);
	const cJSON *role = NULL;
	const cJSON *content = NULL;
	/* Walk every member so a duplicated key cannot hide a bad value behind
	 * a good first occurrence. */
	for (const cJSON *it = m->child; it; it = it->next) {
		if (key_is(it, "role")) {
			if (!cJSON_IsString(it))
				return sg_error_set(e, SG_ERR_BAD_REQUEST,
					"messages[%d].role must be a string", i);
			if (!it->valuestring[0])
				return sg_error_set(e, SG_ERR_BAD_REQUEST,
					"messages[%d].role must not be empty", i);
			if (!role)
				role = it;
		} else if (key_is(it, "content")) {
			if (!content)
				content = it;
		}
	}
	if (!role)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"messages[%d].role is required", i);

	bool may_be_null = strcmp(role->valuestring, "assistant") == 0 &&
		(present(cJSON_GetObjectItemCaseSensitive(m, "tool_calls")) ||
		 present(cJSON_GetObjectItemCaseSensitive(m, "function_call")));
	for (const cJSON *it = m->child; it; it = it->next) {
		if (!key_is(it, "content"))
			continue;
		if (cJSON_IsString(it))
			continue;
		if (cJSON_IsArray(it)) {
			enum sg_err rc = validate_parts(it, i, e);
			if (rc != SG_OK)
				return rc;
			continue;
		}
		if (cJSON_IsNull(it) && may_be_null)
			continue;
		if (cJSON_IsNull(it))
			return sg_error_set(e, SG_ERR_BAD_REQUEST,
				"messages[%d].content may be null only in an assistant "
				"message with tool_calls", i);
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"messages[%d].content must be a string or an array of "
			"content parts", i);
	}
	if (!content && !may_be_null)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"messages[%d].content is required", i);
	return SG_OK;
}

enum sg_err scope_validate_messages(const cJSON *msgs, struct sg_error *e)
{
	if (!cJSON_IsArray(msgs))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"'messages' must be an array");
	int n = cJSON_GetArraySize(msgs);
	if (n == 0)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"'messages' must not be empty");
	if (n > SG_SCOPE_MAX_MESSAGES)
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"'messages' has %d items; at most %d are allowed", n,
			SG_SCOPE_MAX_MESSAGES);
	int i = 0;
	for (const cJSON *m = msgs->child; m; m = m->next, i++) {
		enum sg_err rc = validate_message(m, i, e);
		if (rc != SG_OK)
			return rc;
	}
	return SG_OK;
}

enum sg_err scope_validate_chat(const cJSON *req, struct sg_error *e)
{
	if (!cJSON_IsObject(req))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"the request body must be a JSON object");
	bool have_model = false, have_messages = false;
	for (const cJSON *it = req->child; it; it = it->next) {
		if (!it->string)
			continue;
		if (key_is(it, "model")) {
			if (!cJSON_IsString(it) || !it->valuestring[0])
				return sg_error_set(e, SG_ERR_BAD_REQUEST,
					"'model' must be a non-empty string");
			have_model = true;
			continue;
		}
		if (key_is(it, "messages")) {
			enum sg_err rc = scope_validate_messages(it, e);
			if (rc != SG_OK)
				return rc;
			have_messages = true;
			continue;
		}
		/* null means "not given" to OpenAI-compatible servers, and some
		 * clients send it for every unset parameter. */
		if (cJSON_IsNull(it))
			continue;
		for (size_t r = 0; r < sizeof(rules) / sizeof(rules[0]); r++) {
			if (strcmp(it->string, rules[r].key) != 0)
				continue;
			if (!rule_ok(&rules[r], it))
				return sg_error_set(e, SG_ERR_BAD_REQUEST,
					"'%s' must be %s", rules[r].key, rules[r].what);
			break;
		}
	}
	if (!have_model)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "'model' is required");
	if (!have_messages)
		return sg_error_set(e, SG_ERR_BAD_REQUEST, "'messages' is required");
	return SG_OK;
}

/* ---- canonical JSON ---- */

typedef bool (*member_keep_fn)(const cJSON *item, const void *arg);

struct member {
	const cJSON *item;
	size_t pos;
};

static int member_cmp(const void *a, const void *b)
{
	const struct member *x = a, *y = b;
	int c = strcmp(x->item->string ? x->item->string : "",
		       y->item->string ? y->item->string : "");
	if (c)
		return c;
	/* qsort is not stable; input position breaks ties between duplicate
	 * keys so the output never depends on the libc. */
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static enum sg_err canon_string(const char *s, struct sg_buf *out)
{
	static const char hex[] = "0123456789abcdef";
	enum sg_err rc = sg_buf_append(out, "\"", 1);
	const char *run = s;
	for (const char *p = s; rc == SG_OK && *p; p++) {
		unsigned char c = (unsigned char)*p;
		char esc[7];
		size_t n = 0;
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			n = 2;
		} else if (c < 0x20) {
			esc[0] = '\\';
			n = 2;
			switch (c) {
			case '\b': esc[1] = 'b'; break;
			case '\f': esc[1] = 'f'; break;
			case '\n': esc[1] = 'n'; break;
			case '\r': esc[1] = 'r'; break;
			case '\t': esc[1] = 't'; break;
			default:
				memcpy(esc, "\\u00", 4);
				esc[4] = hex[c >> 4];
				esc[5] = hex[c & 15];
				n = 6;
				break;
			}
		} else {
			continue;
		}
		rc = sg_buf_append(out, run, (size_t)(p - run));
		if (rc == SG_OK)
			rc = sg_buf_append(out, esc, n);
		run = p + 1;
	}
	if (rc == SG_OK)
		rc = sg_buf_append(out, run, strlen(run));
	if (rc == SG_OK)
		rc = sg_buf_append(out, "\"", 1);
	return rc;
}

static enum sg_err canon_number(double x, struct sg_buf *out)
{
	if (!isfinite(x))
		return sg_buf_puts(out, "null");
	/* Below 2^53 every integer is exact, so 1, 1.0 and 1e0 print alike. */
	if (floor(x) == x && fabs(x) < 0x1p53)
		return sg_buf_printf(out, "%lld", (long long)x);
	return sg_buf_printf(out, "%.17g", x);
}

static enum sg_err canon_value(const cJSON *v, struct sg_buf *out, int depth);

static enum sg_err canon_object(const cJSON *obj, member_keep_fn keep,
				const void *arg, struct sg_buf *out, int depth)
{
	size_t n = 0;
	for (const cJSON *it = obj->child; it; it = it->next)
		n++;
	struct member *mem = NULL;
	if (n) {
		mem = malloc(n * sizeof(*mem));
		if (!mem)
			return SG_ERR_NOMEM;
	}
	size_t k = 0, pos = 0;
	for (const cJSON *it = obj->child; it; it = it->next, pos++)
		if (!keep || keep(it, arg))
			mem[k++] = (struct member){ it, pos };
	if (k > 1)
		qsort(mem, k, sizeof(*mem), member_cmp);

	enum sg_err rc = sg_buf_append(out, "{", 1);
	for (size_t i = 0; rc == SG_OK && i < k; i++) {
		if (i)
			rc = sg_buf_append(out, ",", 1);
		if (rc == SG_OK)
			rc = canon_string(mem[i].item->string ? mem[i].item->string : "",
					  out);
		if (rc == SG_OK)
			rc = sg_buf_append(out, ":", 1);
		if (rc == SG_OK)
			rc = canon_value(mem[i].item, out, depth + 1);
	}
	if (rc == SG_OK)
		rc = sg_buf_append(out, "}", 1);
	free(mem);
	return rc;
}

static enum sg_err canon_value(const cJSON *v, struct sg_buf *out, int depth)
{
	if (depth > SG_SCOPE_MAX_DEPTH)
		return SG_ERR_BAD_REQUEST;
	switch (v->type & 0xff) {
	case cJSON_False:
		return sg_buf_puts(out, "false");
	case cJSON_True:
		return sg_buf_puts(out, "true");
	case cJSON_NULL:
		return sg_buf_puts(out, "null");
	case cJSON_Number:
		return canon_number(v->valuedouble, out);
	case cJSON_String:
		return canon_string(v->valuestring ? v->valuestring : "", out);
	case cJSON_Array: {
		enum sg_err rc = sg_buf_append(out, "[", 1);
		for (const cJSON *it = v->child; rc == SG_OK && it; it = it->next) {
			if (it != v->child)
				rc = sg_buf_append(out, ",", 1);
			if (rc == SG_OK)
				rc = canon_value(it, out, depth + 1);
		}
		if (rc == SG_OK)
			rc = sg_buf_append(out, "]", 1);
		return rc;
	}
	case cJSON_Object:
		return canon_object(v, NULL, NULL, out, depth);
	default:
		return SG_ERR_BAD_REQUEST;  /* cJSON_Raw or a corrupt item */
	}
}

enum sg_err scope_canonical(const cJSON *v, struct sg_buf *out)
{
	if (!v)
		return SG_ERR_BAD_REQUEST;
	return canon_value(v, out, 0);
}

/* ---- scope ---- */

static const char *const denylist[] = { SG_SCOPE_DENYLIST };

static bool keep_scope_param(const cJSON *it, const void *arg)
{
	(void)arg;
	/* null means "not given" (SDKs send it for unset parameters), so it
	 * must not split the scope from a request that leaves the field out */
	if (cJSON_IsNull(it))
		return false;
	for (size_t i = 0; i < sizeof(denylist) / sizeof(denylist[0]); i++)
		if (it->string && strcmp(it->string, denylist[i]) == 0)
			return false;
	return true;
}

static bool keep_not(const cJSON *it, const void *skip)
{
	return it != skip;
}

/* Each field enters the digest tagged and length-prefixed (digest.h). */
static enum sg_err feed(EVP_MD_CTX *ctx, char tag, const void *data, size_t len)
{
	return sg_digest_field(ctx, tag, data, len) ? SG_OK : SG_ERR_INTERNAL;
}

static enum sg_err feed_str(EVP_MD_CTX *ctx, char tag, const char *s)
{
	return feed(ctx, tag, s, strlen(s));
}

static enum sg_err digest_hex(EVP_MD_CTX *ctx, char hex_out[65])
{
	return sg_digest_hex(ctx, hex_out) ? SG_OK : SG_ERR_INTERNAL;
}

static const char *role_of(const cJSON *m)
{
	return cJSON_IsObject(m) ? sg_json_str(m, "role") : NULL;
}

static bool is_blank(const char *s)
{
	for (; *s; s++)
		if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r' &&
		    *s != '\f' && *s != '\v')
			return false;
	return true;
}

/* Fill s->query from the last user content; clear *text_only when the
 * content holds anything but text (images, audio, a malformed part). */
static enum sg_err extract_query(const cJSON *content, struct scope_info *s,
				 bool *text_only)
{
	struct sg_buf q;
	sg_buf_init(&q, 0);
	enum sg_err rc = SG_OK;
	*text_only = true;
	if (cJSON_IsString(content)) {
		rc = sg_buf_puts(&q, content->valuestring);
	} else if (cJSON_IsArray(content)) {
		bool first = true;
		for (const cJSON *p = content->child; rc == SG_OK && p; p = p->next) {
			const char *type = cJSON_IsObject(p) ? sg_json_str(p, "type") : NULL;
			const char *text = sg_json_str(p, "text");
			if (!type || strcmp(type, "text") != 0 || !text) {
				*text_only = false;
				continue;
			}
			if (!first)
				rc = sg_buf_append(&q, "\n", 1);
			if (rc == SG_OK)
				rc = sg_buf_puts(&q, text);
			first = false;
		}
	} else {
		*text_only = false;
	}
	if (rc == SG_OK) {
		s->query = sg_buf_steal(&q, &s->query_len);
		if (!s->query)
			rc = SG_ERR_NOMEM;
	}
	sg_buf_finish(&q);
	return rc;
}

enum sg_err scope_compute(const char *tenant, const char *namespace_,
			  const cJSON *req, struct scope_info *out,
			  struct sg_error *e)
{
	memset(out, 0, sizeof(*out));
	if (!cJSON_IsObject(req))
		return sg_error_set(e, SG_ERR_BAD_REQUEST,
			"the request body must be a JSON object");

	const cJSON *msgs = sg_json_arr(req, "messages");
	const cJSON *last_user = NULL;
	for (const cJSON *m = msgs ? msgs->child : NULL; m; m = m->next) {
		const char *role = role_of(m);
		if (role && strcmp(role, "user") == 0)
			last_user = m;
	}
	/* The first "content" is the one the validator and the upstream read;
	 * any duplicate stays in the scope through the message's other fields. */
	const cJSON *content = last_user ?
		cJSON_GetObjectItemCaseSensitive(last_user, "content") : NULL;
	const char *model = sg_json_str(req, "model");

	struct sg_buf tmp;
	sg_buf_init(&tmp, 0);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	enum sg_err rc = SG_ERR_NOMEM;
	if (!ctx)
		goto fail;
	rc = SG_ERR_INTERNAL;
	if (EVP_DigestInit_ex(ctx, sg_sha256(), NULL) != 1)
		goto fail;
	if ((rc = feed_str(ctx, 'V', "semgate-scope-v1")) != SG_OK ||
	    (rc = feed_str(ctx, 'T', tenant ? tenant : "")) != SG_OK ||
	    (rc = feed_str(ctx, 'N', namespace_ ? namespace_ : "")) != SG_OK ||
	    (rc = feed_str(ctx, 'M', model ? model : "")) != SG_OK)
		goto fail;
	if ((rc = canon_object(req, keep_scope_param, NULL, &tmp, 0)) != SG_OK ||
	    (rc = feed(ctx, 'P', tmp.data, tmp.len)) != SG_OK)
		goto fail;
	for (const cJSON *m = msgs ? msgs->child : NULL; m; m = m->next) {
		sg_buf_reset(&tmp);
		char tag = 'm';
		if (m == last_user) {
			/* The question itself is what exact and semantic lookups
			 * compare, so only its envelope (role, name, …) is scope. */
			tag = 'Q';
			rc = canon_object(m, keep_not, content, &tmp, 0);
		} else {
			rc = canon_value(m, &tmp, 0);
		}
		if (rc != SG_OK || (rc = feed(ctx, tag, tmp.data, tmp.len)) != SG_OK)
			goto fail;
	}
	if ((rc = digest_hex(ctx, out->scope)) != SG_OK)
		goto fail;

	sg_buf_reset(&tmp);
	rc = SG_ERR_INTERNAL;
	if (EVP_DigestInit_ex(ctx, sg_sha256(), NULL) != 1)
		goto fail;
	if (content && (rc = canon_value(content, &tmp, 0)) != SG_OK)
		goto fail;
	if ((rc = feed_str(ctx, 'V', "semgate-exact-v1")) != SG_OK ||
	    (rc = feed(ctx, 'S', out->scope, 64)) != SG_OK ||
	    (rc = feed(ctx, 'C', tmp.data, tmp.len)) != SG_OK ||
	    (rc = digest_hex(ctx, out->exact)) != SG_OK)
		goto fail;

	bool text_only = false;
	if ((rc = extract_query(content, out, &text_only)) != SG_OK)
		goto fail;
	bool has_tools = present(cJSON_GetObjectItemCaseSensitive(req, "tools")) ||
		present(cJSON_GetObjectItemCaseSensitive(req, "functions"));
	out->cacheable = last_user != NULL;
	out->semantic_ok = out->cacheable && text_only && !has_tools &&
		!is_blank(out->query);
	for (const cJSON *it = req->child; it; it = it->next)
		if (key_is(it, "n") && cJSON_IsNumber(it) && it->valuedouble > 1)
			out->n_gt_1 = true;

	EVP_MD_CTX_free(ctx);
	sg_buf_finish(&tmp);
	return SG_OK;

fail:
	EVP_MD_CTX_free(ctx);
	sg_buf_finish(&tmp);
	scope_info_finish(out);
	memset(out, 0, sizeof(*out));
	if (rc == SG_ERR_BAD_REQUEST)
		return sg_error_set(e, rc, "the request is nested too deeply");
	return sg_error_set(e, rc, "computing the cache scope failed: %s",
			    sg_strerror(rc));
}

void scope_info_finish(struct scope_info *s)
{
	if (!s)
		return;
	free(s->query);
	s->query = NULL;
	s->query_len = 0;
}
