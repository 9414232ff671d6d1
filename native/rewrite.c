/*
 * Byte rewriting: binding fixups of patch code to addresses, and encoding the
 * redirects that send an entry to its replacement.
 *
 * The pure-Python twins live in hpatch/_fallback/rewrite.py: same checks in the
 * same order, same messages. A batch of fixups is all or nothing: every record is
 * checked against the buffer as it was before the call, and only then written.
 */
#include "rewrite.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "constants.h" /* Fixup kinds, Redirect strategies and their spans */

#define RECORD_SIZE 16

/* Why a fixup is refused; the texts are part of the API (the twin uses the same). */
static const char UNKNOWN_KIND[] = "unknown kind";
static const char RESERVED[] = "reserved field is not 0";
static const char OUTSIDE[] = "field outside the buffer";
static const char OUT_OF_REACH[] = "target out of reach";
static const char NOT_RVA[] = "target not within 4 GiB above the image base";
static const char INSN_OFFSET[] = "instruction offset not 4-aligned";
static const char INSN_ADDRESS[] = "instruction address not 4-aligned";
static const char BRANCH_ALIGN[] = "branch target not 4-aligned";
static const char NOT_B[] = "not a B/BL instruction";
static const char NOT_B19[] = "not a B.cond/CBZ/CBNZ/LDR (literal) instruction";
static const char NOT_TB[] = "not a TBZ/TBNZ instruction";
static const char NOT_ADRP[] = "not an ADRP instruction";
static const char NOT_ADR[] = "not an ADR instruction";
static const char NOT_ADD[] = "not an ADD/ADDS (immediate) instruction";
static const char ADD_SHIFTED[] = "ADD immediate is shifted";
static const char NOT_LDST[] = "not an LDR/STR (unsigned immediate) instruction";
static const char LDST_ALIGN[] = "page offset not a multiple of the access size";

/* One checked write: `size` bytes of `value`, little-endian, at `offset`. */
typedef struct {
    uint64_t value;
    uint32_t offset;
    uint32_t size;
} write_t;

static uint32_t load_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint64_t load_u64(const uint8_t *p)
{
    return (uint64_t)load_u32(p) | ((uint64_t)load_u32(p + 4) << 32);
}

static void store_le(uint8_t *p, uint64_t value, size_t size)
{
    for (size_t i = 0; i < size; i++)
        p[i] = (uint8_t)(value >> (8 * i));
}

/* Whether to - from - bias lies in [lo, hi] (|lo|, |hi| < 2^62, bias small), and
 * if so its value; exact for any 64-bit to and from, without wrap-around. */
static int delta_in(uint64_t to, uint64_t from, int64_t bias, int64_t lo, int64_t hi,
                    int64_t *out)
{
    const uint64_t far = (uint64_t)1 << 62;
    int64_t delta;
    if (to >= from) {
        if (to - from > far)
            return 0;
        delta = (int64_t)(to - from) - bias;
    } else {
        if (from - to > far)
            return 0;
        delta = -(int64_t)(from - to) - bias;
    }
    if (delta < lo || delta > hi)
        return 0;
    *out = delta;
    return 1;
}

/* The low `bits` bits of a signed number, as two's complement. */
static uint32_t low_bits(int64_t value, int bits)
{
    return (uint32_t)((uint64_t)value & (((uint64_t)1 << bits) - 1));
}

static int is_branch19(uint32_t insn)
{
    if ((insn & 0xFF000010u) == 0x54000000u) /* B.cond */
        return 1;
    if ((insn & 0x7E000000u) == 0x34000000u) /* CBZ/CBNZ */
        return 1;
    /* LDR (literal) W/X/S/D/Q and LDRSW; opc 11 is PRFM or unallocated */
    return (insn & 0x3B000000u) == 0x18000000u && (insn & 0xC0000000u) != 0xC0000000u;
}

/* log2 of the access size of a load/store (unsigned immediate), or -1 when the
 * word is not one (or an unallocated encoding of the class). */
static int ldst_scale(uint32_t insn)
{
    if ((insn & 0x3B000000u) != 0x39000000u)
        return -1;
    uint32_t size = insn >> 30, simd = (insn >> 26) & 1u, opc = (insn >> 22) & 3u;
    if (simd) {
        if (opc < 2)
            return (int)size;
        return size == 0 ? 4 : -1; /* the 128-bit Q form */
    }
    if (opc == 3 && size >= 2)
        return -1;
    return (int)size;
}

/* An ARM64 instruction fixup: the instruction with its immediate bound to target. */
static const char *bind_arm64(unsigned kind, uint32_t insn, uint64_t site, uint64_t target,
                              uint32_t *out)
{
    int64_t delta;
    switch (kind) {
    case ARM64_BRANCH26:
        if ((insn & 0x7C000000u) != 0x14000000u)
            return NOT_B;
        if (target & 3)
            return BRANCH_ALIGN;
        if (!delta_in(target, site, 0, -((int64_t)1 << 27), ((int64_t)1 << 27) - 4, &delta))
            return OUT_OF_REACH;
        *out = (insn & 0xFC000000u) | (low_bits(delta, 28) >> 2);
        return NULL;
    case ARM64_BRANCH19:
        if (!is_branch19(insn))
            return NOT_B19;
        if (target & 3)
            return BRANCH_ALIGN;
        if (!delta_in(target, site, 0, -((int64_t)1 << 20), ((int64_t)1 << 20) - 4, &delta))
            return OUT_OF_REACH;
        *out = (insn & ~0x00FFFFE0u) | ((low_bits(delta, 21) >> 2) << 5);
        return NULL;
    case ARM64_BRANCH14:
        if ((insn & 0x7E000000u) != 0x36000000u)
            return NOT_TB;
        if (target & 3)
            return BRANCH_ALIGN;
        if (!delta_in(target, site, 0, -((int64_t)1 << 15), ((int64_t)1 << 15) - 4, &delta))
            return OUT_OF_REACH;
        *out = (insn & ~0x0007FFE0u) | ((low_bits(delta, 16) >> 2) << 5);
        return NULL;
    case ARM64_PAGEBASE_REL21:
    case ARM64_REL21: {
        uint32_t imm;
        if (kind == ARM64_PAGEBASE_REL21) {
            if ((insn & 0x9F000000u) != 0x90000000u)
                return NOT_ADRP;
            /* both page numbers are below 2^52: the difference cannot overflow */
            delta = (int64_t)(target >> 12) - (int64_t)(site >> 12);
            if (delta < -((int64_t)1 << 20) || delta > ((int64_t)1 << 20) - 1)
                return OUT_OF_REACH;
        } else {
            if ((insn & 0x9F000000u) != 0x10000000u)
                return NOT_ADR;
            if (!delta_in(target, site, 0, -((int64_t)1 << 20), ((int64_t)1 << 20) - 1, &delta))
                return OUT_OF_REACH;
        }
        imm = low_bits(delta, 21);
        *out = (insn & ~0x60FFFFE0u) | ((imm & 3u) << 29) | ((imm >> 2) << 5);
        return NULL;
    }
    case ARM64_PAGEOFFSET_12A:
        if ((insn & 0x5F800000u) != 0x11000000u)
            return NOT_ADD;
        if (insn & (1u << 22))
            return ADD_SHIFTED;
        *out = (insn & ~0x003FFC00u) | ((uint32_t)(target & 0xFFF) << 10);
        return NULL;
    case ARM64_PAGEOFFSET_12L: {
        int scale = ldst_scale(insn);
        uint32_t low = (uint32_t)(target & 0xFFF);
        if (scale < 0)
            return NOT_LDST;
        if (low & ((1u << scale) - 1))
            return LDST_ALIGN;
        *out = (insn & ~0x003FFC00u) | ((low >> scale) << 10);
        return NULL;
    }
    default:
        return UNKNOWN_KIND;
    }
}

/* Check one record against the untouched buffer; on success, fill `out`. */
static const char *check_fixup(const uint8_t *buf, size_t len, uint64_t buffer_va,
                               uint64_t image_base, const uint8_t *record, write_t *out)
{
    uint32_t offset = load_u32(record);
    unsigned kind = (unsigned)record[4] | ((unsigned)record[5] << 8);
    unsigned reserved = (unsigned)record[6] | ((unsigned)record[7] << 8);
    uint64_t target = load_u64(record + 8);
    size_t size = 4;
    int instruction = 0;
    switch (kind) {
    case X64_ADDR64:
    case ARM64_ADDR64:
        size = 8;
        break;
    case X64_ADDR32NB:
    case ARM64_ADDR32NB:
        break;
    case ARM64_BRANCH26:
    case ARM64_PAGEBASE_REL21:
    case ARM64_REL21:
    case ARM64_PAGEOFFSET_12A:
    case ARM64_PAGEOFFSET_12L:
    case ARM64_BRANCH19:
    case ARM64_BRANCH14:
        instruction = 1;
        break;
    default:
        if (kind < X64_REL32 || kind > X64_REL32_5)
            return UNKNOWN_KIND;
    }
    if (reserved != 0)
        return RESERVED;
    if (offset > len || len - offset < size)
        return OUTSIDE;
    /* buffer_va + len fits in 64 bits (checked by the caller), so site does */
    uint64_t site = buffer_va + offset;
    out->offset = offset;
    out->size = (uint32_t)size;
    if (instruction) {
        uint32_t word;
        const char *reason;
        if (offset & 3)
            return INSN_OFFSET;
        if (site & 3)
            return INSN_ADDRESS;
        reason = bind_arm64(kind, load_u32(buf + offset), site, target, &word);
        out->value = word;
        return reason;
    }
    if (kind == X64_ADDR64 || kind == ARM64_ADDR64) {
        out->value = target;
    } else if (kind == X64_ADDR32NB || kind == ARM64_ADDR32NB) {
        if (target < image_base || target - image_base > 0xFFFFFFFFu)
            return NOT_RVA;
        out->value = target - image_base;
    } else {
        int64_t delta;
        int64_t after = 4 + (int64_t)(kind - X64_REL32);
        if (!delta_in(target, site, after, INT32_MIN, INT32_MAX, &delta))
            return OUT_OF_REACH;
        out->value = (uint64_t)low_bits(delta, 32);
    }
    return NULL;
}

/* An integer argument as uint64; *in_range = 0 when it is negative or too large.
 * A non-integer raises TypeError, as operator.index does. */
static int to_u64(PyObject *obj, uint64_t *out, int *in_range)
{
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL)
        return -1;
    unsigned long long value = PyLong_AsUnsignedLongLong(index);
    Py_DECREF(index);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        *in_range = 0;
        return 0;
    }
    *in_range = 1;
    *out = (uint64_t)value;
    return 0;
}

static int u64_argument(PyObject *obj, const char *error, uint64_t *out)
{
    int in_range;
    if (to_u64(obj, out, &in_range) < 0)
        return -1;
    if (!in_range) {
        PyErr_SetString(PyExc_ValueError, error);
        return -1;
    }
    return 0;
}

/* A C-contiguous buffer of any format, read as bytes. */
static int get_bytes(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "apply_fixups: %s must be a bytes-like object", name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_FULL_RO) < 0)
        return -1;
    if (writable && view->readonly) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "apply_fixups: %s is read-only", name);
        return -1;
    }
    if (!PyBuffer_IsContiguous(view, 'C')) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "apply_fixups: %s is not contiguous", name);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(apply_fixups_doc,
"apply_fixups(buffer, buffer_va, image_base, records, /)\n--\n\n"
"Write every fixup of records into buffer, which is mapped at buffer_va.\n\n"
"records packs 16-byte little-endian <IHHQ records: offset into buffer, kind (a\n"
"hpatch.arch.rewrite.Fixup), reserved (0), target_va. Each field is written so\n"
"the instruction or field at buffer_va + offset reaches target_va. All records\n"
"are checked against the buffer as it is before the call, then written in order:\n"
"hpatch.errors.FixupError('fixup {index}: {reason}', index=, reason=) leaves the\n"
"buffer untouched.");

/* Raise hpatch.errors.FixupError("fixup INDEX: REASON", index=INDEX, reason=REASON): the
 * twin raises the same, so callers read the failing record from the error, not its text. */
static void raise_fixup_error(size_t index, const char *reason)
{
    PyObject *errors = PyImport_ImportModule("hpatch.errors");
    if (errors == NULL)
        return;
    PyObject *type = PyObject_GetAttrString(errors, "FixupError");
    Py_DECREF(errors);
    if (type == NULL)
        return;
    PyObject *message = PyUnicode_FromFormat("fixup %zu: %s", index, reason);
    PyObject *args = message != NULL ? PyTuple_Pack(1, message) : NULL;
    PyObject *kwargs = Py_BuildValue("{s:n,s:s}", "index", (Py_ssize_t)index, "reason", reason);
    if (args != NULL && kwargs != NULL) {
        PyObject *error = PyObject_Call(type, args, kwargs);
        if (error != NULL) {
            PyErr_SetObject(type, error);
            Py_DECREF(error);
        }
    }
    Py_XDECREF(kwargs);
    Py_XDECREF(args);
    Py_XDECREF(message);
    Py_DECREF(type);
}

static PyObject *apply_fixups(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *buffer_obj, *buffer_va_obj, *image_base_obj, *records_obj;
    if (!PyArg_ParseTuple(args, "OOOO:apply_fixups", &buffer_obj, &buffer_va_obj,
                          &image_base_obj, &records_obj))
        return NULL;
    Py_buffer buffer, records;
    uint64_t buffer_va, image_base;
    if (get_bytes(buffer_obj, &buffer, 1, "buffer") < 0)
        return NULL;
    if (u64_argument(buffer_va_obj, "apply_fixups: buffer_va out of range", &buffer_va) < 0 ||
        u64_argument(image_base_obj, "apply_fixups: image_base out of range", &image_base) < 0 ||
        get_bytes(records_obj, &records, 0, "records") < 0) {
        PyBuffer_Release(&buffer);
        return NULL;
    }
    PyObject *result = NULL;
    write_t *writes = NULL;
    size_t len = (size_t)buffer.len, count = (size_t)records.len / RECORD_SIZE;
    if (records.len % RECORD_SIZE != 0) {
        PyErr_Format(PyExc_ValueError, "apply_fixups: records length %zd is not a multiple of 16",
                     records.len);
        goto done;
    }
    if (len > 0 && (uint64_t)len - 1 > UINT64_MAX - buffer_va) {
        PyErr_SetString(PyExc_ValueError,
                        "apply_fixups: the buffer extends past the 64-bit address space");
        goto done;
    }
    if (count > 0) {
        writes = malloc(count * sizeof(write_t));
        if (writes == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    const uint8_t *record_bytes = (const uint8_t *)records.buf;
    uint8_t *buf = (uint8_t *)buffer.buf;
    const char *reason = NULL;
    size_t index = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; index < count; index++) {
        reason = check_fixup(buf, len, buffer_va, image_base, record_bytes + RECORD_SIZE * index,
                             &writes[index]);
        if (reason != NULL)
            break;
    }
    if (reason == NULL) {
        /* Writes come from the checked values only: records may alias buffer. */
        for (size_t i = 0; i < count; i++)
            store_le(buf + writes[i].offset, writes[i].value, writes[i].size);
    }
    Py_END_ALLOW_THREADS
    if (reason == UNKNOWN_KIND) {
        const uint8_t *record = record_bytes + RECORD_SIZE * index;
        char text[32];
        snprintf(text, sizeof text, "unknown kind 0x%x",
                 (unsigned)record[4] | ((unsigned)record[5] << 8));
        raise_fixup_error(index, text);
    } else if (reason != NULL) {
        raise_fixup_error(index, reason);
    } else {
        result = Py_NewRef(Py_None);
    }
done:
    free(writes);
    PyBuffer_Release(&records);
    PyBuffer_Release(&buffer);
    return result;
}


static PyObject *redirect_error(const char *reason)
{
    PyErr_Format(PyExc_ValueError, "redirect: %s", reason);
    return NULL;
}

PyDoc_STRVAR(encode_redirect_doc,
"encode_redirect(strategy, entry_va, target_va, /)\n--\n\n"
"The bytes a redirect (a hpatch.arch.rewrite.Redirect) writes over its span, which\n"
"starts at entry_va + Redirect.span[0], to send entry_va to target_va.\n\n"
"ValueError('redirect: {reason}') when the target is out of reach, an address is\n"
"misaligned, or the strategy is unknown.");

static PyObject *encode_redirect(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *strategy_obj, *entry_obj, *target_obj;
    if (!PyArg_ParseTuple(args, "OOO:encode_redirect", &strategy_obj, &entry_obj, &target_obj))
        return NULL;
    PyObject *index = PyNumber_Index(strategy_obj);
    if (index == NULL)
        return NULL;
    int overflow;
    long strategy = PyLong_AsLongAndOverflow(index, &overflow);
    if (strategy == -1 && PyErr_Occurred()) {
        Py_DECREF(index);
        return NULL;
    }
    if (overflow || strategy < 1 || strategy >= REDIRECT_COUNT) {
        PyErr_Format(PyExc_ValueError, "redirect: unknown strategy %S", index);
        Py_DECREF(index);
        return NULL;
    }
    Py_DECREF(index);
    uint64_t entry, target;
    if (u64_argument(entry_obj, "redirect: entry_va out of range", &entry) < 0 ||
        u64_argument(target_obj, "redirect: target_va out of range", &target) < 0)
        return NULL;
    int start = redirect_span[strategy][0], length = redirect_span[strategy][1];
    /* first byte at or above 0, last byte at or below 2^64 - 1 */
    if ((start < 0 && entry < (uint64_t)-start) ||
        entry + (uint64_t)(int64_t)start > UINT64_MAX - (uint64_t)(length - 1))
        return redirect_error("the span leaves the 64-bit address space");
    uint8_t out[16];
    int64_t delta;
    switch (strategy) {
    case X64_JMP_REL32:
        if (!delta_in(target, entry, 5, INT32_MIN, INT32_MAX, &delta))
            return redirect_error("target out of reach");
        out[0] = 0xE9;
        store_le(out + 1, low_bits(delta, 32), 4);
        break;
    case X64_JMP_ABS64:
        memcpy(out, "\xFF\x25\x00\x00\x00\x00", 6);
        store_le(out + 6, target, 8);
        break;
    case X64_TWO_STAGE:
        /* the rel32 jump ends exactly at the entry, where EB F9 jumps back to it */
        if (!delta_in(target, entry, 0, INT32_MIN, INT32_MAX, &delta))
            return redirect_error("target out of reach");
        out[0] = 0xE9;
        store_le(out + 1, low_bits(delta, 32), 4);
        out[5] = 0xEB;
        out[6] = 0xF9;
        break;
    case ARM64_B:
        if (entry & 3)
            return redirect_error("entry not 4-aligned");
        if (target & 3)
            return redirect_error("target not 4-aligned");
        if (!delta_in(target, entry, 0, -((int64_t)1 << 27), ((int64_t)1 << 27) - 4, &delta))
            return redirect_error("target out of reach");
        store_le(out, 0x14000000u | (low_bits(delta, 28) >> 2), 4);
        break;
    default: /* ARM64_LDR_BR */
        if (entry & 3)
            return redirect_error("entry not 4-aligned");
        store_le(out, 0x58000050u, 4); /* LDR X16, #8 */
        store_le(out + 4, 0xD61F0200u, 4); /* BR X16 */
        store_le(out + 8, target, 8);
        break;
    }
    return PyBytes_FromStringAndSize((const char *)out, length);
}

PyMethodDef hpatch_rewrite_methods[] = {
    {"apply_fixups", apply_fixups, METH_VARARGS, apply_fixups_doc},
    {"encode_redirect", encode_redirect, METH_VARARGS, encode_redirect_doc},
    {NULL, NULL, 0, NULL},
};
