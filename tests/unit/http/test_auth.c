/* Unit tests for auth: key list and key file parsing, validation messages
 * that never contain a key, constant-time lookup and Bearer parsing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "semgate/http/auth.h"
#include "semgate/core/config.h"
#include "sg_test.h"

static struct auth_keys *parse_list(const char *spec, enum sg_err want, struct sg_error *e)
{
	struct auth_keys *k = auth_create();
	enum sg_err rc = auth_parse_list(k, spec, "SEMGATE_API_KEYS", e);
	CHECK_INT(rc, want);
	if (rc != SG_OK) {
		auth_destroy(k);
		return NULL;
	}
	return k;
}

static const char *lookup(const struct auth_keys *k, const char *token)
{
	return auth_lookup(k, token, strlen(token));
}

static void test_list_maps_each_key_to_its_tenant(void)
{
	struct sg_error e = { 0 };
	struct auth_keys *k = parse_list("sk-alpha:teamA, sk-beta:teamB ,x:y.z_1-2", SG_OK, &e);
	CHECK(k != NULL);
	CHECK_INT(auth_count(k), 3);
	CHECK_STR(lookup(k, "sk-alpha"), "teamA");
	CHECK_STR(lookup(k, "sk-beta"), "teamB");
	CHECK_STR(lookup(k, "x"), "y.z_1-2");
	auth_destroy(k);
}

static void test_lookup_refuses_prefixes_extensions_and_empty(void)
{
	struct sg_error e = { 0 };
	struct auth_keys *k = parse_list("sk-alpha:teamA,sk-beta:teamB", SG_OK, &e);
	CHECK(lookup(k, "sk-alph") == NULL);
	CHECK(lookup(k, "sk-alphaa") == NULL);
	CHECK(lookup(k, "SK-ALPHA") == NULL);
	CHECK(lookup(k, "") == NULL);
	CHECK(auth_lookup(k, NULL, 0) == NULL);
	CHECK(auth_lookup(NULL, "sk-alpha", 8) == NULL);
	/* a NUL inside the presented token is part of it, not its end */
	CHECK(auth_lookup(k, "sk-alpha\0x", 10) == NULL);
	auth_destroy(k);
}

static void test_lookup_finds_first_middle_and_last_of_many(void)
{
	struct auth_keys *k = auth_create();
	struct sg_error e = { 0 };
	char spec[64];
	for (int i = 0; i < 100; i++) {
		snprintf(spec, sizeof(spec), "key-%d:tenant-%d", i, i);
		CHECK_INT(auth_parse_list(k, spec, "SEMGATE_API_KEYS", &e), SG_OK);
	}
	CHECK_INT(auth_count(k), 100);
	CHECK_STR(lookup(k, "key-0"), "tenant-0");
	CHECK_STR(lookup(k, "key-57"), "tenant-57");
	CHECK_STR(lookup(k, "key-99"), "tenant-99");
	CHECK(lookup(k, "key-100") == NULL);
	auth_destroy(k);
}

static void test_key_may_contain_colons_tenant_is_after_the_last(void)
{
	struct sg_error e = { 0 };
	struct auth_keys *k = parse_list("a:b:c:tenant", SG_OK, &e);
	CHECK_STR(lookup(k, "a:b:c"), "tenant");
	auth_destroy(k);
}

/* Every refusal names the variable and never echoes the secret part. */
static void check_refused(const char *spec, const char *needle)
{
	struct sg_error e = { 0 };
	struct auth_keys *k = parse_list(spec, SG_ERR_BAD_REQUEST, &e);
	CHECK(k == NULL);
	CHECK(strstr(e.msg, "SEMGATE_API_KEYS") != NULL);
	if (!strstr(e.msg, needle))
		printf("# message '%s' lacks '%s'\n", e.msg, needle);
	CHECK(strstr(e.msg, needle) != NULL);
	CHECK(strstr(e.msg, "s3cr3t") == NULL);
}

static void test_bad_lists_are_refused_without_printing_keys(void)
{
	check_refused("", "entry 1 is empty");
	check_refused("s3cr3t:a,", "entry 2 is empty");
	check_refused("s3cr3t:a,,k:b", "entry 2 is empty");
	check_refused("s3cr3t", "no ':'");
	check_refused(":tenant", "key is empty");
	check_refused("s3cr3t:", "tenant must match");
	check_refused("s3cr3t:bad tenant", "tenant must match");
	check_refused("k:s3cr3t/x", "tenant must match");
	check_refused("s3cr3t:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		      "tenant must match");
	check_refused("s3 cr3t:a", "visible ASCII");
	check_refused("s3cr3t\x01:a", "visible ASCII");
	check_refused("s3cr3t:a,s3cr3t:b", "entry 2: duplicate key");
	char big[SG_AUTH_KEY_MAX + 16];
	memset(big, 's', SG_AUTH_KEY_MAX + 1);
	snprintf(big + SG_AUTH_KEY_MAX + 1, 8, ":t");
	check_refused(big, "longer than");
}

static void test_tenant_syntax(void)
{
	CHECK(auth_tenant_valid("a", 1));
	CHECK(auth_tenant_valid("A.b_c-9", 7));
	CHECK(!auth_tenant_valid("", 0));
	CHECK(!auth_tenant_valid("a:b", 3));
	CHECK(!auth_tenant_valid("a b", 3));
	CHECK(!auth_tenant_valid("\xc3\xa9", 2));
	char t[66];
	memset(t, 'x', sizeof(t));
	CHECK(auth_tenant_valid(t, 64));
	CHECK(!auth_tenant_valid(t, 65));
}

static void test_file_text_skips_comments_and_blank_lines(void)
{
	const char text[] =
		"# gateway keys\n"
		"\n"
		"   \t\n"
		"sk-one teamA\n"
		"\tsk-two\t\tteamB   \r\n"
		"  # indented comment\n"
		"sk,three teamC";  /* no final newline; ',' is fine in a file */
	struct auth_keys *k = auth_create();
	struct sg_error e = { 0 };
	CHECK_INT(auth_parse_text(k, text, strlen(text), "SEMGATE_API_KEYS_FILE", &e), SG_OK);
	CHECK_INT(auth_count(k), 3);
	CHECK_STR(lookup(k, "sk-one"), "teamA");
	CHECK_STR(lookup(k, "sk-two"), "teamB");
	CHECK_STR(lookup(k, "sk,three"), "teamC");
	auth_destroy(k);
}

static void check_text_refused(const char *text, const char *needle)
{
	struct auth_keys *k = auth_create();
	struct sg_error e = { 0 };
	CHECK_INT(auth_parse_text(k, text, strlen(text), "SEMGATE_API_KEYS_FILE", &e),
		  SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "SEMGATE_API_KEYS_FILE") != NULL);
	if (!strstr(e.msg, needle))
		printf("# message '%s' lacks '%s'\n", e.msg, needle);
	CHECK(strstr(e.msg, needle) != NULL);
	CHECK(strstr(e.msg, "s3cr3t") == NULL);
	auth_destroy(k);
}

static void test_bad_files_name_the_line(void)
{
	check_text_refused("s3cr3t\n", "line 1: expected 'key tenant'");
	check_text_refused("# c\nk1 a\ns3cr3t a b\n", "line 3: expected 'key tenant'");
	check_text_refused("k1 a\ns3cr3t bad!tenant\n", "line 2: the tenant must match");
	check_text_refused("s3cr3t a\ns3cr3t b\n", "line 2: duplicate key");
}

static void test_load_merges_list_and_file_and_refuses_cross_duplicates(void)
{
	char path[] = "/tmp/semgate-test-keysXXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	const char text[] = "file-key fileTenant\n";
	CHECK_INT(write(fd, text, strlen(text)), (long long)strlen(text));
	close(fd);
	struct sg_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.api_keys = (char *)"list-key:listTenant";
	cfg.api_keys_file = path;
	struct auth_keys *k = NULL;
	struct sg_error e = { 0 };
	CHECK_INT(auth_load(&cfg, &k, &e), SG_OK);
	CHECK_INT(auth_count(k), 2);
	CHECK_STR(lookup(k, "file-key"), "fileTenant");
	CHECK_STR(lookup(k, "list-key"), "listTenant");
	auth_destroy(k);

	cfg.api_keys = (char *)"file-key:other";
	CHECK_INT(auth_load(&cfg, &k, &e), SG_ERR_BAD_REQUEST);
	CHECK(k == NULL);
	CHECK(strstr(e.msg, "duplicate") != NULL);

	cfg.api_keys = (char *)"";
	cfg.api_keys_file = (char *)"";
	CHECK_INT(auth_load(&cfg, &k, &e), SG_OK);
	CHECK(k == NULL); /* open mode */

	cfg.api_keys_file = (char *)"/nonexistent/semgate-keys";
	CHECK_INT(auth_load(&cfg, &k, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "SEMGATE_API_KEYS_FILE") != NULL);

	FILE *f = fopen(path, "w");
	fputs("# only comments\n\n", f);
	fclose(f);
	cfg.api_keys_file = path;
	CHECK_INT(auth_load(&cfg, &k, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "no keys") != NULL);
	unlink(path);
}

static void test_bearer_header_parsing(void)
{
	const char *t;
	size_t n;
	CHECK(auth_bearer("Bearer abc", &t, &n));
	CHECK_INT(n, 3);
	CHECK(strncmp(t, "abc", 3) == 0);
	CHECK(auth_bearer("  bearer \t xyz  ", &t, &n));
	CHECK_INT(n, 3);
	CHECK(strncmp(t, "xyz", 3) == 0);
	CHECK(!auth_bearer(NULL, &t, &n));
	CHECK(!auth_bearer("Bearer", &t, &n));
	CHECK(!auth_bearer("Bearer   ", &t, &n));
	CHECK(!auth_bearer("Basic abc", &t, &n));
	CHECK(!auth_bearer("Bearerabc", &t, &n));
}

static void test_admin_keys_are_apart_and_only_from_their_list(void)
{
	struct sg_error e = { 0 };
	struct auth_keys *k = parse_list("ka:alpha,kb:beta,kc:alpha", SG_OK, &e);
	CHECK(k != NULL);
	CHECK_INT(auth_parse_admin_list(k, " adm1 ,adm2", "SEMGATE_ADMIN_KEYS", &e), SG_OK);
	CHECK_STR(lookup(k, "adm1"), SG_AUTH_ADMIN);
	CHECK_STR(lookup(k, "adm2"), SG_AUTH_ADMIN);
	CHECK_STR(lookup(k, "ka"), "alpha");
	const char *t[4];
	CHECK_INT(auth_tenants(k, t, 4), 2);
	CHECK_STR(t[0], "alpha");
	CHECK_STR(t[1], "beta");
	CHECK_INT(auth_parse_admin_list(k, "ka", "SEMGATE_ADMIN_KEYS", &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "duplicate") != NULL);
	CHECK_INT(auth_parse_admin_list(k, "x,,y", "SEMGATE_ADMIN_KEYS", &e), SG_ERR_BAD_REQUEST);
	auth_destroy(k);
	/* a tenant key can never be made an admin key by naming the tenant "*" */
	check_refused("s3cr3t:*", "tenant must match");
}

int main(void)
{
	RUN(test_list_maps_each_key_to_its_tenant);
	RUN(test_lookup_refuses_prefixes_extensions_and_empty);
	RUN(test_lookup_finds_first_middle_and_last_of_many);
	RUN(test_key_may_contain_colons_tenant_is_after_the_last);
	RUN(test_bad_lists_are_refused_without_printing_keys);
	RUN(test_tenant_syntax);
	RUN(test_file_text_skips_comments_and_blank_lines);
	RUN(test_bad_files_name_the_line);
	RUN(test_load_merges_list_and_file_and_refuses_cross_duplicates);
	RUN(test_bearer_header_parsing);
	RUN(test_admin_keys_are_apart_and_only_from_their_list);
	return TEST_DONE();
}
