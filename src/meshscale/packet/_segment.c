/* TSO/USO segmentation rows (meshscale.packet.tso): the per-segment work of Splitter.split in C.
 *
 * Optional: tso.py falls back to its numpy/Python rows when this module is absent, and the tests
 * check both give identical bytes. Python keeps every validation of the frame and builds the
 * views; this only writes the rows, which the caller has already checked fit in the arena.
 *
 * Row i (stride bytes, from off + i * stride): the IP + L4 header of the frame with
 *   IPv4 total length, id + i and header checksum (IPv6 payload length), TCP seq + i * gso
 *   (FIN/PSH on the last row only, CWR on the first only when ECN) or the UDP length, and a
 *   complete L4 checksum (pseudo-header included); then payload i; then zeros up to stride.
 * Checksums are reduced as tso.py does (0xFFFF - sum % 0xFFFF), so both give the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define M 0xFFFFu

/* Ones'-complement sum of data as big-endian 16-bit words (an odd tail padded with zero),
 * reduced mod 0xFFFF. Sums native 32-bit loads and swaps once (RFC 1071 section 2(B)). */
static uint32_t sum16(const unsigned char *d, Py_ssize_t n) {
    uint64_t acc = 0;
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t w;
        memcpy(&w, d + i, 4);
        acc += w;
    }
    if (i < n) {
        unsigned char t[4] = {0, 0, 0, 0};
        memcpy(t, d + i, (size_t)(n - i));
        uint32_t w;
        memcpy(&w, t, 4);
        acc += w;
    }
    while (acc >> 16) acc = (acc & 0xFFFF) + (acc >> 16);
    uint16_t f = (uint16_t)acc;
#if PY_BIG_ENDIAN
    uint32_t s = f;
#else
    uint32_t s = (uint32_t)((f >> 8) | ((f & 0xFF) << 8));
#endif
    return s % M;
}

static void put16(unsigned char *p, uint32_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }

/* split_rows(arena, p, off, nseg, stride, hl, iph, gso, rem, proto, ecn) -> None */
static PyObject *split_rows(PyObject *mod, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t p, off, nseg, stride, hl, iph, gso, rem;
    int proto, ecn;
    if (!PyArg_ParseTuple(args, "w*nnnnnnnnii", &buf, &p, &off, &nseg, &stride, &hl, &iph, &gso,
                          &rem, &proto, &ecn))
        return NULL;
    unsigned char *a = buf.buf;
    Py_ssize_t seg_len = hl + gso;
    Py_ssize_t nfull = rem ? nseg - 1 : nseg;
    if (p < 0 || off < p + hl || nseg <= 0 || hl > 255 || iph < 20 || hl < iph + 8 ||
        stride < seg_len || off + nseg * stride > buf.len || p + hl + nfull * gso + rem > off ||
        (proto != 6 && proto != 17)) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "split_rows: bad geometry");
        return NULL;
    }
    unsigned char tmpl[256];
    memcpy(tmpl, a + p, (size_t)hl);
    int v4 = (tmpl[0] >> 4) == 4;
    uint32_t ip_id = ((uint32_t)tmpl[4] << 8) | tmpl[5];
    uint32_t seq0 = ((uint32_t)tmpl[iph + 4] << 24) | ((uint32_t)tmpl[iph + 5] << 16) |
                    ((uint32_t)tmpl[iph + 6] << 8) | tmpl[iph + 7];
    unsigned char last_flags = tmpl[iph + 13];
    Py_ssize_t coff = proto == 6 ? 16 : 6;
    uint32_t addrs = v4 ? sum16(tmpl + 12, 8) : sum16(tmpl + 8, 32);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nseg; i++) {
        Py_ssize_t ln = i < nfull ? seg_len : hl + rem;
        unsigned char *r = a + off + i * stride;
        memcpy(r, tmpl, (size_t)hl);
        memcpy(r + hl, a + p + hl + i * gso, (size_t)(ln - hl));
        memset(r + ln, 0, (size_t)(stride - ln));
        if (v4) {
            put16(r + 2, (uint32_t)ln);
            put16(r + 4, (ip_id + (uint32_t)i) & 0xFFFF);
            r[10] = r[11] = 0;
        } else {
            put16(r + 4, (uint32_t)(ln - 40));
        }
        unsigned char *l4 = r + iph;
        if (proto == 6) {
            uint32_t seq = seq0 + (uint32_t)i * (uint32_t)gso;
            l4[4] = (unsigned char)(seq >> 24);
            l4[5] = (unsigned char)(seq >> 16);
            l4[6] = (unsigned char)(seq >> 8);
            l4[7] = (unsigned char)seq;
            unsigned char fl = i == nseg - 1 ? last_flags : (unsigned char)(last_flags & ~0x09);
            if (ecn && i) fl &= 0x7F; /* CWR: first segment only */
            l4[13] = fl;
        } else {
            put16(l4 + 4, (uint32_t)(ln - iph));
        }
        l4[coff] = l4[coff + 1] = 0;
        uint32_t s = sum16(l4, ln - iph) + addrs + (uint32_t)proto + (uint32_t)(ln - iph);
        put16(l4 + coff, M - s % M);
        if (v4) put16(r + 10, M - sum16(r, iph));
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"split_rows", split_rows, METH_VARARGS,
     "split_rows(arena, p, off, nseg, stride, hl, iph, gso, rem, proto, ecn)"},
    {NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_segment", NULL, -1, methods};

PyMODINIT_FUNC PyInit__segment(void) { return PyModule_Create(&moddef); }
