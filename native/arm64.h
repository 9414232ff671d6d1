/* ARM64 normalisation: the position-dependent fields of instruction words and the
 * references they name. */
#ifndef HPATCH_ARM64_H
#define HPATCH_ARM64_H

#include <stddef.h>
#include <stdint.h>

#include "constants.h" /* REF_*: hpatch.arch.base.RefKind */

typedef struct {
    int64_t site;
    int64_t target;
    int kind;
} arm64_ref_t;

/* Normalise the len / 4 whole words of code at code_rva into out (len bytes; a
 * trailing partial word is copied as it is): see normalise_arm64 in
 * hpatch/_fallback/scan.py for the rules. Branches into [lo, hi) keep their bits, and the
 * pages ADRPs set are followed along them (within the code) to the ADD/LDR/STR that
 * complete them. refs must have room for len / 4 entries: a word names at most one
 * reference. Returns the number of references written, or -1 when memory runs out
 * (the work space is about 10 bytes a word and 140 bytes a branch target). */
ptrdiff_t arm64_normalise(const uint8_t *code, size_t len, int64_t code_rva, int64_t lo,
                          int64_t hi, uint8_t *out, arm64_ref_t *refs);

#endif
