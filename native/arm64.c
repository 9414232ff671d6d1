/*
 * ARM64 normalisation over a buffer of instruction words, and its Python wrapper.
 *
 * The twin is normalise_arm64 in hpatch/_fallback.py; a parity test fuzzes one
 * against the other and compares them on every sample and corpus function.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "arm64.h"

#define RVA_LIMIT 0xFFFFFFFFLL

static uint32_t read_word(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static void write_word(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static int64_t sign_extend(uint32_t value, int bits)
{
    uint32_t sign = 1u << (bits - 1);
    return (int64_t)(value ^ sign) - (int64_t)sign;
}

/* The byte offset an ADD (immediate, 64-bit, no shift) or LDR/STR (unsigned
 * immediate, scaled by the access size) adds to its base register; -1 for any other
 * word. These are what complete an ADRP. */
static int64_t page_offset(uint32_t word)
{
    if ((word & 0xFFC00000u) == 0x91000000u)
        return (int64_t)((word >> 10) & 0xFFFu);
    if ((word & 0x3B000000u) == 0x39000000u) {
        unsigned scale = word >> 30;
        if ((word & 0x04000000u) && ((word >> 23) & 1u)) /* 128-bit vector register */
            scale = 4;
        return (int64_t)((word >> 10) & 0xFFFu) << scale;
    }
    return -1;
}

/* STR/STRB/STRH (unsigned immediate) and STP read their low register field. */
static int is_store(uint32_t word)
{
    return (word & 0x3B400000u) == 0x39000000u || (word & 0x3A400000u) == 0x28000000u;
}

size_t arm64_normalise(const uint8_t *code, size_t len, int64_t code_rva, int64_t lo, int64_t hi,
                       uint8_t *out, arm64_ref_t *refs)
{
    /* Per register, the ADRP that last wrote it: its entry in refs (-1: none), the
     * page it names, and whether a completion has already given the entry its target. */
    int64_t adrp_ref[32], adrp_page[32];
    int adrp_done[32];
    for (int r = 0; r < 32; r++) {
        adrp_ref[r] = -1;
        adrp_page[r] = 0;
        adrp_done[r] = 0;
    }
    size_t words = len / 4, count = 0;
    for (size_t w = 0; w < words; w++) {
        uint32_t word = read_word(code + 4 * w);
        uint32_t masked = word;
        int64_t rva = code_rva + 4 * (int64_t)w;
        unsigned written = word & 0x1Fu;
        if ((word & 0x7C000000u) == 0x14000000u) {
            /* B / BL imm26 */
            int64_t target = rva + 4 * sign_extend(word & 0x03FFFFFFu, 26);
            if (target < lo || target >= hi) {
                masked = word & 0xFC000000u;
                refs[count].kind = (word & 0x80000000u) ? ARM64_REF_CALL : ARM64_REF_BRANCH;
                refs[count].site = rva;
                refs[count++].target = target;
            }
        } else if ((word & 0xFF000010u) == 0x54000000u || (word & 0x7E000000u) == 0x34000000u) {
            /* B.cond, CBZ / CBNZ imm19 */
            int64_t target = rva + 4 * sign_extend((word >> 5) & 0x7FFFFu, 19);
            if (target < lo || target >= hi) {
                masked = word & ~(0x7FFFFu << 5);
                refs[count].kind = ARM64_REF_BRANCH;
                refs[count].site = rva;
                refs[count++].target = target;
            }
        } else if ((word & 0x7E000000u) == 0x36000000u) {
            /* TBZ / TBNZ imm14 */
            int64_t target = rva + 4 * sign_extend((word >> 5) & 0x3FFFu, 14);
            if (target < lo || target >= hi) {
                masked = word & ~(0x3FFFu << 5);
                refs[count].kind = ARM64_REF_BRANCH;
                refs[count].site = rva;
                refs[count++].target = target;
            }
        } else if ((word & 0x1F000000u) == 0x10000000u) {
            /* ADR / ADRP */
            int64_t immediate =
                sign_extend((((word >> 5) & 0x7FFFFu) << 2) | ((word >> 29) & 3u), 21);
            masked = word & ~((0x7FFFFu << 5) | (3u << 29));
            refs[count].kind = ARM64_REF_ADDRESS;
            refs[count].site = rva;
            if (word & 0x80000000u) {
                int64_t page = (rva & ~(int64_t)0xFFF) + immediate * 4096;
                adrp_ref[written] = (int64_t)count;
                adrp_page[written] = page;
                adrp_done[written] = 0;
                refs[count++].target = page;
            } else {
                adrp_ref[written] = -1;
                refs[count++].target = rva + immediate;
            }
        } else if ((word & 0x3B000000u) == 0x18000000u && (word & 0xC4000000u) != 0xC0000000u) {
            /* LDR (literal) of a W/X/S/D/Q register or LDRSW; not PRFM */
            masked = word & ~(0x7FFFFu << 5);
            refs[count].kind = ARM64_REF_LITERAL;
            refs[count].site = rva;
            refs[count++].target = rva + 4 * sign_extend((word >> 5) & 0x7FFFFu, 19);
            adrp_ref[written] = -1;
        } else {
            int64_t offset = page_offset(word);
            unsigned base = (word >> 5) & 0x1Fu;
            if (offset >= 0 && adrp_ref[base] >= 0) {
                int64_t target = adrp_page[base] + offset;
                masked = word & ~(0xFFFu << 10);
                refs[count].kind = ARM64_REF_ADDRESS;
                refs[count].site = rva;
                refs[count++].target = target;
                if (!adrp_done[base]) {
                    /* the ADRP names the page; what it means is its first completion */
                    adrp_done[base] = 1;
                    refs[adrp_ref[base]].target = target;
                }
            }
            if (!is_store(word))
                adrp_ref[written] = -1;
        }
        write_word(out + 4 * w, masked);
    }
    if (len > 4 * words)
        memcpy(out + 4 * words, code + 4 * words, len - 4 * words);
    return count;
}

static PyObject *refs_to_list(const arm64_ref_t *refs, size_t count)
{
    PyObject *list = PyList_New((Py_ssize_t)count);
    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_New(3);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
        PyObject *site = PyLong_FromLongLong(refs[i].site);
        PyObject *kind = PyLong_FromLong(refs[i].kind);
        PyObject *target = PyLong_FromLongLong(refs[i].target);
        if (site == NULL || kind == NULL || target == NULL) {
            Py_XDECREF(site);
            Py_XDECREF(kind);
            Py_XDECREF(target);
            Py_DECREF(list);
            return NULL;
        }
        PyTuple_SET_ITEM(item, 0, site);
        PyTuple_SET_ITEM(item, 1, kind);
        PyTuple_SET_ITEM(item, 2, target);
    }
    return list;
}

PyDoc_STRVAR(normalise_arm64_doc,
"normalise_arm64(code, code_rva, lo_rva, hi_rva, relocated, image_base, /)\n--\n\n"
"Mask the position-dependent fields of ARM64 code at code_rva.\n\n"
"B/BL, B.cond, CBZ/CBNZ and TBZ/TBNZ whose targets lie outside [lo_rva, hi_rva),\n"
"every ADR and ADRP, the ADD/LDR/STR page offsets that complete an ADRP, and LDR\n"
"(literal). relocated (sorted uint32 RVAs of base-relocated fields) and image_base\n"
"are checked and otherwise unused: instruction words hold no relocated field.\n"
"Returns (normalised bytes, [(site_rva, kind, target_rva), ...], instruction count);\n"
"a trailing partial word is kept as it is.");

static PyObject *normalise_arm64(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer code, relocated;
    long long code_rva, lo_rva, hi_rva, image_base;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&O&:normalise_arm64", hpatch_buffer_arg, &code,
                          hpatch_int64_arg, &code_rva, hpatch_int64_arg, &lo_rva,
                          hpatch_int64_arg, &hi_rva, hpatch_buffer_arg, &relocated,
                          hpatch_int64_arg, &image_base))
        return NULL;
    PyObject *result = NULL, *normalised = NULL, *list = NULL;
    arm64_ref_t *refs = NULL;
    size_t words = (size_t)code.len / 4, count = 0;
    if (relocated.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "relocated must hold uint32 values");
        goto done;
    }
    if (code_rva < 0 || code_rva > RVA_LIMIT || lo_rva < 0 || lo_rva > RVA_LIMIT + 1 ||
        hi_rva < 0 || hi_rva > RVA_LIMIT + 1) {
        PyErr_SetString(PyExc_ValueError, "rva out of range");
        goto done;
    }
    if (code_rva + (long long)code.len > RVA_LIMIT + 1) {
        PyErr_SetString(PyExc_ValueError, "code extends past the 32-bit rva space");
        goto done;
    }
    normalised = PyBytes_FromStringAndSize(NULL, code.len);
    if (normalised == NULL)
        goto done;
    /* code.len <= 2**32 here, so the product cannot overflow. */
    refs = malloc((words ? words : 1) * sizeof(arm64_ref_t));
    if (refs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    count = arm64_normalise((const uint8_t *)code.buf, (size_t)code.len, code_rva, lo_rva, hi_rva,
                            (uint8_t *)PyBytes_AS_STRING(normalised), refs);
    Py_END_ALLOW_THREADS
    list = refs_to_list(refs, count);
    if (list == NULL)
        goto done;
    result = Py_BuildValue("(OOn)", normalised, list, (Py_ssize_t)words);
done:
    Py_XDECREF(normalised);
    Py_XDECREF(list);
    free(refs);
    PyBuffer_Release(&code);
    PyBuffer_Release(&relocated);
    return result;
}

PyMethodDef hpatch_arm64_methods[] = {
    {"normalise_arm64", normalise_arm64, METH_VARARGS, normalise_arm64_doc},
    {NULL, NULL, 0, NULL},
};
