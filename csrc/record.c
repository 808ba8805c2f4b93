/*
 * Record seal/open, batch variants, key update ratchet. See rolewire.h for
 * the theory of operation and docs/PROTOCOL.md ("Records") for the format.
 */
#include "rolewire.h"

#include <stdlib.h>
#include <string.h>

#include "replay.h"

/* ---- libsodium through PyNaCl's function pointers ------------------------ */

typedef int (*rw_aead_encrypt_fn)(unsigned char *c, unsigned long long *clen_p,
                                  unsigned char *m, unsigned long long mlen,
                                  unsigned char *ad, unsigned long long adlen,
                                  unsigned char *nsec, unsigned char *npub,
                                  unsigned char *k);
typedef int (*rw_aead_decrypt_fn)(unsigned char *m, unsigned long long *mlen_p,
                                  unsigned char *nsec, unsigned char *c,
                                  unsigned long long clen, unsigned char *ad,
                                  unsigned long long adlen, unsigned char *npub,
                                  unsigned char *k);
typedef void (*rw_memzero_fn)(void *pnt, size_t len);
typedef int (*rw_blake2b_fn)(unsigned char *out, size_t outlen,
                             unsigned char *in, unsigned long long inlen,
                             unsigned char *key, size_t keylen,
                             unsigned char *salt, unsigned char *personal);

static struct {
    rw_aead_encrypt_fn encrypt[3];
    rw_aead_decrypt_fn decrypt[3];
    rw_memzero_fn memzero;
    rw_blake2b_fn blake2b;
    int ready;
} sodium;

int rw_install_sodium(uintptr_t chacha_encrypt, uintptr_t chacha_decrypt,
                      uintptr_t aegis256_encrypt, uintptr_t aegis256_decrypt,
                      uintptr_t memzero, uintptr_t blake2b_salt_personal)
{
    if (!chacha_encrypt || !chacha_decrypt || !aegis256_encrypt ||
        !aegis256_decrypt || !memzero || !blake2b_salt_personal) {
        return RW_ERR_ARG;
    }
    sodium.encrypt[RW_SUITE_CHACHA20_POLY1305] = (rw_aead_encrypt_fn)chacha_encrypt;
    sodium.decrypt[RW_SUITE_CHACHA20_POLY1305] = (rw_aead_decrypt_fn)chacha_decrypt;
    sodium.encrypt[RW_SUITE_AEGIS_256] = (rw_aead_encrypt_fn)aegis256_encrypt;
    sodium.decrypt[RW_SUITE_AEGIS_256] = (rw_aead_decrypt_fn)aegis256_decrypt;
    sodium.memzero = (rw_memzero_fn)memzero;
    sodium.blake2b = (rw_blake2b_fn)blake2b_salt_personal;
    sodium.ready = 1;
    return RW_OK;
}

/* ---- small helpers ------------------------------------------------------- */

#if defined(_MSC_VER)
#include <intrin.h>
typedef volatile char rw_lock_t;
#define RW_TRY_LOCK(p) (_InterlockedExchange8((p), 1) == 0)
#define RW_UNLOCK(p) ((void)_InterlockedExchange8((p), 0))
#else
typedef char rw_lock_t;
#define RW_TRY_LOCK(p) (!__atomic_test_and_set((p), __ATOMIC_ACQUIRE))
#define RW_UNLOCK(p) __atomic_clear((p), __ATOMIC_RELEASE)
#endif

static int suite_valid(int suite)
{
    return suite == RW_SUITE_CHACHA20_POLY1305 || suite == RW_SUITE_AEGIS_256;
}

int rw_suite_iv_size(int suite)
{
    if (suite == RW_SUITE_CHACHA20_POLY1305) {
        return 12;
    }
    if (suite == RW_SUITE_AEGIS_256) {
        return 32;
    }
    return RW_ERR_SUITE;
}

int rw_suite_tag_size(int suite)
{
    if (suite == RW_SUITE_CHACHA20_POLY1305) {
        return 16;
    }
    if (suite == RW_SUITE_AEGIS_256) {
        return 32;
    }
    return RW_ERR_SUITE;
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void store_be64(uint8_t *p, uint64_t v)
{
    store_be32(p, (uint32_t)(v >> 32));
    store_be32(p + 4, (uint32_t)v);
}

static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static uint64_t load_be64(const uint8_t *p)
{
    return ((uint64_t)load_be32(p) << 32) | (uint64_t)load_be32(p + 4);
}

/* One epoch's key and per-direction IV. */
typedef struct rw_keyslot {
    uint8_t key[RW_KEY_SIZE];
    uint8_t iv[RW_MAX_IV_SIZE];
    uint32_t epoch;
    int live;
} rw_keyslot;

static void wipe_slot(rw_keyslot *slot)
{
    sodium.memzero(slot, sizeof(*slot));
}

static void make_nonce(uint8_t *nonce, const rw_keyslot *slot, size_t iv_len,
                       uint64_t counter)
{
    size_t i;

    memcpy(nonce, slot->iv, iv_len);
    for (i = 0; i < 8; i++) {
        nonce[iv_len - 8 + i] ^= (uint8_t)(counter >> (56 - 8 * i));
    }
}

static void write_header(uint8_t *out, int suite, uint32_t epoch, uint64_t counter)
{
    out[0] = RW_VERSION;
    out[1] = (uint8_t)suite;
    store_be32(out + 2, epoch);
    store_be64(out + 6, counter);
}

/*
 * One step of the key update ratchet:
 *   okm = BLAKE2b-512(key = K_e, msg = IV_e || be32(e + 1),
 *                     salt = 0^16, personal = "rolewire kupdate")
 *   K_{e+1} = okm[0:32], IV_{e+1} = okm[32 : 32 + iv_len]
 * One-way: K_e cannot be computed from K_{e+1}.
 */
static const uint8_t KUPDATE_PERSONAL[16] = {'r', 'o', 'l', 'e', 'w', 'i', 'r', 'e',
                                             ' ', 'k', 'u', 'p', 'd', 'a', 't', 'e'};

static int ratchet(rw_keyslot *slot, size_t iv_len)
{
    uint8_t input[RW_MAX_IV_SIZE + 4];
    uint8_t okm[64];
    uint8_t salt[16] = {0};
    uint8_t personal[16];
    int rc;

    if (slot->epoch == UINT32_MAX) {
        return RW_ERR_EPOCH_LIMIT;
    }
    memcpy(personal, KUPDATE_PERSONAL, sizeof(personal));
    memcpy(input, slot->iv, iv_len);
    store_be32(input + iv_len, slot->epoch + 1);
    rc = sodium.blake2b(okm, sizeof(okm), input, iv_len + 4, slot->key, RW_KEY_SIZE,
                        salt, personal);
    if (rc == 0) {
        memcpy(slot->key, okm, RW_KEY_SIZE);
        memcpy(slot->iv, okm + RW_KEY_SIZE, iv_len);
        slot->epoch += 1;
    }
    sodium.memzero(okm, sizeof(okm));
    sodium.memzero(input, sizeof(input));
    return rc == 0 ? RW_OK : RW_ERR_ARG;
}

static int limits_valid(const rw_limits *l)
{
    return l != NULL && l->hard_messages >= 1 && l->soft_messages <= l->hard_messages &&
           l->soft_bytes <= l->hard_bytes && l->max_plaintext >= 1 &&
           l->max_plaintext <= RW_PROTOCOL_MAX_PLAINTEXT;
}

/* ---- sender -------------------------------------------------------------- */

struct rw_sender {
    rw_lock_t lock;
    int closed;
    /* Set between rw_seal_begin/rw_seal_batch_begin and rw_sender_end: the
     * lock is held on behalf of the caller's AEAD (see rolewire.h). */
    int external;
    int suite;
    size_t iv_len;
    size_t tag_len;
    rw_keyslot slot;
    uint64_t next_counter;
    uint64_t bytes;
    rw_limits limits;
};

rw_sender *rw_sender_new(int suite, const uint8_t *key, const uint8_t *iv,
                         uint32_t epoch, const rw_limits *limits)
{
    rw_sender *s;

    if (!sodium.ready || !suite_valid(suite) || key == NULL || iv == NULL ||
        !limits_valid(limits)) {
        return NULL;
    }
    s = (rw_sender *)calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->suite = suite;
    s->iv_len = (size_t)rw_suite_iv_size(suite);
    s->tag_len = (size_t)rw_suite_tag_size(suite);
    memcpy(s->slot.key, key, RW_KEY_SIZE);
    memcpy(s->slot.iv, iv, s->iv_len);
    s->slot.epoch = epoch;
    s->slot.live = 1;
    s->limits = *limits;
    return s;
}

void rw_sender_free(rw_sender *s)
{
    if (s == NULL) {
        return;
    }
    sodium.memzero(s, sizeof(*s));
    free(s);
}

int rw_sender_close(rw_sender *s)
{
    if (!RW_TRY_LOCK(&s->lock)) {
        return RW_ERR_BUSY;
    }
    wipe_slot(&s->slot);
    s->closed = 1;
    RW_UNLOCK(&s->lock);
    return RW_OK;
}

uint32_t rw_sender_epoch(const rw_sender *s) { return s->slot.epoch; }
uint64_t rw_sender_next_counter(const rw_sender *s) { return s->next_counter; }
uint64_t rw_sender_bytes(const rw_sender *s) { return s->bytes; }

static int rekey_flag(const rw_sender *s)
{
    return (s->next_counter >= s->limits.soft_messages || s->bytes >= s->limits.soft_bytes)
               ? RW_REKEY_DUE
               : RW_OK;
}

/* Takes the next counter for a record of pt_len bytes sealed by the
 * caller's AEAD: writes the header at out[0 .. 14) and the nonce at
 * out[14 .. 14 + iv_len) (inside the region the ciphertext will overwrite:
 * it is at least tag_len >= iv_len long). The caller holds the lock and has
 * checked all limits. */
static void reserve_one(rw_sender *s, size_t pt_len, uint8_t *out)
{
    uint64_t counter = s->next_counter;

    write_header(out, s->suite, s->slot.epoch, counter);
    make_nonce(out + RW_HEADER_SIZE, &s->slot, s->iv_len, counter);
    /* As in seal_one: the counter is spent whether or not the caller's
     * AEAD then seals; a skipped counter is harmless, a reused one is not. */
    s->next_counter = counter + 1;
    s->bytes += pt_len;
}

/* Seals one record; the caller holds the lock and has checked all limits. */
static int seal_one(rw_sender *s, const uint8_t *pt, size_t pt_len, uint8_t *out)
{
    uint8_t nonce[RW_MAX_IV_SIZE];
    unsigned long long clen = 0;
    uint64_t counter = s->next_counter;
    int rc;

    write_header(out, s->suite, s->slot.epoch, counter);
    make_nonce(nonce, &s->slot, s->iv_len, counter);
    rc = sodium.encrypt[s->suite](out + RW_HEADER_SIZE, &clen, (unsigned char *)pt,
                                  (unsigned long long)pt_len, out, RW_HEADER_SIZE, NULL,
                                  nonce, s->slot.key);
    if (rc != 0) {
        return RW_ERR_ARG;
    }
    /* The counter advances even if a later step fails: a nonce is never
     * reused, a skipped counter is harmless. */
    s->next_counter = counter + 1;
    s->bytes += pt_len;
    return RW_OK;
}

static int sender_usable(const rw_sender *s)
{
    if (s->closed) {
        return RW_ERR_CLOSED;
    }
    return RW_OK;
}

/* The checks before sealing one record of pt_len bytes; the caller holds
 * the lock. */
static int seal_check(const rw_sender *s, size_t pt_len, size_t out_cap)
{
    int rc = sender_usable(s);

    if (rc == RW_OK && pt_len > s->limits.max_plaintext) {
        rc = RW_ERR_TOO_LARGE;
    }
    if (rc == RW_OK && (s->next_counter >= s->limits.hard_messages ||
                        s->limits.hard_bytes - s->bytes < pt_len)) {
        rc = RW_ERR_EXHAUSTED;
    }
    if (rc == RW_OK && out_cap < RW_HEADER_SIZE + pt_len + s->tag_len) {
        rc = RW_ERR_BUFFER;
    }
    return rc;
}

int rw_seal(rw_sender *s, const uint8_t *pt, size_t pt_len, uint8_t *out,
            size_t out_cap, size_t *out_len)
{
    int rc;

    if (!RW_TRY_LOCK(&s->lock)) {
        return RW_ERR_BUSY;
    }
    rc = seal_check(s, pt_len, out_cap);
    if (rc == RW_OK) {
        rc = seal_one(s, pt, pt_len, out);
    }
    if (rc == RW_OK) {
        if (out_len != NULL) {
            *out_len = RW_HEADER_SIZE + pt_len + s->tag_len;
        }
        rc = rekey_flag(s);
    }
    RW_UNLOCK(&s->lock);
    return rc;
}

int rw_seal_begin(rw_sender *s, size_t pt_len, uint8_t *out, size_t out_cap)
{
    int rc;

    if (!RW_TRY_LOCK(&s->lock)) {
        return RW_ERR_BUSY;
    }
    /* out holds only the header and the nonce: the caller builds the record. */
    rc = seal_check(s, pt_len, SIZE_MAX);
    if (rc == RW_OK && out_cap < RW_HEADER_SIZE + s->iv_len) {
        rc = RW_ERR_BUFFER;
    }
    if (rc != RW_OK) {
        RW_UNLOCK(&s->lock);
        return rc;
    }
    reserve_one(s, pt_len, out);
    s->external = 1;
    return rekey_flag(s);
}

int rw_seal_begin_more(rw_sender *s, size_t pt_len, uint8_t *out, size_t out_cap)
{
    int rc;

    if (!s->external) {
        return RW_ERR_ARG;
    }
    /* The lock is held (rw_seal_begin): the checks of rw_seal_begin. */
    rc = seal_check(s, pt_len, SIZE_MAX);
    if (rc == RW_OK && out_cap < RW_HEADER_SIZE + s->iv_len) {
        rc = RW_ERR_BUFFER;
    }
    if (rc != RW_OK) {
        return rc;
    }
    reserve_one(s, pt_len, out);
    return rekey_flag(s);
}

int rw_sender_export_key(const rw_sender *s, uint8_t *key_out)
{
    if (!s->external) {
        return RW_ERR_ARG;
    }
    memcpy(key_out, s->slot.key, RW_KEY_SIZE);
    return RW_OK;
}

int rw_sender_end(rw_sender *s)
{
    if (!s->external) {
        return RW_ERR_ARG;
    }
    s->external = 0;
    RW_UNLOCK(&s->lock);
    return RW_OK;
}

/* rw_seal_batch and rw_seal_batch_begin: records of at least `threshold`
 * bytes are only reserved (reserve_one) and counted in *deferred. */
static int seal_batch(rw_sender *s, const uint8_t *in, size_t in_len, const uint64_t *in_off,
                      size_t n, uint8_t *out, size_t out_cap, uint64_t *out_off,
                      uint64_t threshold, uint64_t *deferred)
{
    uint64_t total_pt = 0;
    uint64_t need;
    size_t i;
    int rc;

    if (!RW_TRY_LOCK(&s->lock)) {
        return RW_ERR_BUSY;
    }
    *deferred = 0;
    rc = sender_usable(s);
    /* Validate everything first: all or nothing. */
    for (i = 0; rc == RW_OK && i < n; i++) {
        if (in_off[i] > in_off[i + 1] || in_off[i + 1] > in_len) {
            rc = RW_ERR_ARG;
        } else if (in_off[i + 1] - in_off[i] > s->limits.max_plaintext) {
            rc = RW_ERR_TOO_LARGE;
        } else {
            total_pt += in_off[i + 1] - in_off[i];
        }
    }
    if (rc == RW_OK && (s->limits.hard_messages - s->next_counter < n ||
                        s->next_counter >= s->limits.hard_messages ||
                        s->limits.hard_bytes - s->bytes < total_pt)) {
        rc = RW_ERR_EXHAUSTED;
    }
    need = total_pt + (uint64_t)n * (RW_HEADER_SIZE + s->tag_len);
    if (rc == RW_OK && out_cap < need) {
        rc = RW_ERR_BUFFER;
    }
    if (rc == RW_OK) {
        out_off[0] = 0;
        for (i = 0; i < n; i++) {
            size_t len = (size_t)(in_off[i + 1] - in_off[i]);
            if (len >= threshold) {
                reserve_one(s, len, out + out_off[i]);
                *deferred += 1;
            } else {
                rc = seal_one(s, in + in_off[i], len, out + out_off[i]);
                if (rc != RW_OK) {
                    break;
                }
            }
            out_off[i + 1] = out_off[i] + RW_HEADER_SIZE + len + s->tag_len;
        }
    }
    if (rc == RW_OK) {
        rc = rekey_flag(s);
    }
    if (rc >= 0 && *deferred > 0) {
        s->external = 1; /* the caller seals the deferred records, then rw_sender_end */
    } else {
        *deferred = 0;
        RW_UNLOCK(&s->lock);
    }
    return rc;
}

int rw_seal_batch(rw_sender *s, const uint8_t *in, size_t in_len, const uint64_t *in_off,
                  size_t n, uint8_t *out, size_t out_cap, uint64_t *out_off)
{
    uint64_t deferred;

    return seal_batch(s, in, in_len, in_off, n, out, out_cap, out_off, UINT64_MAX, &deferred);
}

int rw_seal_batch_begin(rw_sender *s, const uint8_t *in, size_t in_len,
                        const uint64_t *in_off, size_t n, uint8_t *out, size_t out_cap,
                        uint64_t *out_off, uint64_t threshold, uint64_t *deferred)
{
    if (threshold == 0) {
        *deferred = 0;
        return RW_ERR_ARG;
    }
    return seal_batch(s, in, in_len, in_off, n, out, out_cap, out_off, threshold, deferred);
}

int rw_sender_update_key(rw_sender *s)
{
    int rc;

    if (!RW_TRY_LOCK(&s->lock)) {
        return RW_ERR_BUSY;
    }
    rc = sender_usable(s);
    if (rc == RW_OK) {
        rc = ratchet(&s->slot, s->iv_len);
    }
    if (rc == RW_OK) {
        s->next_counter = 0;
        s->bytes = 0;
    }
    RW_UNLOCK(&s->lock);
    return rc;
}

/* ---- receiver ------------------------------------------------------------ */

/* How many epochs ahead a record may be and still make the receiver follow
 * the sender's ratchet (the sender may rekey again before any record of the
 * intermediate epoch arrived). */
#define RW_MAX_EPOCH_SKIP 4

struct rw_receiver {
    rw_lock_t lock;
    int closed;
    int suite;
    size_t iv_len;
    size_t tag_len;
    rw_keyslot current;
    rw_window current_window;
    rw_limits limits;
    /* Past epochs still open (each for its grace period, which the session
     * times): past[0 .. npast-1], newest first, at most max_past of them.
     * past_window[0 .. nwindows-1] are allocated; the ones from npast on are
     * spares (reset) for the next epoch change. Windows are allocated when
     * an epoch first becomes past, not up front: a connection that never
     * rekeys holds one window (1 KiB at the default size), not five. */
    uint32_t max_past;
    uint32_t npast;
    uint32_t nwindows;
    uint32_t window_size;
    rw_keyslot past[RW_MAX_PAST_EPOCHS];
    rw_window past_window[RW_MAX_PAST_EPOCHS];
    /* Set between rw_open_begin (or a stopped rw_open_batch_step) and
     * rw_open_end / the next step: the lock is held on behalf of the
     * caller's AEAD, for a record of the current epoch at this counter. */
    int pending;
    uint64_t pending_counter;
};

rw_receiver *rw_receiver_new(int suite, const uint8_t *key, const uint8_t *iv,
                             uint32_t epoch, const rw_limits *limits, uint32_t window)
{
    rw_receiver *r;

    if (!sodium.ready || !suite_valid(suite) || key == NULL || iv == NULL ||
        !limits_valid(limits)) {
        return NULL;
    }
    r = (rw_receiver *)calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    if (rw_window_init(&r->current_window, window) != 0) {
        free(r);
        return NULL;
    }
    r->nwindows = 0;
    r->max_past = 1;
    r->window_size = window;
    r->suite = suite;
    r->iv_len = (size_t)rw_suite_iv_size(suite);
    r->tag_len = (size_t)rw_suite_tag_size(suite);
    memcpy(r->current.key, key, RW_KEY_SIZE);
    memcpy(r->current.iv, iv, r->iv_len);
    r->current.epoch = epoch;
    r->current.live = 1;
    r->limits = *limits;
    return r;
}

void rw_receiver_free(rw_receiver *r)
{
    uint32_t i;

    if (r == NULL) {
        return;
    }
    rw_window_free(&r->current_window);
    for (i = 0; i < r->nwindows; i++) {
        rw_window_free(&r->past_window[i]);
    }
    sodium.memzero(r, sizeof(*r));
    free(r);
}

/* Removes past[i], wiping its key; its window goes to the spares. */
static void drop_past(rw_receiver *r, uint32_t i)
{
    rw_window spare = r->past_window[i];

    wipe_slot(&r->past[i]);
    memmove(&r->past[i], &r->past[i + 1], (r->npast - i - 1) * sizeof(rw_keyslot));
    memmove(&r->past_window[i], &r->past_window[i + 1],
            (r->npast - i - 1) * sizeof(rw_window));
    r->npast -= 1;
    sodium.memzero(&r->past[r->npast], sizeof(rw_keyslot));
    r->past_window[r->npast] = spare;
    rw_window_reset(&r->past_window[r->npast]);
}

int rw_receiver_set_max_past(rw_receiver *r, uint32_t max_past)
{
    int rc = RW_OK;

    if (max_past > RW_MAX_PAST_EPOCHS) {
        return RW_ERR_ARG;
    }
    if (!RW_TRY_LOCK(&r->lock)) {
        return RW_ERR_BUSY;
    }
    /* (windows for the past epochs come when they are needed: push_past) */
    while (r->npast > max_past) {
        drop_past(r, r->npast - 1);
    }
    r->max_past = max_past;
    RW_UNLOCK(&r->lock);
    return rc;
}

int rw_receiver_close(rw_receiver *r)
{
    if (!RW_TRY_LOCK(&r->lock)) {
        return RW_ERR_BUSY;
    }
    wipe_slot(&r->current);
    while (r->npast > 0) {
        drop_past(r, r->npast - 1);
    }
    r->closed = 1;
    RW_UNLOCK(&r->lock);
    return RW_OK;
}

int rw_receiver_retire_previous(rw_receiver *r)
{
    if (!RW_TRY_LOCK(&r->lock)) {
        return RW_ERR_BUSY;
    }
    while (r->npast > 0) {
        drop_past(r, r->npast - 1);
    }
    RW_UNLOCK(&r->lock);
    return RW_OK;
}

int rw_receiver_retire_epoch(rw_receiver *r, uint32_t epoch)
{
    uint32_t i;

    if (!RW_TRY_LOCK(&r->lock)) {
        return RW_ERR_BUSY;
    }
    for (i = 0; i < r->npast; i++) {
        if (r->past[i].epoch == epoch) {
            drop_past(r, i);
            break;
        }
    }
    RW_UNLOCK(&r->lock);
    return RW_OK;
}

uint32_t rw_receiver_past_count(const rw_receiver *r) { return r->npast; }

uint32_t rw_receiver_past_epoch(const rw_receiver *r, uint32_t i)
{
    return i < r->npast ? r->past[i].epoch : 0;
}

uint32_t rw_receiver_epoch(const rw_receiver *r) { return r->current.epoch; }
int rw_receiver_has_previous(const rw_receiver *r) { return r->npast > 0; }

/* Index of the live past epoch `epoch`, or -1. */
static int find_past(const rw_receiver *r, uint32_t epoch)
{
    uint32_t i;

    for (i = 0; i < r->npast; i++) {
        if (r->past[i].epoch == epoch) {
            return (int)i;
        }
    }
    return -1;
}

/* Puts `slot` in front of the past epochs (the oldest beyond max_past is
 * wiped); its window becomes *window_in_out (swapped with a reset spare). */
static void push_past(rw_receiver *r, const rw_keyslot *slot, rw_window *window_in_out)
{
    rw_window spare;

    if (r->max_past == 0) {
        if (window_in_out != NULL) {
            rw_window_reset(window_in_out);
        }
        return;
    }
    if (r->npast == r->max_past) {
        drop_past(r, r->npast - 1);
    }
    if (r->npast == r->nwindows) {
        /* No spare yet: allocate it now. Out of memory, the epoch is not
         * kept open (its late records are refused, as with max_past 0):
         * nothing else changes. */
        if (rw_window_init(&r->past_window[r->nwindows], r->window_size) != 0) {
            if (window_in_out != NULL) {
                rw_window_reset(window_in_out);
            }
            return;
        }
        r->nwindows += 1;
    }
    spare = r->past_window[r->npast];
    memmove(&r->past[1], &r->past[0], r->npast * sizeof(rw_keyslot));
    memmove(&r->past_window[1], &r->past_window[0], r->npast * sizeof(rw_window));
    r->past[0] = *slot;
    r->past[0].live = 1;
    if (window_in_out != NULL) {
        r->past_window[0] = *window_in_out;
        *window_in_out = spare;
        rw_window_reset(window_in_out);
    } else {
        r->past_window[0] = spare;
    }
    r->npast += 1;
}

/* A record authenticated under the newer epoch of `candidate`: the current
 * epoch and every epoch skipped on the way become past epochs (a late record
 * of a skipped epoch still opens), the candidate becomes current with an
 * empty window. */
static void advance(rw_receiver *r, const rw_keyslot *candidate)
{
    rw_keyslot step = r->current;

    push_past(r, &r->current, &r->current_window);
    while (ratchet(&step, r->iv_len) == RW_OK && step.epoch < candidate->epoch) {
        push_past(r, &step, NULL);
    }
    wipe_slot(&step);
    wipe_slot(&r->current);
    r->current = *candidate;
}

/* Where a record opens: its key slot, its window (NULL for a candidate
 * epoch, whose key locate() ratcheted into *candidate), counter and
 * plaintext length. */
typedef struct rw_target {
    rw_keyslot *slot;
    rw_window *window;
    uint64_t counter;
    size_t pt_len;
} rw_target;

/* Every check before the AEAD (docs/PROTOCOL.md, "Records", steps 1-6); the
 * caller holds the lock. Changes no state. */
static int locate(rw_receiver *r, const uint8_t *rec, size_t rec_len, size_t out_cap,
                  rw_keyslot *candidate, rw_target *t)
{
    int past;
    uint32_t epoch;
    int rc;

    if (r->closed) {
        return RW_ERR_CLOSED;
    }
    if (rec_len < RW_HEADER_SIZE + r->tag_len) {
        return RW_ERR_MALFORMED;
    }
    if (rec[0] != RW_VERSION) {
        return RW_ERR_VERSION;
    }
    if (rec[1] != r->suite) {
        return RW_ERR_SUITE;
    }
    t->pt_len = rec_len - RW_HEADER_SIZE - r->tag_len;
    if (t->pt_len > r->limits.max_plaintext) {
        return RW_ERR_TOO_LARGE;
    }
    if (out_cap < t->pt_len) {
        return RW_ERR_BUFFER;
    }
    epoch = load_be32(rec + 2);
    t->counter = load_be64(rec + 6);
    if (t->counter >= r->limits.hard_messages) {
        return RW_ERR_COUNTER;
    }

    t->window = NULL;
    if (epoch == r->current.epoch) {
        t->slot = &r->current;
        t->window = &r->current_window;
    } else if (epoch < r->current.epoch && (past = find_past(r, epoch)) >= 0) {
        t->slot = &r->past[past];
        t->window = &r->past_window[past];
    } else if (epoch > r->current.epoch && epoch - r->current.epoch <= RW_MAX_EPOCH_SKIP) {
        /* A fresh epoch: its window is empty, so no replay check applies. */
        *candidate = r->current;
        while (candidate->epoch < epoch) {
            rc = ratchet(candidate, r->iv_len);
            if (rc != RW_OK) {
                wipe_slot(candidate);
                return rc;
            }
        }
        t->slot = candidate;
    } else {
        return RW_ERR_UNKNOWN_EPOCH;
    }

    if (t->window != NULL) {
        rc = rw_window_check(t->window, t->counter);
        if (rc != RW_OK) {
            return rc;
        }
    }
    return RW_OK;
}

/* AEAD open of a located record, then the state change (steps 7-8). On any
 * error the output region is wiped, so unauthenticated plaintext never
 * leaves this function. */
static int decrypt_commit(rw_receiver *r, const uint8_t *rec, size_t rec_len, uint8_t *out,
                          size_t *out_len, rw_keyslot *candidate, const rw_target *t)
{
    uint8_t nonce[RW_MAX_IV_SIZE];
    unsigned long long mlen = 0;
    int rc;

    make_nonce(nonce, t->slot, r->iv_len, t->counter);
    rc = sodium.decrypt[r->suite](out, &mlen, NULL, (unsigned char *)rec + RW_HEADER_SIZE,
                                  (unsigned long long)(rec_len - RW_HEADER_SIZE),
                                  (unsigned char *)rec, RW_HEADER_SIZE, nonce, t->slot->key);
    if (rc != 0 || mlen != t->pt_len) {
        sodium.memzero(out, t->pt_len);
        if (t->window == NULL) {
            wipe_slot(candidate);
        }
        return RW_ERR_AUTH;
    }
    if (out_len != NULL) {
        *out_len = t->pt_len;
    }

    if (t->window == NULL) {
        advance(r, candidate);
        wipe_slot(candidate);
        rw_window_update(&r->current_window, t->counter);
        return RW_EPOCH_ADVANCED;
    }
    rw_window_update(t->window, t->counter);
    return RW_OK;
}

/* Opens one record; the caller holds the lock. */
static int open_one(rw_receiver *r, const uint8_t *rec, size_t rec_len, uint8_t *out,
                    size_t out_cap, size_t *out_len)
{
    rw_keyslot candidate;
    rw_target t;
    int rc = locate(r, rec, rec_len, out_cap, &candidate, &t);

    if (rc != RW_OK) {
        return rc;
    }
    return decrypt_commit(r, rec, rec_len, out, out_len, &candidate, &t);
}

int rw_open(rw_receiver *r, const uint8_t *rec, size_t rec_len, uint8_t *out,
            size_t out_cap, size_t *out_len)
{
    int rc;

    if (!RW_TRY_LOCK(&r->lock)) {
        return RW_ERR_BUSY;
    }
    rc = open_one(r, rec, rec_len, out, out_cap, out_len);
    RW_UNLOCK(&r->lock);
    return rc;
}

/* ---- the caller's AEAD for records of the current epoch ------------------ */

int rw_open_begin(rw_receiver *r, const uint8_t *rec, size_t rec_len, uint8_t *nonce_out)
{
    rw_keyslot candidate;
    rw_target t;
    int rc;

    if (!RW_TRY_LOCK(&r->lock)) {
        return RW_ERR_BUSY;
    }
    rc = locate(r, rec, rec_len, SIZE_MAX, &candidate, &t);
    if (rc == RW_OK && t.slot != &r->current) {
        /* A past or a candidate epoch: rare, left to rw_open. */
        if (t.window == NULL) {
            wipe_slot(&candidate);
        }
        rc = RW_OPEN_NATIVE;
    }
    if (rc != RW_OK) {
        RW_UNLOCK(&r->lock);
        return rc;
    }
    make_nonce(nonce_out, &r->current, r->iv_len, t.counter);
    r->pending = 1;
    r->pending_counter = t.counter;
    return RW_OK;
}

int rw_receiver_export_key(const rw_receiver *r, uint8_t *key_out)
{
    if (!r->pending) {
        return RW_ERR_ARG;
    }
    memcpy(key_out, r->current.key, RW_KEY_SIZE);
    return RW_OK;
}

int rw_open_begin_more(rw_receiver *r, const uint8_t *rec, size_t rec_len, uint8_t *nonce_out)
{
    rw_keyslot candidate;
    rw_target t;
    int rc;

    if (!r->pending) {
        return RW_ERR_ARG;
    }
    /* The lock is held (rw_open_begin): no other thread changes the state. */
    rc = locate(r, rec, rec_len, SIZE_MAX, &candidate, &t);
    if (rc == RW_OK && t.slot != &r->current) {
        if (t.window == NULL) {
            wipe_slot(&candidate);
        }
        return RW_OPEN_NATIVE;
    }
    if (rc != RW_OK) {
        return rc;
    }
    make_nonce(nonce_out, &r->current, r->iv_len, t.counter);
    return RW_OK;
}

int rw_open_commit(rw_receiver *r, const uint8_t *rec, size_t rec_len, int authenticated)
{
    uint64_t counter;
    int rc;

    if (!r->pending || rec_len < RW_HEADER_SIZE) {
        return RW_ERR_ARG;
    }
    if (!authenticated) {
        return RW_ERR_AUTH;
    }
    /* Checked again: a record committed before this one (a duplicate, or
     * one far ahead) may have marked its counter or moved the window past
     * it - what rw_open would have found, record after record. */
    counter = load_be64(rec + 6);
    rc = rw_window_check(&r->current_window, counter);
    if (rc != RW_OK) {
        return rc;
    }
    rw_window_update(&r->current_window, counter);
    return RW_OK;
}

int rw_open_end(rw_receiver *r, int authenticated)
{
    if (!r->pending) {
        return RW_ERR_ARG;
    }
    if (authenticated) {
        rw_window_update(&r->current_window, r->pending_counter);
    }
    r->pending = 0;
    RW_UNLOCK(&r->lock);
    return RW_OK;
}

int64_t rw_open_batch_step(rw_receiver *r, const uint8_t *in, size_t in_len,
                           const uint64_t *in_off, size_t n, uint8_t *out, size_t out_cap,
                           uint64_t *out_off, int32_t *status, uint64_t threshold,
                           size_t start, int32_t prev, uint8_t *nonce_out, uint64_t *stop)
{
    int64_t opened = 0;
    size_t i;

    if (start == 0) {
        for (i = 0; i < n; i++) {
            if (in_off[i] > in_off[i + 1] || in_off[i + 1] > in_len) {
                return RW_ERR_ARG;
            }
        }
        if (n > 0 && out_cap < in_off[n] - in_off[0]) {
            return RW_ERR_BUFFER;
        }
        if (threshold == 0) {
            return RW_ERR_ARG;
        }
        if (!RW_TRY_LOCK(&r->lock)) {
            return RW_ERR_BUSY;
        }
        out_off[0] = 0;
        status[n] = RW_OK;
    } else {
        /* Resuming after record start - 1, which the caller opened (prev:
         * RW_OK, or RW_ERR_AUTH with nothing written). */
        size_t pt_len;

        if (!r->pending || start > n) {
            return RW_ERR_ARG;
        }
        pt_len = (size_t)(in_off[start] - in_off[start - 1]) - RW_HEADER_SIZE - r->tag_len;
        if (prev == RW_OK) {
            rw_window_update(&r->current_window, r->pending_counter);
            opened++;
        } else {
            prev = RW_ERR_AUTH;
            pt_len = 0;
        }
        r->pending = 0;
        status[start - 1] = prev;
        out_off[start] = out_off[start - 1] + pt_len;
    }
    /* Written only with the lock held (the caller may share these buffers
     * between calls). */
    *stop = n;
    for (i = start; i < n; i++) {
        const uint8_t *rec = in + in_off[i];
        size_t rec_len = (size_t)(in_off[i + 1] - in_off[i]);
        size_t pt_len = 0;
        rw_keyslot candidate;
        rw_target t;
        int rc = locate(r, rec, rec_len, out_cap - out_off[i], &candidate, &t);

        if (rc == RW_OK && t.slot == &r->current && t.pt_len >= threshold) {
            make_nonce(nonce_out, &r->current, r->iv_len, t.counter);
            r->pending = 1;
            r->pending_counter = t.counter;
            *stop = i;
            return opened; /* the lock stays held */
        }
        if (rc == RW_OK) {
            rc = decrypt_commit(r, rec, rec_len, out + out_off[i], &pt_len, &candidate, &t);
        }
        status[i] = rc;
        if (rc >= 0) {
            opened++;
            status[n] |= rc;
        } else {
            pt_len = 0;
        }
        out_off[i + 1] = out_off[i] + pt_len;
    }
    RW_UNLOCK(&r->lock);
    return opened;
}

int64_t rw_open_batch(rw_receiver *r, const uint8_t *in, size_t in_len,
                      const uint64_t *in_off, size_t n, uint8_t *out, size_t out_cap,
                      uint64_t *out_off, int32_t *status)
{
    uint8_t nonce[RW_MAX_IV_SIZE];
    uint64_t stop;

    /* No plaintext reaches UINT64_MAX bytes: every record opens here. */
    return rw_open_batch_step(r, in, in_len, in_off, n, out, out_cap, out_off, status,
                              UINT64_MAX, 0, RW_OK, nonce, &stop);
}

/* ---- test hooks ---------------------------------------------------------- */

int rw_aead_seal(int suite, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad,
                 size_t ad_len, const uint8_t *pt, size_t pt_len, uint8_t *out)
{
    unsigned long long clen = 0;

    if (!sodium.ready) {
        return RW_ERR_NOT_READY;
    }
    if (!suite_valid(suite)) {
        return RW_ERR_SUITE;
    }
    if (sodium.encrypt[suite](out, &clen, (unsigned char *)pt, pt_len, (unsigned char *)ad,
                              ad_len, NULL, (unsigned char *)nonce,
                              (unsigned char *)key) != 0) {
        return RW_ERR_ARG;
    }
    return RW_OK;
}

int rw_aead_open(int suite, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad,
                 size_t ad_len, const uint8_t *ct, size_t ct_len, uint8_t *out)
{
    unsigned long long mlen = 0;

    if (!sodium.ready) {
        return RW_ERR_NOT_READY;
    }
    if (!suite_valid(suite)) {
        return RW_ERR_SUITE;
    }
    if (ct_len < (size_t)rw_suite_tag_size(suite)) {
        return RW_ERR_MALFORMED;
    }
    if (sodium.decrypt[suite](out, &mlen, NULL, (unsigned char *)ct, ct_len,
                              (unsigned char *)ad, ad_len, (unsigned char *)nonce,
                              (unsigned char *)key) != 0) {
        return RW_ERR_AUTH;
    }
    return RW_OK;
}

/* ---- benchmark only ------------------------------------------------------ */

int rw_bench_raw_loop(int suite, size_t msg_len, uint64_t iterations)
{
    uint8_t key[RW_KEY_SIZE] = {1};
    uint8_t nonce[RW_MAX_IV_SIZE] = {0};
    uint8_t ad[RW_HEADER_SIZE] = {0};
    unsigned long long clen = 0, mlen = 0;
    uint8_t *msg, *ct;
    uint64_t i;
    int rc = RW_OK;

    if (!sodium.ready) {
        return RW_ERR_NOT_READY;
    }
    if (!suite_valid(suite) || msg_len > RW_PROTOCOL_MAX_PLAINTEXT) {
        return RW_ERR_ARG;
    }
    msg = (uint8_t *)calloc(1, msg_len + 1);
    ct = (uint8_t *)calloc(1, msg_len + RW_MAX_TAG_SIZE);
    if (msg == NULL || ct == NULL) {
        free(msg);
        free(ct);
        return RW_ERR_ARG;
    }
    for (i = 0; i < iterations && rc == RW_OK; i++) {
        store_be64(nonce, i);
        if (sodium.encrypt[suite](ct, &clen, msg, msg_len, ad, sizeof(ad), NULL, nonce, key) != 0 ||
            sodium.decrypt[suite](msg, &mlen, NULL, ct, clen, ad, sizeof(ad), nonce, key) != 0) {
            rc = RW_ERR_AUTH;
        }
    }
    free(msg);
    free(ct);
    return rc;
}
