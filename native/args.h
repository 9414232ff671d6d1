/* Argument converters shared by the Python wrappers, for PyArg_ParseTuple's "O&".
 * They make the C core take and refuse what the pure-Python twins take and refuse. */
#ifndef HPATCH_ARGS_H
#define HPATCH_ARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* An int (anything with __index__) as a long long in *(long long *)out; a value
 * past that range saturates, which every range check then refuses with the twin's
 * ValueError rather than an OverflowError. */
int hpatch_int64_arg(PyObject *obj, void *out);

/* A C-contiguous bytes-like object into *(Py_buffer *)out, released by the parser
 * if a later argument fails. A non-contiguous buffer is a TypeError, as
 * memoryview.cast raises in the twins (the "y*" format raises BufferError). */
int hpatch_buffer_arg(PyObject *obj, void *out);

#endif
