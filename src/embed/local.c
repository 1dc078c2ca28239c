/* The offline "local" embedder: signed feature hashing of words and
 * character trigrams. Pure computation over the caller's buffers — it must
 * never allocate, do I/O, or depend on locale or platform. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "semgate/embed/local.h"

#define FNV_BASIS 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
/* Distinct seeds keep the word "abc" and the trigram "abc" apart. */
#define SEED_WORD (FNV_BASIS ^ 0x5157a11e0001ULL)
#define SEED_TRI (FNV_BASIS ^ 0x7219a11e0003ULL)

#define WEIGHT_WORD 1.0f
#define WEIGHT_TRI 0.5f

/* One character: a UTF-8 lead byte and its continuation bytes, or a single
 * byte (ASCII, the boundary space, or a stray byte of invalid UTF-8). */
struct uchar {
	unsigned char b[4];
	int n;
};

static const struct uchar boundary = { { ' ' }, 1 };

static uint64_t fnv(uint64_t h, const unsigned char *p, int n)
{
	for (int i = 0; i < n; i++) {
		h ^= p[i];
		h *= FNV_PRIME;
	}
	return h;
}

/* FNV-1a's low bits are weak for short keys; a splitmix64 finaliser spreads
 * every input bit over the bucket index and the sign bit. */
static uint64_t mix(uint64_t h)
{
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return h;
}

static void add_feature(float *out, int dim, uint64_t h, float w)
{
	h = mix(h);
	size_t idx = (size_t)((h & 0xffffffffULL) % (uint64_t)dim);
	out[idx] += (h >> 63) ? -w : w;
}

struct trigram_window {
	struct uchar c[2];
	int n;
};

static void push_char(struct trigram_window *w, const struct uchar *c,
		      float *out, int dim)
{
	if (w->n < 2) {
		w->c[w->n++] = *c;
		return;
	}
	uint64_t h = fnv(SEED_TRI, w->c[0].b, w->c[0].n);
	h = fnv(h, w->c[1].b, w->c[1].n);
	h = fnv(h, c->b, c->n);
	add_feature(out, dim, h, WEIGHT_TRI);
	w->c[0] = w->c[1];
	w->c[1] = *c;
}

static bool ascii_alnum(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z');
}

void embed_local(const char *text, size_t len, float *out, int dim)
{
	if (dim <= 0)
		return;
	memset(out, 0, (size_t)dim * sizeof(*out));
	const unsigned char *s = (const unsigned char *)text;
	bool in_word = false;
	uint64_t word_hash = 0;
	struct trigram_window win = { .n = 0 };
	size_t i = 0;
	while (i < len) {
		unsigned char c = s[i];
		if (c < 0x80 && !ascii_alnum(c)) {
			if (in_word) {
				add_feature(out, dim, word_hash, WEIGHT_WORD);
				push_char(&win, &boundary, out, dim);
				in_word = false;
			}
			i++;
			continue;
		}
		struct uchar ch = { { 0 }, 0 };
		ch.b[ch.n++] = (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
		i++;
		if (c >= 0xc0)
			while (i < len && ch.n < 4 && (s[i] & 0xc0) == 0x80)
				ch.b[ch.n++] = s[i++];
		if (!in_word) {
			in_word = true;
			word_hash = SEED_WORD;
			win.n = 0;
			push_char(&win, &boundary, out, dim);
		}
		word_hash = fnv(word_hash, ch.b, ch.n);
		push_char(&win, &ch, out, dim);
	}
	if (in_word) {
		add_feature(out, dim, word_hash, WEIGHT_WORD);
		push_char(&win, &boundary, out, dim);
	}

	/* (double)f * f is exact for a float f, so the sum rounds the same
	 * with or without fused multiply-add: identical bits everywhere. */
	double sum = 0.0;
	for (int k = 0; k < dim; k++)
		sum += (double)out[k] * (double)out[k];
	if (sum == 0.0) {
		out[0] = 1.0f;
		return;
	}
	double scale = 1.0 / sqrt(sum);
	for (int k = 0; k < dim; k++)
		out[k] = (float)(out[k] * scale);
}
