/* Unit tests for config: defaults, precedence, range and type checks. */
#include <stdlib.h>
#include <string.h>

#include "semgate/core/config.h"
#include "sg_test.h"

static enum sg_err load(struct sg_config *cfg, char **argv, char **envp, struct sg_error *e)
{
	int argc = 0;
	while (argv && argv[argc])
		argc++;
	return config_load(cfg, argc, argv, envp, e);
}

static void test_defaults_apply_without_env_or_flags(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *argv[] = { "semgate", NULL };
	CHECK_INT(load(&cfg, argv, NULL, &e), SG_OK);
	CHECK_INT(cfg.port, 8080);
	CHECK_STR(cfg.redis_prefix, "sg:");
	CHECK_INT(cfg.redis_port, 6379);
	CHECK_STR(cfg.upstream_url, "https://api.openai.com/v1");
	CHECK_STR(cfg.upstream_api_key, "");
	CHECK(!cfg.show_help && !cfg.show_version);
	config_finish(&cfg);
}

static void test_flag_wins_over_env(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *envp[] = { "SEMGATE_PORT=9000", "SEMGATE_REDIS_HOST=redis.local",
			 "OTHER=1", NULL };
	char *argv[] = { "semgate", "--port", "9100", "--redis-db=4", NULL };
	CHECK_INT(load(&cfg, argv, envp, &e), SG_OK);
	CHECK_INT(cfg.port, 9100);
	CHECK_INT(cfg.redis_db, 4);
	CHECK_STR(cfg.redis_host, "redis.local");
	config_finish(&cfg);
}

static void test_out_of_range_names_variable_and_range(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *envp[] = { "SEMGATE_PORT=70000", NULL };
	char *argv[] = { "semgate", NULL };
	CHECK_INT(load(&cfg, argv, envp, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "SEMGATE_PORT") != NULL);
	CHECK(strstr(e.msg, "0..65535") != NULL);
	config_finish(&cfg);
}

static void test_non_integer_is_refused(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *argv[] = { "semgate", "--threads", "12abc", NULL };
	CHECK_INT(load(&cfg, argv, NULL, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "--threads") != NULL);
	config_finish(&cfg);
	char *argv2[] = { "semgate", "--threads", "", NULL };
	CHECK_INT(load(&cfg, argv2, NULL, &e), SG_ERR_BAD_REQUEST);
	config_finish(&cfg);
}

static void test_secret_values_never_appear_in_errors(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *argv[] = { "semgate", "--redis-password", "hunter2", "--port", "x", NULL };
	CHECK_INT(load(&cfg, argv, NULL, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "hunter2") == NULL);
	CHECK_STR(cfg.redis_password, "hunter2");
	config_finish(&cfg);
}

static void test_bad_url_level_and_prefix_are_refused(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *a1[] = { "semgate", "--upstream-url", "localhost:8000", NULL };
	CHECK_INT(load(&cfg, a1, NULL, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "--upstream-url") != NULL);
	config_finish(&cfg);
	char *a2[] = { "semgate", "--log-level", "verbose", NULL };
	CHECK_INT(load(&cfg, a2, NULL, &e), SG_ERR_BAD_REQUEST);
	config_finish(&cfg);
	char *a3[] = { "semgate", "--redis-prefix", "a b", NULL };
	CHECK_INT(load(&cfg, a3, NULL, &e), SG_ERR_BAD_REQUEST);
	config_finish(&cfg);
	char *a4[] = { "semgate", "--redis-prefix", "", NULL };
	CHECK_INT(load(&cfg, a4, NULL, &e), SG_OK);
	CHECK_STR(cfg.redis_prefix, "");
	config_finish(&cfg);
}

static void test_redis_cluster_seeds(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *ok[] = { "semgate", "--redis-cluster", "127.0.0.1:7000,node-b:7001,::1:7002", NULL };
	CHECK_INT(load(&cfg, ok, NULL, &e), SG_OK);
	CHECK_STR(cfg.redis_cluster, "127.0.0.1:7000,node-b:7001,::1:7002");
	config_finish(&cfg);
	CHECK_INT(load(&cfg, NULL, NULL, &e), SG_OK);
	CHECK_STR(cfg.redis_cluster, "");
	config_finish(&cfg);
	const char *bad[] = { "host", "h:0", "h:70000", "h:1,", ",h:1", "h:1,,h:2", "h :1",
			      ":1", "h:1x",
			      "a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1,a:1" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *a[] = { "semgate", "--redis-cluster", (char *)bad[i], NULL };
		CHECK_INT(load(&cfg, a, NULL, &e), SG_ERR_BAD_REQUEST);
		CHECK(strstr(e.msg, "--redis-cluster") != NULL);
		config_finish(&cfg);
	}
	char host[8];
	int port = 0;
	CHECK(config_host_port("abc:12", 6, host, sizeof(host), &port));
	CHECK_STR(host, "abc");
	CHECK_INT(port, 12);
	CHECK(!config_host_port("abcdefgh:1", 10, host, sizeof(host), &port)); /* too long */
}

static void test_unknown_flag_and_missing_value(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *a1[] = { "semgate", "--bogus", NULL };
	CHECK_INT(load(&cfg, a1, NULL, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "--bogus") != NULL);
	config_finish(&cfg);
	char *a2[] = { "semgate", "--port", NULL };
	CHECK_INT(load(&cfg, a2, NULL, &e), SG_ERR_BAD_REQUEST);
	CHECK(strstr(e.msg, "--port") != NULL);
	config_finish(&cfg);
}

static void test_help_and_version_flags(void)
{
	struct sg_config cfg;
	struct sg_error e = { 0 };
	char *a1[] = { "semgate", "--help", "--version", NULL };
	CHECK_INT(load(&cfg, a1, NULL, &e), SG_OK);
	CHECK(cfg.show_help && cfg.show_version);
	config_finish(&cfg);
}

int main(void)
{
	RUN(test_defaults_apply_without_env_or_flags);
	RUN(test_flag_wins_over_env);
	RUN(test_out_of_range_names_variable_and_range);
	RUN(test_non_integer_is_refused);
	RUN(test_secret_values_never_appear_in_errors);
	RUN(test_bad_url_level_and_prefix_are_refused);
	RUN(test_redis_cluster_seeds);
	RUN(test_unknown_flag_and_missing_value);
	RUN(test_help_and_version_flags);
	return TEST_DONE();
}
