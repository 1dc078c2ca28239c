/* SSE parsing and chat-completion stream assembly. Pure: no I/O, no
 * globals. Never trusts an event: each is parsed with the strict JSON
 * parser and only fields of the expected types are used. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/json.h"
#include "semgate/http/sse.h"

void sse_parser_init(struct sse_parser *p, size_t cap)
{
	sg_buf_init(&p->pending, cap);
	sg_buf_init(&p->data, cap);
	p->stopped = false;
	p->has_data = false;
	p->resume = 0;
}

void sse_parser_finish(struct sse_parser *p)
{
	if (!p)
		return;
	sg_buf_finish(&p->pending);
	sg_buf_finish(&p->data);
}

/* Process one complete line (without its terminator) of the pending event. */
static enum sg_err take_line(struct sse_parser *p, const char *line, size_t len)
{
	if (len >= 5 && memcmp(line, "data:", 5) == 0) {
		const char *v = line + 5;
		size_t vl = len - 5;
		if (vl && *v == ' ') {
			v++;
			vl--;
		}
		enum sg_err rc;
		if (p->has_data && (rc = sg_buf_append(&p->data, "\n", 1)) != SG_OK)
			return rc;
		p->has_data = true;
		return sg_buf_append(&p->data, v, vl);
	}
	return SG_OK; /* comments, event:, id:, retry: carry nothing we use */
}

static enum sg_err dispatch_event(struct sse_parser *p, sse_event_fn fn, void *ud,
				  const char *raw, size_t raw_len)
{
	enum sg_err rc = SG_OK;
	/* events without a data field (comments, keep-alives) carry nothing */
	if (p->has_data) {
		if (!p->data.data && (rc = sg_buf_append(&p->data, "", 0)) != SG_OK)
			return rc;
		if (fn(ud, raw, raw_len, p->data.data, p->data.len) != 0) {
			p->stopped = true;
			rc = SG_ERR_CLIENT_GONE;
		}
	}
	sg_buf_reset(&p->data);
	p->has_data = false;
	return rc;
}

enum sg_err sse_parser_feed(struct sse_parser *p, const char *buf, size_t len,
			    sse_event_fn fn, void *ud)
{
	if (p->stopped)
		return SG_ERR_CLIENT_GONE;
	enum sg_err rc = sg_buf_append(&p->pending, buf, len);
	if (rc != SG_OK)
		return rc;
	/* scan complete lines; an empty line ends an event. Lines of the
	 * pending event taken by an earlier call are not scanned again, so an
	 * event arriving in many small reads costs linear time, not quadratic. */
	size_t start = 0, line_start = p->resume, i = p->resume;
	char *d = p->pending.data;
	size_t n = p->pending.len;
	while (i < n) {
		if (d[i] != '\n' && d[i] != '\r') {
			i++;
			continue;
		}
		size_t line_end = i;
		size_t next = i + 1;
		if (d[i] == '\r') {
			if (i + 1 >= n)
				break; /* might be \r\n split across reads */
			if (d[i + 1] == '\n')
				next = i + 2;
		}
		if (line_end == line_start) {
			size_t raw_len = line_start > start ? line_start - start - 1 : 0;
			while (raw_len && (d[start + raw_len - 1] == '\r' ||
					   d[start + raw_len - 1] == '\n'))
				raw_len--;
			rc = dispatch_event(p, fn, ud, d + start, raw_len);
			/* the raw event excludes its final line terminator */
			start = next;
			if (rc != SG_OK)
				break;
		} else if ((rc = take_line(p, d + line_start, line_end - line_start)) != SG_OK) {
			break;
		}
		line_start = next;
		i = next;
	}
	if (rc != SG_OK && rc != SG_ERR_CLIENT_GONE)
		return rc;
	/* keep the unfinished event (its data so far stays in p->data) */
	memmove(d, d + start, n - start);
	p->pending.len = n - start;
	d[p->pending.len] = '\0';
	p->resume = line_start - start;
	return rc;
}

void sse_answer_init(struct sse_answer *a, size_t cap)
{
	memset(a, 0, sizeof(*a));
	sg_buf_init(&a->content, cap);
}

void sse_answer_finish(struct sse_answer *a)
{
	if (!a)
		return;
	sg_buf_finish(&a->content);
	cJSON_Delete(a->usage);
	a->usage = NULL;
}

/* Copy s into dst[cap], cutting a too-long value at a character boundary:
 * a half UTF-8 sequence would make the rendered answer invalid JSON, and
 * then the whole answer would be neither cached nor remembered. */
static void copy_field(char *dst, size_t cap, const char *s)
{
	size_t n = strlen(s);
	if (n >= cap) {
		n = cap - 1;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
	}
	memcpy(dst, s, n);
	dst[n] = '\0';
}

enum sse_event_kind sse_answer_feed(struct sse_answer *a, const char *data, size_t len)
{
	if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
		a->done = true;
		return SSE_EVENT_OTHER;
	}
	cJSON *ev = NULL;
	if (sg_json_parse(data, len, &ev, NULL) != SG_OK || !cJSON_IsObject(ev)) {
		a->bad_event = true;
		cJSON_Delete(ev);
		return SSE_EVENT_OTHER;
	}
	const char *s;
	if (!a->id[0] && (s = sg_json_str(ev, "id")))
		copy_field(a->id, sizeof(a->id), s);
	if (!a->model[0] && (s = sg_json_str(ev, "model")))
		copy_field(a->model, sizeof(a->model), s);
	const cJSON *cr = cJSON_GetObjectItemCaseSensitive(ev, "created");
	/* a timestamp out of long long's range would be undefined to convert */
	if (!a->created && cJSON_IsNumber(cr) && fabs(cr->valuedouble) < 1e18)
		a->created = (long long)cr->valuedouble;
	const cJSON *usage = sg_json_obj(ev, "usage");
	if (usage) {
		cJSON_Delete(a->usage);
		a->usage = cJSON_Duplicate(usage, 1);
	}
	if (cJSON_GetObjectItemCaseSensitive(ev, "error"))
		a->bad_event = true;
	const cJSON *choices = sg_json_arr(ev, "choices");
	bool usage_only = usage && choices && cJSON_GetArraySize(choices) == 0;
	const cJSON *ch;
	cJSON_ArrayForEach(ch, choices) {
		const cJSON *idx = cJSON_GetObjectItemCaseSensitive(ch, "index");
		if (cJSON_IsNumber(idx) && idx->valuedouble != 0) {
			a->other_choices = true;
			continue;
		}
		const cJSON *delta = sg_json_obj(ch, "delta");
		if ((s = sg_json_str(delta, "content"))) {
			if (sg_buf_puts(&a->content, s) != SG_OK)
				a->bad_event = true; /* too large to keep: not cacheable */
			a->has_content_or_role = true;
		}
		if (sg_json_str(delta, "role"))
			a->has_content_or_role = true;
		const cJSON *tc = cJSON_GetObjectItemCaseSensitive(delta, "tool_calls");
		if (tc && !cJSON_IsNull(tc))
			a->tool_calls = true;
		const cJSON *fc = cJSON_GetObjectItemCaseSensitive(delta, "function_call");
		if (fc && !cJSON_IsNull(fc))
			a->tool_calls = true;
		if ((s = sg_json_str(ch, "finish_reason")))
			copy_field(a->finish_reason, sizeof(a->finish_reason), s);
	}
	cJSON_Delete(ev);
	return usage_only ? SSE_EVENT_USAGE_ONLY : SSE_EVENT_CHUNK;
}

/* True when raw is one line "data:" [" "] data, so data's bytes can be
 * edited in place; *pre gets the length of what comes before them. */
static bool one_data_line(const char *raw, size_t raw_len, const char *data, size_t len,
			  size_t *pre)
{
	if (raw_len < 5 || memcmp(raw, "data:", 5) != 0)
		return false;
	*pre = raw_len > 5 && raw[5] == ' ' ? 6 : 5;
	return raw_len - *pre == len && memcmp(raw + *pre, data, len) == 0;
}

enum sg_err sse_client_event(const char *raw, size_t raw_len, const char *data, size_t len,
			     enum sse_event_kind kind, bool strip_usage, struct sg_buf *out)
{
	if (strip_usage && kind == SSE_EVENT_USAGE_ONLY)
		return SG_OK;
	size_t pre = 0, b = 0, e = 0;
	enum sg_err rc;
	if (strip_usage && kind == SSE_EVENT_CHUNK && one_data_line(raw, raw_len, data, len, &pre) &&
	    sg_json_member_cut_span(data, len, "usage", &b, &e) == 1) {
		rc = sg_buf_append(out, raw, pre + b);
		if (rc == SG_OK)
			rc = sg_buf_append(out, data + e, len - e);
	} else {
		rc = sg_buf_append(out, raw, raw_len);
	}
	return rc == SG_OK ? sg_buf_append(out, "\n\n", 2) : rc;
}

bool sse_answer_complete(const struct sse_answer *a)
{
	return a->done && !a->bad_event && !a->tool_calls && !a->other_choices &&
	       a->has_content_or_role &&
	       (strcmp(a->finish_reason, "stop") == 0 || strcmp(a->finish_reason, "length") == 0);
}

char *sse_answer_render(const struct sse_answer *a)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *choices = cJSON_AddArrayToObject(o, "choices");
	cJSON *c0 = cJSON_CreateObject();
	cJSON *msg = cJSON_CreateObject();
	char *out = NULL;
	if (!o || !choices || !c0 || !msg) {
		cJSON_Delete(c0);
		cJSON_Delete(msg);
		goto done;
	}
	cJSON_AddItemToArray(choices, c0);
	cJSON_AddNumberToObject(c0, "index", 0);
	cJSON_AddItemToObject(c0, "message", msg);
	cJSON_AddStringToObject(msg, "role", "assistant");
	cJSON_AddStringToObject(msg, "content", a->content.data ? a->content.data : "");
	cJSON_AddStringToObject(c0, "finish_reason", a->finish_reason);
	cJSON_AddStringToObject(o, "id", a->id[0] ? a->id : "chatcmpl-stream");
	cJSON_AddStringToObject(o, "object", "chat.completion");
	cJSON_AddNumberToObject(o, "created", (double)a->created);
	cJSON_AddStringToObject(o, "model", a->model);
	if (a->usage)
		cJSON_AddItemToObject(o, "usage", cJSON_Duplicate(a->usage, 1));
	out = cJSON_PrintUnformatted(o);
done:
	cJSON_Delete(o);
	return out;
}

/* Append one chunk event built from delta/finish/usage. */
static enum sg_err put_chunk(struct sg_buf *out, const char *id, long long created,
			     const char *model, cJSON *delta, const char *finish,
			     const cJSON *usage)
{
	cJSON *o = cJSON_CreateObject();
	enum sg_err rc = SG_ERR_NOMEM;
	if (!o) {
		cJSON_Delete(delta);
		return rc;
	}
	cJSON_AddStringToObject(o, "id", id);
	cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
	cJSON_AddNumberToObject(o, "created", (double)created);
	cJSON_AddStringToObject(o, "model", model);
	cJSON *choices = cJSON_AddArrayToObject(o, "choices");
	if (delta) {
		cJSON *c = cJSON_CreateObject();
		if (c) {
			cJSON_AddNumberToObject(c, "index", 0);
			cJSON_AddItemToObject(c, "delta", delta);
			delta = NULL;
			if (finish)
				cJSON_AddStringToObject(c, "finish_reason", finish);
			else
				cJSON_AddNullToObject(c, "finish_reason");
			cJSON_AddItemToArray(choices, c);
		}
	}
	if (usage)
		cJSON_AddItemToObject(o, "usage", cJSON_Duplicate(usage, 1));
	char *s = cJSON_PrintUnformatted(o);
	if (s) {
		rc = sg_buf_printf(out, "data: %s\n\n", s);
		free(s);
	}
	cJSON_Delete(delta);
	cJSON_Delete(o);
	return rc;
}

/* Length of the next piece of text: about 24 bytes, cut after a space
 * and never inside a UTF-8 sequence. */
static size_t piece_len(const char *s, size_t left)
{
	if (left <= 24)
		return left;
	size_t n = 24;
	while (n < left && s[n - 1] != ' ' && n < 64)
		n++;
	while (n < left && ((unsigned char)s[n] & 0xC0) == 0x80)
		n++;
	return n;
}

enum sg_err sse_replay(const cJSON *completion, const char *id, long long created,
		       bool with_usage, struct sg_buf *out)
{
	const cJSON *c0 = cJSON_GetArrayItem(sg_json_arr(completion, "choices"), 0);
	const cJSON *msg = sg_json_obj(c0, "message");
	const char *content = sg_json_str(msg, "content");
	const char *finish = sg_json_str(c0, "finish_reason");
	const char *model = sg_json_str(completion, "model");
	if (!content)
		return SG_ERR_BAD_REQUEST;
	if (!model)
		model = "";
	enum sg_err rc;
	cJSON *d = cJSON_CreateObject();
	if (!d || !cJSON_AddStringToObject(d, "role", "assistant") ||
	    !cJSON_AddStringToObject(d, "content", "")) {
		cJSON_Delete(d);
		return SG_ERR_NOMEM;
	}
	if ((rc = put_chunk(out, id, created, model, d, NULL, NULL)) != SG_OK)
		return rc;
	size_t left = strlen(content);
	const char *p = content;
	while (left) {
		size_t n = piece_len(p, left);
		char *piece = strndup(p, n);
		d = cJSON_CreateObject();
		if (!piece || !d || !cJSON_AddStringToObject(d, "content", piece)) {
			free(piece);
			cJSON_Delete(d);
			return SG_ERR_NOMEM;
		}
		free(piece);
		if ((rc = put_chunk(out, id, created, model, d, NULL, NULL)) != SG_OK)
			return rc;
		p += n;
		left -= n;
	}
	d = cJSON_CreateObject();
	if (!d)
		return SG_ERR_NOMEM;
	if ((rc = put_chunk(out, id, created, model, d, finish ? finish : "stop", NULL)) != SG_OK)
		return rc;
	const cJSON *usage = sg_json_obj(completion, "usage");
	if (with_usage && usage &&
	    (rc = put_chunk(out, id, created, model, NULL, NULL, usage)) != SG_OK)
		return rc;
	return sg_buf_puts(out, "data: [DONE]\n\n");
}
