/* Monotonic time. */
#ifndef EXSA_UTIL_TIMER_H
#define EXSA_UTIL_TIMER_H

#include <stdint.h>
#include <time.h>

static inline int64_t exsa_time_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif
