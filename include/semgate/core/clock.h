/* Clocks shared by every module. */
#ifndef SEMGATE_CLOCK_H
#define SEMGATE_CLOCK_H

#include <stdint.h>

/* Monotonic time in milliseconds (for durations and deadlines). */
double sg_now_ms(void);

/* Wall-clock time in milliseconds since the Unix epoch (for expiry). */
int64_t sg_wall_ms(void);

#endif
