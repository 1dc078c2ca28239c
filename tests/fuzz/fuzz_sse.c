/* Fuzz the SSE path of streamed answers: sse_parser_feed over random
 * splits, sse_answer_feed/complete/render, sse_client_event stripping the
 * usage, and sse_replay of the result.
 * The first two input bytes seed the split sizes and options; the rest is
 * the upstream's byte stream.
 * Invariants: the events do not depend on how the stream was split; the
 * assembled answer neither; a complete answer renders to strict JSON that
 * replays as chunks which assemble again into the same content and finish
 * reason, every chunk itself strict JSON; a chunk stripped of its usage is
 * still strict JSON, and a usage-only chunk is left out. */
#include <stdbool.h>
#include <string.h>

#include "semgate/core/json.h"
#include "semgate/http/sse.h"
#include "fuzz.h"

#define BIG_CAP ((size_t)1 << 20)

struct run {
	struct sg_buf log;        /* every event: raw and data, length-prefixed */
	struct sse_answer ans;
	int events;
	bool stop_after;          /* ask the parser to stop after 3 events */
};

static int on_event(void *ud, const char *raw, size_t raw_len, const char *data,
		    size_t len)
{
	struct run *r = ud;
	FUZZ_CHECK(data[len] == '\0');
	sg_buf_printf(&r->log, "%zu:", raw_len);
	sg_buf_append(&r->log, raw, raw_len);
	sg_buf_printf(&r->log, "|%zu:", len);
	sg_buf_append(&r->log, data, len);
	enum sse_event_kind kind = sse_answer_feed(&r->ans, data, len);
	struct sg_buf ev;
	sg_buf_init(&ev, 0);
	FUZZ_CHECK(sse_client_event(raw, raw_len, data, len, kind, true, &ev) == SG_OK);
	if (kind == SSE_EVENT_USAGE_ONLY) {
		FUZZ_CHECK(ev.len == 0);
	} else {
		FUZZ_CHECK(ev.len >= 2 && memcmp(ev.data + ev.len - 2, "\n\n", 2) == 0);
		size_t pre = raw_len > 5 && raw[5] == ' ' ? 6 : 5;
		if (kind == SSE_EVENT_CHUNK && raw_len >= pre && raw_len - pre == len &&
		    memcmp(raw, "data:", 5) == 0 && memcmp(raw + pre, data, len) == 0) {
			cJSON *j = NULL;
			FUZZ_CHECK(sg_json_parse(ev.data + pre, ev.len - 2 - pre, &j, NULL) == SG_OK);
			FUZZ_CHECK(cJSON_IsObject(j));
			cJSON_Delete(j);
		}
	}
	sg_buf_finish(&ev);
	r->events++;
	return r->stop_after && r->events >= 3;
}

static void run_init(struct run *r, size_t content_cap, bool stop_after)
{
	memset(r, 0, sizeof(*r));
	sg_buf_init(&r->log, 0);
	sse_answer_init(&r->ans, content_cap);
	r->stop_after = stop_after;
}

static void run_finish(struct run *r)
{
	sg_buf_finish(&r->log);
	sse_answer_finish(&r->ans);
}

static bool same_answer(const struct sse_answer *a, const struct sse_answer *b)
{
	return strcmp(a->id, b->id) == 0 && strcmp(a->model, b->model) == 0 &&
	       a->created == b->created && a->content.len == b->content.len &&
	       (a->content.len == 0 ||
		memcmp(a->content.data, b->content.data, a->content.len) == 0) &&
	       strcmp(a->finish_reason, b->finish_reason) == 0 && a->done == b->done &&
	       a->tool_calls == b->tool_calls && a->other_choices == b->other_choices &&
	       a->bad_event == b->bad_event &&
	       a->has_content_or_role == b->has_content_or_role &&
	       (a->usage == NULL) == (b->usage == NULL);
}

/* Replay a complete answer and assemble the replay again. */
static void check_replay(const struct sse_answer *a, bool with_usage)
{
	char *json = sse_answer_render(a);
	FUZZ_CHECK(json != NULL);
	cJSON *doc = NULL;
	FUZZ_CHECK(sg_json_parse(json, strlen(json), &doc, NULL) == SG_OK);
	struct sg_buf out;
	sg_buf_init(&out, 0);
	FUZZ_CHECK(sse_replay(doc, "chatcmpl-fuzz", 1700000000, with_usage, &out) == SG_OK);

	struct run back;
	run_init(&back, BIG_CAP, false);
	struct sse_parser p;
	sse_parser_init(&p, BIG_CAP);
	FUZZ_CHECK(sse_parser_feed(&p, out.data, out.len, on_event, &back) == SG_OK);
	FUZZ_CHECK(p.pending.len == 0);
	FUZZ_CHECK(sse_answer_complete(&back.ans));
	FUZZ_CHECK(!back.ans.bad_event);
	FUZZ_CHECK(back.ans.content.len == a->content.len);
	FUZZ_CHECK(a->content.len == 0 ||
		   memcmp(back.ans.content.data, a->content.data, a->content.len) == 0);
	FUZZ_CHECK(strcmp(back.ans.finish_reason, a->finish_reason) == 0);
	FUZZ_CHECK(!with_usage || !a->usage || back.ans.usage);
	sse_parser_finish(&p);
	run_finish(&back);
	sg_buf_finish(&out);
	cJSON_Delete(doc);
	free(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint32_t seed = (uint32_t)data[0] << 8 | data[1];
	const char *s = (const char *)data + 2;
	size_t n = size - 2;
	bool stop_after = (seed & 0x8000) != 0;
	size_t content_cap = (seed & 0x4000) ? 64 : BIG_CAP;

	/* A: the whole stream at once */
	struct run a;
	run_init(&a, content_cap, stop_after);
	struct sse_parser pa;
	sse_parser_init(&pa, BIG_CAP);
	enum sg_err ra = sse_parser_feed(&pa, s, n, on_event, &a);

	/* B: the same bytes in pseudo-random pieces, some of them empty */
	struct run b;
	run_init(&b, content_cap, stop_after);
	struct sse_parser pb;
	sse_parser_init(&pb, BIG_CAP);
	enum sg_err rb = SG_OK;
	uint32_t x = seed * 2654435761u + 1;
	for (size_t off = 0; off <= n && rb == SG_OK;) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		size_t piece = x % 9;  /* 0..8 bytes: splits inside "\r\n" and "data:" */
		if (piece > n - off)
			piece = n - off;
		rb = sse_parser_feed(&pb, s + off, piece, on_event, &b);
		if (off == n)
			break;
		off += piece;
	}
	FUZZ_CHECK(ra == SG_OK || ra == SG_ERR_CLIENT_GONE);
	FUZZ_CHECK(rb == ra);
	FUZZ_CHECK(a.events == b.events);
	FUZZ_CHECK(a.log.len == b.log.len &&
		   (a.log.len == 0 || memcmp(a.log.data, b.log.data, a.log.len) == 0));
	FUZZ_CHECK(same_answer(&a.ans, &b.ans));
	/* after a stop the parser refuses more input */
	if (ra == SG_ERR_CLIENT_GONE)
		FUZZ_CHECK(sse_parser_feed(&pa, "data: x\n\n", 9, on_event, &a) ==
			   SG_ERR_CLIENT_GONE);

	if (sse_answer_complete(&a.ans))
		check_replay(&a.ans, (seed & 1) != 0);
	else {
		/* an incomplete answer still renders (or fails cleanly) */
		char *json = sse_answer_render(&a.ans);
		free(json);
	}

	/* C: a tiny event cap must refuse, never overflow */
	struct run c;
	run_init(&c, 16, false);
	struct sse_parser pc;
	sse_parser_init(&pc, 32);
	enum sg_err rc = sse_parser_feed(&pc, s, n, on_event, &c);
	FUZZ_CHECK(rc == SG_OK || rc == SG_ERR_TOO_LARGE);
	FUZZ_CHECK(pc.pending.len <= 32);

	sse_parser_finish(&pa);
	sse_parser_finish(&pb);
	sse_parser_finish(&pc);
	run_finish(&a);
	run_finish(&b);
	run_finish(&c);
	return 0;
}
