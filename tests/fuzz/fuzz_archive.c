/* Fuzz the decoding of archive stream records (src/archive/record.c), as
 * the archiver does it for whatever the stream holds. The input is split
 * at its first two NUL bytes into a stream id, the record's JSON and a
 * vector blob. Invariants: a decoded record has a tenant, a valid object
 * id and a known kind; a turn has a non-empty array of messages with a
 * role; a put's vector is exactly dim floats; coalescing a batch of it
 * keeps the last hit count only. */
#include <string.h>

#include "semgate/archive/archive.h"
#include "fuzz.h"

static const char *part(const char **p, const char *end, size_t *len)
{
	const char *start = *p;
	const char *z = memchr(start, '\0', (size_t)(end - start));
	const char *stop = z ? z : end;
	*len = (size_t)(stop - start);
	*p = z ? z + 1 : end;
	return start;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;
	size_t sl, jl, vl;
	const char *sid = part(&p, end, &sl);
	const char *json = part(&p, end, &jl);
	const char *vec = p; /* the rest, NUL bytes and all */
	vl = (size_t)(end - p);
	char sidz[64];
	if (sl >= sizeof(sidz))
		return 0;
	memcpy(sidz, sid, sl);
	sidz[sl] = '\0';
	struct arch_rec r[2];
	char why[128];
	if (!arch_rec_decode(sidz, json, jl, vl ? vec : NULL, vl, &r[0], why, sizeof(why))) {
		FUZZ_CHECK(why[0] != '\0');
		return 0;
	}
	FUZZ_CHECK(r[0].tenant && r[0].tenant[0] && r[0].obj && r[0].obj[0]);
	FUZZ_CHECK(strlen(r[0].obj) <= 128);
	switch (r[0].kind) {
	case ARCH_TURN:
		FUZZ_CHECK(cJSON_IsArray(r[0].msgs) && cJSON_GetArraySize(r[0].msgs) > 0);
		break;
	case ARCH_PUT:
		FUZZ_CHECK(r[0].query && r[0].answer && r[0].scope && r[0].kind_name);
		FUZZ_CHECK(r[0].dim == 0 ? r[0].vec == NULL : r[0].vec_len == 4 * (size_t)r[0].dim);
		break;
	case ARCH_HITS:
		FUZZ_CHECK(r[0].hits >= 0);
		break;
	case ARCH_CONV_DELETE:
	case ARCH_ENTRY_DELETE:
		break;
	}
	/* the same record twice in a batch: a hit count keeps only the last */
	FUZZ_CHECK(arch_rec_decode(sidz, json, jl, vl ? vec : NULL, vl, &r[1], why, sizeof(why)));
	size_t left = arch_batch_coalesce(r, 2);
	FUZZ_CHECK(left == (r[0].kind == ARCH_HITS ? 1u : 2u));
	FUZZ_CHECK(!r[1].skip);
	arch_rec_finish(&r[0]);
	arch_rec_finish(&r[1]);
	return 0;
}
