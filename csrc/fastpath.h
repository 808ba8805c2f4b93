/*
 * rolewire native fast path: frames, records and call headers in one call
 * per read chunk (receive) and per flush (send). Built on the public record
 * API (rw_open / rw_seal); the pure-Python twin is rolewire.fastpath.
 *
 * Receive: rw_fp_recv walks the frames of a chunk (length u32 | kind u8 |
 * payload), opens every record frame into one plaintext buffer and parses
 * the call message header of each plaintext, expanding CONTAINER messages
 * (type 8: several call messages in one record). Per message it fills
 * parallel arrays: status, type, call id, operation index (in an rw_optable,
 * -1 if absent), and the offsets/lengths of operation name and body in the
 * plaintext buffer. Anything unusual (metadata, unknown type, truncation, a
 * malformed container) becomes one RW_FP_SLOW entry spanning the plaintext:
 * the caller decodes it with the full decoder, which raises the right error.
 *
 * Send: rw_fp_seal_frames seals packed call messages straight into record
 * frames in one output buffer, optionally grouping consecutive messages into
 * CONTAINER records of at most container_max plaintext bytes.
 *
 * Wire formats: docs/PROTOCOL.md, "Transport over TCP", "Messages",
 * "Containers".
 */
#ifndef ROLEWIRE_FASTPATH_H
#define ROLEWIRE_FASTPATH_H

#include <stddef.h>
#include <stdint.h>

#include "rolewire.h"

#define RW_FP_CALL_HEAD 10       /* type u8 | call_id u64 | op_len u8 */
#define RW_FP_ITEM_HEAD 4        /* container item: length u32 */
#define RW_FP_TYPE_CONTAINER 8
#define RW_FP_METADATA_FLAG 0x80
#define RW_FP_FRAME_HANDSHAKE 1
#define RW_FP_FRAME_RECORD 2
#define RW_FP_MAX_OPS 4096

/* Per-message status (>= 0) besides the negative record error codes. */
#define RW_FP_MSG 0   /* header parsed: type, call id, op, body are valid */
#define RW_FP_SLOW 1  /* decode body_off/body_len (whole plaintext) in Python */

/* Why rw_fp_recv stopped before the end of the chunk. */
#define RW_FP_STOP_END 0        /* consumed everything or a partial frame */
#define RW_FP_STOP_HANDSHAKE 1  /* a handshake frame starts at *consumed */
#define RW_FP_STOP_FULL 2       /* message arrays or buffer full: call again */
#define RW_FP_STOP_EXTERNAL 3   /* rw_fp_recv_ext: a large record for the caller's AEAD */

/* Chunk-level errors (the connection is unusable). */
#define RW_FP_ERR_FRAME (-101)  /* frame length out of range */
#define RW_FP_ERR_KIND (-102)   /* unknown frame kind */

typedef struct rw_optable rw_optable;

rw_optable *rw_optable_new(uint32_t capacity);
void rw_optable_free(rw_optable *t);
/* Adds a name; returns its index (the existing one if present) or < 0. */
int32_t rw_optable_add(rw_optable *t, const void *name, uint32_t len);
int32_t rw_optable_find(const rw_optable *t, const void *name, uint32_t len);

typedef struct rw_fp_result {
    uint64_t consumed;   /* bytes of the chunk fully handled */
    uint64_t out_used;   /* plaintext bytes written to out */
    uint32_t count;      /* message entries written */
    uint32_t records;    /* record frames handled (opened or rejected) */
    uint32_t opened;     /* records that opened */
    int32_t flags;       /* OR of rw_open's success codes (RW_EPOCH_ADVANCED) */
    int32_t stop;        /* RW_FP_STOP_* */
} rw_fp_result;

int rw_fp_recv(rw_receiver *r, const rw_optable *ops, const void *buf, size_t len,
               uint32_t max_frame, void *out, size_t out_cap, uint32_t cap,
               int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
               uint32_t *op_off, uint32_t *op_len, uint32_t *body_off, uint32_t *body_len,
               rw_fp_result *res);

/* The caller's AEAD for large records in rw_fp_recv_ext (rolewire.h, "the
 * caller's AEAD": OpenSSL for large ChaCha20-Poly1305 records). */
#define RW_FP_EXT_NONCE 32   /* stride of nonces (the largest IV) */
typedef struct rw_fp_ext {
    uint64_t min_record;  /* in: records of at least this many bytes ... */
    uint32_t overhead;    /* in: header + tag bytes of a record */
    uint32_t max;         /* in: capacity of the arrays (records of one run) */
    uint32_t count;       /* out: records in the run */
    uint64_t *frame_off;  /* out: each record's frame offset in buf */
    uint64_t *rec_len;    /* out: each record's length */
    uint64_t *out_off;    /* out: where each plaintext goes in out */
    uint8_t *nonces;      /* out: each record's nonce (RW_FP_EXT_NONCE apart) */
    int32_t *ok;          /* in, for rw_fp_recv_resume: 1 authenticated, 0 not */
} rw_fp_ext;

/* rw_fp_recv, except that a record frame of at least ext->min_record bytes
 * that rw_open_begin places in the current epoch stops the call with
 * res->stop = RW_FP_STOP_EXTERNAL and the receiver's lock held, with that
 * record and those right after it that qualify too (rw_open_begin_more) in
 * ext: a run. The caller opens record j of the run (frame at
 * buf[frame_off[j]], record at + 5, rec_len[j] bytes, nonce j) into
 * out[out_off[j] .. + rec_len[j] - overhead), sets ok[j] (on 0 it leaves
 * nothing it wrote there), and calls rw_fp_recv_resume with the same
 * arguments: the records become their entries in order (each committed as
 * rw_open would after those before it: a replay within the run is one),
 * the lock is released, and the call goes on as rw_fp_recv_ext (it may
 * stop again). Same entries, buffer, counters and window as rw_fp_recv. */
int rw_fp_recv_ext(rw_receiver *r, const rw_optable *ops, const void *buf, size_t len,
                   uint32_t max_frame, void *out, size_t out_cap, uint32_t cap,
                   int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
                   uint32_t *op_off, uint32_t *op_len, uint32_t *body_off,
                   uint32_t *body_len, rw_fp_result *res, rw_fp_ext *ext);
int rw_fp_recv_resume(rw_receiver *r, const rw_optable *ops, const void *buf, size_t len,
                      uint32_t max_frame, void *out, size_t out_cap, uint32_t cap,
                      int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
                      uint32_t *op_off, uint32_t *op_len, uint32_t *body_off,
                      uint32_t *body_len, rw_fp_result *res, rw_fp_ext *ext);

/* Returns bytes written to out (>= 0) or a negative code; *flags gets the
 * OR of rw_seal's success codes (RW_REKEY_DUE), *records the records sealed. */
int64_t rw_fp_seal_frames(rw_sender *s, const void *in, size_t in_len, const uint64_t *in_off,
                          size_t n, uint32_t container_max, void *out, size_t out_cap,
                          int32_t *flags, uint32_t *records);

/* The caller's AEAD for large single-message records of rw_fp_seal_frames
 * (OpenSSL for large ChaCha20-Poly1305 records). */
typedef struct rw_fp_seal_ext {
    uint64_t min_plaintext;  /* in: single messages of at least this many bytes */
    uint32_t overhead;       /* in: header + tag bytes of a record */
    uint32_t max;            /* in: capacity of the arrays (records of one run) */
    uint32_t count;          /* out: records reserved in this run */
    uint64_t next;           /* in/out: the next message (0 to start) */
    uint64_t at;             /* in/out: bytes of out written (0 to start) */
    uint64_t *msg_index;     /* out: the message of each reserved record */
    uint64_t *rec_off;       /* out: where each reserved record starts in out */
} rw_fp_seal_ext;

/* rw_fp_seal_frames in steps (*flags and *records accumulate: zero them
 * first). A message sealed as its own record with at least
 * ext->min_plaintext bytes is reserved instead (rw_seal_begin /
 * rw_seal_begin_more: its frame header, record header and nonce written),
 * and so are the like ones right after it; then the call returns with
 * ext->count > 0 and the sender's lock held. The caller seals record j
 * (header at out[rec_off[j] .. + 14), nonce right after it, which the
 * ciphertext and tag then overwrite) from message msg_index[j], calls
 * rw_sender_end, and calls again with the same arguments, until
 * ext->count == 0: the return value is then the bytes written (as
 * rw_fp_seal_frames'). Same frames as rw_fp_seal_frames. */
int64_t rw_fp_seal_frames_ext(rw_sender *s, const void *in, size_t in_len,
                              const uint64_t *in_off, size_t n, uint32_t container_max,
                              void *out, size_t out_cap, int32_t *flags, uint32_t *records,
                              rw_fp_seal_ext *ext);

#endif
