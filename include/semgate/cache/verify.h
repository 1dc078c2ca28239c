/* Hit verification: a vector match is a candidate, not an answer. Before a
 * semantic hit is served, the new question's text is compared with the
 * stored question's text, and the candidate is rejected when they differ in
 * what matters (numbers, entities, negation, order of roles, opposed words,
 * unmatched content words). Pure text logic: no I/O, no model, no network,
 * no global state; every function is safe from any number of threads.
 * docs/HIT-QUALITY.md says how each rule decides. */
#ifndef SEMGATE_VERIFY_H
#define SEMGATE_VERIFY_H

#include <stdbool.h>
#include <stddef.h>

/* SEMGATE_VERIFY / X-Semgate-Verify. BASIC runs only the rules that reject
 * on explicit evidence in the text (numbers, negation, opposed words);
 * STRICT, the default, runs every rule. */
enum verify_mode {
	SG_VERIFY_OFF,
	SG_VERIFY_BASIC,
	SG_VERIFY_STRICT,
};

/* Why a candidate was rejected; SG_VERIFY_PASS when it was not. The names
 * (verify_reason_name) appear in headers, JSON, metrics and the log. */
enum verify_reason {
	SG_VERIFY_PASS = 0,
	SG_VERIFY_NUMBER,   /* "number": numbers, dates, amounts, versions */
	SG_VERIFY_ENTITY,   /* "entity": names, capitalised words, acronyms,
	                     * code identifiers, quoted strings */
	SG_VERIFY_NEGATION, /* "negation": negated on one side only */
	SG_VERIFY_ORDER,    /* "order": the same entities or roles swapped */
	SG_VERIFY_OPPOSITE, /* "opposite": an opposed word pair (first/last) */
	SG_VERIFY_CONTENT,  /* "content": a content word with no counterpart */
	SG_VERIFY_FEEDBACK, /* "feedback": a "wrong" verdict on this entry for
	                     * this question, or below the entry's own raised
	                     * threshold; decided by the cache, never by
	                     * verify_pair() */
	SG_VERIFY_REASON_COUNT,
};

/* Static name of a reason ("pass" for SG_VERIFY_PASS). */
const char *verify_reason_name(enum verify_reason r);

/* Static name of a mode: "off", "basic" or "strict". */
const char *verify_mode_name(enum verify_mode m);

/* Parse "off" / "basic" / "strict" (ASCII case-insensitive, len bytes of
 * s, borrowed). Returns false and leaves *out alone for anything else. */
bool verify_mode_parse(const char *s, size_t len, enum verify_mode *out);

/* Decide whether the answer stored for question stored (slen bytes) may be
 * served for question query (qlen bytes). Both are borrowed UTF-8 and need
 * not be NUL-terminated; any bytes are accepted (text a rule cannot judge
 * is not rejected for that alone). SG_VERIFY_OFF always passes. Returns
 * the first rule that rejects, or SG_VERIFY_PASS. */
enum verify_reason verify_pair(enum verify_mode mode, const char *query, size_t qlen,
                               const char *stored, size_t slen);

#endif
