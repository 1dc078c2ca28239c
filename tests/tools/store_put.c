/* Test helper (not a test): writes one cache entry through the store
 * module's own store_entry_put, under an id the caller chooses. The HTTP
 * API always makes a fresh id, so this is how the integration tests
 * overwrite an entry in place and check that the stats accounting counts
 * the entry once, with its new sizes. Redis is configured as for the
 * gateway (SEMGATE_REDIS_* from the environment).
 *
 * Usage: sg-store-put TENANT ID QUERY ANSWER TTL_S DIM [METADATA]
 * DIM 0 stores no vector; otherwise the unit vector e0 of that dimension. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/core/config.h"
#include "semgate/store/store.h"

extern char **environ;

int main(int argc, char **argv)
{
	if (argc < 7 || argc > 8) {
		fprintf(stderr, "usage: %s TENANT ID QUERY ANSWER TTL_S DIM [METADATA]\n", argv[0]);
		return 2;
	}
	long long ttl = strtoll(argv[5], NULL, 10);
	long dim = strtol(argv[6], NULL, 10);
	if (ttl < 1 || dim < 0 || dim > 8192) {
		fprintf(stderr, "bad TTL_S or DIM\n");
		return 2;
	}
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *noargs[] = { argv[0], NULL };
	int rc = 1;
	float *vec = dim ? calloc((size_t)dim, sizeof(float)) : NULL;
	struct store *s = NULL;
	if (config_load(&cfg, 1, noargs, environ, &e) != SG_OK) {
		fprintf(stderr, "config: %s\n", e.msg);
		goto out;
	}
	if ((dim && !vec) || !(s = store_create(&cfg))) {
		fprintf(stderr, "out of memory\n");
		goto out;
	}
	if (vec)
		vec[0] = 1.0f;
	struct store_entry en = {
		.id = argv[2],
		.query = argv[3], .query_len = strlen(argv[3]),
		.answer = argv[4], .answer_len = strlen(argv[4]),
		.scope = "0000000000000000000000000000000000000000000000000000000000000000",
		.ns = "", .vec = vec, .dim = (int)dim, .emb_model = dim ? "external" : "",
		.created = (long long)time(NULL), .tokens = 0, .ttl_s = ttl, .kind = "text",
		.metadata = argc == 8 ? argv[7] : NULL,
		.metadata_len = argc == 8 ? strlen(argv[7]) : 0,
	};
	if (store_entry_put(s, argv[1], &en, &e) != SG_OK) {
		fprintf(stderr, "store_entry_put: %s\n", e.msg);
		goto out;
	}
	rc = 0;
out:
	store_destroy(s);
	free(vec);
	config_finish(&cfg);
	return rc;
}
