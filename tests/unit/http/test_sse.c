/* Unit tests for the SSE parser, the stream assembler and hit replay. */
#include <stdlib.h>
#include <string.h>

#include "semgate/core/json.h"
#include "semgate/http/sse.h"
#include "sg_test.h"

struct events {
	int n;
	char data[16][512];
	char raw[16][512];
};

static int collect(void *ud, const char *raw, size_t raw_len, const char *data, size_t len)
{
	struct events *ev = ud;
	if (ev->n < 16) {
		snprintf(ev->data[ev->n], sizeof(ev->data[0]), "%.*s", (int)len, data);
		snprintf(ev->raw[ev->n], sizeof(ev->raw[0]), "%.*s", (int)raw_len, raw);
	}
	ev->n++;
	return 0;
}

static const char stream[] =
	"data: {\"id\":\"c1\",\"model\":\"m\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
	": keep-alive comment\n\n"
	"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"}}]}\r\n\r\n"
	"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w\xc3\xb6rld\"}}]}\n\n"
	"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
	"data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"total_tokens\":7}}\n\n"
	"data: [DONE]\n\n";

static void test_parser_gives_the_same_events_for_any_split(void)
{
	size_t n = strlen(stream);
	for (size_t step = 1; step <= n; step += (step < 8 ? 1 : 37)) {
		struct sse_parser p;
		struct events ev = { 0 };
		sse_parser_init(&p, 4096);
		for (size_t off = 0; off < n; off += step) {
			size_t len = off + step > n ? n - off : step;
			CHECK_INT(sse_parser_feed(&p, stream + off, len, collect, &ev), SG_OK);
		}
		CHECK_INT(ev.n, 6); /* the comment-only event carries no data */
		CHECK_STR(ev.data[5], "[DONE]");
		CHECK(strstr(ev.data[1], "Hello ") != NULL);
		CHECK(strncmp(ev.raw[1], "data: {", 7) == 0);
		CHECK(ev.raw[1][strlen(ev.raw[1]) - 1] == '}');
		sse_parser_finish(&p);
	}
}

static void test_multi_line_data_is_joined(void)
{
	struct sse_parser p;
	struct events ev = { 0 };
	sse_parser_init(&p, 4096);
	const char *s = "data: a\ndata:b\nevent: x\n\n";
	CHECK_INT(sse_parser_feed(&p, s, strlen(s), collect, &ev), SG_OK);
	CHECK_INT(ev.n, 1);
	CHECK_STR(ev.data[0], "a\nb");
	sse_parser_finish(&p);
}

static void test_oversized_event_is_refused(void)
{
	struct sse_parser p;
	struct events ev = { 0 };
	sse_parser_init(&p, 64);
	char big[200];
	memset(big, 'x', sizeof(big));
	CHECK_INT(sse_parser_feed(&p, big, sizeof(big), collect, &ev), SG_ERR_TOO_LARGE);
	sse_parser_finish(&p);
}

static int feed_answer(void *ud, const char *raw, size_t raw_len, const char *data, size_t len)
{
	(void)raw;
	(void)raw_len;
	sse_answer_feed(ud, data, len);
	return 0;
}

static void test_assembler_rebuilds_the_completion(void)
{
	struct sse_parser p;
	struct sse_answer a;
	sse_parser_init(&p, 4096);
	sse_answer_init(&a, 4096);
	CHECK_INT(sse_parser_feed(&p, stream, strlen(stream), feed_answer, &a), SG_OK);
	CHECK(sse_answer_complete(&a));
	CHECK_STR(a.content.data, "Hello w\xc3\xb6rld");
	CHECK_STR(a.finish_reason, "stop");
	CHECK_STR(a.model, "m");
	char *json = sse_answer_render(&a);
	cJSON *doc = NULL;
	CHECK_INT(sg_json_parse(json, strlen(json), &doc, NULL), SG_OK);
	const cJSON *msg = sg_json_obj(cJSON_GetArrayItem(sg_json_arr(doc, "choices"), 0), "message");
	CHECK_STR(sg_json_str(msg, "content"), "Hello w\xc3\xb6rld");
	CHECK(sg_json_obj(doc, "usage") != NULL);
	cJSON_Delete(doc);
	free(json);
	sse_answer_finish(&a);
	sse_parser_finish(&p);
}

static void test_incomplete_or_tool_streams_are_not_complete(void)
{
	struct sse_answer a;
	sse_answer_init(&a, 4096);
	const char *e1 = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}";
	sse_answer_feed(&a, e1, strlen(e1));
	CHECK(!sse_answer_complete(&a)); /* no finish, no [DONE] */
	const char *e2 = "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{}]},\"finish_reason\":\"stop\"}]}";
	sse_answer_feed(&a, e2, strlen(e2));
	sse_answer_feed(&a, "[DONE]", 6);
	CHECK(!sse_answer_complete(&a));
	sse_answer_finish(&a);
	sse_answer_init(&a, 4096);
	sse_answer_feed(&a, "not json", 8);
	CHECK(a.bad_event);
	sse_answer_finish(&a);
}

static void test_replay_round_trips_through_the_assembler(void)
{
	const char *comp = "{\"id\":\"x\",\"model\":\"m1\",\"choices\":[{\"index\":0,\"message\":"
		"{\"role\":\"assistant\",\"content\":\"A fairly long answer that needs several "
		"chunks to be sent, with \xc3\xa9\xc3\xa9\xc3\xa9 accents.\"},\"finish_reason\":\"stop\"}],"
		"\"usage\":{\"total_tokens\":12}}";
	cJSON *doc = NULL;
	CHECK_INT(sg_json_parse(comp, strlen(comp), &doc, NULL), SG_OK);
	struct sg_buf out;
	sg_buf_init(&out, 0);
	CHECK_INT(sse_replay(doc, "chatcmpl-new", 99, true, &out), SG_OK);
	struct sse_parser p;
	struct sse_answer a;
	sse_parser_init(&p, 1 << 16);
	sse_answer_init(&a, 1 << 16);
	CHECK_INT(sse_parser_feed(&p, out.data, out.len, feed_answer, &a), SG_OK);
	CHECK(sse_answer_complete(&a));
	CHECK_STR(a.content.data, sg_json_str(sg_json_obj(cJSON_GetArrayItem(
		sg_json_arr(doc, "choices"), 0), "message"), "content"));
	CHECK_STR(a.id, "chatcmpl-new");
	CHECK(a.usage != NULL);
	/* several content chunks */
	int chunks = 0;
	for (const char *q = out.data; (q = strstr(q, "\"content\":")); q++)
		chunks++;
	CHECK(chunks >= 3);
	sse_answer_finish(&a);
	sse_parser_finish(&p);
	sg_buf_finish(&out);
	cJSON_Delete(doc);
}

/* What sse_client_event makes of one event given as its raw bytes. */
static const char *client_event(const char *raw, bool strip, struct sg_buf *out)
{
	struct sse_parser p;
	struct events ev = { 0 };
	struct sse_answer a;
	char framed[1024];
	snprintf(framed, sizeof(framed), "%s\n\n", raw);
	sse_parser_init(&p, 4096);
	sse_parser_feed(&p, framed, strlen(framed), collect, &ev);
	sse_parser_finish(&p);
	sse_answer_init(&a, 4096);
	enum sse_event_kind kind = sse_answer_feed(&a, ev.data[0], strlen(ev.data[0]));
	sse_answer_finish(&a);
	sg_buf_reset(out);
	CHECK_INT(sse_client_event(ev.raw[0], strlen(ev.raw[0]), ev.data[0], strlen(ev.data[0]),
				   kind, strip, out), SG_OK);
	return out->data ? out->data : "";
}

static void test_client_event_strips_usage_the_client_did_not_ask_for(void)
{
	struct sg_buf out;
	sg_buf_init(&out, 0);
	const char *chunk = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":null}";
	const char *usage = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"total_tokens\":7}}";
	const char *last = "data:{\"usage\":{\"total_tokens\":7},\"choices\":[{\"index\":0,"
		"\"delta\":{},\"finish_reason\":\"stop\"}]}";
	/* a client that asked (or a stream the gateway did not touch) gets every byte */
	CHECK_STR(client_event(chunk, false, &out), "data: {\"id\":\"c\",\"choices\":[{\"index\":0,"
		  "\"delta\":{}}],\"usage\":null}\n\n");
	CHECK_STR(client_event(usage, false, &out), "data: {\"id\":\"c\",\"choices\":[],"
		  "\"usage\":{\"total_tokens\":7}}\n\n");
	/* one that did not: no usage member, no usage-only chunk */
	CHECK_STR(client_event(chunk, true, &out),
		  "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{}}]}\n\n");
	CHECK_STR(client_event(usage, true, &out), "");
	CHECK_STR(client_event(last, true, &out), "data:{\"choices\":[{\"index\":0,\"delta\":{},"
		  "\"finish_reason\":\"stop\"}]}\n\n");
	/* [DONE], bad JSON, and events of several lines go as they came */
	CHECK_STR(client_event("data: [DONE]", true, &out), "data: [DONE]\n\n");
	CHECK_STR(client_event("data: {\"usage\":", true, &out), "data: {\"usage\":\n\n");
	CHECK_STR(client_event("event: x\ndata: {\"choices\":[{}],\"usage\":null}", true, &out),
		  "event: x\ndata: {\"choices\":[{}],\"usage\":null}\n\n");
	sg_buf_finish(&out);
}

int main(void)
{
	RUN(test_parser_gives_the_same_events_for_any_split);
	RUN(test_multi_line_data_is_joined);
	RUN(test_oversized_event_is_refused);
	RUN(test_assembler_rebuilds_the_completion);
	RUN(test_incomplete_or_tool_streams_are_not_complete);
	RUN(test_replay_round_trips_through_the_assembler);
	RUN(test_client_event_strips_usage_the_client_did_not_ask_for);
	return TEST_DONE();
}
