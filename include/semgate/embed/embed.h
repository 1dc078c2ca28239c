/* Embedding providers: "openai" (any OpenAI-compatible /embeddings API,
 * through the upstream HTTP client) and "local" (built in, offline, lexical
 * feature hashing — see embed/local.h). An embedder is read-only after
 * embedder_init and may be shared by every thread. */
#ifndef SEMGATE_EMBED_H
#define SEMGATE_EMBED_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/config.h"
#include "semgate/core/err.h"
#include "semgate/upstream/upstream.h"

struct embedder {
	bool local;                    /* no SEMGATE_EMBED_URL: built-in provider */
	struct upstream_target target; /* openai provider: where to call */
	const char *model;             /* model name sent and stored (borrowed) */
	int local_dim;                 /* local provider: output dimension */
};

/* Configure from cfg (borrowed; must outlive em). */
void embedder_init(struct embedder *em, const struct sg_config *cfg);

/* Embed one text. *out receives a malloc'd vector of *dim floats (caller
 * frees), not necessarily normalised. up is this thread's HTTP client
 * (unused by the local provider). SG_ERR_UPSTREAM / SG_ERR_TIMEOUT when
 * the API fails or answers something that is not one finite vector. */
enum sg_err embedder_embed(const struct embedder *em, struct upstream *up,
			   const char *text, size_t len, float **out, int *dim,
			   struct sg_error *e);

#endif
