/* Named system prompts: prompts/NAME.txt files loaded once at start.
 * Names are checked against [A-Za-z0-9_-]{1,64} before any file is opened,
 * so no name can reach outside the prompts directory. */
#ifndef SEMGATE_PROMPTS_H
#define SEMGATE_PROMPTS_H

#include <stdbool.h>
#include "semgate/core/err.h"

#define SG_PROMPT_MAX_BYTES (64 * 1024)

struct prompts;

/* Load every NAME.txt in dir (missing dir: an empty set). Files over
 * SG_PROMPT_MAX_BYTES or not valid UTF-8 are refused with an error.
 * NULL with e set on failure. Read-only afterwards: thread-safe. */
struct prompts *prompts_load(const char *dir, struct sg_error *e);
void prompts_destroy(struct prompts *p);

/* True when name is syntactically a prompt name. */
bool prompts_name_valid(const char *name);

/* The prompt text (borrowed, lives as long as p) or NULL if unknown. */
const char *prompts_get(const struct prompts *p, const char *name);

/* Number of prompts loaded. */
int prompts_count(const struct prompts *p);

#endif
