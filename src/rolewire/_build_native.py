"""cffi build script for the private extension ``rolewire._native``.

API mode, out-of-line: setuptools runs this through ``cffi_modules`` (see
setup.py) and compiles the C sources under ``csrc/`` into one abi3 module.
libsodium is *not* linked: ``rolewire._native_loader`` passes the addresses
of PyNaCl's libsodium functions at import time.
"""

from __future__ import annotations

import os
import sys

from cffi import FFI

# setuptools wants paths relative to setup.py, which is where it runs us;
# run as a script (a development build, see the end), from anywhere.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CSRC = "csrc" if __name__ != "__main__" else os.path.join(_ROOT, "csrc")

CDEF = """
#define RW_VERSION ...
#define RW_HEADER_SIZE ...
#define RW_KEY_SIZE ...
#define RW_SUITE_CHACHA20_POLY1305 ...
#define RW_SUITE_AEGIS_256 ...
#define RW_PROTOCOL_MAX_PLAINTEXT ...
#define RW_WINDOW_MIN ...
#define RW_WINDOW_MAX ...
#define RW_OK ...
#define RW_REKEY_DUE ...
#define RW_EPOCH_ADVANCED ...
#define RW_OPEN_NATIVE ...
#define RW_ERR_MALFORMED ...
#define RW_ERR_VERSION ...
#define RW_ERR_SUITE ...
#define RW_ERR_TOO_LARGE ...
#define RW_ERR_COUNTER ...
#define RW_ERR_UNKNOWN_EPOCH ...
#define RW_ERR_REPLAY ...
#define RW_ERR_TOO_OLD ...
#define RW_ERR_AUTH ...
#define RW_ERR_EXHAUSTED ...
#define RW_ERR_CLOSED ...
#define RW_ERR_BUSY ...
#define RW_ERR_BUFFER ...
#define RW_ERR_ARG ...
#define RW_ERR_NOT_READY ...
#define RW_ERR_EPOCH_LIMIT ...

typedef struct rw_sender rw_sender;
typedef struct rw_receiver rw_receiver;
typedef struct rw_limits {
    uint64_t soft_messages;
    uint64_t soft_bytes;
    uint64_t hard_messages;
    uint64_t hard_bytes;
    uint32_t max_plaintext;
} rw_limits;

int rw_install_sodium(uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t);
int rw_suite_iv_size(int suite);
int rw_suite_tag_size(int suite);

rw_sender *rw_sender_new(int suite, const uint8_t *key, const uint8_t *iv,
                         uint32_t epoch, const rw_limits *limits);
void rw_sender_free(rw_sender *s);
int rw_seal(rw_sender *s, const char *pt, size_t pt_len, char *out,
            size_t out_cap, size_t *out_len);
int rw_seal_batch(rw_sender *s, const char *in, size_t in_len, const uint64_t *in_off,
                  size_t n, char *out, size_t out_cap, uint64_t *out_off);
int rw_sender_update_key(rw_sender *s);
int rw_sender_close(rw_sender *s);
uint32_t rw_sender_epoch(const rw_sender *s);
uint64_t rw_sender_next_counter(const rw_sender *s);
uint64_t rw_sender_bytes(const rw_sender *s);

rw_receiver *rw_receiver_new(int suite, const uint8_t *key, const uint8_t *iv,
                             uint32_t epoch, const rw_limits *limits, uint32_t window);
void rw_receiver_free(rw_receiver *r);
int rw_open(rw_receiver *r, const char *rec, size_t rec_len, char *out,
            size_t out_cap, size_t *out_len);
int64_t rw_open_batch(rw_receiver *r, const char *in, size_t in_len, const uint64_t *in_off,
                      size_t n, char *out, size_t out_cap, uint64_t *out_off,
                      int32_t *status);
int rw_receiver_retire_previous(rw_receiver *r);
int rw_receiver_set_max_past(rw_receiver *r, uint32_t max_past);
int rw_receiver_retire_epoch(rw_receiver *r, uint32_t epoch);
uint32_t rw_receiver_past_count(const rw_receiver *r);
uint32_t rw_receiver_past_epoch(const rw_receiver *r, uint32_t i);
int rw_receiver_close(rw_receiver *r);
uint32_t rw_receiver_epoch(const rw_receiver *r);
int rw_receiver_has_previous(const rw_receiver *r);

int rw_seal_begin(rw_sender *s, size_t pt_len, char *out, size_t out_cap);
int rw_seal_batch_begin(rw_sender *s, const char *in, size_t in_len, const uint64_t *in_off,
                        size_t n, char *out, size_t out_cap, uint64_t *out_off,
                        uint64_t threshold, uint64_t *deferred);
int rw_sender_export_key(const rw_sender *s, char *key_out);
int rw_sender_end(rw_sender *s);
int rw_seal_begin_more(rw_sender *s, size_t pt_len, char *out, size_t out_cap);
int rw_open_begin(rw_receiver *r, const char *rec, size_t rec_len, char *nonce_out);
int rw_receiver_export_key(const rw_receiver *r, char *key_out);
int rw_open_end(rw_receiver *r, int authenticated);
int rw_open_begin_more(rw_receiver *r, const char *rec, size_t rec_len, char *nonce_out);
int rw_open_commit(rw_receiver *r, const char *rec, size_t rec_len, int authenticated);
int64_t rw_open_batch_step(rw_receiver *r, const char *in, size_t in_len,
                           const uint64_t *in_off, size_t n, char *out, size_t out_cap,
                           uint64_t *out_off, int32_t *status, uint64_t threshold,
                           size_t start, int32_t prev, char *nonce_out, uint64_t *stop);

int rw_aead_seal(int suite, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad,
                 size_t ad_len, const uint8_t *pt, size_t pt_len, uint8_t *out);
int rw_aead_open(int suite, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad,
                 size_t ad_len, const uint8_t *ct, size_t ct_len, uint8_t *out);
int rw_bench_raw_loop(int suite, size_t msg_len, uint64_t iterations);

/* csrc/fastpath.h: the native send/receive fast path. */
#define RW_FP_MSG ...
#define RW_FP_SLOW ...
#define RW_FP_STOP_END ...
#define RW_FP_STOP_HANDSHAKE ...
#define RW_FP_STOP_FULL ...
#define RW_FP_ERR_FRAME ...
#define RW_FP_ERR_KIND ...
#define RW_FP_MAX_OPS ...
typedef struct rw_optable rw_optable;
rw_optable *rw_optable_new(uint32_t capacity);
void rw_optable_free(rw_optable *t);
int32_t rw_optable_add(rw_optable *t, const char *name, uint32_t len);
int32_t rw_optable_find(const rw_optable *t, const char *name, uint32_t len);
typedef struct rw_fp_result {
    uint64_t consumed;
    uint64_t out_used;
    uint32_t count;
    uint32_t records;
    uint32_t opened;
    int32_t flags;
    int32_t stop;
} rw_fp_result;
int rw_fp_recv(rw_receiver *r, const rw_optable *ops, const char *buf, size_t len,
               uint32_t max_frame, char *out, size_t out_cap, uint32_t cap,
               int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
               uint32_t *op_off, uint32_t *op_len, uint32_t *body_off, uint32_t *body_len,
               rw_fp_result *res);
#define RW_FP_STOP_EXTERNAL ...
#define RW_FP_EXT_NONCE ...
typedef struct rw_fp_ext {
    uint64_t min_record;
    uint32_t overhead;
    uint32_t max;
    uint32_t count;
    uint64_t *frame_off;
    uint64_t *rec_len;
    uint64_t *out_off;
    uint8_t *nonces;
    int32_t *ok;
} rw_fp_ext;
int rw_fp_recv_ext(rw_receiver *r, const rw_optable *ops, const char *buf, size_t len,
                   uint32_t max_frame, char *out, size_t out_cap, uint32_t cap,
                   int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
                   uint32_t *op_off, uint32_t *op_len, uint32_t *body_off,
                   uint32_t *body_len, rw_fp_result *res, rw_fp_ext *ext);
int rw_fp_recv_resume(rw_receiver *r, const rw_optable *ops, const char *buf, size_t len,
                      uint32_t max_frame, char *out, size_t out_cap, uint32_t cap,
                      int32_t *status, uint8_t *types, uint64_t *call_ids, int32_t *op_index,
                      uint32_t *op_off, uint32_t *op_len, uint32_t *body_off,
                      uint32_t *body_len, rw_fp_result *res, rw_fp_ext *ext);
int64_t rw_fp_seal_frames(rw_sender *s, const char *in, size_t in_len, const uint64_t *in_off,
                          size_t n, uint32_t container_max, char *out, size_t out_cap,
                          int32_t *flags, uint32_t *records);
typedef struct rw_fp_seal_ext {
    uint64_t min_plaintext;
    uint32_t overhead;
    uint32_t max;
    uint32_t count;
    uint64_t next;
    uint64_t at;
    uint64_t *msg_index;
    uint64_t *rec_off;
} rw_fp_seal_ext;
int64_t rw_fp_seal_frames_ext(rw_sender *s, const char *in, size_t in_len,
                              const uint64_t *in_off, size_t n, uint32_t container_max,
                              char *out, size_t out_cap, int32_t *flags, uint32_t *records,
                              rw_fp_seal_ext *ext);
"""

# The cdef declares byte buffers as ``char *`` so that Python ``bytes`` pass
# without a copy and ``ffi.unpack`` returns ``bytes``; the C side uses
# ``uint8_t *``. This small shim adapts the two without casts in record.c.
SHIM = r"""
#include "rolewire.h"
#include "fastpath.h"
#define RW_SHIM_U8(p) ((uint8_t *)(p))
#define RW_SHIM_CU8(p) ((const uint8_t *)(p))
static int rw_seal_shim(rw_sender *s, const char *pt, size_t pt_len, char *out,
                        size_t out_cap, size_t *out_len)
{
    return rw_seal(s, RW_SHIM_CU8(pt), pt_len, RW_SHIM_U8(out), out_cap, out_len);
}
static int rw_seal_batch_shim(rw_sender *s, const char *in, size_t in_len,
                              const uint64_t *in_off, size_t n, char *out,
                              size_t out_cap, uint64_t *out_off)
{
    return rw_seal_batch(s, RW_SHIM_CU8(in), in_len, in_off, n, RW_SHIM_U8(out),
                         out_cap, out_off);
}
static int rw_open_shim(rw_receiver *r, const char *rec, size_t rec_len, char *out,
                        size_t out_cap, size_t *out_len)
{
    return rw_open(r, RW_SHIM_CU8(rec), rec_len, RW_SHIM_U8(out), out_cap, out_len);
}
static int64_t rw_open_batch_shim(rw_receiver *r, const char *in, size_t in_len,
                                  const uint64_t *in_off, size_t n, char *out,
                                  size_t out_cap, uint64_t *out_off, int32_t *status)
{
    return rw_open_batch(r, RW_SHIM_CU8(in), in_len, in_off, n, RW_SHIM_U8(out),
                         out_cap, out_off, status);
}
static int rw_seal_begin_shim(rw_sender *s, size_t pt_len, char *out, size_t out_cap)
{
    return rw_seal_begin(s, pt_len, RW_SHIM_U8(out), out_cap);
}
static int rw_seal_batch_begin_shim(rw_sender *s, const char *in, size_t in_len,
                                    const uint64_t *in_off, size_t n, char *out,
                                    size_t out_cap, uint64_t *out_off, uint64_t threshold,
                                    uint64_t *deferred)
{
    return rw_seal_batch_begin(s, RW_SHIM_CU8(in), in_len, in_off, n, RW_SHIM_U8(out),
                               out_cap, out_off, threshold, deferred);
}
static int rw_seal_begin_more_shim(rw_sender *s, size_t pt_len, char *out, size_t out_cap)
{
    return rw_seal_begin_more(s, pt_len, RW_SHIM_U8(out), out_cap);
}
static int rw_sender_export_key_shim(const rw_sender *s, char *key_out)
{
    return rw_sender_export_key(s, RW_SHIM_U8(key_out));
}
static int rw_open_begin_shim(rw_receiver *r, const char *rec, size_t rec_len,
                              char *nonce_out)
{
    return rw_open_begin(r, RW_SHIM_CU8(rec), rec_len, RW_SHIM_U8(nonce_out));
}
static int rw_open_begin_more_shim(rw_receiver *r, const char *rec, size_t rec_len,
                                   char *nonce_out)
{
    return rw_open_begin_more(r, RW_SHIM_CU8(rec), rec_len, RW_SHIM_U8(nonce_out));
}
static int rw_open_commit_shim(rw_receiver *r, const char *rec, size_t rec_len,
                               int authenticated)
{
    return rw_open_commit(r, RW_SHIM_CU8(rec), rec_len, authenticated);
}
static int rw_receiver_export_key_shim(const rw_receiver *r, char *key_out)
{
    return rw_receiver_export_key(r, RW_SHIM_U8(key_out));
}
static int64_t rw_open_batch_step_shim(rw_receiver *r, const char *in, size_t in_len,
                                       const uint64_t *in_off, size_t n, char *out,
                                       size_t out_cap, uint64_t *out_off, int32_t *status,
                                       uint64_t threshold, size_t start, int32_t prev,
                                       char *nonce_out, uint64_t *stop)
{
    return rw_open_batch_step(r, RW_SHIM_CU8(in), in_len, in_off, n, RW_SHIM_U8(out),
                              out_cap, out_off, status, threshold, start, prev,
                              RW_SHIM_U8(nonce_out), stop);
}
#define rw_seal_begin rw_seal_begin_shim
#define rw_seal_begin_more rw_seal_begin_more_shim
#define rw_seal_batch_begin rw_seal_batch_begin_shim
#define rw_sender_export_key rw_sender_export_key_shim
#define rw_open_begin rw_open_begin_shim
#define rw_open_begin_more rw_open_begin_more_shim
#define rw_open_commit rw_open_commit_shim
#define rw_receiver_export_key rw_receiver_export_key_shim
#define rw_open_batch_step rw_open_batch_step_shim
#define rw_seal rw_seal_shim
#define rw_seal_batch rw_seal_batch_shim
#define rw_open rw_open_shim
#define rw_open_batch rw_open_batch_shim
"""


def _werror() -> bool:
    """Warnings are errors only where we choose the compiler: CI and
    development builds set ``ROLEWIRE_WERROR=1``. A user building the sdist
    with a newer compiler (new warnings) must still get a working build."""
    return os.environ.get("ROLEWIRE_WERROR", "") not in ("", "0")


def _compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/W4", *(["/WX"] if _werror() else [])]
    args = ["-Wall", "-Wextra", *(["-Werror"] if _werror() else []), "-O2"]
    extra = os.environ.get("ROLEWIRE_CFLAGS", "")
    return args + extra.split()


def _link_args() -> list[str]:
    if sys.platform == "win32":
        return []
    return os.environ.get("ROLEWIRE_LDFLAGS", "").split()


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "rolewire._native",
    SHIM,
    sources=[f"{_CSRC}/record.c", f"{_CSRC}/replay.c", f"{_CSRC}/fastpath.c"],
    include_dirs=[_CSRC],
    extra_compile_args=_compile_args(),
    extra_link_args=_link_args(),
    py_limited_api=True,
)

if __name__ == "__main__":
    # A development build: the module goes into src/rolewire/, next to the
    # Python code an editable install runs. It compiles in a scratch
    # directory: in the project's root, setuptools would read its
    # pyproject.toml, which an older setuptools in a venv rejects (PEP 639
    # license field); pip builds with its own, newer setuptools.
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rolewire-build-") as scratch:
        os.chdir(scratch)
        ffibuilder.compile(tmpdir=scratch, verbose=True)
        built = glob.glob(os.path.join(scratch, "rolewire", "_native*.*"))
        built = [path for path in built if not path.endswith((".c", ".o"))]
        if not built:
            sys.exit("the build produced no module")
        for path in built:
            shutil.copy2(path, os.path.join(_ROOT, "src", "rolewire"))
            print("built", os.path.join("src", "rolewire", os.path.basename(path)))
