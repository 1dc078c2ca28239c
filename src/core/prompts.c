/* System prompt files, read once at start from one directory. Never opens
 * a path built from an unchecked name. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "semgate/core/buf.h"
#include "semgate/core/json.h"
#include "semgate/core/prompts.h"

struct prompt {
	char name[65];
	char *text;
};

struct prompts {
	struct prompt *v;
	int n;
};

bool prompts_name_valid(const char *name)
{
	size_t n = 0;
	for (const char *p = name; *p; p++, n++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-') || n >= 64)
			return false;
	}
	return n > 0;
}

static enum sg_err read_file(const char *path, char **out, struct sg_error *e)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return sg_error_set(e, SG_ERR_NOT_FOUND, "cannot open prompt %s", path);
	struct sg_buf b;
	sg_buf_init(&b, SG_PROMPT_MAX_BYTES);
	char chunk[4096];
	size_t n;
	enum sg_err rc = SG_OK;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		if ((rc = sg_buf_append(&b, chunk, n)) != SG_OK)
			break;
	fclose(f);
	if (rc == SG_OK && !sg_utf8_valid(b.data ? b.data : "", b.len))
		rc = SG_ERR_BAD_REQUEST;
	if (rc != SG_OK) {
		sg_buf_finish(&b);
		return sg_error_set(e, rc, "prompt %s is %s", path,
				    rc == SG_ERR_TOO_LARGE ? "over 64 KiB" : "not valid UTF-8");
	}
	/* a trailing newline is an artefact of editors, not part of the prompt */
	while (b.len && (b.data[b.len - 1] == '\n' || b.data[b.len - 1] == '\r'))
		b.data[--b.len] = '\0';
	*out = sg_buf_steal(&b, NULL);
	return *out ? SG_OK : sg_error_set(e, SG_ERR_NOMEM, "out of memory");
}

struct prompts *prompts_load(const char *dir, struct sg_error *e)
{
	struct prompts *p = calloc(1, sizeof(*p));
	if (!p) {
		sg_error_set(e, SG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	DIR *d = opendir(dir);
	if (!d)
		return p;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		if (len < 5 || strcmp(de->d_name + len - 4, ".txt") != 0)
			continue;
		char name[80];
		if (len - 4 >= sizeof(name))
			continue;
		memcpy(name, de->d_name, len - 4);
		name[len - 4] = '\0';
		if (!prompts_name_valid(name))
			continue;
		struct prompt *nv = realloc(p->v, sizeof(*nv) * (size_t)(p->n + 1));
		if (!nv) {
			sg_error_set(e, SG_ERR_NOMEM, "out of memory");
			goto fail;
		}
		p->v = nv;
		char path[4200];
		snprintf(path, sizeof(path), "%s/%s.txt", dir, name);
		struct prompt *pr = &p->v[p->n];
		memcpy(pr->name, name, strlen(name) + 1); /* valid names are <= 64 */
		if (read_file(path, &pr->text, e) != SG_OK)
			goto fail;
		p->n++;
	}
	closedir(d);
	return p;
fail:
	closedir(d);
	prompts_destroy(p);
	return NULL;
}

void prompts_destroy(struct prompts *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->n; i++)
		free(p->v[i].text);
	free(p->v);
	free(p);
}

const char *prompts_get(const struct prompts *p, const char *name)
{
	if (!p || !prompts_name_valid(name))
		return NULL;
	for (int i = 0; i < p->n; i++)
		if (strcmp(p->v[i].name, name) == 0)
			return p->v[i].text;
	return NULL;
}

int prompts_count(const struct prompts *p)
{
	return p ? p->n : 0;
}
