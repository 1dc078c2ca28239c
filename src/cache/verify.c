/* Hit verification rules (see include/semgate/cache/verify.h and
 * docs/HIT-QUALITY.md). Pure text logic over the two questions: no I/O, no
 * allocation, no state. Each text is cut into words once (struct text);
 * every rule then reads both word lists. English only: words of other
 * scripts are kept for matching but never trigger a rule by themselves. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "semgate/cache/verify.h"

#define NUM_MAX 32    /* numbers compared per question; more: not judged */
#define NUM_LEN 32    /* longest number token kept */
#define WORDS_MAX 192 /* words per question; more: only numbers are judged */
#define LOW_MAX 31    /* bytes of a word's lowercase form kept */
#define QUOTES_MAX 8  /* quoted strings per question */

/* ---- numbers ---- */

struct numbers {
	char tok[NUM_MAX][NUM_LEN + 1];
	int n;
	bool overflow;
};

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static bool is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static bool is_lower(unsigned char c) { return c >= 'a' && c <= 'z'; }
static bool is_alpha(unsigned char c) { return is_upper(c) || is_lower(c); }

static void number_add(struct numbers *out, const char *tok, size_t len)
{
	if (out->n == NUM_MAX) {
		out->overflow = true;
		return;
	}
	memcpy(out->tok[out->n], tok, len);
	out->tok[out->n++][len] = '\0';
}

/* Every maximal run of digits, with '.' or ',' between digits kept except
 * thousands commas (1,000 == 1000) and leading zeros dropped ("08" == "8"). */
static void collect_numbers(const char *s, size_t len, struct numbers *out)
{
	size_t i = 0;
	while (i < len && !out->overflow) {
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
		number_add(out, buf, b);
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

/* ---- word lists ---- */

/* Words no rule treats as content, names or entities: function words and
 * the question words every query starts with. Sorted (bsearch). */
static const char *const stopwords[] = {
	"a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any",
	"anyone", "anything", "are", "as", "at", "be", "because", "been", "being", "between",
	"both", "but", "by", "can", "could", "did", "do", "does", "doing", "done", "each",
	"eg", "either", "else", "etc", "even", "ever", "every", "for", "from", "get", "gets",
	"getting", "got", "had", "has", "have", "having", "he", "her", "here", "hers", "him",
	"his", "how", "i", "ie", "if", "in", "into", "is", "it", "its", "itself", "just",
	"let", "like", "may", "me", "might", "mine", "much", "must", "my", "myself", "of",
	"off", "ok", "okay", "on", "one", "ones", "only", "or", "other", "others", "our",
	"ours", "out", "own", "per", "please", "quora", "really", "same", "shall", "she",
	"should", "so", "some", "someone", "something", "still", "such", "than", "that",
	"the", "their", "theirs", "them", "then", "there", "these", "they", "thing", "things",
	"this", "those", "though", "through", "thru", "to", "too", "u", "until", "upon", "us",
	"use", "used", "using", "very", "via", "was", "way", "ways", "we", "were", "what",
	"whats", "when", "where", "whether", "which", "while", "who", "whom", "whose", "why",
	"will", "with", "within", "would", "yes", "you", "your", "yours", "yourself",
};

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool in_list(const char *w, const char *const *list, size_t n)
{
	return bsearch(&w, list, n, sizeof(list[0]), cmp_str) != NULL;
}

#define IN_LIST(w, list) in_list(w, list, sizeof(list) / sizeof(list[0]))

/* Negation markers (contractions are matched by their "n't" ending). */
static const char *const negations[] = {
	"aint", "arent", "cannot", "cant", "couldnt", "didnt", "doesnt", "dont", "hadnt",
	"hasnt", "havent", "isnt", "neither", "never", "no", "nobody", "none", "nor",
	"not", "nothing", "nowhere", "shouldnt", "wasnt", "werent", "without", "wont",
	"wouldnt",
};

/* Modifiers that do not change what a question asks when one side adds
 * them ("the actual source of gravity" / "the source of gravity"). */
static const char *const soft[] = {
	"actual", "actually", "always", "basically", "certain", "common", "commonly",
	"currently", "different", "effective", "effectively", "especially", "exact",
	"exactly", "example", "examples", "general", "generally", "good", "great",
	"important", "kind", "kinds", "list", "lot", "lots", "main", "major", "mean",
	"meaning", "meant", "possible", "possibly", "simple", "simply", "specific",
	"sort", "sorts", "top", "type", "types", "usually", "various",
};

/* Irregular forms that name the same thing. */
static const char *const irregular[][2] = {
	{ "child", "children" }, { "foot", "feet" }, { "man", "men" }, { "mouse", "mice" },
	{ "person", "people" }, { "tooth", "teeth" }, { "woman", "women" },
};

/* Opposed word pairs: one side of a pair on one question and the other on
 * the other asks a different question. */
static const char *const opposites[][2] = {
	{ "above", "below" }, { "absolute", "relative" }, { "accept", "reject" },
	{ "add", "remove" }, { "advantage", "disadvantage" }, { "advantages", "disadvantages" },
	{ "after", "before" }, { "agree", "disagree" }, { "allow", "deny" },
	{ "ancient", "modern" }, { "ascending", "descending" }, { "asc", "desc" },
	{ "best", "worst" }, { "better", "worse" }, { "big", "small" },
	{ "bigger", "smaller" }, { "biggest", "smallest" }, { "borrow", "lend" },
	{ "bottom", "top" }, { "buy", "sell" }, { "buying", "selling" },
	{ "cheap", "expensive" }, { "cheapest", "costliest" }, { "client", "server" },
	{ "cold", "hot" }, { "compress", "decompress" }, { "dark", "light" },
	{ "day", "night" }, { "decrease", "increase" }, { "decreasing", "increasing" },
	{ "decrypt", "encrypt" }, { "deposit", "withdraw" }, { "disable", "enable" },
	{ "download", "upload" }, { "dry", "wet" }, { "earliest", "latest" },
	{ "early", "late" }, { "east", "west" }, { "easiest", "hardest" },
	{ "easy", "hard" }, { "end", "start" }, { "exclude", "include" },
	{ "export", "import" }, { "failure", "success" }, { "false", "true" },
	{ "fast", "slow" }, { "faster", "slower" }, { "fastest", "slowest" },
	{ "father", "mother" }, { "female", "male" }, { "first", "last" },
	{ "gain", "loss" }, { "girl", "boy" }, { "girls", "boys" }, { "good", "bad" },
	{ "happy", "sad" }, { "hate", "love" }, { "heavy", "light" }, { "high", "low" },
	{ "higher", "lower" }, { "highest", "lowest" }, { "husband", "wife" },
	{ "illegal", "legal" }, { "inner", "outer" }, { "input", "output" },
	{ "inside", "outside" }, { "larger", "smaller" }, { "largest", "smallest" },
	{ "least", "most" }, { "left", "right" }, { "less", "more" }, { "lose", "win" },
	{ "loser", "winner" }, { "max", "min" }, { "maximum", "minimum" },
	{ "maximize", "minimize" }, { "men", "women" }, { "man", "woman" },
	{ "negative", "positive" }, { "new", "old" }, { "north", "south" },
	{ "older", "younger" }, { "oldest", "youngest" }, { "past", "future" },
	{ "poor", "rich" }, { "poorest", "richest" }, { "previous", "next" },
	{ "private", "public" }, { "profit", "loss" }, { "pros", "cons" },
	{ "pull", "push" }, { "receive", "send" }, { "rise", "fall" },
	{ "shortest", "longest" }, { "short", "long" }, { "stop", "start" },
	{ "strong", "weak" }, { "strongest", "weakest" }, { "summer", "winter" },
	{ "teach", "learn" }, { "under", "over" }, { "upper", "lower" },
	{ "weakness", "strength" }, { "weaknesses", "strengths" },
};

/* Word ids of a question's word: flags from its spelling. */
enum {
	W_ASCII = 1 << 0, /* ASCII letters only */
	W_CAP = 1 << 1,   /* starts with an upper-case ASCII letter */
	W_ACRO = 1 << 2,  /* two or more upper-case letters: "LIC", "iOS" */
	W_DIGIT = 1 << 3, /* holds a digit */
	W_START = 1 << 4, /* first word of a sentence */
	W_STOP = 1 << 5,  /* a stopword */
	W_CODE = 1 << 6,  /* part of a code identifier (snake_case, a.b, f()) */
	W_NEG = 1 << 7,   /* a negation marker */
	W_LONG = 1 << 8,  /* longer than LOW_MAX: compared by its prefix */
	W_NUM = 1 << 9,   /* digits only: the number rule's business */
};

struct word {
	char low[LOW_MAX + 1]; /* lowercase, apostrophes dropped */
	uint16_t flags;
	uint8_t len;           /* strlen(low) */
	uint8_t gap;           /* what precedes it: 0 space, 1 "," or "&", 2 "." etc. */
};

struct quote {
	const char *p;
	size_t len;
};

struct text {
	struct word w[WORDS_MAX];
	int n;
	bool overflow;
	bool english; /* mostly ASCII words: other scripts are quoted names */
	bool titled;  /* most words capitalised: capitals say nothing */
	bool shouted; /* most words in capitals: acronyms say nothing */
	struct quote q[QUOTES_MAX];
	int nq;
	const char *s; /* the text itself */
	size_t len;
};

static bool word_byte(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || c >= 0x80;
}

/* Is s[i] the start of a character of General Punctuation (U+2000..U+206F:
 * curly quotes, dashes, ellipsis), which separates words? */
static bool punct_at(const char *s, size_t i, size_t len)
{
	return i + 2 < len && (unsigned char)s[i] == 0xE2 &&
	       ((unsigned char)s[i + 1] == 0x80 || (unsigned char)s[i + 1] == 0x81);
}

/* An apostrophe inside a word: ' or U+2019 (E2 80 99). Returns its length. */
static size_t apostrophe(const char *s, size_t i, size_t len)
{
	if (s[i] == '\'')
		return 1;
	if (i + 2 < len && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x80 &&
	    (unsigned char)s[i + 2] == 0x99)
		return 3;
	return 0;
}

/* Is the non-word run s[a..b) glue inside a code identifier, as in
 * "os.path", "my_var", "std::vector", "f()" ? */
static bool code_glue(const char *s, size_t a, size_t b)
{
	if (b - a == 0)
		return false;
	for (size_t i = a; i < b; i++)
		if (!strchr("_.:#/>-", s[i]))
			return false;
	return !(b - a == 1 && (s[a] == '.' || s[a] == '-' || s[a] == '/'));
}

static void add_quote(struct text *t, const char *p, size_t len)
{
	while (len && (*p == ' ' || *p == '"'))
		p++, len--;
	while (len && (p[len - 1] == ' ' || p[len - 1] == '"'))
		len--;
	if (len && t->nq < QUOTES_MAX)
		t->q[t->nq++] = (struct quote){ p, len };
}

/* Quoted strings: between straight double quotes, backticks or curly
 * double quotes (U+201C/U+201D). */
static void collect_quotes(struct text *t, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		const char *close = NULL;
		size_t open = 0;
		if (s[i] == '"' || s[i] == '`') {
			close = s[i] == '"' ? "\"" : "`";
			open = 1;
		} else if (i + 2 < len && (unsigned char)s[i] == 0xE2 &&
		           (unsigned char)s[i + 1] == 0x80 && (unsigned char)s[i + 2] == 0x9C) {
			close = "\xE2\x80\x9D";
			open = 3;
		}
		if (!close)
			continue;
		size_t cl = strlen(close), j = i + open;
		while (j + cl <= len && memcmp(s + j, close, cl) != 0)
			j++;
		if (j + cl > len)
			return;
		add_quote(t, s + i + open, j - i - open);
		i = j + cl - 1;
	}
}

static void tokenize(const char *s, size_t len, struct text *t)
{
	t->s = s;
	t->len = len;
	t->n = 0;
	t->overflow = false;
	t->nq = 0;
	size_t i = 0, prev_end = 0;
	bool sentence = true;
	int caps = 0, shouts = 0, judged = 0;
	while (i < len) {
		if (punct_at(s, i, len)) {
			i += 3;
			continue;
		}
		if (!word_byte((unsigned char)s[i])) {
			if (strchr(".?!:;\n", s[i]) && !(i + 1 < len && word_byte((unsigned char)s[i + 1])))
				sentence = true;
			i++;
			continue;
		}
		if (t->n == WORDS_MAX) {
			t->overflow = true;
			return;
		}
		struct word *w = &t->w[t->n];
		memset(w, 0, sizeof(*w));
		bool code = t->n > 0 && code_glue(s, prev_end, i);
		if (code)
			t->w[t->n - 1].flags |= W_CODE;
		for (size_t k = prev_end; k < i; k++) {
			if (s[k] == ',' || s[k] == '&')
				w->gap = w->gap < 1 ? 1 : w->gap;
			else if (strchr(".?!:;()[]{}", s[k]) && !code)
				w->gap = 2;
		}
		int upper = 0, lower = 0, other = 0;
		size_t b = 0, start = i;
		bool first_upper = is_upper((unsigned char)s[i]), dotted = false;
		while (i < len) {
			unsigned char c = (unsigned char)s[i];
			size_t ap = apostrophe(s, i, len);
			if (ap && i > start && i + ap < len && is_alpha((unsigned char)s[i + ap])) {
				i += ap; /* don't -> dont, Obama's -> obamas */
			} else if (punct_at(s, i, len)) {
				break;
			} else if (word_byte(c)) {
				if (is_upper(c))
					upper++;
				else if (is_lower(c))
					lower++;
				else if (is_digit(c))
					w->flags |= W_DIGIT;
				else
					other++;
				if (b < LOW_MAX)
					w->low[b++] = (char)(is_upper(c) ? c + 32 : c);
				else
					w->flags |= W_LONG;
				i++;
			} else if (c == '.' && i > start && i + 1 < len && is_alpha((unsigned char)s[i + 1]) &&
			           !is_digit((unsigned char)s[i - 1])) {
				i++; /* "M.Com" -> "mcom", "U.S" -> "us", "os.path" */
				dotted = true;
			} else {
				break;
			}
		}
		/* "c#", "c++", "f#": the symbol is part of the name */
		size_t sym = i < len && s[i] == '#' ? 1 : i + 1 < len && s[i] == '+' && s[i + 1] == '+' ? 2 : 0;
		if (sym && b + sym <= LOW_MAX && (i + sym == len || !word_byte((unsigned char)s[i + sym]))) {
			memcpy(w->low + b, s + i, sym);
			b += sym;
			i += sym;
			code = true;
		}
		w->low[b] = '\0';
		w->len = (uint8_t)b;
		if (dotted && w->len > 2)
			code = true;
		if (code)
			w->flags |= W_CODE;
		if (other == 0 && !(w->flags & W_DIGIT))
			w->flags |= W_ASCII;
		if (upper == 0 && lower == 0 && other == 0)
			w->flags |= W_NUM;
		if (first_upper)
			w->flags |= W_CAP;
		if (upper >= 2 && upper > lower)
			w->flags |= W_ACRO;
		if (sentence)
			w->flags |= W_START;
		sentence = false;
		if (IN_LIST(w->low, stopwords))
			w->flags |= W_STOP;
		/* "obamas" from "Obama's": match by the name */
		if (w->len > 3 && s[i - 1] == 's' && i >= 2 + start &&
		    (s[i - 2] == '\'' || (unsigned char)s[i - 2] == 0x99)) {
			w->low[--w->len] = '\0';
		}
		size_t L = w->len;
		bool nt = L > 3 && strcmp(w->low + L - 2, "nt") == 0 &&
		          ((s[i - 2] == '\'' && s[i - 3] == 'n') ||
		           (i >= start + 5 && (unsigned char)s[i - 2] == 0x99 && s[i - 5] == 'n'));
		if (nt || IN_LIST(w->low, negations))
			w->flags |= W_NEG;
		if ((w->flags & W_ASCII) && !(w->flags & (W_START | W_STOP)) && w->len > 1) {
			judged++;
			caps += first_upper;
			shouts += upper == (int)w->len;
		}
		prev_end = i;
		t->n++;
	}
	int ascii = 0;
	for (int k = 0; k < t->n; k++)
		ascii += (t->w[k].flags & W_ASCII) != 0;
	t->english = ascii >= 3 && ascii * 4 >= t->n * 3;
	t->titled = judged >= 3 && caps * 5 >= judged * 3;
	t->shouted = judged >= 2 && shouts * 5 >= judged * 3;
	/* "why not", "or not", "not only": no negation of the question */
	for (int k = 0; k < t->n; k++) {
		if (!(t->w[k].flags & W_NEG))
			continue;
		const char *prev = k > 0 ? t->w[k - 1].low : "";
		const char *next = k + 1 < t->n ? t->w[k + 1].low : "";
		if (strcmp(t->w[k].low, "not") == 0 &&
		    (strcmp(prev, "why") == 0 || strcmp(prev, "or") == 0 || strcmp(next, "only") == 0))
			t->w[k].flags &= (uint16_t)~W_NEG;
		if (strcmp(t->w[k].low, "no") == 0 && strcmp(prev, "or") == 0)
			t->w[k].flags &= (uint16_t)~W_NEG; /* "yes or no" */
	}
	collect_quotes(t, s, len);
}

static bool holds(const struct text *b, const char *p, size_t n);

/* Do a and b name the same thing, allowing inflection: equal, or sharing a
 * prefix of at least 4 bytes that leaves at most 3 bytes of the longer
 * ("japan"/"japanese", "greece"/"greek", "learn"/"learning"). */
static bool same_stem(const struct word *a, const struct word *b)
{
	if (a->len == b->len && memcmp(a->low, b->low, a->len) == 0)
		return true;
	if ((a->flags | b->flags) & W_DIGIT)
		return false; /* "10000" is not "10001" */
	size_t cp = 0, m = a->len < b->len ? a->len : b->len, M = a->len + b->len - m;
	while (cp < m && a->low[cp] == b->low[cp])
		cp++;
	if ((a->flags | b->flags) & W_LONG)
		return cp == m && m == LOW_MAX;
	if (cp >= 4 && cp + 3 >= M)
		return true;
	/* "relation"/"relationship", but not "person"/"personality" */
	static const char *const suffixes[] = { "ally", "ation", "ations", "ers", "ings",
		                                "ment", "ments", "ness", "ship", "ships" };
	const struct word *lo = a->len > b->len ? a : b;
	if (cp >= 4 && cp == m && IN_LIST(lo->low + cp, suffixes))
		return true;
	for (size_t k = 0; k < sizeof(irregular) / sizeof(irregular[0]); k++)
		if ((strcmp(a->low, irregular[k][0]) == 0 && strcmp(b->low, irregular[k][1]) == 0) ||
		    (strcmp(a->low, irregular[k][1]) == 0 && strcmp(b->low, irregular[k][0]) == 0))
			return true;
	return false;
}

/* Does t hold a word of the same stem as w? */
static bool has_stem(const struct text *t, const struct word *w)
{
	for (int i = 0; i < t->n; i++)
		if (same_stem(&t->w[i], w))
			return true;
	return false;
}

/* Do consecutive words of t, stopwords inside skipped, start with the
 * letters of acronym w ("USA" = "United States of America")? */
static bool spelled_out(const struct text *t, const struct word *w)
{
	if (w->len < 2 || w->len > 8)
		return false;
	for (int i = 0; i < t->n; i++) {
		size_t k = 0;
		for (int j = i; j < t->n && k < w->len; j++) {
			if (t->w[j].low[0] == w->low[k])
				k++;
			else if (!(t->w[j].flags & W_STOP) || k == 0)
				break;
		}
		if (k == w->len)
			return true;
	}
	return false;
}

/* Is word i of t a name, acronym or identifier that the other question
 * must mention too? */
static bool is_entity(const struct text *t, int i)
{
	const struct word *w = &t->w[i];
	if (w->flags & W_NUM)
		return false; /* "08:30" is the number rule's */
	if (w->flags & W_CODE)
		return true;
	if (!(w->flags & (W_ASCII | W_DIGIT)))
		return t->english; /* "多少" in an English question */
	if (!(w->flags & W_ASCII) || (w->flags & W_STOP) || w->len < 2)
		return false;
	if ((w->flags & W_ACRO) && !t->shouted)
		return true;
	return (w->flags & W_CAP) && !(w->flags & W_START) && !t->titled;
}

static bool entity_found(const struct text *other, const struct word *w)
{
	if (!(w->flags & (W_ASCII | W_DIGIT | W_CODE)))
		return has_stem(other, w) || holds(other, w->low, w->len);
	if (has_stem(other, w))
		return true;
	return (w->flags & W_ACRO) && spelled_out(other, w);
}

/* Does b's text hold p[0..n) (ASCII case-insensitive)? */
static bool holds(const struct text *b, const char *p, size_t n)
{
	for (size_t i = 0; i + n <= b->len; i++)
		if (strncasecmp(b->s + i, p, n) == 0)
			return true;
	return false;
}

/* Every string quoted in a appears in b, quoted or not. */
static bool quotes_found(const struct text *a, const struct text *b)
{
	for (int i = 0; i < a->nq; i++)
		if (!holds(b, a->q[i].p, a->q[i].len))
			return false;
	return true;
}

static enum verify_reason rule_entities(const struct text *a, const struct text *b)
{
	for (int i = 0; i < a->n; i++)
		if (is_entity(a, i) && !entity_found(b, &a->w[i]))
			return SG_VERIFY_ENTITY;
	for (int i = 0; i < b->n; i++)
		if (is_entity(b, i) && !entity_found(a, &b->w[i]))
			return SG_VERIFY_ENTITY;
	if (!quotes_found(a, b) || !quotes_found(b, a))
		return SG_VERIFY_ENTITY;
	return SG_VERIFY_PASS;
}

static bool negated(const struct text *t)
{
	for (int i = 0; i < t->n; i++)
		if (t->w[i].flags & W_NEG)
			return true;
	return false;
}

static enum verify_reason rule_negation(const struct text *a, const struct text *b)
{
	return negated(a) == negated(b) ? SG_VERIFY_PASS : SG_VERIFY_NEGATION;
}

/* Index of the first word of t equal to s (plural "s" allowed), or -1. */
static int find_word(const struct text *t, const char *s)
{
	size_t n = strlen(s);
	for (int i = 0; i < t->n; i++) {
		const struct word *w = &t->w[i];
		if ((w->len == n || (w->len == n + 1 && w->low[n] == 's')) &&
		    memcmp(w->low, s, n) == 0)
			return i;
	}
	return -1;
}

static enum verify_reason rule_opposites(const struct text *a, const struct text *b)
{
	for (size_t k = 0; k < sizeof(opposites) / sizeof(opposites[0]); k++) {
		bool au = find_word(a, opposites[k][0]) >= 0, av = find_word(a, opposites[k][1]) >= 0;
		bool bu = find_word(b, opposites[k][0]) >= 0, bv = find_word(b, opposites[k][1]) >= 0;
		if ((au && !av && bv && !bu) || (av && !au && bu && !bv))
			return SG_VERIFY_OPPOSITE;
	}
	return SG_VERIFY_PASS;
}

/* Is word i of t one whose place in the sentence carries meaning: a name,
 * a number, or a word of an opposed pair? */
static bool is_role(const struct text *t, int i)
{
	const struct word *w = &t->w[i];
	if (is_entity(t, i) || (w->flags & W_DIGIT))
		return true;
	for (size_t k = 0; k < sizeof(opposites) / sizeof(opposites[0]); k++)
		if (strcmp(w->low, opposites[k][0]) == 0 || strcmp(w->low, opposites[k][1]) == 0)
			return true;
	return false;
}

/* The only word of t with w's stem, or -1 when there is none or several. */
static int unique_stem(const struct text *t, const struct word *w)
{
	int at = -1;
	for (int i = 0; i < t->n; i++)
		if (same_stem(&t->w[i], w)) {
			if (at >= 0)
				return -1;
			at = i;
		}
	return at;
}

/* Do only list glue and free-standing prepositions stand between words i
 * and j (i < j) of t ("India and Pakistan", "in India in December"), so
 * that their order says nothing about their roles? */
static bool free_order(const struct text *t, int i, int j)
{
	static const char *const glue[] = { "a", "an", "and", "at", "during", "for", "in",
		                            "on", "or", "the", "versus", "vs", "with" };
	for (int k = i + 1; k <= j; k++) {
		if (t->w[k].gap == 2)
			return false;
		if (k < j && !IN_LIST(t->w[k].low, glue))
			return false;
	}
	return true;
}

/* The content word nearest to word i in direction dir (+1/-1), skipping
 * stopwords, or -1. */
static int content_near(const struct text *t, int i, int dir)
{
	for (int k = i + dir; k >= 0 && k < t->n; k += dir) {
		if (t->w[k].gap == 2 && dir > 0)
			return -1;
		if (!(t->w[k].flags & W_STOP) && t->w[k].len > 1)
			return k;
		if (dir < 0 && t->w[k].gap == 2)
			return -1;
	}
	return -1;
}

/* Directed relation of t: "from X to Y", "X than Y", "X into Y", "X to Y"
 * after a verb of conversion. Fills x, y (word indexes) and returns true
 * when found. */
static bool relation(const struct text *t, int *x, int *y)
{
	static const char *const movers[] = { "change", "convert", "converting", "migrate",
		                              "move", "switch", "switching", "transfer",
		                              "translate", "translation" };
	for (int i = 0; i < t->n; i++) {
		const char *w = t->w[i].low;
		int from = -1;
		if (strcmp(w, "from") == 0 || (IN_LIST(w, movers) && i + 1 < t->n))
			from = i;
		if (from >= 0) {
			int a = content_near(t, from, +1);
			for (int k = a + 1; a >= 0 && k < t->n && k <= a + 4; k++)
				if (strcmp(t->w[k].low, "to") == 0 || strcmp(t->w[k].low, "into") == 0) {
					int b = content_near(t, k, +1);
					if (b >= 0) {
						*x = a;
						*y = b;
						return true;
					}
				}
		}
		if (strcmp(w, "than") == 0) {
			int a = content_near(t, i, -1), b = content_near(t, i, +1);
			/* "X better than Y": the comparative sits between */
			if (a >= 0 && i - a == 1 && a > 0)
				a = content_near(t, a, -1);
			if (a >= 0 && b >= 0) {
				*x = a;
				*y = b;
				return true;
			}
		}
	}
	return false;
}

static enum verify_reason rule_order(const struct text *a, const struct text *b)
{
	/* names, numbers and opposed words that both questions hold once each */
	int pa[WORDS_MAX], pb[WORDS_MAX], n = 0;
	for (int i = 0; i < a->n; i++) {
		if (!is_role(a, i) || unique_stem(a, &a->w[i]) != i)
			continue;
		int j = unique_stem(b, &a->w[i]);
		if (j >= 0) {
			pa[n] = i;
			pb[n++] = j;
		}
	}
	for (int u = 0; u < n; u++)
		for (int v = u + 1; v < n; v++)
			if (pb[v] < pb[u] && !free_order(a, pa[u], pa[v]) && !free_order(b, pb[v], pb[u]))
				return SG_VERIFY_ORDER;
	int ax, ay, bx, by;
	if (relation(a, &ax, &ay) && relation(b, &bx, &by) && same_stem(&a->w[ax], &b->w[by]) &&
	    same_stem(&a->w[ay], &b->w[bx]) && !same_stem(&a->w[ax], &a->w[ay]))
		return SG_VERIFY_ORDER;
	return SG_VERIFY_PASS;
}

/* Is word i of t a content word the other question must answer to? */
static bool is_content(const struct text *t, int i)
{
	static const char *const preps[] = { "about", "at", "for", "from", "in", "into", "of",
		                             "on", "to", "with" };
	const struct word *w = &t->w[i];
	/* a stranded preposition asks for something: "Where are you from?" */
	if ((i + 1 == t->n || t->w[i + 1].gap == 2) && IN_LIST(w->low, preps))
		return true;
	return (w->flags & W_ASCII) && !(w->flags & W_STOP) && w->len >= 3 &&
	       !IN_LIST(w->low, soft) && !IN_LIST(w->low, negations);
}

/* What kind of answer t asks for, as a bit set: a yes/no question (it
 * starts with an auxiliary verb), and each question word it holds ("what"
 * and "which" count as one). */
static unsigned question_kinds(const struct text *t)
{
	static const char *const aux[] = { "am", "are", "can", "could", "did", "do", "does",
		                           "has", "have", "is", "should", "was", "were",
		                           "will", "would" };
	static const char *const wh[] = { "how", "what", "when", "where", "which", "who",
		                          "whom", "why" };
	static const unsigned bit[] = { 2, 4, 8, 16, 4, 32, 32, 64 };
	unsigned k = 0;
	for (int i = 0; i < t->n; i++) {
		const char *w = t->w[i].low;
		if ((t->w[i].flags & W_START) && IN_LIST(w, aux))
			k |= 1;
		const char *next = i + 1 < t->n ? t->w[i + 1].low : "";
		if (strcmp(next, "or") == 0 || strcmp(next, "not") == 0)
			continue; /* "why or why not" asks nothing more */
		for (size_t j = 0; j < sizeof(wh) / sizeof(wh[0]); j++)
			if (strcmp(w, wh[j]) == 0)
				k |= bit[j];
	}
	return k;
}

/* Is word w of t one letter of an acronym of other spelled out in t
 * ("states" for "USA")? */
static bool spells_acronym(const struct text *t, const struct word *w, const struct text *other)
{
	for (int i = 0; i < other->n; i++) {
		const struct word *o = &other->w[i];
		if ((o->flags & W_ACRO) && memchr(o->low, w->low[0], o->len) && spelled_out(t, o))
			return true;
	}
	return false;
}

static bool content_found(const struct text *t, int i, const struct text *other)
{
	const struct word *w = &t->w[i];
	return has_stem(other, w) || ((w->flags & W_ACRO) && spelled_out(other, w)) ||
	       spells_acronym(t, w, other);
}

static enum verify_reason rule_content(const struct text *a, const struct text *b)
{
	if (question_kinds(a) != question_kinds(b))
		return SG_VERIFY_CONTENT; /* "Should X change?" is not "How can X change?" */
	for (int i = 0; i < a->n; i++)
		if (is_content(a, i) && !content_found(a, i, b))
			return SG_VERIFY_CONTENT;
	for (int i = 0; i < b->n; i++)
		if (is_content(b, i) && !content_found(b, i, a))
			return SG_VERIFY_CONTENT;
	return SG_VERIFY_PASS;
}

static enum verify_reason rule_numbers(const char *q, size_t ql, const char *s, size_t sl)
{
	struct numbers a = { .n = 0 }, b = { .n = 0 };
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
	for (size_t i = 0; s && i < sizeof modes / sizeof modes[0]; i++) {
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
	if (!query)
		qlen = 0;
	if (!stored)
		slen = 0;
	enum verify_reason r = rule_numbers(query, qlen, stored, slen);
	if (r != SG_VERIFY_PASS)
		return r;
	struct text a, b;
	tokenize(query, qlen, &a);
	tokenize(stored, slen, &b);
	if (a.overflow || b.overflow)
		return SG_VERIFY_PASS; /* too long to judge word by word */
	if (mode == SG_VERIFY_STRICT && (r = rule_entities(&a, &b)) != SG_VERIFY_PASS)
		return r;
	if ((r = rule_negation(&a, &b)) != SG_VERIFY_PASS)
		return r;
	if (mode == SG_VERIFY_STRICT && (r = rule_order(&a, &b)) != SG_VERIFY_PASS)
		return r;
	if ((r = rule_opposites(&a, &b)) != SG_VERIFY_PASS)
		return r;
	if (mode == SG_VERIFY_STRICT)
		r = rule_content(&a, &b);
	return r;
}
