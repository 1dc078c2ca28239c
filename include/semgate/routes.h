/* Route handlers and the route table wired by main.c. Each handler sends
 * its whole response and returns the status it sent. */
#ifndef SEMGATE_ROUTES_H
#define SEMGATE_ROUTES_H

#include <stddef.h>
#include "semgate/http.h"

int route_chat_completions(struct sg_req *req);
int route_healthz(struct sg_req *req);
int route_readyz(struct sg_req *req);
int route_conv_get(struct sg_req *req);
int route_conv_append(struct sg_req *req);
int route_conv_delete(struct sg_req *req);

/* The full table; *n receives its length. */
const struct sg_route *routes_table(size_t *n);

#endif
