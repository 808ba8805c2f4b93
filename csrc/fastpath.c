/* Native fast path; see fastpath.h. No allocation on the receive path; the
 * send path allocates one scratch buffer per call when it builds containers. */
#include "fastpath.h"

#include <stdlib.h>
#include <string.h>

struct rw_optable {
    uint32_t mask;      /* slots - 1 (slots a power of two >= 2 * capacity) */
    uint32_t capacity;
    uint32_t count;
    uint32_t *slots;    /* entry index + 1, 0 = empty */
    uint8_t **names;
    uint8_t *lens;
};

static uint32_t fnv1a(const uint8_t *p, uint32_t n)
{
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

rw_optable *rw_optable_new(uint32_t capacity)
{
    if (capacity == 0 || capacity > RW_FP_MAX_OPS) {
        return NULL;
    }
    uint32_t slots = 4;
    while (slots < 2 * capacity) {
        slots <<= 1;
    }
    rw_optable *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return NULL;
    }
    t->slots = calloc(slots, sizeof *t->slots);
    t->names = calloc(capacity, sizeof *t->names);
    t->lens = calloc(capacity, 1);
    if (t->slots == NULL || t->names == NULL || t->lens == NULL) {
        rw_optable_free(t);
        return NULL;
    }
    t->mask = slots - 1;
    t->capacity = capacity;
    return t;
}

void rw_optable_free(rw_optable *t)
{
    if (t == NULL) {
        return;
    }
    if (t->names != NULL) {
        for (uint32_t i = 0; i < t->count; i++) {
            free(t->names[i]);
        }
    }
    free(t->names);
    free(t->lens);
    free(t->slots);
    free(t);
}

static int32_t find_slot(const rw_optable *t, const uint8_t *name, uint32_t len,
                         uint32_t *slot_out)
{
    uint32_t i = fnv1a(name, len) & t->mask;
    for (;;) {
        uint32_t e = t->slots[i];
        if (e == 0) {
            *slot_out = i;
            return -1;
        }
        if (t->lens[e - 1] == len && memcmp(t->names[e - 1], name, len) == 0) {
            *slot_out = i;
            return (int32_t)(e - 1);
        }
        i = (i + 1) & t->mask;
    }
}

int32_t rw_optable_find(const rw_optable *t, const void *name, uint32_t len)
{
    uint32_t slot;
    if (t == NULL || len > 255) {
        return -1;
    }
    return find_slot(t, (const uint8_t *)name, len, &slot);
}

int32_t rw_optable_add(rw_optable *t, const void *name, uint32_t len)
{
    uint32_t slot;
    if (t == NULL || len > 255) {
        return RW_ERR_ARG;
    }
    int32_t found = find_slot(t, (const uint8_t *)name, len, &slot);
    if (found >= 0) {
        return found;
    }
    if (t->count >= t->capacity) {
        return RW_ERR_BUFFER;
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL) {
        return RW_ERR_BUFFER;
    }
    memcpy(copy, name, len);
    t->names[t->count] = copy;
    t->lens[t->count] = (uint8_t)len;
    t->count++;
    t->slots[slot] = t->count;
    return (int32_t)(t->count - 1);
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t be64(const uint8_t *p)
{
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Types the fast path parses; others (SIGNED_BATCH, unknown) go slow. */
static int plain_type(uint8_t t)
{
    return t >= 1 && t <= 5;
}

/* A call message at p[0..n) the fast path can describe (no metadata, known
 * plain type, operation name inside). */
static int parsable(const uint8_t *p, size_t n)
{
    return n >= RW_FP_CALL_HEAD && plain_type(p[0]) && RW_FP_CALL_HEAD + (size_t)p[9] <= n;
}

/* A well-formed container at p[0..n): header (type 8, call id 0, empty op),
 * then at least one item, each length u32 | a call message of at least a
 * header's size that is not a container. Items are only structure-checked
 * here; each one is then parsed (or goes slow) on its own. */
static int container_valid(const uint8_t *p, size_t n, uint32_t *items)
{
    if (n < RW_FP_CALL_HEAD || p[0] != RW_FP_TYPE_CONTAINER || be64(p + 1) != 0 || p[9] != 0) {
        return 0;
    }
    size_t pos = RW_FP_CALL_HEAD;
    uint32_t k = 0;
    while (pos < n) {
        if (n - pos < RW_FP_ITEM_HEAD) {
            return 0;
        }
        uint32_t len = be32(p + pos);
        pos += RW_FP_ITEM_HEAD;
        if (len < RW_FP_CALL_HEAD || len > n - pos ||
            (p[pos] & 0x7F) == RW_FP_TYPE_CONTAINER) {
            return 0;
        }
        pos += len;
        k++;
    }
    *items = k;
    return k >= 1;
}

/* One record that did not open: an entry with its status. */
static void error_entry(int rc, uint32_t *count, int32_t *status, uint8_t *types,
                        uint64_t *call_ids, int32_t *op_index, uint32_t *op_off,
                        uint32_t *op_len, uint32_t *body_off, uint32_t *body_len)
{
    uint32_t c = *count;
    status[c] = rc;
    types[c] = 0;
    call_ids[c] = 0;
    op_index[c] = -1;
    op_off[c] = op_len[c] = body_off[c] = body_len[c] = 0;
    *count = c + 1;
}

/* The entries of one opened plaintext at out[used .. used + pt_len). */
static void plaintext_entries(const rw_optable *ops, const uint8_t *out, size_t used,
                              size_t pt_len, uint32_t *count_io, int32_t *status,
                              uint8_t *types, uint64_t *call_ids, int32_t *op_index,
                              uint32_t *op_off, uint32_t *op_len, uint32_t *body_off,
                              uint32_t *body_len)
{
    const uint8_t *p = out + used;
    uint32_t count = *count_io;
    uint32_t items = 0;
    if (pt_len >= 1 && p[0] == RW_FP_TYPE_CONTAINER && container_valid(p, pt_len, &items)) {
        size_t ip = RW_FP_CALL_HEAD;
        while (ip < pt_len) {
            uint32_t ilen = be32(p + ip);
            ip += RW_FP_ITEM_HEAD;
            const uint8_t *m = p + ip;
            size_t base = used + ip;
            if (parsable(m, ilen)) {
                status[count] = RW_FP_MSG;
                types[count] = m[0];
                call_ids[count] = be64(m + 1);
                op_index[count] = rw_optable_find(ops, m + RW_FP_CALL_HEAD, m[9]);
                op_off[count] = (uint32_t)(base + RW_FP_CALL_HEAD);
                op_len[count] = m[9];
                body_off[count] = (uint32_t)(base + RW_FP_CALL_HEAD + m[9]);
                body_len[count] = (uint32_t)(ilen - RW_FP_CALL_HEAD - m[9]);
            } else {
                status[count] = RW_FP_SLOW;
                types[count] = m[0];
                call_ids[count] = 0;
                op_index[count] = -1;
                op_off[count] = op_len[count] = 0;
                body_off[count] = (uint32_t)base;
                body_len[count] = ilen;
            }
            count++;
            ip += ilen;
        }
    } else if (parsable(p, pt_len)) {
        status[count] = RW_FP_MSG;
        types[count] = p[0];
        call_ids[count] = be64(p + 1);
        op_index[count] = rw_optable_find(ops, p + RW_FP_CALL_HEAD, p[9]);
        op_off[count] = (uint32_t)(used + RW_FP_CALL_HEAD);
        op_len[count] = p[9];
        body_off[count] = (uint32_t)(used + RW_FP_CALL_HEAD + p[9]);
        body_len[count] = (uint32_t)(pt_len - RW_FP_CALL_HEAD - p[9]);
        count++;
    } else {
        status[count] = RW_FP_SLOW;
        types[count] = pt_len ? p[0] : 0;
        call_ids[count] = 0;
        op_index[count] = -1;
        op_off[count] = op_len[count] = 0;
        body_off[count] = (uint32_t)used;
        body_len[count] = (uint32_t)pt_len;
        count++;
    }
    *count_io = count;
}

/* After rw_open_begin accepted the record frame at buf[pos]: reserve it and
 * the record frames right after it that rw_open_begin_more accepts too (a
 * run for the caller's AEAD), as far as the arrays, the batch and ext allow.
 * Their plaintexts are planned back to back from out[used]. */
static void reserve_run(rw_receiver *r, const uint8_t *buf, size_t len, uint32_t max_frame,
                        size_t out_cap, uint32_t cap, size_t pos, size_t used,
                        uint32_t count, rw_fp_ext *ext)
{
    uint64_t entries = count;
    uint32_t k = 0;
    for (;;) {
        uint32_t flen = be32(buf + pos);
        size_t rec_len = flen - 1;
        ext->frame_off[k] = pos;
        ext->rec_len[k] = rec_len;
        ext->out_off[k] = used;
        k++;
        entries += rec_len / (RW_FP_CALL_HEAD + RW_FP_ITEM_HEAD) + 1;
        used += rec_len - ext->overhead;
        pos += 4 + (size_t)flen;
        if (k >= ext->max || len - pos < 5) {
            break;
        }
        flen = be32(buf + pos);
        if (flen < 1 || flen > (uint64_t)max_frame + 1 || flen > len - pos - 4 ||
            buf[pos + 4] != RW_FP_FRAME_RECORD) {
            break; /* left to the loop (partial, handshake, or its error) */
        }
        rec_len = flen - 1;
        if (rec_len < ext->min_record ||
            entries + rec_len / (RW_FP_CALL_HEAD + RW_FP_ITEM_HEAD) + 1 > cap ||
            used + rec_len > out_cap ||
            rw_open_begin_more(r, buf + pos + 5, rec_len,
                               ext->nonces + (size_t)k * RW_FP_EXT_NONCE) != RW_OK) {
            break;
        }
    }
    ext->count = k;
}

/* The frame loop of rw_fp_recv*, from the state in *res (consumed,
 * out_used, count; records, opened and flags accumulate). With ext: stop
 * before a run of records for the caller's AEAD (RW_FP_STOP_EXTERNAL, the
 * lock held). */
static int recv_loop(rw_receiver *r, const rw_optable *ops, const uint8_t *buf, size_t len,
                     uint32_t max_frame, uint8_t *out, size_t out_cap, uint32_t cap,
                     int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
                     uint32_t *op_off, uint32_t *op_len, uint32_t *body_off,
                     uint32_t *body_len, rw_fp_result *res, rw_fp_ext *ext)
{
    size_t pos = (size_t)res->consumed, used = (size_t)res->out_used;
    uint32_t count = res->count;
    res->stop = RW_FP_STOP_END;
    while (len - pos >= 4) {
        uint32_t flen = be32(buf + pos);
        if (flen < 1 || flen > (uint64_t)max_frame + 1) {
            res->consumed = pos;
            res->out_used = used;
            res->count = count;
            return RW_FP_ERR_FRAME;
        }
        if (flen > len - pos - 4) {
            break; /* partial frame */
        }
        uint8_t kind = buf[pos + 4];
        if (kind == RW_FP_FRAME_HANDSHAKE) {
            res->stop = RW_FP_STOP_HANDSHAKE;
            break;
        }
        if (kind != RW_FP_FRAME_RECORD) {
            res->consumed = pos;
            res->out_used = used;
            res->count = count;
            return RW_FP_ERR_KIND;
        }
        const uint8_t *rec = buf + pos + 5;
        size_t rec_len = flen - 1;
        /* Worst case this record adds rec_len / 14 + 1 entries (a container
         * item is at least 14 bytes) and rec_len plaintext bytes. */
        if ((uint64_t)count + rec_len / (RW_FP_CALL_HEAD + RW_FP_ITEM_HEAD) + 1 > cap ||
            used + rec_len > out_cap) {
            res->stop = RW_FP_STOP_FULL;
            break;
        }
        int rc = RW_OPEN_NATIVE;
        if (ext != NULL && rec_len >= ext->min_record) {
            /* The checks rw_open makes first: the same error codes. */
            rc = rw_open_begin(r, rec, rec_len, ext->nonces);
            if (rc == RW_OK) {
                reserve_run(r, buf, len, max_frame, out_cap, cap, pos, used, count, ext);
                res->stop = RW_FP_STOP_EXTERNAL;
                break; /* the caller opens the run, then rw_fp_recv_resume */
            }
        }
        size_t pt_len = 0;
        if (rc == RW_OPEN_NATIVE) {
            rc = rw_open(r, rec, rec_len, out + used, out_cap - used, &pt_len);
        }
        res->records++;
        pos += 4 + (size_t)flen;
        if (rc < 0) {
            error_entry(rc, &count, status, types, call_ids, op_index, op_off, op_len,
                        body_off, body_len);
            continue;
        }
        res->opened++;
        res->flags |= rc;
        plaintext_entries(ops, out, used, pt_len, &count, status, types, call_ids, op_index,
                          op_off, op_len, body_off, body_len);
        used += pt_len;
    }
    res->consumed = pos;
    res->out_used = used;
    res->count = count;
    return RW_OK;
}

static int ext_valid(const rw_fp_ext *ext)
{
    return ext == NULL ||
           (ext->min_record > ext->overhead && ext->max >= 1 && ext->frame_off != NULL &&
            ext->rec_len != NULL && ext->out_off != NULL && ext->nonces != NULL &&
            ext->ok != NULL);
}

int rw_fp_recv(rw_receiver *r, const rw_optable *ops, const void *buf, size_t len,
               uint32_t max_frame, void *out, size_t out_cap, uint32_t cap,
               int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
               uint32_t *op_off, uint32_t *op_len, uint32_t *body_off, uint32_t *body_len,
               rw_fp_result *res)
{
    return rw_fp_recv_ext(r, ops, buf, len, max_frame, out, out_cap, cap, status, types,
                          call_ids, op_index, op_off, op_len, body_off, body_len, res, NULL);
}

int rw_fp_recv_ext(rw_receiver *r, const rw_optable *ops, const void *buf, size_t len,
                   uint32_t max_frame, void *out, size_t out_cap, uint32_t cap,
                   int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
                   uint32_t *op_off, uint32_t *op_len, uint32_t *body_off,
                   uint32_t *body_len, rw_fp_result *res, rw_fp_ext *ext)
{
    if (r == NULL || res == NULL || (len > 0 && buf == NULL) || out_cap > UINT32_MAX ||
        !ext_valid(ext)) {
        return RW_ERR_ARG;
    }
    memset(res, 0, sizeof *res);
    return recv_loop(r, ops, (const uint8_t *)buf, len, max_frame, (uint8_t *)out, out_cap,
                     cap, status, types, call_ids, op_index, op_off, op_len, body_off,
                     body_len, res, ext);
}

int rw_fp_recv_resume(rw_receiver *r, const rw_optable *ops, const void *buf_, size_t len,
                      uint32_t max_frame, void *out_, size_t out_cap, uint32_t cap,
                      int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
                      uint32_t *op_off, uint32_t *op_len, uint32_t *body_off,
                      uint32_t *body_len, rw_fp_result *res, rw_fp_ext *ext)
{
    const uint8_t *buf = (const uint8_t *)buf_;
    uint8_t *out = (uint8_t *)out_;
    if (r == NULL || res == NULL || ext == NULL || res->stop != RW_FP_STOP_EXTERNAL) {
        return RW_ERR_ARG;
    }
    /* What reserve_run wrote (the caller must not change it); checked so a
     * bad call cannot make us read or write out of bounds. */
    int valid = buf != NULL && ext_valid(ext) && ext->count >= 1 && ext->count <= ext->max &&
                ext->out_off[0] == res->out_used;
    for (uint32_t j = 0; valid && j < ext->count; j++) {
        valid = ext->frame_off[j] <= len && len - ext->frame_off[j] >= 5 &&
                ext->rec_len[j] < len - ext->frame_off[j] - 4 &&
                ext->rec_len[j] >= ext->overhead &&
                ext->out_off[j] + (ext->rec_len[j] - ext->overhead) <= out_cap;
    }
    if (!valid) {
        rw_open_end(r, 0);
        return RW_ERR_ARG;
    }
    size_t used = (size_t)res->out_used;
    for (uint32_t j = 0; j < ext->count; j++) {
        const uint8_t *rec = buf + ext->frame_off[j] + 5;
        size_t rec_len = (size_t)ext->rec_len[j];
        size_t pt_len = rec_len - ext->overhead;
        uint8_t *plain = out + ext->out_off[j];
        /* In order: what rw_open would give this record after the ones
         * before it. */
        int rc = rw_open_commit(r, rec, rec_len, ext->ok[j]);
        res->records++;
        if (rc < 0) {
            memset(plain, 0, pt_len); /* nothing of a refused record stays */
            error_entry(rc, &res->count, status, types, call_ids, op_index, op_off, op_len,
                        body_off, body_len);
            continue;
        }
        if (plain != out + used) {
            /* A record before it was refused: close the gap, as rw_open
             * would have written it here. */
            memmove(out + used, plain, pt_len);
        }
        res->opened++;
        plaintext_entries(ops, out, used, pt_len, &res->count, status, types, call_ids,
                          op_index, op_off, op_len, body_off, body_len);
        used += pt_len;
    }
    rw_open_end(r, 0); /* every counter is marked: release the lock */
    uint32_t last = ext->count - 1;
    res->consumed = ext->frame_off[last] + 5 + ext->rec_len[last];
    res->out_used = used;
    ext->count = 0;
    return recv_loop(r, ops, buf, len, max_frame, out, out_cap, cap, status, types,
                     call_ids, op_index, op_off, op_len, body_off, body_len, res, ext);
}

static int64_t seal_frame(rw_sender *s, const uint8_t *pt, size_t pt_len, uint8_t *out,
                          size_t out_cap, size_t *at, int32_t *flags, uint32_t *records)
{
    size_t rec_len = 0;
    if (out_cap - *at < 5) {
        return RW_ERR_BUFFER;
    }
    int rc = rw_seal(s, pt, pt_len, out + *at + 5, out_cap - *at - 5, &rec_len);
    if (rc < 0) {
        return rc;
    }
    *flags |= rc;
    put_be32(out + *at, (uint32_t)(rec_len + 1));
    out[*at + 4] = RW_FP_FRAME_RECORD;
    *at += 5 + rec_len;
    (*records)++;
    return RW_OK;
}

int64_t rw_fp_seal_frames(rw_sender *s, const void *in_, size_t in_len, const uint64_t *in_off,
                          size_t n, uint32_t container_max, void *out_, size_t out_cap,
                          int32_t *flags, uint32_t *records)
{
    if (flags == NULL || records == NULL) {
        return RW_ERR_ARG;
    }
    *flags = 0;
    *records = 0;
    return rw_fp_seal_frames_ext(s, in_, in_len, in_off, n, container_max, out_, out_cap,
                                 flags, records, NULL);
}

/* Frame header and reservation of a record for the caller's AEAD (its
 * header and nonce written); the lock is taken by the first of a run. */
static int64_t reserve_frame(rw_sender *s, size_t pt_len, uint8_t *out, size_t out_cap,
                             size_t *at, int32_t *flags, uint32_t *records,
                             rw_fp_seal_ext *ext, int first)
{
    size_t rec_len = ext->overhead + pt_len;
    if (out_cap - *at < 5 + rec_len) {
        return RW_ERR_BUFFER;
    }
    int rc = first ? rw_seal_begin(s, pt_len, out + *at + 5, out_cap - *at - 5)
                   : rw_seal_begin_more(s, pt_len, out + *at + 5, out_cap - *at - 5);
    if (rc < 0) {
        return rc;
    }
    *flags |= rc;
    put_be32(out + *at, (uint32_t)(rec_len + 1));
    out[*at + 4] = RW_FP_FRAME_RECORD;
    ext->rec_off[ext->count] = *at + 5;
    ext->count++;
    *at += 5 + rec_len;
    (*records)++;
    return RW_OK;
}

int64_t rw_fp_seal_frames_ext(rw_sender *s, const void *in_, size_t in_len,
                              const uint64_t *in_off, size_t n, uint32_t container_max,
                              void *out_, size_t out_cap, int32_t *flags, uint32_t *records,
                              rw_fp_seal_ext *ext)
{
    const uint8_t *in = (const uint8_t *)in_;
    uint8_t *out = (uint8_t *)out_;
    uint8_t *scratch = NULL;
    size_t at = 0;
    size_t i = 0;
    int64_t rc = RW_OK;
    if (s == NULL || flags == NULL || records == NULL || (n > 0 && in_off == NULL) ||
        (ext != NULL && (ext->min_plaintext == 0 || ext->max == 0 || ext->rec_off == NULL ||
                         ext->next > n || ext->at > out_cap))) {
        return RW_ERR_ARG;
    }
    for (size_t k = 0; k < n; k++) {
        if (in_off[k] > in_off[k + 1] || in_off[k + 1] > in_len) {
            return RW_ERR_ARG;
        }
    }
    if (container_max > 0 && container_max < RW_FP_CALL_HEAD + 2 * RW_FP_ITEM_HEAD) {
        return RW_ERR_ARG;
    }
    if (ext != NULL) {
        /* Resuming after a run the caller sealed (or starting: 0, 0). */
        i = (size_t)ext->next;
        at = (size_t)ext->at;
        ext->count = 0;
    }
    while (i < n) {
        size_t j = i;
        size_t size = RW_FP_CALL_HEAD;
        if (container_max > 0) {
            /* Greedy: as many following messages as fit one container. */
            while (j < n && size + RW_FP_ITEM_HEAD + (in_off[j + 1] - in_off[j]) <= container_max) {
                size += RW_FP_ITEM_HEAD + (in_off[j + 1] - in_off[j]);
                j++;
            }
        }
        if (j - i < 2) {
            /* One message (or one that does not fit a container): its own record. */
            size_t pt_len = in_off[i + 1] - in_off[i];
            if (ext != NULL && pt_len >= ext->min_plaintext) {
                /* For the caller's AEAD: reserve it (and the large ones
                 * right after it), stop, and let the caller seal them. */
                rc = reserve_frame(s, pt_len, out, out_cap, &at, flags, records, ext,
                                   ext->count == 0);
                if (rc < 0) {
                    if (ext->count > 0) {
                        break; /* the caller seals those, then meets this again */
                    }
                    goto done;
                }
                ext->msg_index[ext->count - 1] = i;
                i++;
                if (ext->count >= ext->max) {
                    break;
                }
                continue;
            }
            if (ext != NULL && ext->count > 0) {
                break; /* a small one after a run: the lock is the caller's */
            }
            rc = seal_frame(s, in + in_off[i], pt_len, out, out_cap, &at, flags, records);
            if (rc < 0) {
                goto done;
            }
            i++;
            continue;
        }
        if (ext != NULL && ext->count > 0) {
            break;
        }
        if (scratch == NULL) {
            scratch = malloc(container_max);
            if (scratch == NULL) {
                rc = RW_ERR_BUFFER;
                goto done;
            }
        }
        memset(scratch, 0, RW_FP_CALL_HEAD);
        scratch[0] = RW_FP_TYPE_CONTAINER;
        size_t sp = RW_FP_CALL_HEAD;
        for (size_t k = i; k < j; k++) {
            size_t mlen = in_off[k + 1] - in_off[k];
            put_be32(scratch + sp, (uint32_t)mlen);
            memcpy(scratch + sp + RW_FP_ITEM_HEAD, in + in_off[k], mlen);
            sp += RW_FP_ITEM_HEAD + mlen;
        }
        rc = seal_frame(s, scratch, sp, out, out_cap, &at, flags, records);
        if (rc < 0) {
            goto done;
        }
        i = j;
    }
    if (ext != NULL) {
        ext->next = i;
        ext->at = at;
    }
    rc = (int64_t)at;
done:
    free(scratch); /* holds plaintext only; it is not key material */
    return rc;
}
