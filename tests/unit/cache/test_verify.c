/* Unit tests for the hit verifier (cache/verify.h): one table of question
 * pairs per rule, each with the verdict in basic and strict mode, then the
 * modes, names, parsing and hostile input. Every sentence here was written
 * for this test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/cache/verify.h"
#include "sg_test.h"

#define PASS SG_VERIFY_PASS
#define NUMBER SG_VERIFY_NUMBER
#define ENTITY SG_VERIFY_ENTITY
#define NEGATION SG_VERIFY_NEGATION
#define ORDER SG_VERIFY_ORDER
#define OPPOSITE SG_VERIFY_OPPOSITE
#define CONTENT SG_VERIFY_CONTENT

struct vcase {
	const char *query, *stored;
	enum verify_reason basic, strict;
};

static void check_table(const char *name, const struct vcase *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct vcase *c = &t[i];
		enum verify_reason b = verify_pair(SG_VERIFY_BASIC, c->query, strlen(c->query),
		                                   c->stored, strlen(c->stored));
		enum verify_reason s = verify_pair(SG_VERIFY_STRICT, c->query, strlen(c->query),
		                                   c->stored, strlen(c->stored));
		if (b != c->basic || s != c->strict)
			printf("# %s[%zu] \"%s\" / \"%s\": basic %s (want %s), strict %s (want %s)\n",
			       name, i, c->query, c->stored, verify_reason_name(b),
			       verify_reason_name(c->basic), verify_reason_name(s),
			       verify_reason_name(c->strict));
		CHECK_INT(b, c->basic);
		CHECK_INT(s, c->strict);
		/* every rule is symmetric: swapping the sides gives the same verdict */
		CHECK_INT(verify_pair(SG_VERIFY_STRICT, c->stored, strlen(c->stored), c->query,
		                      strlen(c->query)),
		          c->strict);
	}
}

#define TABLE(t) check_table(#t, t, sizeof(t) / sizeof(t[0]))

static void test_same_question_reworded_passes(void)
{
	static const struct vcase t[] = {
		{ "What is the capital of France?", "what is the capital of france", PASS, PASS },
		{ "How do I reset my router password?", "How can I reset my router's password?", PASS, PASS },
		{ "Which laptops are good for programming?", "Which laptop is good for programming?", PASS, PASS },
		{ "What is the relation between tides and the moon?",
		  "What is the relationship between the tides and the moon?", PASS, PASS },
		{ "How do I learn Rust quickly?", "How do I learn rust quickly", PASS, PASS },
		{ "What are the actual causes of inflation?", "What are the causes of inflation?", PASS, PASS },
		{ "Is it safe to swim after eating? Why or why not?", "Is it safe to swim after eating?", PASS, PASS },
		{ "What Is The Best Way To Store Coffee Beans?", "what is the best way to store coffee beans",
		  PASS, PASS },
		{ "How do I install the NVIDIA driver on Debian?",
		  "How can I install the nvidia driver on debian?", PASS, PASS },
		{ "", "", PASS, PASS },
	};
	TABLE(t);
}

static void test_numbers_dates_amounts_and_versions(void)
{
	static const struct vcase t[] = {
		{ "What happened on June 3, 2019?", "What happened on June 4, 2019?", NUMBER, NUMBER },
		{ "Is 1,000 dollars enough for a week in Oslo?", "Is 1000 dollars enough for a week in Oslo?",
		  PASS, PASS },
		{ "Is $500 enough for a week in Oslo?", "Is $50 enough for a week in Oslo?", NUMBER, NUMBER },
		{ "What changed in Python 3.11?", "What changed in Python 3.12?", NUMBER, NUMBER },
		{ "What changed in Python 3.11?", "What changed in Python 3.11?", PASS, PASS },
		{ "Is the 08:30 train late?", "Is the 8:30 train late?", PASS, PASS },
		{ "How many moons does Mars have?", "How many moons does Mars have in 2024?", NUMBER, NUMBER },
	};
	TABLE(t);
}

static void test_names_acronyms_identifiers_and_quotes(void)
{
	static const struct vcase t[] = {
		{ "What did the Carter administration do about oil?",
		  "What did the Nixon administration do about oil?", PASS, ENTITY },
		{ "How do taxes in Portugal compare to those of Spain?",
		  "How do taxes in Portugal compare to those of Italy?", PASS, ENTITY },
		{ "What is the share price of ACME?", "What is the share price of ACMF?", PASS, ENTITY },
		{ "How do I join paths with os.path.join?", "How do I join paths with os.path.split?", PASS,
		  ENTITY },
		{ "How do I parse JSON in C#?", "How do I parse JSON in C?", PASS, ENTITY },
		{ "What does \"carpe diem\" mean?", "What does \"carpe noctem\" mean?", PASS, ENTITY },
		{ "What does \"carpe diem\" mean?", "What does carpe diem mean?", PASS, PASS },
		{ "Is a B.Sc worth it in Canada?", "Is a M.Sc worth it in Canada?", PASS, ENTITY },
		{ "How strong is the USA navy?", "How strong is the United States of America navy?", PASS,
		  PASS },
		{ "Why is Canada so cold?", "Why is canadian weather so cold?", PASS, CONTENT },
		{ "What is the difference between 茶 and coffee in taste?",
		  "What is the difference between tea and coffee in taste?", PASS, ENTITY },
	};
	TABLE(t);
}

static void test_negation_on_one_side(void)
{
	static const struct vcase t[] = {
		{ "Why can't I sleep at night?", "Why can I sleep at night?", NEGATION, NEGATION },
		{ "Why do cats not like water?", "Why do cats like water?", NEGATION, NEGATION },
		{ "Is it safe to fly without a passport?", "Is it safe to fly with a passport?", NEGATION,
		  NEGATION },
		{ "Why don't birds fall while sleeping?", "Why do not birds fall while sleeping?", PASS, PASS },
		{ "Should I learn Go, yes or no?", "Should I learn Go?", PASS, PASS },
		{ "Why doesn\xE2\x80\x99t my phone charge?", "Why does my phone charge?", NEGATION, NEGATION },
	};
	TABLE(t);
}

static void test_roles_in_swapped_order(void)
{
	static const struct vcase t[] = {
		{ "Did Brazil beat Germany in the final?", "Did Germany beat Brazil in the final?", PASS, ORDER },
		{ "How long is the flight from Lima to Quito?", "How long is the flight from Quito to Lima?",
		  PASS, ORDER },
		{ "How do I convert celsius to kelvin?", "How do I convert kelvin to celsius?", PASS, ORDER },
		{ "Is tea healthier than coffee?", "Is coffee healthier than tea?", PASS, ORDER },
		{ "When was the first time you flew and the last time you sailed?",
		  "When was the last time you flew and the first time you sailed?", PASS, ORDER },
		{ "Was the first movie better than the last one?", "Was the last movie better than the first one?",
		  PASS, ORDER },
		/* a list: order says nothing */
		{ "How do Peru and Chile differ?", "How do Chile and Peru differ?", PASS, PASS },
		{ "Where to travel in Japan in April?", "Where to travel in April in Japan?", PASS, PASS },
	};
	TABLE(t);
}

static void test_opposed_words(void)
{
	static const struct vcase t[] = {
		{ "What is the fastest way to lose weight?", "What is the slowest way to lose weight?",
		  OPPOSITE, OPPOSITE },
		{ "What should I eat before running?", "What should I eat after running?", OPPOSITE, OPPOSITE },
		{ "How do I increase my credit score?", "How do I decrease my credit score?", OPPOSITE,
		  OPPOSITE },
		{ "What are the advantages of remote work?", "What are the disadvantages of remote work?",
		  OPPOSITE, OPPOSITE },
		{ "What is the minimum wage in Texas?", "What is the maximum wage in Texas?", OPPOSITE,
		  OPPOSITE },
		{ "What is the best and worst part of the job?", "What is the worst and best part of the job?",
		  PASS, PASS },
	};
	TABLE(t);
}

static void test_content_words_and_question_kinds(void)
{
	static const struct vcase t[] = {
		{ "How do I cook rice in a microwave?", "How do I cook pasta in a microwave?", PASS, CONTENT },
		{ "Should the school day be longer?", "How can the school day be longer?", PASS, CONTENT },
		{ "Why is the sky blue?", "When is the sky blue?", PASS, CONTENT },
		{ "Where are you from?", "Where are you?", PASS, CONTENT },
		{ "What is a good name for a dog?", "What is a good name for a dog and a cat?", PASS, CONTENT },
	};
	TABLE(t);
}

static void test_modes_names_and_parsing(void)
{
	const char *a = "What happened in 1990?", *b = "What happened in 1991?";
	CHECK_INT(verify_pair(SG_VERIFY_OFF, a, strlen(a), b, strlen(b)), PASS);
	CHECK_INT(verify_pair(SG_VERIFY_BASIC, a, strlen(a), b, strlen(b)), NUMBER);
	static const char *const names[] = { "pass", "number", "entity", "negation", "order",
		                             "opposite", "content", "feedback" };
	for (int r = 0; r < SG_VERIFY_REASON_COUNT; r++)
		CHECK_STR(verify_reason_name((enum verify_reason)r), names[r]);
	enum verify_mode m = SG_VERIFY_OFF;
	CHECK(verify_mode_parse("Strict", 6, &m));
	CHECK_INT(m, SG_VERIFY_STRICT);
	CHECK(verify_mode_parse("basic", 5, &m));
	CHECK_INT(m, SG_VERIFY_BASIC);
	CHECK(verify_mode_parse("OFF", 3, &m));
	CHECK_INT(m, SG_VERIFY_OFF);
	m = SG_VERIFY_BASIC;
	CHECK(!verify_mode_parse("stricter", 8, &m));
	CHECK(!verify_mode_parse("", 0, &m));
	CHECK(!verify_mode_parse("strict", 5, &m)); /* length counts */
	CHECK(!verify_mode_parse(NULL, 0, &m));
	CHECK_INT(m, SG_VERIFY_BASIC);
	CHECK_STR(verify_mode_name(SG_VERIFY_STRICT), "strict");
}

/* Any bytes, any length: never a crash, and what cannot be judged passes. */
static void test_hostile_and_unjudgeable_input(void)
{
	/* not NUL-terminated: the buffer ends right after the text */
	char *q = malloc(5);
	memcpy(q, "why 1", 5);
	CHECK_INT(verify_pair(SG_VERIFY_STRICT, q, 5, "why 1", 5), PASS);
	free(q);
	CHECK_INT(verify_pair(SG_VERIFY_STRICT, NULL, 0, NULL, 0), PASS);
	/* another script throughout: nothing to judge, nothing rejected */
	const char *ja = "東京の天気はどうですか", *ja2 = "東京の天気は?";
	CHECK_INT(verify_pair(SG_VERIFY_STRICT, ja, strlen(ja), ja2, strlen(ja2)), PASS);
	/* long texts: past the word limit only numbers are judged */
	size_t n = 20000;
	char *big = malloc(n), *big2 = malloc(n);
	for (size_t i = 0; i < n; i++)
		big[i] = big2[i] = "ab cd ef "[i % 9];
	big2[n / 2] = 'Z';
	CHECK_INT(verify_pair(SG_VERIFY_STRICT, big, n, big2, n), PASS);
	/* every byte value, including NUL and invalid UTF-8 */
	unsigned char all[512];
	for (size_t i = 0; i < sizeof(all); i++)
		all[i] = (unsigned char)(i * 7 + 3);
	verify_pair(SG_VERIFY_STRICT, (const char *)all, sizeof(all), big, 300);
	verify_pair(SG_VERIFY_STRICT, "\"unclosed quote", 15, "\xE2\x80\x9C", 3);
	verify_pair(SG_VERIFY_STRICT, "''''", 4, "n't", 3);
	free(big);
	free(big2);
}

int main(void)
{
	RUN(test_same_question_reworded_passes);
	RUN(test_numbers_dates_amounts_and_versions);
	RUN(test_names_acronyms_identifiers_and_quotes);
	RUN(test_negation_on_one_side);
	RUN(test_roles_in_swapped_order);
	RUN(test_opposed_words);
	RUN(test_content_words_and_question_kinds);
	RUN(test_modes_names_and_parsing);
	RUN(test_hostile_and_unjudgeable_input);
	return TEST_DONE();
}
