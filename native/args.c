/*
 * Argument converters shared by the Python wrappers (see args.h).
 */
#include "args.h"

#include <limits.h>

int hpatch_int64_arg(PyObject *obj, void *out)
{
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred())
        return 0;
    if (overflow)
        value = overflow > 0 ? LLONG_MAX : LLONG_MIN;
    *(long long *)out = value;
    return 1;
}

int hpatch_buffer_arg(PyObject *obj, void *out)
{
    Py_buffer *view = (Py_buffer *)out;
    if (obj == NULL) { /* cleanup: a later argument failed */
        PyBuffer_Release(view);
        return 1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "a C-contiguous bytes-like object is required, not '%.100s'",
                         Py_TYPE(obj)->tp_name);
        }
        return 0;
    }
    return Py_CLEANUP_SUPPORTED;
}
