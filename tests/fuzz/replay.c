/* Replays fuzz inputs without libFuzzer: every file named on the command
 * line, or every file in a directory named there, is fed once to the
 * harness's LLVMFuzzerTestOneInput, in name order. Prints one TAP line per
 * argument (with a "# file" diagnostic before each input, so a crash names
 * its input); a crash or a failed invariant aborts the process, which meson
 * reports as a failure.
 * Built with the project's normal compiler so `meson test` keeps every
 * past crash as a regression test. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int count;   /* TAP lines */
static int inputs;  /* inputs run for the current argument */

static int cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		printf("# cannot open %s\n", path);
		return 1;
	}
	size_t cap = 1 << 16, len = 0;
	unsigned char *buf = malloc(cap);
	size_t n;
	while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
		len += n;
		if (len == cap) {
			unsigned char *p = realloc(buf, cap * 2);
			if (!p) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = p;
			cap *= 2;
		}
	}
	fclose(f);
	if (!buf) {
		printf("# out of memory reading %s\n", path);
		return 1;
	}
	/* an exact-size copy, so ASan sees any read past the input */
	unsigned char *exact = malloc(len ? len : 1);
	if (!exact) {
		free(buf);
		printf("# out of memory reading %s\n", path);
		return 1;
	}
	memcpy(exact, buf, len);
	free(buf);
	printf("# %s\n", path);
	fflush(stdout);
	LLVMFuzzerTestOneInput(exact, len);
	free(exact);
	inputs++;
	return 0;
}

static int run_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d) {
		printf("# cannot open directory %s\n", dir);
		return 1;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int bad = 0;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **p = realloc(names, cap * sizeof(*names));
			if (!p) {
				bad = 1;
				break;
			}
			names = p;
		}
		size_t l = strlen(dir) + strlen(de->d_name) + 2;
		names[n] = malloc(l);
		if (!names[n]) {
			bad = 1;
			break;
		}
		snprintf(names[n], l, "%s/%s", dir, de->d_name);
		n++;
	}
	closedir(d);
	if (n > 1)
		qsort(names, n, sizeof(*names), cmp);
	for (size_t i = 0; i < n; i++) {
		bad |= run_file(names[i]);
		free(names[i]);
	}
	free(names);
	return bad;
}

int main(int argc, char **argv)
{
	int bad = 0;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		int b;
		inputs = 0;
		if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
			b = run_dir(argv[i]);
		else
			b = run_file(argv[i]);
		printf("%s %d - %s (%d inputs)\n", b ? "not ok" : "ok", ++count, argv[i], inputs);
		fflush(stdout);
		bad |= b;
	}
	printf("1..%d\n", count);
	return bad;
}
