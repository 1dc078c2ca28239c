/* Hit verification rules (see include/semgate/cache/verify.h). Pure text
 * logic over the two questions; it must never do I/O or keep state. */
#include <string.h>
#include <strings.h>

#include "semgate/cache/verify.h"

#define NUM_MAX 32   /* numbers compared per question; more: not judged */
#define NUM_LEN 32   /* longest number token kept */

struct numbers {
	char tok[NUM_MAX][NUM_LEN + 1];
	int n;
	bool overflow;
};

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* Every maximal run of digits, with '.' or ',' between digits kept except
 * thousands commas (1,000 == 1000) and leading zeros dropped ("08" == "8"). */
static void collect_numbers(const char *s, size_t len, struct numbers *out)
{
	out->n = 0;
	out->overflow = false;
	size_t i = 0;
	while (i < len) {
		if (!is_digit((unsigned char)s[i])) {
			i++;
			continue;
		}
		char buf[NUM_LEN + 1];
		size_t b = 0;
		bool lead = true;
		while (i < len) {
			unsigned char c = (unsigned char)s[i];
			if (is_digit(c)) {
				if (!(lead && c == '0' && i + 1 < len && is_digit((unsigned char)s[i + 1]))) {
					if (b < NUM_LEN)
						buf[b++] = (char)c;
					lead = false;
				}
				i++;
			} else if ((c == '.' || c == ',') && i + 1 < len &&
			           is_digit((unsigned char)s[i + 1])) {
				if (c == '.' && b < NUM_LEN)
					buf[b++] = '.';
				i++;
			} else {
				break;
			}
		}
		if (b == 0)
			buf[b++] = '0';
		buf[b] = '\0';
		if (out->n == NUM_MAX) {
			out->overflow = true;
			return;
		}
		memcpy(out->tok[out->n++], buf, b + 1);
	}
}

/* Same numbers on both sides, as multisets. */
static bool same_numbers(const struct numbers *a, const struct numbers *b)
{
	if (a->n != b->n)
		return false;
	bool used[NUM_MAX] = {false};
	for (int i = 0; i < a->n; i++) {
		int j;
		for (j = 0; j < b->n; j++)
			if (!used[j] && strcmp(a->tok[i], b->tok[j]) == 0)
				break;
		if (j == b->n)
			return false;
		used[j] = true;
	}
	return true;
}

static enum verify_reason rule_numbers(const char *q, size_t ql, const char *s, size_t sl)
{
	struct numbers a, b;
	collect_numbers(q, ql, &a);
	collect_numbers(s, sl, &b);
	if (a.overflow || b.overflow)
		return SG_VERIFY_PASS; /* too many to judge */
	return same_numbers(&a, &b) ? SG_VERIFY_PASS : SG_VERIFY_NUMBER;
}

const char *verify_reason_name(enum verify_reason r)
{
	switch (r) {
	case SG_VERIFY_PASS: return "pass";
	case SG_VERIFY_NUMBER: return "number";
	case SG_VERIFY_ENTITY: return "entity";
	case SG_VERIFY_NEGATION: return "negation";
	case SG_VERIFY_ORDER: return "order";
	case SG_VERIFY_OPPOSITE: return "opposite";
	case SG_VERIFY_CONTENT: return "content";
	case SG_VERIFY_FEEDBACK: return "feedback";
	case SG_VERIFY_REASON_COUNT: break;
	}
	return "unknown";
}

const char *verify_mode_name(enum verify_mode m)
{
	switch (m) {
	case SG_VERIFY_OFF: return "off";
	case SG_VERIFY_BASIC: return "basic";
	case SG_VERIFY_STRICT: return "strict";
	}
	return "unknown";
}

bool verify_mode_parse(const char *s, size_t len, enum verify_mode *out)
{
	static const enum verify_mode modes[] = {SG_VERIFY_OFF, SG_VERIFY_BASIC, SG_VERIFY_STRICT};
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
		const char *name = verify_mode_name(modes[i]);
		if (strlen(name) == len && strncasecmp(s, name, len) == 0) {
			*out = modes[i];
			return true;
		}
	}
	return false;
}

enum verify_reason verify_pair(enum verify_mode mode, const char *query, size_t qlen,
                               const char *stored, size_t slen)
{
	if (mode == SG_VERIFY_OFF)
		return SG_VERIFY_PASS;
	return rule_numbers(query, qlen, stored, slen);
}
