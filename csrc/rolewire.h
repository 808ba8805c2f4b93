/*
 * rolewire native core: record seal/open (single and batch), the replay
 * window, and the one-way key update ratchet.
 *
 * Theory of operation
 * -------------------
 * libsodium is not linked. PyNaCl's compiled module already contains it, so
 * at import time Python hands us the addresses of the few functions we need
 * (rw_install_sodium). Until that happened every entry point returns
 * RW_ERR_NOT_READY. The function pointer types below follow PyNaCl's cdef
 * exactly (non-const pointers, unsigned long long lengths): calling through a
 * pointer of a different type would be undefined behaviour.
 *
 * A session direction is one object: rw_sender seals, rw_receiver opens.
 * Each guards itself with a try-lock: using one object from two threads at
 * once is refused with RW_ERR_BUSY (it would otherwise race on the counter,
 * the key or the replay window), never silently corrupted. A sender and a
 * receiver may be used from different threads at the same time.
 *
 * Key material lives in these malloc'd structures and is wiped with
 * sodium_memzero when a key is replaced or the object is freed. The one
 * exception is the caller's-AEAD interface below: rw_*_export_key hands the
 * current key to the caller, who keeps its own copy (rolewire.record._c
 * gives large ChaCha20-Poly1305 records to OpenSSL through `cryptography`).
 *
 * Wire format: see docs/PROTOCOL.md, section "Records".
 */
#ifndef ROLEWIRE_H
#define ROLEWIRE_H

#include <stddef.h>
#include <stdint.h>

#define RW_VERSION 1
#define RW_HEADER_SIZE 14
#define RW_KEY_SIZE 32
#define RW_MAX_IV_SIZE 32
#define RW_MAX_TAG_SIZE 32

#define RW_SUITE_CHACHA20_POLY1305 1
#define RW_SUITE_AEGIS_256 2

/* Largest plaintext the format allows in one record (a configured limit may
 * be lower). */
#define RW_PROTOCOL_MAX_PLAINTEXT (1u << 24)

/* Replay window bounds, in counters. */
#define RW_WINDOW_MIN 64u
#define RW_WINDOW_MAX (1u << 20)

/* Upper bound on past receive epochs kept open (docs/PROTOCOL.md,
 * "Opening a record"). */
#define RW_MAX_PAST_EPOCHS 64

/* Status codes. >= 0 is success (possibly with a flag), < 0 an error. */
#define RW_OK 0
#define RW_REKEY_DUE 1         /* seal: soft limit reached, rekey soon */
#define RW_EPOCH_ADVANCED 2    /* open: record authenticated under epoch+1 */
#define RW_OPEN_NATIVE 4       /* rw_open_begin: not the current epoch, use rw_open */
#define RW_ERR_MALFORMED (-1)  /* truncated / bad header */
#define RW_ERR_VERSION (-2)
#define RW_ERR_SUITE (-3)
#define RW_ERR_TOO_LARGE (-4)
#define RW_ERR_COUNTER (-5)    /* counter at or beyond the hard limit */
#define RW_ERR_UNKNOWN_EPOCH (-6)
#define RW_ERR_REPLAY (-7)
#define RW_ERR_TOO_OLD (-8)
#define RW_ERR_AUTH (-9)
#define RW_ERR_EXHAUSTED (-10) /* hard limit: nothing sealed */
#define RW_ERR_CLOSED (-11)
#define RW_ERR_BUSY (-12)      /* concurrent use of one object */
#define RW_ERR_BUFFER (-13)    /* output buffer too small */
#define RW_ERR_ARG (-14)
#define RW_ERR_NOT_READY (-15)
#define RW_ERR_EPOCH_LIMIT (-16)

typedef struct rw_sender rw_sender;
typedef struct rw_receiver rw_receiver;

typedef struct rw_limits {
    uint64_t soft_messages;
    uint64_t soft_bytes;
    uint64_t hard_messages;
    uint64_t hard_bytes;
    uint32_t max_plaintext;
} rw_limits;

int rw_install_sodium(uintptr_t chacha_encrypt, uintptr_t chacha_decrypt,
                      uintptr_t aegis256_encrypt, uintptr_t aegis256_decrypt,
                      uintptr_t memzero, uintptr_t blake2b_salt_personal);

int rw_suite_iv_size(int suite);
int rw_suite_tag_size(int suite);

/* --- sender ------------------------------------------------------------- */
rw_sender *rw_sender_new(int suite, const uint8_t *key, const uint8_t *iv,
                         uint32_t epoch, const rw_limits *limits);
void rw_sender_free(rw_sender *s);
/* Seal one message into out (capacity out_cap); *out_len (may be NULL)
 * receives the record length, always pt_len + RW_HEADER_SIZE + tag size. */
int rw_seal(rw_sender *s, const uint8_t *pt, size_t pt_len, uint8_t *out,
            size_t out_cap, size_t *out_len);
/* Seal n messages packed in `in` (message i = in[in_off[i] : in_off[i+1]])
 * into `out`; record i = out[out_off[i] : out_off[i+1]]. All or nothing:
 * limits and capacity are checked before the first record is sealed. */
int rw_seal_batch(rw_sender *s, const uint8_t *in, size_t in_len,
                  const uint64_t *in_off, size_t n, uint8_t *out, size_t out_cap, uint64_t *out_off);
int rw_sender_update_key(rw_sender *s);
int rw_sender_close(rw_sender *s);
uint32_t rw_sender_epoch(const rw_sender *s);
uint64_t rw_sender_next_counter(const rw_sender *s);
uint64_t rw_sender_bytes(const rw_sender *s);

/* --- receiver ----------------------------------------------------------- */
rw_receiver *rw_receiver_new(int suite, const uint8_t *key, const uint8_t *iv,
                             uint32_t epoch, const rw_limits *limits,
                             uint32_t window);
void rw_receiver_free(rw_receiver *r);
int rw_open(rw_receiver *r, const uint8_t *rec, size_t rec_len, uint8_t *out,
            size_t out_cap, size_t *out_len);
/* Open n packed records; status[i] gets each record's code, plaintext i is
 * out[out_off[i] : out_off[i+1]] (empty on error). status has n + 1 entries:
 * status[n] receives the OR of the success codes (RW_EPOCH_ADVANCED if any
 * record advanced the epoch), so callers need not scan the array. Returns
 * the number of records opened, or a negative code if nothing could be
 * attempted. */
int64_t rw_open_batch(rw_receiver *r, const uint8_t *in, size_t in_len,
                      const uint64_t *in_off, size_t n, uint8_t *out, size_t out_cap, uint64_t *out_off,
                      int32_t *status);
/* Wipes every past epoch. */
int rw_receiver_retire_previous(rw_receiver *r);
/* How many past epochs stay open at most (0..RW_MAX_PAST_EPOCHS; default 1);
 * each epoch change pushes the old current epoch and any skipped ones, the
 * oldest beyond the bound are wiped. */
int rw_receiver_set_max_past(rw_receiver *r, uint32_t max_past);
/* Wipes one past epoch (end of its grace period); unknown epochs are ignored. */
int rw_receiver_retire_epoch(rw_receiver *r, uint32_t epoch);
uint32_t rw_receiver_past_count(const rw_receiver *r);
/* Epoch of past slot i (0 = newest), or 0 if i >= past_count. */
uint32_t rw_receiver_past_epoch(const rw_receiver *r, uint32_t i);
int rw_receiver_close(rw_receiver *r);
uint32_t rw_receiver_epoch(const rw_receiver *r);
int rw_receiver_has_previous(const rw_receiver *r);

/* --- the caller's AEAD ---------------------------------------------------
 * For records the caller seals or opens with an AEAD of its own (the same
 * construction, so the same bytes), while this core keeps the counters,
 * limits, epochs and the replay window. A *begin* call that succeeds
 * returns with the object's lock still held, on the caller's behalf, until
 * the matching *end*: in between, other threads get RW_ERR_BUSY as during
 * any other call, and rw_*_export_key may copy the current key out (the
 * only way a key leaves this core). */

/* Checks and reserves one record of pt_len bytes exactly as rw_seal does;
 * writes its header at out[0 .. 14) and its nonce at out[14 .. 14 + iv)
 * (out_cap >= 14 + iv). On success (RW_OK / RW_REKEY_DUE) the caller seals
 * (the record is the header, then ciphertext and tag), then calls
 * rw_sender_end. */
int rw_seal_begin(rw_sender *s, size_t pt_len, uint8_t *out, size_t out_cap);
/* With a record reserved (rw_seal_begin, the lock held): reserves one more,
 * exactly as rw_seal_begin would; the lock stays held (rw_sender_end). */
int rw_seal_begin_more(rw_sender *s, size_t pt_len, uint8_t *out, size_t out_cap);
/* rw_seal_batch, except that messages of at least `threshold` (>= 1) bytes
 * are reserved like rw_seal_begin (header and nonce at the start of their
 * record) and counted in *deferred. If *deferred > 0 the caller seals them
 * and calls rw_sender_end; otherwise the call is complete. */
int rw_seal_batch_begin(rw_sender *s, const uint8_t *in, size_t in_len,
                        const uint64_t *in_off, size_t n, uint8_t *out, size_t out_cap,
                        uint64_t *out_off, uint64_t threshold, uint64_t *deferred);
int rw_sender_export_key(const rw_sender *s, uint8_t *key_out);
int rw_sender_end(rw_sender *s);

/* Every check rw_open makes before the AEAD. RW_OK: the record is of the
 * current epoch; its nonce is in nonce_out, the caller opens it and calls
 * rw_open_end(r, authenticated). RW_OPEN_NATIVE: a past or newer epoch,
 * nothing is held, use rw_open. Negative: rw_open's error, nothing held. */
int rw_open_begin(rw_receiver *r, const uint8_t *rec, size_t rec_len, uint8_t *nonce_out);
int rw_receiver_export_key(const rw_receiver *r, uint8_t *key_out);
/* Marks the pending record's counter in the window if it authenticated. */
int rw_open_end(rw_receiver *r, int authenticated);
/* With a record pending (rw_open_begin, the lock held): the checks of
 * rw_open_begin for one more record, against the state now. RW_OK: of the
 * current epoch, its nonce in nonce_out; RW_OPEN_NATIVE: not; negative:
 * rw_open's error. Changes nothing. */
int rw_open_begin_more(rw_receiver *r, const uint8_t *rec, size_t rec_len, uint8_t *nonce_out);
/* With records pending (rw_open_begin / rw_open_begin_more): commits one the
 * caller opened, in stream order: RW_ERR_AUTH if it did not authenticate,
 * else its counter is checked against the window again (records committed
 * before it count) and marked: RW_OK or the window's error. The lock stays
 * held; rw_open_end(r, 0) releases it (marking nothing more). */
int rw_open_commit(rw_receiver *r, const uint8_t *rec, size_t rec_len, int authenticated);
/* rw_open_batch in steps: call with start = 0 (prev ignored); it opens
 * records in order and stops before the first record of the current epoch
 * with at least `threshold` (>= 1) plaintext bytes, setting *stop to its
 * index, its nonce in nonce_out, the lock held. The caller opens it, writes
 * the plaintext at out + out_off[*stop], and calls again with start =
 * *stop + 1 and prev = RW_OK (authenticated) or RW_ERR_AUTH, which records
 * its status and offset and goes on. *stop = n: done, lock released. The
 * return values add up to rw_open_batch's; status[n] is its OR of flags. */
int64_t rw_open_batch_step(rw_receiver *r, const uint8_t *in, size_t in_len,
                           const uint64_t *in_off, size_t n, uint8_t *out, size_t out_cap,
                           uint64_t *out_off, int32_t *status, uint64_t threshold,
                           size_t start, int32_t prev, uint8_t *nonce_out, uint64_t *stop);

/* --- test hooks ----------------------------------------------------------- */
/* The suite's AEAD through the installed libsodium pointers, with a caller
 * nonce and AD: lets known-answer vectors check the exact path records use.
 * seal writes ct||tag (pt_len + tag bytes); open returns RW_ERR_AUTH on a bad
 * tag. */
int rw_aead_seal(int suite, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad,
                 size_t ad_len, const uint8_t *pt, size_t pt_len, uint8_t *out);
int rw_aead_open(int suite, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad,
                 size_t ad_len, const uint8_t *ct, size_t ct_len, uint8_t *out);

/* --- benchmark only ----------------------------------------------------- */
/* Raw libsodium seal+open loop with no record layer: the physical limit the
 * benchmarks compare against. Returns 0 or a negative code. */
int rw_bench_raw_loop(int suite, size_t msg_len, uint64_t iterations);

#endif
