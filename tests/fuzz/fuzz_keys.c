/* Fuzz the gateway API keys parsers (auth.h): the keys file text
 * (auth_parse_text), the SEMGATE_API_KEYS list (auth_parse_list) and the
 * Authorization header split (auth_bearer). The whole input is tried as
 * each of them.
 * Invariants: an accepted file or list maps every key it holds, read back
 * with an independent tokenizer, to its tenant, and nothing else; a refusal
 * comes with a message that quotes no long input field (keys must never
 * reach a log); a bearer token lies inside the header, trimmed, non-empty. */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "semgate/http/auth.h"
#include "fuzz.h"

/* No whitespace-, ',' or ':'-separated field of 16+ bytes of the input may
 * appear in an error message. */
static void check_no_field_leaks(const char *in, size_t len, const char *msg)
{
	size_t i = 0;
	while (i < len) {
		while (i < len && strchr(" \t\r\n,:", in[i]) && in[i])
			i++;
		size_t j = i;
		while (j < len && in[j] && !strchr(" \t\r\n,:", in[j]))
			j++;
		if (j - i >= 16) {
			char field[64];
			size_t n = j - i < sizeof(field) - 1 ? j - i : sizeof(field) - 1;
			memcpy(field, in + i, n);
			field[n] = '\0';
			FUZZ_CHECK(strstr(msg, field) == NULL);
		}
		i = j + 1;
	}
}

static void check_text(const char *in, size_t len)
{
	struct auth_keys *k = auth_create();
	FUZZ_CHECK(k != NULL);
	struct sg_error e = { 0 };
	enum sg_err rc = auth_parse_text(k, in, len, "src", &e);
	if (rc != SG_OK) {
		FUZZ_CHECK(rc == SG_ERR_BAD_REQUEST && e.msg[0]);
		check_no_field_leaks(in, len, e.msg);
		auth_destroy(k);
		return;
	}
	/* read the lines back independently: "key tenant", blanks around */
	size_t n = 0, pos = 0;
	while (pos < len) {
		const char *s = in + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t l = nl ? (size_t)(nl - s) : len - pos;
		pos += l + 1;
		char *line = malloc(l + 1);
		FUZZ_CHECK(line != NULL);
		memcpy(line, s, l);
		line[l] = '\0';
		/* the parser drops one trailing CR; a CR anywhere else would
		 * have been refused as part of a key or tenant */
		if (l && line[l - 1] == '\r')
			line[l - 1] = '\0';
		char *save = NULL;
		char *key = strtok_r(line, " \t", &save);
		if (!key || key[0] == '#') {
			free(line);
			continue;
		}
		char *tenant = strtok_r(NULL, " \t", &save);
		FUZZ_CHECK(tenant != NULL);
		FUZZ_CHECK(strtok_r(NULL, " \t", &save) == NULL);
		const char *got = auth_lookup(k, key, strlen(key));
		FUZZ_CHECK(got && strcmp(got, tenant) == 0);
		FUZZ_CHECK(auth_tenant_valid(tenant, strlen(tenant)));
		free(line);
		n++;
	}
	FUZZ_CHECK(auth_count(k) == n);
	FUZZ_CHECK(auth_lookup(k, "", 0) == NULL);
	auth_destroy(k);
}

static void check_list(const char *in, size_t len)
{
	char *spec = malloc(len + 1);
	FUZZ_CHECK(spec != NULL);
	memcpy(spec, in, len);
	spec[len] = '\0';  /* an environment variable ends at the first NUL */
	struct auth_keys *k = auth_create();
	FUZZ_CHECK(k != NULL);
	struct sg_error e = { 0 };
	enum sg_err rc = auth_parse_list(k, spec, "src", &e);
	if (rc != SG_OK) {
		FUZZ_CHECK(rc == SG_ERR_BAD_REQUEST && e.msg[0]);
		check_no_field_leaks(spec, strlen(spec), e.msg);
	} else {
		size_t n = 0;
		char *save = NULL;
		for (char *ent = strtok_r(spec, ",", &save); ent; ent = strtok_r(NULL, ",", &save)) {
			while (*ent == ' ' || *ent == '\t')
				ent++;
			size_t l = strlen(ent);
			while (l && (ent[l - 1] == ' ' || ent[l - 1] == '\t'))
				ent[--l] = '\0';
			char *colon = strrchr(ent, ':');
			FUZZ_CHECK(colon != NULL);
			*colon = '\0';
			const char *got = auth_lookup(k, ent, strlen(ent));
			FUZZ_CHECK(got && strcmp(got, colon + 1) == 0);
			n++;
		}
		FUZZ_CHECK(auth_count(k) == n);
	}
	auth_destroy(k);
	free(spec);
}

static void check_bearer(const char *in, size_t len)
{
	char *h = malloc(len + 1);
	FUZZ_CHECK(h != NULL);
	memcpy(h, in, len);
	h[len] = '\0';
	const char *tok = NULL;
	size_t tlen = 0;
	if (auth_bearer(h, &tok, &tlen)) {
		size_t hl = strlen(h);
		FUZZ_CHECK(tok > h && tok + tlen <= h + hl);
		FUZZ_CHECK(tlen > 0 && tok[0] != ' ' && tok[0] != '\t');
		FUZZ_CHECK(tok[tlen - 1] != ' ' && tok[tlen - 1] != '\t');
		const char *p = h;
		while (*p == ' ' || *p == '\t')
			p++;
		FUZZ_CHECK(strncasecmp(p, "bearer", 6) == 0);
	}
	free(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	check_text(s, size);
	check_list(s, size);
	check_bearer(s, size);
	return 0;
}
