/* Keeps this process's vector index in step with Redis while several
 * gateway processes share it: one thread subscribes to {prefix}events,
 * adds the rows of entries other processes store and removes those they
 * delete, and after every (re)connection reloads the index from Redis
 * (events published while it was away are lost to it), without emptying it
 * first. Started and
 * stopped by main.c only. */
#ifndef SEMGATE_CACHE_SYNC_H
#define SEMGATE_CACHE_SYNC_H

#include "semgate/core/err.h"

struct sg_app;
struct cache_sync;

/* Start the follower thread. app is borrowed and must outlive the
 * follower. It loads the index in the background (retrying while Redis is
 * unreachable) and clears app->warming once the first load is complete;
 * a resync keeps the rows it has while it rescans. NULL (e set) when the
 * thread cannot be created. */
struct cache_sync *cache_sync_start(struct sg_app *app, struct sg_error *e);

/* Stop and join the thread (it notices within about 100 ms, or when a
 * rebuild in progress finishes), then free. Accepts NULL. */
void cache_sync_stop(struct cache_sync *cs);

#endif
