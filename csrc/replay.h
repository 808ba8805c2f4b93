/*
 * Sliding-window replay filter in the style of RFC 6479: a ring of 64-bit
 * words; advancing the window clears the words it moves over instead of
 * shifting the whole bitmap.
 *
 * The window accepts counter c iff c > last, or last - c < size and c's bit
 * is clear ("last" = highest accepted counter). The ring holds size/64 + 1
 * words so the block of the oldest acceptable counter never shares a ring
 * slot with the newest block.
 *
 * The caller checks first (rw_window_check), authenticates the record, and
 * only then records it (rw_window_update): a forged record must not move the
 * window. The initial state (last = 0, all bits clear) accepts counter 0
 * exactly once without a special case.
 */
#ifndef ROLEWIRE_REPLAY_H
#define ROLEWIRE_REPLAY_H

#include <stdint.h>

typedef struct rw_window {
    uint64_t last;
    uint64_t size;   /* window size in counters, a multiple of 64 */
    uint32_t nwords; /* size / 64 + 1 */
    uint64_t *ring;
} rw_window;

/* Allocates the ring. Returns 0, or -1 on a bad size or allocation failure. */
int rw_window_init(rw_window *w, uint32_t size);
void rw_window_free(rw_window *w);
void rw_window_reset(rw_window *w);
/* 0 if acceptable, RW_ERR_REPLAY or RW_ERR_TOO_OLD otherwise. */
int rw_window_check(const rw_window *w, uint64_t counter);
void rw_window_update(rw_window *w, uint64_t counter);

#endif
