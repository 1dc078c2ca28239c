/* The built-in offline "local" embedder: feature hashing of words and
 * character trigrams into a fixed dimension. It is LEXICAL, NOT SEMANTIC —
 * texts that share words and spellings score high; paraphrases with
 * different words ("car" / "automobile") do not. Pure and allocation-free. */
#ifndef SEMGATE_EMBED_LOCAL_H
#define SEMGATE_EMBED_LOCAL_H

#include <stddef.h>

/* Model name stored with every vector this embedder makes; bump it whenever
 * the output for any input changes, so old vectors are never compared with
 * new ones. */
#define SG_EMBED_LOCAL_MODEL "local-hash-v1"
#define SG_EMBED_LOCAL_DIM 384

/* Embed text[0..len) (need not be NUL-terminated; any bytes are accepted)
 * into out[0..dim), L2-normalised. ASCII letters are lowercased, other
 * bytes kept; words are runs of ASCII alphanumerics and bytes >= 0x80.
 * Features: each word (weight 1) and each character trigram of " word "
 * (weight 0.5; a character is a UTF-8 lead byte with its continuation
 * bytes), hashed with seeded 64-bit FNV-1a to a bucket and a sign. A text
 * with no features gives out[0] = 1, all else 0.
 * out: caller's memory, dim floats. dim <= 0 writes nothing. One pass over
 * the text, no allocation; the same input gives the same bits on every
 * IEEE-754 platform. Thread-safe. */
void embed_local(const char *text, size_t len, float *out, int dim);

#endif
