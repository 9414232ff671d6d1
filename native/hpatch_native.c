/*
 * hpatch._native: the byte-level hot loops of hpatch.
 *
 * Plain functions over buffers, no global state. Every function has a
 * pure-Python twin with the same signature, results and errors in
 * hpatch/_fallback/scan.py; a parity test fuzzes one against the other.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "rewrite.h"
#include "x64.h"

#include "constants.h" /* SITE_*: hpatch.arch.base.SiteKind */

#define RVA_LIMIT 0xFFFFFFFFLL

/* Code scanned with the GIL held: a function's scan takes microseconds, less than
 * another thread takes to wake up and run, and each release costs a hand-over; a
 * section's scan (milliseconds) frees it. About 50 us of work. */
#define SCAN_WITH_GIL 65536

typedef struct {
    int64_t site;
    int64_t target;
    int kind;
} site_t;

typedef struct {
    site_t *items;
    size_t count;
    size_t capacity;
    int failed;
} site_list_t;

static void push_site(site_list_t *list, int64_t site, int64_t target, int kind)
{
    if (list->failed)
        return;
    if (list->count == list->capacity) {
        size_t grown = list->capacity ? list->capacity * 2 : 256;
        site_t *items = realloc(list->items, grown * sizeof(site_t));
        if (items == NULL) {
            list->failed = 1;
            return;
        }
        list->items = items;
        list->capacity = grown;
    }
    list->items[list->count].site = site;
    list->items[list->count].target = target;
    list->items[list->count].kind = kind;
    list->count++;
}

static int32_t read_i32(const uint8_t *p)
{
    uint32_t v = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                 ((uint32_t)p[3] << 24);
    return (int32_t)v;
}

static uint32_t read_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static int check_rvas(long long code_rva, long long lo_rva, long long hi_rva, Py_ssize_t len)
{
    if (code_rva < 0 || code_rva > RVA_LIMIT || lo_rva < 0 || lo_rva > RVA_LIMIT + 1 ||
        hi_rva < 0 || hi_rva > RVA_LIMIT + 1) {
        PyErr_SetString(PyExc_ValueError, "rva out of range");
        return -1;
    }
    if (code_rva + (long long)len > RVA_LIMIT + 1) {
        PyErr_SetString(PyExc_ValueError, "code extends past the 32-bit rva space");
        return -1;
    }
    return 0;
}

/* array.array's "I" holds the RVAs: it must be 32 bits wide. */
typedef char unsigned_int_is_32_bits[sizeof(unsigned int) == 4 ? 1 : -1];

/* The module's state: array.array, looked up once at import (a lookup per call cost
 * more than a scan of a small function). */
typedef struct {
    PyObject *array_type, *wide, *narrow; /* array.array, "I", "B" */
} native_state_t;

static native_state_t *native_state(PyObject *module)
{
    return (native_state_t *)PyModule_GetState(module);
}

/* An array.array holding the `size` bytes at `data`, of unsigned ints if `wide`, else
 * of bytes; NULL with an exception set. */
static PyObject *new_array(PyObject *module, int wide, const void *data, size_t size)
{
    native_state_t *state = native_state(module);
    PyObject *bytes = PyBytes_FromStringAndSize(data, (Py_ssize_t)size);
    if (bytes == NULL)
        return NULL;
    PyObject *args[2] = {wide ? state->wide : state->narrow, bytes};
    PyObject *result = PyObject_Vectorcall(state->array_type, args, 2, NULL);
    Py_DECREF(bytes);
    return result;
}

/* The sites as three columns, (sites, targets, kinds): array("I"), array("I") and
 * array("B"). A tuple per site cost 120 bytes; the columns cost 9. Frees the list. */
static PyObject *sites_to_columns(PyObject *module, site_list_t *list)
{
    PyObject *result = NULL, *sites = NULL, *targets = NULL, *kinds = NULL;
    size_t count = list->count;
    unsigned int *site_column = NULL, *target_column = NULL;
    unsigned char *kind_column = NULL;
    if (list->failed) {
        PyErr_NoMemory();
        goto done;
    }
    site_column = malloc((count ? count : 1) * sizeof *site_column);
    target_column = malloc((count ? count : 1) * sizeof *target_column);
    kind_column = malloc(count ? count : 1);
    if (site_column == NULL || target_column == NULL || kind_column == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* check_rvas and the [lo, hi) filter hold every site and target in [0, 2^32). */
    for (size_t i = 0; i < count; i++) {
        site_column[i] = (unsigned int)list->items[i].site;
        target_column[i] = (unsigned int)list->items[i].target;
        kind_column[i] = (unsigned char)list->items[i].kind;
    }
    free(list->items);
    list->items = NULL;
    if ((sites = new_array(module, 1, site_column, count * sizeof *site_column)) == NULL ||
        (targets = new_array(module, 1, target_column, count * sizeof *target_column)) == NULL ||
        (kinds = new_array(module, 0, kind_column, count)) == NULL)
        goto done;
    result = PyTuple_Pack(3, sites, targets, kinds);
done:
    Py_XDECREF(sites);
    Py_XDECREF(targets);
    Py_XDECREF(kinds);
    free(site_column);
    free(target_column);
    free(kind_column);
    free(list->items);
    return result;
}

static void scan_x64(const uint8_t *code, size_t len, int64_t code_rva, int64_t lo, int64_t hi,
                     site_list_t *out)
{
    for (size_t i = 0; i < len; i++) {
        uint8_t b = code[i];
        int64_t site = code_rva + (int64_t)i;
        if ((b == 0xE8 || b == 0xE9) && i + 5 <= len) {
            int64_t target = site + 5 + read_i32(code + i + 1);
            if (target >= lo && target < hi)
                push_site(out, site, target, b == 0xE8 ? SITE_CALL : SITE_JUMP);
        } else if (b == 0x0F && i + 6 <= len && (code[i + 1] & 0xF0) == 0x80) {
            int64_t target = site + 6 + read_i32(code + i + 2);
            if (target >= lo && target < hi)
                push_site(out, site, target, SITE_COND_JUMP);
        } else if ((b & 0xF8) == 0x48 && i + 7 <= len && code[i + 1] == 0x8D &&
                   (code[i + 2] & 0xC7) == 0x05) {
            int64_t target = site + 7 + read_i32(code + i + 3);
            if (target >= lo && target < hi)
                push_site(out, site, target, SITE_ADDRESS);
        }
    }
}

PyDoc_STRVAR(scan_x64_sites_doc,
"scan_x64_sites(code, code_rva, lo_rva, hi_rva, /)\n--\n\n"
"Byte-level scan of x64 code for rel32 branch and RIP-relative LEA sites.\n\n"
"At every byte offset: E8/E9 rel32 (call/jump), 0F 8x rel32 (conditional jump)\n"
"and REX.W 8D /r with a RIP-relative ModRM (LEA: address). Returns the sites\n"
"whose targets lie in [lo_rva, hi_rva), in site order, as three columns (sites,\n"
"targets, kinds): array('I') of site RVAs, array('I') of target RVAs and\n"
"array('B') of SiteKind numbers. Candidates only: the caller decides which sites\n"
"are real instruction starts.");

static PyObject *scan_x64_sites(PyObject *self, PyObject *args)
{
    Py_buffer code;
    long long code_rva, lo_rva, hi_rva;
    if (!PyArg_ParseTuple(args, "O&O&O&O&:scan_x64_sites", hpatch_buffer_arg, &code,
                          hpatch_int64_arg, &code_rva, hpatch_int64_arg, &lo_rva,
                          hpatch_int64_arg, &hi_rva))
        return NULL;
    if (check_rvas(code_rva, lo_rva, hi_rva, code.len) < 0) {
        PyBuffer_Release(&code);
        return NULL;
    }
    site_list_t list = {NULL, 0, 0, 0};
    if (code.len < SCAN_WITH_GIL) {
        scan_x64((const uint8_t *)code.buf, (size_t)code.len, code_rva, lo_rva, hi_rva, &list);
    } else {
        Py_BEGIN_ALLOW_THREADS
        scan_x64((const uint8_t *)code.buf, (size_t)code.len, code_rva, lo_rva, hi_rva, &list);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&code);
    return sites_to_columns(self, &list);
}

static int64_t sign_extend(uint32_t value, int bits)
{
    uint32_t sign = 1u << (bits - 1);
    return (int64_t)((value ^ sign)) - (int64_t)sign;
}

static void scan_arm64(const uint8_t *code, size_t len, int64_t code_rva, int64_t lo, int64_t hi,
                       site_list_t *out)
{
    size_t words = len / 4;
    for (size_t w = 0; w < words; w++) {
        uint32_t insn = read_u32(code + 4 * w);
        int64_t site = code_rva + 4 * (int64_t)w;
        uint32_t top = insn & 0xFC000000u;
        if (top == 0x94000000u || top == 0x14000000u) {
            int64_t target = site + 4 * sign_extend(insn & 0x03FFFFFFu, 26);
            if (target >= lo && target < hi)
                push_site(out, site, target, top == 0x94000000u ? SITE_CALL : SITE_JUMP);
        } else if ((insn & 0xFF000010u) == 0x54000000u || (insn & 0x7E000000u) == 0x34000000u) {
            /* B.cond imm19, CBZ/CBNZ imm19 */
            int64_t target = site + 4 * sign_extend((insn >> 5) & 0x7FFFFu, 19);
            if (target >= lo && target < hi)
                push_site(out, site, target, SITE_COND_JUMP);
        } else if ((insn & 0x7E000000u) == 0x36000000u) {
            /* TBZ/TBNZ imm14 */
            int64_t target = site + 4 * sign_extend((insn >> 5) & 0x3FFFu, 14);
            if (target >= lo && target < hi)
                push_site(out, site, target, SITE_COND_JUMP);
        } else if ((insn & 0x3B000000u) == 0x18000000u && (insn & 0xC4000000u) != 0xC0000000u) {
            /* LDR (literal) of a W/X/S/D/Q register or LDRSW; not PRFM */
            int64_t target = site + 4 * sign_extend((insn >> 5) & 0x7FFFFu, 19);
            if (target >= lo && target < hi)
                push_site(out, site, target, SITE_LOAD);
        } else if ((insn & 0x9F000000u) == 0x10000000u) {
            /* ADR Xd, label */
            uint32_t imm = (((insn >> 5) & 0x7FFFFu) << 2) | ((insn >> 29) & 0x3u);
            int64_t target = site + sign_extend(imm, 21);
            if (target >= lo && target < hi)
                push_site(out, site, target, SITE_ADDRESS);
        } else if ((insn & 0x9F000000u) == 0x90000000u && w + 1 < words) {
            /* ADRP Xn, page followed by ADD Xd, Xn, #lo12: a materialised address. */
            uint32_t next = read_u32(code + 4 * (w + 1));
            uint32_t rd = insn & 0x1Fu;
            if ((next & 0xFFC00000u) == 0x91000000u && ((next >> 5) & 0x1Fu) == rd) {
                uint32_t immlo = (insn >> 29) & 0x3u;
                uint32_t immhi = (insn >> 5) & 0x7FFFFu;
                int64_t pages = sign_extend((immhi << 2) | immlo, 21);
                int64_t target = (site & ~(int64_t)0xFFF) + pages * 4096 +
                                 (int64_t)((next >> 10) & 0xFFFu);
                if (target >= lo && target < hi)
                    push_site(out, site, target, SITE_ADDRESS);
            }
        }
    }
}

PyDoc_STRVAR(scan_arm64_sites_doc,
"scan_arm64_sites(code, code_rva, lo_rva, hi_rva, /)\n--\n\n"
"Word-level scan of ARM64 code for B/BL imm26, B.cond/CBZ/CBNZ imm19,\n"
"TBZ/TBNZ imm14, ADR and ADRP+ADD address pairs, and LDR (literal) loads.\n\n"
"code_rva must be 4-aligned; a trailing partial word is ignored. Returns the\n"
"sites whose targets lie in [lo_rva, hi_rva), in site order, as three columns\n"
"(sites, targets, kinds): array('I') of site RVAs, array('I') of target RVAs and\n"
"array('B') of SiteKind numbers.");

static PyObject *scan_arm64_sites(PyObject *self, PyObject *args)
{
    Py_buffer code;
    long long code_rva, lo_rva, hi_rva;
    if (!PyArg_ParseTuple(args, "O&O&O&O&:scan_arm64_sites", hpatch_buffer_arg, &code,
                          hpatch_int64_arg, &code_rva, hpatch_int64_arg, &lo_rva,
                          hpatch_int64_arg, &hi_rva))
        return NULL;
    if (check_rvas(code_rva, lo_rva, hi_rva, code.len) < 0) {
        PyBuffer_Release(&code);
        return NULL;
    }
    if (code_rva % 4 != 0) {
        PyBuffer_Release(&code);
        PyErr_SetString(PyExc_ValueError, "code_rva must be 4-aligned");
        return NULL;
    }
    site_list_t list = {NULL, 0, 0, 0};
    if (code.len < SCAN_WITH_GIL) {
        scan_arm64((const uint8_t *)code.buf, (size_t)code.len, code_rva, lo_rva, hi_rva, &list);
    } else {
        Py_BEGIN_ALLOW_THREADS
        scan_arm64((const uint8_t *)code.buf, (size_t)code.len, code_rva, lo_rva, hi_rva, &list);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&code);
    return sites_to_columns(self, &list);
}

PyDoc_STRVAR(normalise_x64_doc,
"normalise_x64(code, code_rva, lo_rva, hi_rva, relocated, image_base, /)\n--\n\n"
"Mask the position-dependent fields of x64 code at code_rva.\n\n"
"Branches whose targets lie in [lo_rva, hi_rva) keep their bytes. relocated is a\n"
"buffer of sorted uint32 RVAs of base-relocated fields. Returns (normalised bytes,\n"
"[(site_rva, kind, target_rva), ...], instruction count); decoding stops at the\n"
"first undecodable instruction.");

/* One (site, kind, target) tuple. An ABSOLUTE reference holds the unsigned 64-bit
 * field; its target is that value minus image_base, computed on Python ints as the
 * twin does: any image base, and no 64-bit wrap-around. */
static PyObject *x64_ref_tuple(const x64_ref_t *ref, PyObject *image_base)
{
    if (ref->kind != REF_ABSOLUTE)
        return Py_BuildValue("(LiL)", (long long)ref->site, ref->kind, (long long)ref->target);
    PyObject *value = PyLong_FromUnsignedLongLong((unsigned long long)(uint64_t)ref->target);
    if (value == NULL)
        return NULL;
    PyObject *target = PyNumber_Subtract(value, image_base);
    Py_DECREF(value);
    if (target == NULL)
        return NULL;
    return Py_BuildValue("(LiN)", (long long)ref->site, ref->kind, target);
}

static PyObject *normalise_x64(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer code, relocated;
    long long code_rva, lo_rva, hi_rva;
    PyObject *image_base_arg;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&O:normalise_x64", hpatch_buffer_arg, &code,
                          hpatch_int64_arg, &code_rva, hpatch_int64_arg, &lo_rva,
                          hpatch_int64_arg, &hi_rva, hpatch_buffer_arg, &relocated,
                          &image_base_arg))
        return NULL;
    PyObject *result = NULL, *normalised = NULL, *list = NULL;
    PyObject *image_base = PyNumber_Index(image_base_arg);
    x64_refs_t refs = {NULL, 0, 0};
    size_t count = 0;
    if (image_base == NULL)
        goto done;
    if (relocated.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "relocated must hold uint32 values");
        goto done;
    }
    /* lo_rva and hi_rva may be anything: targets lie within 2^34 of 0, so saturated
     * bounds compare with them as the exact ones would. */
    if (code_rva < 0 || code_rva > 0x100000000LL - (long long)code.len) {
        PyErr_SetString(PyExc_ValueError, "rva out of range");
        goto done;
    }
    normalised = PyBytes_FromStringAndSize(NULL, code.len);
    if (normalised == NULL)
        goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = x64_normalise((const uint8_t *)code.buf, (size_t)code.len, code_rva, lo_rva, hi_rva,
                           (const uint8_t *)relocated.buf, (size_t)relocated.len / 4,
                           (uint8_t *)PyBytes_AS_STRING(normalised), &refs, &count);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_NoMemory();
        goto done;
    }
    list = PyList_New((Py_ssize_t)refs.count);
    if (list == NULL)
        goto done;
    for (size_t i = 0; i < refs.count; i++) {
        PyObject *item = x64_ref_tuple(&refs.items[i], image_base);
        if (item == NULL)
            goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    result = Py_BuildValue("(OOn)", normalised, list, (Py_ssize_t)count);
done:
    Py_XDECREF(image_base);
    Py_XDECREF(normalised);
    Py_XDECREF(list);
    free(refs.items);
    PyBuffer_Release(&code);
    PyBuffer_Release(&relocated);
    return result;
}

static PyMethodDef native_methods[] = {
    {"scan_x64_sites", scan_x64_sites, METH_VARARGS, scan_x64_sites_doc},
    {"scan_arm64_sites", scan_arm64_sites, METH_VARARGS, scan_arm64_sites_doc},
    {"normalise_x64", normalise_x64, METH_VARARGS, normalise_x64_doc},
    {NULL, NULL, 0, NULL},
};

static int native_traverse(PyObject *module, visitproc visit, void *arg)
{
    Py_VISIT(native_state(module)->array_type);
    Py_VISIT(native_state(module)->wide);
    Py_VISIT(native_state(module)->narrow);
    return 0;
}

static int native_clear(PyObject *module)
{
    Py_CLEAR(native_state(module)->array_type);
    Py_CLEAR(native_state(module)->wide);
    Py_CLEAR(native_state(module)->narrow);
    return 0;
}

static void native_free(void *module)
{
    native_clear((PyObject *)module);
}

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "hpatch._native",
    "C implementations of hpatch's byte-level hot loops.", sizeof(native_state_t),
    native_methods, NULL, native_traverse, native_clear, native_free,
};

/* Defined in arm64.c, lzma2.c and discovery.c. */
extern PyMethodDef hpatch_arm64_methods[];
extern PyMethodDef hpatch_lzma2_methods[];
extern PyMethodDef hpatch_discovery_methods[];

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL)
        return NULL;
    native_state_t *state = native_state(module);
    PyObject *array_module = PyImport_ImportModule("array");
    if (array_module != NULL) {
        state->array_type = PyObject_GetAttrString(array_module, "array");
        Py_DECREF(array_module);
    }
    state->wide = PyUnicode_FromString("I");
    state->narrow = PyUnicode_FromString("B");
    if (state->array_type == NULL || state->wide == NULL || state->narrow == NULL) {
        Py_DECREF(module);
        return NULL;
    }
    /* Each further source file contributes its own method table. */
    if (PyModule_AddFunctions(module, hpatch_rewrite_methods) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    PyMethodDef *tables[] = {hpatch_arm64_methods, hpatch_lzma2_methods,
                             hpatch_discovery_methods};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        if (PyModule_AddFunctions(module, tables[i]) < 0) {
            Py_DECREF(module);
            return NULL;
        }
    }
    return module;
}
