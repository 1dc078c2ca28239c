/* Single-flight for cache misses (see include/semgate/cache/flight.h). One
 * mutex guards the list of open flights; one condition variable wakes the
 * followers of every flight that lands (flights are few and short, so a
 * shared broadcast costs less than it saves). A flight lives until its
 * leader has landed and its last follower has taken the answer. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "semgate/cache/flight.h"

#define FLIGHTS_MAX 1024 /* open flights; beyond it a miss goes alone */

enum flight_state { OPEN, LANDED };

struct flight {
	struct flight *next;  /* in the open list while OPEN */
	enum flight_state state;
	int refs;             /* the leader (until it lands) + waiting followers */
	char *part, *exact, *query;
	size_t query_len;
	float *vec;
	int dim;
	char *answer;         /* the leader's completion, NULL: none */
	size_t answer_len;
	char id[65];
};

struct flights {
	pthread_mutex_t mu;
	pthread_cond_t cv;    /* CLOCK_MONOTONIC */
	struct flight *open;
	size_t nopen, nwaiting;
};

struct flights *flights_create(void)
{
	struct flights *f = calloc(1, sizeof(*f));
	pthread_condattr_t ca;
	if (!f)
		return NULL;
	pthread_mutex_init(&f->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&f->cv, &ca);
	pthread_condattr_destroy(&ca);
	return f;
}

static void flight_free(struct flight *fl)
{
	free(fl->part);
	free(fl->exact);
	free(fl->query);
	free(fl->vec);
	free(fl->answer);
	free(fl);
}

void flights_destroy(struct flights *f)
{
	if (!f)
		return;
	while (f->open) {
		struct flight *n = f->open->next;
		flight_free(f->open);
		f->open = n;
	}
	pthread_cond_destroy(&f->cv);
	pthread_mutex_destroy(&f->mu);
	free(f);
}

/* How well open flight fl answers rq: its similarity, or -2 when it
 * does not (another partition, not similar enough, or the verifier
 * refuses the pair). */
static double match(const struct flight *fl, const struct flight_req *rq)
{
	if (strcmp(fl->part, rq->part) != 0)
		return -2;
	if (strcmp(fl->exact, rq->exact) == 0)
		return 1;
	if (!fl->vec || !rq->vec || fl->dim != rq->dim)
		return -2;
	double d = 0;
	for (int i = 0; i < rq->dim; i++)
		d += (double)fl->vec[i] * rq->vec[i];
	if (d < rq->threshold)
		return -2;
	if (verify_pair(rq->verify, rq->query, rq->query_len, fl->query, fl->query_len) !=
	    SG_VERIFY_PASS)
		return -2;
	return d;
}

static struct flight *flight_new(const struct flight_req *rq)
{
	struct flight *fl = calloc(1, sizeof(*fl));
	if (!fl)
		return NULL;
	fl->part = strdup(rq->part);
	fl->exact = strdup(rq->exact);
	fl->query = malloc(rq->query_len + 1);
	if (fl->query) {
		memcpy(fl->query, rq->query, rq->query_len);
		fl->query[rq->query_len] = '\0';
	}
	fl->query_len = rq->query_len;
	if (rq->vec && rq->dim > 0 && (fl->vec = malloc(sizeof(float) * (size_t)rq->dim))) {
		memcpy(fl->vec, rq->vec, sizeof(float) * (size_t)rq->dim);
		fl->dim = rq->dim;
	}
	if (!fl->part || !fl->exact || !fl->query || (rq->vec && rq->dim > 0 && !fl->vec)) {
		flight_free(fl);
		return NULL;
	}
	fl->refs = 1;
	return fl;
}

static void deadline_after(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* Drop one reference; the last frees a landed flight. Under f->mu. */
static void unref_locked(struct flight *fl)
{
	if (--fl->refs == 0 && fl->state == LANDED)
		flight_free(fl);
}

void flight_answer_finish(struct flight_answer *a)
{
	if (a) {
		free(a->answer);
		memset(a, 0, sizeof(*a));
	}
}

enum flight_role flight_join(struct flights *f, const struct flight_req *rq,
			     struct flight **out, struct flight_answer *ans)
{
	*out = NULL;
	memset(ans, 0, sizeof(*ans));
	ans->similarity = -2;
	if (!f)
		return FLIGHT_ALONE;
	pthread_mutex_lock(&f->mu);
	struct flight *best = NULL;
	double best_sim = -2;
	for (struct flight *fl = f->open; fl; fl = fl->next) {
		double s = match(fl, rq);
		if (s > best_sim) {
			best_sim = s;
			best = fl;
		}
	}
	if (!best) {
		struct flight *fl = f->nopen < FLIGHTS_MAX ? flight_new(rq) : NULL;
		enum flight_role role = FLIGHT_ALONE;
		if (fl) {
			fl->next = f->open;
			f->open = fl;
			f->nopen++;
			*out = fl;
			role = FLIGHT_LEAD;
		}
		pthread_mutex_unlock(&f->mu);
		return role;
	}
	best->refs++;
	f->nwaiting++;
	struct timespec until;
	deadline_after(&until, rq->wait_ms);
	int rc = 0;
	while (best->state == OPEN && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&f->cv, &f->mu, &until);
	f->nwaiting--;
	enum flight_role role = FLIGHT_ALONE;
	if (best->state == LANDED && best->answer &&
	    (ans->answer = malloc(best->answer_len + 1))) {
		memcpy(ans->answer, best->answer, best->answer_len);
		ans->answer[best->answer_len] = '\0';
		ans->len = best->answer_len;
		memcpy(ans->id, best->id, sizeof(ans->id));
		ans->similarity = best_sim;
		role = FLIGHT_ANSWERED;
	}
	unref_locked(best);
	pthread_mutex_unlock(&f->mu);
	return role;
}

void flight_land(struct flights *f, struct flight *fl, const char *answer, size_t len,
		 const char *id)
{
	if (!f || !fl)
		return;
	char *copy = NULL;
	if (answer && (copy = malloc(len + 1))) {
		memcpy(copy, answer, len);
		copy[len] = '\0';
	}
	pthread_mutex_lock(&f->mu);
	for (struct flight **pp = &f->open; *pp; pp = &(*pp)->next)
		if (*pp == fl) {
			*pp = fl->next;
			f->nopen--;
			break;
		}
	fl->state = LANDED;
	fl->answer = copy;
	fl->answer_len = copy ? len : 0;
	snprintf(fl->id, sizeof(fl->id), "%s", id ? id : "");
	pthread_cond_broadcast(&f->cv);
	unref_locked(fl);
	pthread_mutex_unlock(&f->mu);
}

void flights_counts(struct flights *f, size_t *open, size_t *waiting)
{
	pthread_mutex_lock(&f->mu);
	*open = f->nopen;
	*waiting = f->nwaiting;
	pthread_mutex_unlock(&f->mu);
}
