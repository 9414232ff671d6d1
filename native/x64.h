/* x64 instruction decoding for normalisation: lengths and the positions of the
 * fields a move of code or data changes. */
#ifndef HPATCH_X64_H
#define HPATCH_X64_H

#include <stddef.h>
#include <stdint.h>

#include "constants.h" /* REF_*: hpatch.arch.base.RefKind */

typedef struct {
    int64_t site;
    int64_t target;
    int kind;
} x64_ref_t;

typedef struct {
    x64_ref_t *items;
    size_t count;
    size_t capacity;
} x64_refs_t;

/* Normalise `len` bytes of code at `code_rva` into `out` (same length): see
 * normalise_x64 in hpatch/_fallback/scan.py for the rules. `relocated` holds a sorted
 * array of `relocated_count` uint32 RVAs of base-relocated fields, at any alignment.
 * Returns 0, or -1 when out of memory.
 * Decoding stops at the first undecodable instruction; `*count` says how many
 * instructions were decoded. The target of a REF_ABSOLUTE reference is the bits of
 * the unsigned 64-bit field (a VA): the caller subtracts the image base. */
int x64_normalise(const uint8_t *code, size_t len, int64_t code_rva, int64_t lo, int64_t hi,
                  const uint8_t *relocated, size_t relocated_count, uint8_t *out,
                  x64_refs_t *refs, size_t *count);

#endif
