#include "replay.h"

#include <stdlib.h>
#include <string.h>

#include "rolewire.h"

int rw_window_init(rw_window *w, uint32_t size)
{
    if (size < RW_WINDOW_MIN || size > RW_WINDOW_MAX || size % 64 != 0) {
        return -1;
    }
    w->size = size;
    w->nwords = size / 64 + 1;
    w->ring = (uint64_t *)calloc(w->nwords, sizeof(uint64_t));
    if (w->ring == NULL) {
        return -1;
    }
    w->last = 0;
    return 0;
}

void rw_window_free(rw_window *w)
{
    free(w->ring);
    w->ring = NULL;
}

void rw_window_reset(rw_window *w)
{
    memset(w->ring, 0, (size_t)w->nwords * sizeof(uint64_t));
    w->last = 0;
}

int rw_window_check(const rw_window *w, uint64_t counter)
{
    uint64_t word;

    if (counter > w->last) {
        return RW_OK;
    }
    if (w->last - counter >= w->size) {
        return RW_ERR_TOO_OLD;
    }
    word = w->ring[(counter >> 6) % w->nwords];
    if (word & ((uint64_t)1 << (counter & 63))) {
        return RW_ERR_REPLAY;
    }
    return RW_OK;
}

void rw_window_update(rw_window *w, uint64_t counter)
{
    if (counter > w->last) {
        uint64_t current_block = w->last >> 6;
        uint64_t steps = (counter >> 6) - current_block;
        uint64_t i;

        /* A jump of a whole ring or more clears every word once. */
        if (steps > w->nwords) {
            steps = w->nwords;
        }
        for (i = 1; i <= steps; i++) {
            w->ring[(current_block + i) % w->nwords] = 0;
        }
        w->last = counter;
    }
    w->ring[(counter >> 6) % w->nwords] |= (uint64_t)1 << (counter & 63);
}
