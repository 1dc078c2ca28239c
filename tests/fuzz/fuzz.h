/* Shared by the fuzz harnesses: the libFuzzer entry point (also driven by
 * replay.c, which feeds the checked-in corpus to it without libFuzzer) and
 * an invariant check that aborts, so libFuzzer and the replay test both
 * report the input as a crash. */
#ifndef SEMGATE_FUZZ_H
#define SEMGATE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
		abort(); \
	} \
} while (0)

#endif
