/* Batch transport seal and counted open over OpenSSL's ChaCha20-Poly1305
 * (docs/protocol/wireguard.md §5.1-5.3). Optional: datapath falls back to aeadpy.py when this
 * module is absent; tests check both give identical bytes.
 *
 * Why C: the per-packet Python hops (nonce packing, call, padding concat, header pack) cost more
 * than the AEAD itself; here a batch is one call and the crypto runs with the GIL released so
 * the TX and RX threads encrypt on both cores at once. Counters are reserved under the GIL, so
 * two threads never share a nonce; a per-object lock serialises use of the cipher context.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define TAG 16
#define HEADER 16
#define RING_BLOCKS 128
#define WINDOW ((RING_BLOCKS - 1) * 64)
#define REJECT_AFTER_MESSAGES (UINT64_MAX - (1ULL << 13))
/* Below this many bytes in a call the GIL stays held: the crypto takes a few microseconds,
 * while handing the GIL to a waiting thread and taking it back can cost tens (the other thread
 * runs its Python until it blocks). A lone ping-sized packet is the case this is for. */
#define NOGIL_BYTES 8192

static const unsigned char ZEROS[16];

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx;
    PyThread_type_lock lock;
    uint64_t next;    /* Sealer: next counter to use */
    uint64_t last;    /* Opener: highest accepted counter */
    uint64_t ring[RING_BLOCKS];
} Ctx;

static void nonce_of(unsigned char n[12], uint64_t c) {
    memset(n, 0, 4);
    for (int i = 0; i < 8; i++) n[4 + i] = (unsigned char)(c >> (8 * i));
}

static void put_header(unsigned char *h, uint32_t receiver, uint64_t c) {
    h[0] = 4; h[1] = h[2] = h[3] = 0;
    for (int i = 0; i < 4; i++) h[4 + i] = (unsigned char)(receiver >> (8 * i));
    for (int i = 0; i < 8; i++) h[8 + i] = (unsigned char)(c >> (8 * i));
}

static int ctx_init(Ctx *self, PyObject *args, int enc) {
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "y*", &key)) return -1;
    if (key.len != 32) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "key must be 32 bytes");
        return -1;
    }
    if (self->ctx == NULL) self->ctx = EVP_CIPHER_CTX_new();
    if (self->lock == NULL) self->lock = PyThread_allocate_lock();
    int ok = self->ctx && self->lock &&
             EVP_CipherInit_ex(self->ctx, EVP_chacha20_poly1305(), NULL, key.buf, NULL, enc) == 1;
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 init failed");
        return -1;
    }
    self->next = self->last = 0;
    memset(self->ring, 0, sizeof self->ring);
    return 0;
}

static int sealer_init(Ctx *self, PyObject *args, PyObject *kw) { return ctx_init(self, args, 1); }
static int opener_init(Ctx *self, PyObject *args, PyObject *kw) { return ctx_init(self, args, 0); }

static void ctx_dealloc(Ctx *self) {
    if (self->ctx) EVP_CIPHER_CTX_free(self->ctx);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void lock_nogil(Ctx *self) {
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

/* Padded length, as datapath.seal_for_peer computes it (wireguard-go calculatePaddingSize). */
static Py_ssize_t padded_len(Py_ssize_t len, Py_ssize_t mtu) {
    Py_ssize_t pad16 = (-len) & 15;
    if (pad16 == 0 || len + pad16 <= mtu || mtu <= 0) return len + pad16;
    Py_ssize_t last = len > mtu ? len % mtu : len;
    Py_ssize_t p = (last + 15) & ~(Py_ssize_t)15;
    if (p > mtu) p = mtu;
    return len + (p - last);
}

typedef struct { Py_buffer in; unsigned char *out; Py_ssize_t plen; uint64_t counter; } Job;

/* seal_batch(packets, receiver, mtu) -> (messages, wire_bytes, last_counter); each message is
 * a one-element list holding the whole datagram (header + ciphertext + tag). */
static PyObject *sealer_seal_batch(Ctx *self, PyObject *args) {
    PyObject *seq;
    unsigned long receiver;
    Py_ssize_t mtu;
    if (!PyArg_ParseTuple(args, "Okn", &seq, &receiver, &mtu)) return NULL;
    PyObject *fast = PySequence_Fast(seq, "packets must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    Job *jobs = PyMem_Calloc(n ? n : 1, sizeof(Job));
    PyObject *cts = PyList_New(n);
    PyObject *result = NULL;
    Py_ssize_t got = 0, wire = 0;
    if (!jobs || !cts) goto done;
    if (self->next + (uint64_t)n >= REJECT_AFTER_MESSAGES) {
        PyErr_SetString(PyExc_OverflowError, "keypair exhausted");
        goto done;
    }
    for (; got < n; got++) {
        Job *j = &jobs[got];
        if (PyObject_GetBuffer(items[got], &j->in, PyBUF_SIMPLE) < 0) goto done;
        j->plen = padded_len(j->in.len, mtu);
        /* The whole datagram in one object: header, then ciphertext and tag. */
        PyObject *ct = PyBytes_FromStringAndSize(NULL, HEADER + j->plen + TAG);
        if (!ct) { PyBuffer_Release(&j->in); goto done; }
        PyList_SET_ITEM(cts, got, ct);
        j->out = (unsigned char *)PyBytes_AS_STRING(ct) + HEADER;
        wire += j->plen + TAG + HEADER;
    }
    uint64_t first = self->next;
    self->next += (uint64_t)n; /* reserved under the GIL */
    lock_nogil(self);
    int ok = 1;
    PyThreadState *ts = wire >= NOGIL_BYTES ? PyEval_SaveThread() : NULL;
    unsigned char nonce[12];
    int outl;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        Job *j = &jobs[i];
        nonce_of(nonce, first + (uint64_t)i);
        Py_ssize_t pad = j->plen - j->in.len;
        ok = EVP_EncryptInit_ex(self->ctx, NULL, NULL, NULL, nonce) == 1 &&
             EVP_EncryptUpdate(self->ctx, j->out, &outl, j->in.buf, (int)j->in.len) == 1 &&
             (pad == 0 || EVP_EncryptUpdate(self->ctx, j->out + j->in.len, &outl, ZEROS, (int)pad) == 1) &&
             EVP_EncryptFinal_ex(self->ctx, j->out + j->plen, &outl) == 1 &&
             EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_GET_TAG, TAG, j->out + j->plen) == 1;
    }
    if (ts) PyEval_RestoreThread(ts);
    PyThread_release_lock(self->lock);
    if (!ok) { PyErr_SetString(PyExc_RuntimeError, "OpenSSL seal failed"); goto done; }
    PyObject *msgs = PyList_New(n);
    if (!msgs) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ct = PyList_GET_ITEM(cts, i);
        put_header((unsigned char *)PyBytes_AS_STRING(ct), (uint32_t)receiver, first + (uint64_t)i);
        Py_INCREF(ct);
        PyObject *one = PyList_New(1);
        if (!one) { Py_DECREF(ct); Py_DECREF(msgs); goto done; }
        PyList_SET_ITEM(one, 0, ct);
        PyList_SET_ITEM(msgs, i, one);
    }
    result = Py_BuildValue("(NnK)", msgs, wire, (unsigned long long)(first + (uint64_t)n - (n ? 1 : 0)));
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&jobs[i].in);
    PyMem_Free(jobs);
    Py_XDECREF(cts);
    Py_DECREF(fast);
    return result;
}

/* RFC 6479 window, same as replay.py; called only after authentication. */
static int replay_accept(Ctx *self, uint64_t c) {
    if (c >= REJECT_AFTER_MESSAGES) return 0;
    uint64_t block = c >> 6;
    if (c > self->last) {
        uint64_t cur = self->last >> 6, diff = block - cur;
        if (diff > RING_BLOCKS) diff = RING_BLOCKS;
        for (uint64_t i = 1; i <= diff; i++) self->ring[(cur + i) & (RING_BLOCKS - 1)] = 0;
        self->last = c;
    } else if (self->last - c > WINDOW) {
        return 0;
    }
    uint64_t *w = &self->ring[block & (RING_BLOCKS - 1)], bit = 1ULL << (c & 63);
    if (*w & bit) return 0;
    *w |= bit;
    return 1;
}

/* open(message) -> plaintext, or None if the tag fails, or False if it is a replay.
 * message is a whole transport message; its header is not re-checked here. */
static PyObject *opener_open(Ctx *self, PyObject *arg) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    if (in.len < HEADER + TAG) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "transport message too short");
        return NULL;
    }
    const unsigned char *p = in.buf;
    uint64_t c = 0;
    for (int i = 0; i < 8; i++) c |= (uint64_t)p[8 + i] << (8 * i);
    Py_ssize_t plen = in.len - HEADER - TAG;
    PyObject *pt = PyBytes_FromStringAndSize(NULL, plen);
    if (!pt) { PyBuffer_Release(&in); return NULL; }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(pt);
    unsigned char nonce[12], tag[TAG];
    memcpy(tag, p + in.len - TAG, TAG);
    nonce_of(nonce, c);
    lock_nogil(self);
    int ok, outl;
    PyThreadState *ts = in.len >= NOGIL_BYTES ? PyEval_SaveThread() : NULL;
    ok = EVP_DecryptInit_ex(self->ctx, NULL, NULL, NULL, nonce) == 1 &&
         EVP_DecryptUpdate(self->ctx, out, &outl, p + HEADER, (int)plen) == 1 &&
         EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_SET_TAG, TAG, tag) == 1 &&
         EVP_DecryptFinal_ex(self->ctx, out + plen, &outl) == 1;
    if (ts) PyEval_RestoreThread(ts);
    PyThread_release_lock(self->lock);
    PyBuffer_Release(&in);
    if (!ok) { Py_DECREF(pt); Py_RETURN_NONE; }
    if (!replay_accept(self, c)) { Py_DECREF(pt); Py_RETURN_FALSE; }
    return pt;
}

#define MAX_RUN 256

/* open_run(batch, start) -> (results, end, authentic_bytes, last_authentic)
 * batch is a list of (message, endpoint) tuples; from batch[start], the run of transport
 * messages (>= 32 bytes, type 4) with the receiver index of batch[start] is opened with the GIL
 * released once, then passed through the replay window in order. results[i] is as open()
 * returns for batch[start + i]; end is one past the run; authentic_bytes sums the wire sizes of
 * the accepted messages and last_authentic is the batch index of the last one (-1 if none). */
typedef struct { Py_buffer in; PyObject *pt; uint64_t counter; int ok; } OpenJob;

static int transport_index(const Py_buffer *b, uint32_t *index) {
    const unsigned char *p = b->buf;
    if (b->len < HEADER + TAG || p[0] != 4 || p[1] || p[2] || p[3]) return 0;
    *index = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    return 1;
}

static PyObject *opener_open_run(Ctx *self, PyObject *args) {
    PyObject *batch;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &batch, &start)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(batch);
    if (start < 0 || start >= n) {
        PyErr_SetString(PyExc_IndexError, "open_run: start out of range");
        return NULL;
    }
    OpenJob jobs[MAX_RUN];
    Py_ssize_t got = 0, total = 0;
    uint32_t want = 0;
    PyObject *result = NULL;
    for (Py_ssize_t j = start; j < n && got < MAX_RUN; j++) {
        PyObject *item = PyList_GET_ITEM(batch, j);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 1) {
            if (got) break;
            PyErr_SetString(PyExc_TypeError, "open_run: batch items are (message, endpoint)");
            return NULL;
        }
        OpenJob *jb = &jobs[got];
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &jb->in, PyBUF_SIMPLE) < 0) goto done;
        uint32_t index;
        if (!transport_index(&jb->in, &index) || (got && index != want)) {
            PyBuffer_Release(&jb->in);
            if (got) break;
            PyErr_SetString(PyExc_ValueError, "open_run: batch[start] is not a transport message");
            return NULL;
        }
        want = index;
        const unsigned char *p = jb->in.buf;
        uint64_t c = 0;
        for (int i = 0; i < 8; i++) c |= (uint64_t)p[8 + i] << (8 * i);
        jb->counter = c;
        jb->pt = PyBytes_FromStringAndSize(NULL, jb->in.len - HEADER - TAG);
        total += jb->in.len;
        got++;
        if (!jb->pt) goto done;
    }
    lock_nogil(self);
    PyThreadState *ts = total >= NOGIL_BYTES ? PyEval_SaveThread() : NULL;
    unsigned char nonce[12], tag[TAG];
    int outl;
    for (Py_ssize_t i = 0; i < got; i++) {
        OpenJob *jb = &jobs[i];
        const unsigned char *p = jb->in.buf;
        Py_ssize_t plen = jb->in.len - HEADER - TAG;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(jb->pt);
        memcpy(tag, p + jb->in.len - TAG, TAG);
        nonce_of(nonce, jb->counter);
        jb->ok = EVP_DecryptInit_ex(self->ctx, NULL, NULL, NULL, nonce) == 1 &&
                 EVP_DecryptUpdate(self->ctx, out, &outl, p + HEADER, (int)plen) == 1 &&
                 EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_SET_TAG, TAG, tag) == 1 &&
                 EVP_DecryptFinal_ex(self->ctx, out + plen, &outl) == 1;
    }
    if (ts) PyEval_RestoreThread(ts);
    PyThread_release_lock(self->lock);
    PyObject *results = PyList_New(got);
    if (!results) goto done;
    Py_ssize_t nbytes = 0, last = -1;
    for (Py_ssize_t i = 0; i < got; i++) {
        OpenJob *jb = &jobs[i];
        PyObject *r;
        if (!jb->ok) {
            r = Py_None;
            Py_INCREF(r);
        } else if (!replay_accept(self, jb->counter)) {
            r = Py_False;
            Py_INCREF(r);
        } else {
            r = jb->pt;
            jb->pt = NULL;
            nbytes += jb->in.len;
            last = start + i;
        }
        PyList_SET_ITEM(results, i, r);
    }
    result = Py_BuildValue("(Nnnn)", results, start + got, nbytes, last);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        PyBuffer_Release(&jobs[i].in);
        Py_XDECREF(jobs[i].pt);
    }
    return result;
}

static PyObject *sealer_get_next(Ctx *self, void *c) { return PyLong_FromUnsignedLongLong(self->next); }

static PyMethodDef sealer_methods[] = {
    {"seal_batch", (PyCFunction)sealer_seal_batch, METH_VARARGS, "seal_batch(packets, receiver, mtu)"},
    {NULL}};
static PyGetSetDef sealer_getset[] = {{"next_counter", (getter)sealer_get_next, NULL, NULL, NULL}, {NULL}};
static PyMethodDef opener_methods[] = {
    {"open", (PyCFunction)opener_open, METH_O, "open(message) -> bytes | None | False"},
    {"open_run", (PyCFunction)opener_open_run, METH_VARARGS,
     "open_run(batch, start) -> (results, end, authentic_bytes, last_authentic)"},
    {NULL}};

static PyTypeObject SealerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshscale.wireguard._aead.Sealer",
    .tp_basicsize = sizeof(Ctx), .tp_flags = Py_TPFLAGS_DEFAULT, .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sealer_init, .tp_dealloc = (destructor)ctx_dealloc,
    .tp_methods = sealer_methods, .tp_getset = sealer_getset};
static PyTypeObject OpenerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshscale.wireguard._aead.Opener",
    .tp_basicsize = sizeof(Ctx), .tp_flags = Py_TPFLAGS_DEFAULT, .tp_new = PyType_GenericNew,
    .tp_init = (initproc)opener_init, .tp_dealloc = (destructor)ctx_dealloc,
    .tp_methods = opener_methods};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_aead", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__aead(void) {
    if (PyType_Ready(&SealerType) < 0 || PyType_Ready(&OpenerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&SealerType);
    Py_INCREF(&OpenerType);
    PyModule_AddObject(m, "Sealer", (PyObject *)&SealerType);
    PyModule_AddObject(m, "Opener", (PyObject *)&OpenerType);
    return m;
}
