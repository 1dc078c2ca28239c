/* Levelled logging to stderr, one line per call, safe from any thread.
 * Callers must never pass secrets (API keys, passwords) to it. */
#ifndef SEMGATE_LOG_H
#define SEMGATE_LOG_H

enum sg_log_level {
	SG_LOG_DEBUG = 0,
	SG_LOG_INFO,
	SG_LOG_WARN,
	SG_LOG_ERROR,
};

/* Set the minimum level that is written. Not thread-safe: call at start. */
void sg_log_set_level(enum sg_log_level level);
enum sg_log_level sg_log_get_level(void);

/* Parse "debug|info|warn|error"; returns -1 when the name is unknown. */
int sg_log_level_parse(const char *name);

void sg_log(enum sg_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Write a preformatted line as is, regardless of level; used for JSON
 * access-log lines. Writes line[0..len) (which ends in its own newline) to stderr with one
 * write, so concurrent lines never interleave. */
void sg_log_line(const char *line, size_t len);

#endif
