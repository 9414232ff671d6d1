/* Byte rewriting: fixup application and redirect encoding (native/rewrite.c). */
#ifndef HPATCH_REWRITE_H
#define HPATCH_REWRITE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* apply_fixups and encode_redirect; added to hpatch._native by PyInit__native. */
extern PyMethodDef hpatch_rewrite_methods[];

#endif
