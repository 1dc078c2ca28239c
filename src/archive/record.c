/* Decoding the archive stream's records (written by store/archive.c) and
 * coalescing a batch. Pure: no I/O, so the unit tests and any fuzzer can
 * feed it anything. A record that is not in the writer's shape is refused
 * with a reason, never trusted. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/archive/archive.h"
#include "semgate/core/json.h"

bool arch_sid_parse(const char *id, long long *ms, long long *seq)
{
	char *end = NULL;
	errno = 0;
	long long a = strtoll(id, &end, 10);
	if (errno || end == id || *end != '-' || a < 0)
		return false;
	const char *p = end + 1;
	long long b = strtoll(p, &end, 10);
	if (errno || end == p || *end != '\0' || b < 0)
		return false;
	*ms = a;
	*seq = b;
	return true;
}

/* [A-Za-z0-9._:-]{1,128}: conversation and entry ids (tenants are freer). */
static bool id_ok(const char *s)
{
	size_t n = 0;
	for (; s && s[n]; n++) {
		char c = s[n];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == ':' || c == '-') || n >= 128)
			return false;
	}
	return n > 0;
}

static bool num(const cJSON *o, const char *name, long long *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	if (!cJSON_IsNumber(v) || v->valuedouble < -9e15 || v->valuedouble > 9e15)
		return false;
	*out = (long long)v->valuedouble;
	return true;
}

static char *join_tags(const cJSON *tags, bool *ok)
{
	*ok = true;
	if (!tags)
		return NULL;
	if (!cJSON_IsArray(tags)) {
		*ok = false;
		return NULL;
	}
	size_t len = 1;
	const cJSON *t;
	cJSON_ArrayForEach(t, tags) {
		if (!cJSON_IsString(t) || !id_ok(t->valuestring)) {
			*ok = false;
			return NULL;
		}
		len += strlen(t->valuestring) + 1;
	}
	char *out = calloc(1, len);
	if (!out) {
		*ok = false;
		return NULL;
	}
	cJSON_ArrayForEach(t, tags) {
		if (out[0])
			strcat(out, ",");
		strcat(out, t->valuestring);
	}
	return out;
}

#define FAIL(...) do { snprintf(why, why_cap, __VA_ARGS__); goto fail; } while (0)

bool arch_rec_decode(const char *sid, const char *json, size_t len, const char *vec,
		     size_t vec_len, struct arch_rec *out, char *why, size_t why_cap)
{
	memset(out, 0, sizeof(*out));
	if (!arch_sid_parse(sid, &out->sid_ms, &out->sid_seq))
		FAIL("bad stream id");
	if (!json || sg_json_parse(json, len, &out->root, NULL) != SG_OK ||
	    !cJSON_IsObject(out->root))
		FAIL("not a JSON object");
	const cJSON *o = out->root;
	const char *k = sg_json_str(o, "k");
	out->tenant = sg_json_str(o, "t");
	if (!k || !out->tenant || !out->tenant[0] || strlen(out->tenant) > 128)
		FAIL("no kind or tenant");
	if (strcmp(k, "turn") == 0 || strcmp(k, "cdel") == 0) {
		out->kind = k[0] == 't' ? ARCH_TURN : ARCH_CONV_DELETE;
		out->obj = sg_json_str(o, "c");
		if (!id_ok(out->obj))
			FAIL("bad conversation id");
		if (out->kind == ARCH_TURN) {
			out->msgs = cJSON_GetObjectItemCaseSensitive(o, "m");
			if (!cJSON_IsArray(out->msgs) || cJSON_GetArraySize(out->msgs) == 0)
				FAIL("a turn without messages");
			const cJSON *m;
			cJSON_ArrayForEach(m, out->msgs)
				if (!cJSON_IsObject(m) || !sg_json_str(m, "role"))
					FAIL("a turn message without a role");
		}
		return true;
	}
	out->obj = sg_json_str(o, "id");
	if (!id_ok(out->obj))
		FAIL("bad entry id");
	if (strcmp(k, "edel") == 0) {
		out->kind = ARCH_ENTRY_DELETE;
		return true;
	}
	if (strcmp(k, "hits") == 0) {
		out->kind = ARCH_HITS;
		if (!num(o, "n", &out->hits) || out->hits < 0)
			FAIL("a hit count that is not a count");
		return true;
	}
	if (strcmp(k, "put") != 0)
		FAIL("unknown kind");
	out->kind = ARCH_PUT;
	out->query = sg_json_str(o, "q");
	out->answer = sg_json_str(o, "a");
	out->scope = sg_json_str(o, "s");
	out->ns = sg_json_str(o, "ns");
	out->exact = sg_json_str(o, "x");
	out->model = sg_json_str(o, "mo");
	out->kind_name = sg_json_str(o, "ki");
	out->metadata = sg_json_str(o, "md");
	long long dim = 0;
	if (!out->query || !out->answer || !out->scope || !out->ns || !out->exact ||
	    !out->model || !out->kind_name || !num(o, "dim", &dim) ||
	    !num(o, "cr", &out->created) || !num(o, "tk", &out->tokens) ||
	    !num(o, "ex", &out->expires))
		FAIL("an entry with a field missing");
	if (strcmp(out->kind_name, "chat") != 0 && strcmp(out->kind_name, "text") != 0)
		FAIL("an entry of unknown kind");
	if (dim < 0 || dim > 8192 || (dim > 0 && (!vec || vec_len != 4 * (size_t)dim)) ||
	    (dim == 0 && vec))
		FAIL("a vector that does not match its dimension");
	out->dim = (int)dim;
	out->vec = dim ? vec : NULL;
	out->vec_len = dim ? vec_len : 0;
	bool ok;
	out->tags = join_tags(cJSON_GetObjectItemCaseSensitive(o, "tg"), &ok);
	if (!ok)
		FAIL("bad tags");
	return true;
fail:
	arch_rec_finish(out);
	return false;
}

void arch_rec_finish(struct arch_rec *r)
{
	if (!r)
		return;
	cJSON_Delete(r->root);
	free(r->tags);
	memset(r, 0, sizeof(*r));
}

size_t arch_batch_coalesce(struct arch_rec *v, size_t n)
{
	size_t left = 0;
	for (size_t i = 0; i < n; i++) {
		if (v[i].kind == ARCH_HITS) {
			/* quadratic only over one batch (SEMGATE_ARCHIVE_BATCH) */
			for (size_t j = i + 1; j < n && !v[i].skip; j++)
				if (v[j].kind == ARCH_HITS && strcmp(v[j].tenant, v[i].tenant) == 0 &&
				    strcmp(v[j].obj, v[i].obj) == 0)
					v[i].skip = true;
		}
		if (!v[i].skip)
			left++;
	}
	return left;
}
