/* In-place SendPacket -> RecvPacket rewriting of a run of frames (meshscale.derp.runs).
 *
 * Optional: runs.py falls back to its Python walk when this module is absent, and the tests
 * check both give identical results and bytes. The semantics are rewrite_run_py's:
 *
 * rewrite_run(buf, pos, end, dst_key, src_key, max_len) -> (pos, frames, packet_bytes)
 *   from pos on, each complete frame in buf[:end] of type 0x04 (SendPacket) with length in
 *   [32, max_len] and destination key dst_key becomes type 0x05 (RecvPacket) from src_key;
 *   the walk stops at the first frame that is not one, or not complete.
 *
 * read_buffer(n) -> bytearray of n bytes, not zeroed
 *   bytearray(n) zeroes its memory, and at 16 KB packets that memset was ~3 % of the relay's
 *   CPU (a fresh 256 KiB read buffer each time the last one was handed out as views). The
 *   relay only ever forwards bytes that recv_into wrote, so the stale contents never leave.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define KEY_LEN 32
#define HDR_LEN 5

static PyObject *rewrite_run(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "rewrite_run takes 6 arguments");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_len = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer buf, dst, src;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[3], &dst, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (PyObject_GetBuffer(args[4], &src, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&dst);
        PyBuffer_Release(&buf);
        return NULL;
    }
    PyObject *ret = NULL;
    if (dst.len != KEY_LEN || src.len != KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "keys are 32 bytes");
        goto out;
    }
    if (pos < 0 || end < pos || end > buf.len) {
        PyErr_SetString(PyExc_ValueError, "bad range");
        goto out;
    }
    unsigned char *b = (unsigned char *)buf.buf;
    const unsigned char *dk = (const unsigned char *)dst.buf;
    const unsigned char *sk = (const unsigned char *)src.buf;
    Py_ssize_t frames = 0;
    long long nbytes = 0;
    while (end - pos >= HDR_LEN + KEY_LEN) {
        const unsigned char *h = b + pos;
        uint32_t len = ((uint32_t)h[1] << 24) | ((uint32_t)h[2] << 16) | ((uint32_t)h[3] << 8) | h[4];
        if (h[0] != 0x04 || len < KEY_LEN || (Py_ssize_t)len > max_len) break;
        if ((Py_ssize_t)len > end - pos - HDR_LEN) break; /* not complete */
        if (memcmp(h + HDR_LEN, dk, KEY_LEN) != 0) break;
        b[pos] = 0x05;
        memcpy(b + pos + HDR_LEN, sk, KEY_LEN);
        frames++;
        nbytes += (long long)len - KEY_LEN;
        pos += HDR_LEN + (Py_ssize_t)len;
    }
    ret = Py_BuildValue("(nnL)", pos, frames, nbytes);
out:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&buf);
    return ret;
}

static PyObject *read_buffer(PyObject *mod, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    return PyByteArray_FromStringAndSize(NULL, n);
}

static PyMethodDef methods[] = {
    {"rewrite_run", (PyCFunction)(void (*)(void))rewrite_run, METH_FASTCALL,
     "rewrite_run(buf, pos, end, dst_key, src_key, max_len) -> (pos, frames, packet_bytes)"},
    {"read_buffer", read_buffer, METH_O, "read_buffer(n) -> bytearray of n bytes, not zeroed"},
    {NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_runs", NULL, -1, methods};

PyMODINIT_FUNC PyInit__runs(void) { return PyModule_Create(&moddef); }
