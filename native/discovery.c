/*
 * Function discovery's loops over code, in C; the twins live in
 * hpatch/_fallback_discovery.py.
 *
 * x64_code_extent walks a function's control flow as capstone decodes it. Capstone
 * is the oracle of what an instruction is (its length, whether it decodes, its
 * mnemonic), and the walk must decode exactly as it does, so the instructions come
 * from capstone's own cs_disasm_iter, reached through the entry points of the
 * library the capstone package loaded (hpatch.arch.x64 passes them). What moves
 * into C is the walk itself: a Python loop over millions of instructions cost
 * microseconds each, most of the time of discovering a large DLL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"

/* The walk's limits: the same numbers as hpatch/_fallback_discovery.py. */
#define EXTENT_WINDOW 256

/* capstone's API, as far as the walk uses it: cs_disasm_iter, cs_malloc, cs_free,
 * and where the size, mnemonic and operand text lie in a cs_insn (taken from the
 * capstone package's own ctypes declaration of the structure). */
typedef int (*cs_iter_fn)(size_t handle, const uint8_t **code, size_t *size, uint64_t *address,
                          void *insn);
typedef void *(*cs_malloc_fn)(size_t handle);
typedef void (*cs_free_fn)(void *insn, size_t count);

typedef struct {
    size_t handle;
    cs_iter_fn iter;
    cs_malloc_fn malloc_insn;
    cs_free_fn free_insn;
    size_t size_offset, mnemonic_offset, op_str_offset;
} capstone_t;

/* One decoded instruction, as the walk sees it. */
typedef struct {
    size_t size;
    const char *mnemonic;
    const char *op_str;
} insn_view_t;

static int decoder_arg(PyObject *obj, void *out)
{
    capstone_t *cs = (capstone_t *)out;
    unsigned long long values[7];
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 7) {
        PyErr_SetString(PyExc_TypeError, "decoder must be a tuple of 7 ints");
        return 0;
    }
    for (Py_ssize_t i = 0; i < 7; i++) {
        values[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(obj, i));
        if (PyErr_Occurred())
            return 0;
    }
    if (values[1] == 0 || values[2] == 0 || values[3] == 0 || values[4] > 4096 ||
        values[5] > 4096 || values[6] > 4096) {
        PyErr_SetString(PyExc_ValueError, "decoder holds no capstone entry points");
        return 0;
    }
    cs->handle = (size_t)values[0];
    cs->iter = (cs_iter_fn)(uintptr_t)values[1];
    cs->malloc_insn = (cs_malloc_fn)(uintptr_t)values[2];
    cs->free_insn = (cs_free_fn)(uintptr_t)values[3];
    cs->size_offset = (size_t)values[4];
    cs->mnemonic_offset = (size_t)values[5];
    cs->op_str_offset = (size_t)values[6];
    return 1;
}

typedef struct {
    int64_t *items;
    size_t count, capacity;
} rva_stack_t;

static int push(rva_stack_t *stack, int64_t value)
{
    if (stack->count == stack->capacity) {
        size_t grown = stack->capacity ? stack->capacity * 2 : 64;
        int64_t *items = realloc(stack->items, grown * sizeof(int64_t));
        if (items == NULL)
            return -1;
        stack->items = items;
        stack->capacity = grown;
    }
    stack->items[stack->count++] = value;
    return 0;
}

typedef struct {
    const uint8_t *code;
    size_t len;
    int64_t start;
    const capstone_t *cs;
    void *insn;
    uint8_t *visited; /* one bit per byte of code */
    rva_stack_t pending;
} walk_t;

static int is_visited(const walk_t *walk, int64_t rva)
{
    size_t offset = (size_t)(rva - walk->start);
    return (walk->visited[offset >> 3] >> (offset & 7)) & 1;
}

static void visit(walk_t *walk, int64_t rva)
{
    size_t offset = (size_t)(rva - walk->start);
    walk->visited[offset >> 3] |= (uint8_t)(1u << (offset & 7));
}

/* Decode the instruction at `offset`, reading no further than `window_end`: 0 if
 * capstone does not decode it there. */
static int decode(walk_t *walk, size_t offset, size_t window_end, insn_view_t *out)
{
    const uint8_t *at = walk->code + offset;
    size_t size = window_end - offset;
    uint64_t address = (uint64_t)(walk->start + (int64_t)offset);
    if (!walk->cs->iter(walk->cs->handle, &at, &size, &address, walk->insn))
        return 0;
    const char *insn = (const char *)walk->insn;
    uint16_t length;
    memcpy(&length, insn + walk->cs->size_offset, sizeof length);
    out->size = length;
    out->mnemonic = insn + walk->cs->mnemonic_offset;
    out->op_str = insn + walk->cs->op_str_offset;
    return 1;
}

static int is_return(const char *mnemonic)
{
    static const char *const names[] = {"ret", "retf", "retfq", "iretq", "iretd", "iret",
                                        "ud2", "hlt"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(mnemonic, names[i]) == 0)
            return 1;
    return 0;
}

/* A jump's operand as capstone prints a direct target ("0x" and hex digits, as the
 * twin's int(op_str, 16) reads it); 0 if it is not one. */
static int hex_target(const char *text, uint64_t *target)
{
    if (text[0] != '0' || text[1] != 'x' || text[2] == '\0')
        return 0;
    uint64_t value = 0;
    for (const char *p = text + 2; *p; p++) {
        unsigned digit;
        if (*p >= '0' && *p <= '9')
            digit = (unsigned)(*p - '0');
        else if (*p >= 'a' && *p <= 'f')
            digit = (unsigned)(*p - 'a' + 10);
        else if (*p >= 'A' && *p <= 'F')
            digit = (unsigned)(*p - 'A' + 10);
        else
            return 0;
        if (value >> 60)
            return 0; /* past 64 bits: past any bound */
        value = value << 4 | digit;
    }
    *target = value;
    return 1;
}

/* Straight-line code from `rva`: sets *end to the end of the last body byte, and
 * returns 1; 0 if the code does not decode or runs past the bound; -1 when out of
 * memory. Mirrors _walk_block in the twin, its 256-byte decode windows included. */
static int walk_block(walk_t *walk, int64_t rva, int64_t *end)
{
    int64_t bound = walk->start + (int64_t)walk->len;
    *end = rva;
    while (!is_visited(walk, rva)) {
        if (rva >= bound)
            return 0;
        size_t offset = (size_t)(rva - walk->start);
        size_t window_end = offset + EXTENT_WINDOW < walk->len ? offset + EXTENT_WINDOW : walk->len;
        int decoded = 0;
        insn_view_t insn;
        while (offset < window_end && decode(walk, offset, window_end, &insn)) {
            int64_t address = walk->start + (int64_t)offset;
            decoded = 1;
            if (is_visited(walk, address))
                return 1;
            if (address + (int64_t)insn.size > bound)
                return 0;
            visit(walk, address);
            rva = address + (int64_t)insn.size;
            offset += insn.size;
            if (strcmp(insn.mnemonic, "int3") == 0)
                return 1; /* a trap is where fall-through stops: padding, not body */
            *end = rva;
            if (is_return(insn.mnemonic))
                return 1;
            if (insn.mnemonic[0] == 'j' || strncmp(insn.mnemonic, "loop", 4) == 0) {
                uint64_t target;
                if (hex_target(insn.op_str, &target) && target >= (uint64_t)walk->start &&
                    target < (uint64_t)bound && push(&walk->pending, (int64_t)target) < 0)
                    return -1;
                if (strcmp(insn.mnemonic, "jmp") == 0)
                    return 1;
            }
        }
        if (!decoded)
            return 0;
    }
    return 1;
}

PyDoc_STRVAR(x64_code_extent_doc,
"x64_code_extent(code, start_rva, roots, decoder, /)\n--\n\n"
"End of the x64 function at start_rva whose code (up to its bound) is code.\n\n"
"Follows every direct branch from start_rva and from each root inside the code,\n"
"decoding as capstone does; returns the end of the furthest body byte, or None if\n"
"a path does not decode or runs past the bound. decoder is hpatch.arch.x64's\n"
"capstone entry points (the twin decodes with the capstone package itself).");

static PyObject *x64_code_extent(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer code = {0};
    long long start_rva;
    PyObject *roots;
    capstone_t cs;
    PyObject *result = NULL;
    walk_t walk = {0};
    if (!PyArg_ParseTuple(args, "O&O&OO&:x64_code_extent", hpatch_buffer_arg, &code,
                          hpatch_int64_arg, &start_rva, &roots, decoder_arg, &cs))
        return NULL;
    if (start_rva < 0 || start_rva > 0xFFFFFFFFLL || code.len > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "rva out of range");
        goto done;
    }
    walk.code = (const uint8_t *)code.buf;
    walk.len = (size_t)code.len;
    walk.start = start_rva;
    walk.cs = &cs;
    if (walk.len == 0) {
        PyErr_SetString(PyExc_ValueError, "no code");
        goto done;
    }
    walk.visited = calloc(walk.len / 8 + 1, 1);
    walk.insn = cs.malloc_insn(cs.handle);
    if (walk.visited == NULL || walk.insn == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (push(&walk.pending, start_rva) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *iterator = PyObject_GetIter(roots);
    if (iterator == NULL)
        goto done;
    PyObject *item;
    int64_t bound = start_rva + (int64_t)walk.len;
    while ((item = PyIter_Next(iterator)) != NULL) {
        long long root;
        int ok = hpatch_int64_arg(item, &root);
        Py_DECREF(item);
        if (!ok) {
            Py_DECREF(iterator);
            goto done;
        }
        if (root >= start_rva && root < bound && push(&walk.pending, root) < 0) {
            Py_DECREF(iterator);
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        goto done;
    int64_t end = start_rva;
    int status = 1;
    /* The GIL stays held: the capstone handle belongs to a Python object that other
     * threads may use. */
    while (walk.pending.count && status == 1) {
        int64_t block_end;
        status = walk_block(&walk, walk.pending.items[--walk.pending.count], &block_end);
        if (status == 1 && block_end > end)
            end = block_end;
    }
    if (status < 0)
        PyErr_NoMemory();
    else if (status == 0)
        result = Py_NewRef(Py_None);
    else
        result = PyLong_FromLongLong(end);
done:
    if (walk.insn != NULL)
        cs.free_insn(walk.insn, 1);
    free(walk.visited);
    free(walk.pending.items);
    PyBuffer_Release(&code);
    return result;
}

PyMethodDef hpatch_discovery_methods[] = {
    {"x64_code_extent", x64_code_extent, METH_VARARGS, x64_code_extent_doc},
    {NULL, NULL, 0, NULL},
};
