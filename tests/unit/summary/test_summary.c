/* Unit tests for the pure parts of the summarizer: the transcript a
 * summary call sends, its request body, reading the answer (trimmed, cut
 * at a UTF-8 boundary, refused when empty) and the system message the chat
 * route sends ahead of the window. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "semgate/summary/summary.h"
#include "sg_test.h"

static char *transcript_cap(const char *prev, const char *const *msgs, size_t n, size_t cap,
			    size_t *used)
{
	size_t lens[8];
	for (size_t i = 0; i < n; i++)
		lens[i] = strlen(msgs[i]);
	return summary_transcript(prev, prev ? strlen(prev) : 0, msgs, lens, n, cap, used);
}

static char *transcript(const char *prev, const char *const *msgs, size_t n)
{
	size_t used = 0;
	char *t = transcript_cap(prev, msgs, n, 1 << 20, &used);
	CHECK_INT(used, n);
	return t;
}

static void test_transcript_without_and_with_a_summary(void)
{
	const char *msgs[] = {
		"{\"role\":\"user\",\"content\":\"What is 2+2?\"}",
		"{\"role\":\"assistant\",\"content\":\"4\"}",
	};
	char *t = transcript(NULL, msgs, 2);
	CHECK_STR(t, "There is no summary yet.\n\nMessages to fold into it, oldest first:\n"
		     "<messages>\n[user] What is 2+2?\n[assistant] 4\n</messages>");
	free(t);
	t = transcript("The user likes tea.", msgs, 1);
	CHECK_STR(t, "The summary so far:\n<summary>\nThe user likes tea.\n</summary>\n\n"
		     "Messages to fold into it, oldest first:\n<messages>\n[user] What is 2+2?\n"
		     "</messages>");
	free(t);
	/* an empty previous summary is no summary */
	t = transcript("", msgs, 0);
	CHECK_STR(t, "There is no summary yet.\n\nMessages to fold into it, oldest first:\n"
		     "<messages>\n</messages>");
	free(t);
}

static void test_transcript_content_kinds(void)
{
	const char *msgs[] = {
		"{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"look\"},"
		"{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}},{\"type\":\"text\",\"text\":\"here\"}]}",
		"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\"}]}",
		"not json",
		"{\"content\":\"no role\"}",
	};
	char *t = transcript(NULL, msgs, 4);
	CHECK(t && strstr(t, "[user] look [image_url] here\n"));
	CHECK(t && strstr(t, "[assistant] (tool calls: [{\"id\":\"c1\"}])\n"));
	CHECK(t && strstr(t, "[unknown] no role\n"));
	CHECK(t && !strstr(t, "not json"));
	free(t);
}

static void test_transcript_byte_budget(void)
{
	/* "[user] aaaaaaaaaa\n" is 18 bytes */
	const char *msgs[] = {
		"{\"role\":\"user\",\"content\":\"aaaaaaaaaa\"}",
		"{\"role\":\"user\",\"content\":\"bbbbbbbbbb\"}",
		"{\"role\":\"user\",\"content\":\"cccccccccc\"}",
	};
	size_t used = 0;
	char *t = transcript_cap("a long summary that does not count", msgs, 3, 40, &used);
	CHECK_INT(used, 2);
	CHECK(t && strstr(t, "bbbbbbbbbb\n</messages>"));
	free(t);
	t = transcript_cap(NULL, msgs, 3, 36, &used);
	CHECK_INT(used, 2);
	free(t);
	t = transcript_cap(NULL, msgs, 3, 35, &used);
	CHECK_INT(used, 1);
	free(t);
	/* one huge message is cut (at a UTF-8 boundary), never skipped */
	const char *big[] = { "{\"role\":\"user\",\"content\":\"\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\"}" };
	t = transcript_cap(NULL, big, 1, 19, &used);  /* half: 9 = "[user] " + one é */
	CHECK_INT(used, 1);
	CHECK(t && strstr(t, "<messages>\n[user] \xc3\xa9 [...]\n</messages>"));
	free(t);
	/* something that is not a message is covered, as nothing */
	const char *odd[] = { "not json", msgs[0] };
	t = transcript_cap(NULL, odd, 2, 1000, &used);
	CHECK_INT(used, 2);
	free(t);
}

static void test_request_body(void)
{
	char *b = summary_request_body("m-1", 300, "PROMPT", "T");
	cJSON *o = cJSON_Parse(b);
	CHECK(o != NULL);
	CHECK_STR(cJSON_GetObjectItem(o, "model")->valuestring, "m-1");
	CHECK_INT(cJSON_GetObjectItem(o, "max_tokens")->valuedouble, 300);
	cJSON *msgs = cJSON_GetObjectItem(o, "messages");
	CHECK_INT(cJSON_GetArraySize(msgs), 2);
	CHECK_STR(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 0), "role")->valuestring, "system");
	CHECK_STR(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 0), "content")->valuestring, "PROMPT");
	CHECK_STR(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 1), "role")->valuestring, "user");
	CHECK_STR(cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 1), "content")->valuestring, "T");
	CHECK(cJSON_GetObjectItem(o, "stream") == NULL);
	cJSON_Delete(o);
	free(b);
	b = summary_request_body("m", 0, "P", "T");
	o = cJSON_Parse(b);
	CHECK(o && cJSON_GetObjectItem(o, "max_tokens") == NULL);
	cJSON_Delete(o);
	free(b);
}

static enum sg_err parse(const char *body, size_t max, char **text, size_t *len, bool *cut)
{
	struct sg_error e = { 0 };
	return summary_parse_answer(body, strlen(body), max, text, len, cut, &e);
}

static void test_parse_answer(void)
{
	char *t = NULL;
	size_t n = 0;
	bool cut = true;
	CHECK_INT(parse("{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":"
			"\"  The user asked.\\n\"}}]}", 100, &t, &n, &cut), SG_OK);
	CHECK_STR(t, "The user asked.");
	CHECK_INT(n, 15);
	CHECK(!cut);
	free(t);
	/* cut to the byte bound, never inside a UTF-8 sequence */
	CHECK_INT(parse("{\"choices\":[{\"message\":{\"content\":\"ab\xc3\xa9z\"}}]}", 3, &t, &n,
			&cut), SG_OK);
	CHECK_STR(t, "ab");
	CHECK(cut);
	free(t);
	CHECK_INT(parse("{\"choices\":[{\"message\":{\"content\":\"ab\xc3\xa9z\"}}]}", 4, &t, &n,
			&cut), SG_OK);
	CHECK_STR(t, "ab\xc3\xa9");
	free(t);
	const char *bad[] = {
		"", "[]", "{}", "{\"choices\":[]}",
		"{\"choices\":[{\"message\":{\"content\":null}}]}",
		"{\"choices\":[{\"message\":{\"content\":\"  \\n \"}}]}",
		"{\"choices\":[{\"message\":{\"content\":5}}]}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		t = (char *)"x";
		CHECK_INT(parse(bad[i], 100, &t, &n, &cut), SG_ERR_UPSTREAM);
		CHECK(t == NULL);
	}
}

static void test_context_text(void)
{
	char *t = summary_context_text("S", 1, 50);
	CHECK_STR(t, "Summary of the earlier part of this conversation (50 messages no longer "
		     "shown):\nS");
	free(t);
}

static void test_kick_and_stats_accept_null(void)
{
	struct summarizer_stats st;
	summarizer_kick(NULL, "t", "c");
	summarizer_get_stats(NULL, &st);
	CHECK_INT(st.written, 0);
	CHECK_INT(st.backlog, 0);
	summarizer_stop(NULL);
}

int main(void)
{
	RUN(test_transcript_without_and_with_a_summary);
	RUN(test_transcript_content_kinds);
	RUN(test_transcript_byte_budget);
	RUN(test_request_body);
	RUN(test_parse_answer);
	RUN(test_context_text);
	RUN(test_kick_and_stats_accept_null);
	return TEST_DONE();
}
