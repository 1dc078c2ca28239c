/* Sentinel mode (SEMGATE_REDIS_SENTINELS): which server is the Redis
 * master. The sentinels are asked for it (SENTINEL get-master-addr-by-name,
 * each in turn) and the answer is believed only once ROLE on that server
 * says "master". A watcher thread follows +switch-master on one sentinel
 * (moving to the next when it dies) and re-asks whenever a connection to
 * the master fails or answers READONLY. Each change of master bumps a
 * process-wide generation; every connection made to an older generation is
 * dropped and made again on its next use. In single-server mode none of
 * this runs and the master is SEMGATE_REDIS_HOST:SEMGATE_REDIS_PORT. */
#ifndef SEMGATE_STORE_SENTINEL_H
#define SEMGATE_STORE_SENTINEL_H

#include <stdbool.h>
#include <stddef.h>
#include "semgate/core/config.h"
#include "semgate/core/err.h"

#define STORE_HOST_MAX 256
#define STORE_SENTINELS_MAX 16

struct store_hostport {
	char host[STORE_HOST_MAX];
	int port;
};

/* Parse "host:port" or "[v6addr]:port" (len bytes of s). The port is
 * 1..65535 in decimal; the host is non-empty, without spaces or commas. */
bool store_parse_hostport(const char *s, size_t len, struct store_hostport *out);

/* Parse a comma-separated list of host:port (spaces around items allowed)
 * into out[0..max). Returns how many, or -1 with a reason in why (an empty
 * item, a bad address, more than max). */
int store_parse_hostports(const char *list, struct store_hostport *out, int max,
			  char *why, size_t why_cap);

/* A +switch-master message's payload, "<name> <old-ip> <old-port> <new-ip>
 * <new-port>": true and the new address in out when it is well formed and
 * names the master called name. */
bool store_parse_switch_master(const char *payload, size_t len, const char *name,
			       struct store_hostport *out);

/* Start the watcher in Sentinel mode (nothing to do otherwise, and SG_OK).
 * A malformed SEMGATE_REDIS_SENTINELS is SG_ERR_BAD_REQUEST. Sentinels
 * being down is not an error: the watcher keeps trying them. */
struct store_sentinel;
enum sg_err store_sentinel_start(const struct sg_config *cfg, struct store_sentinel **out,
				 struct sg_error *e);
void store_sentinel_stop(struct store_sentinel *w);

/* How many times the master changed (0 in single-server mode). */
unsigned long long store_master_changes(void);

#endif
