/* The reader's fast path for a step record's "regions" object (issue 13).
 *
 * msgspec decodes every line with "regions" kept raw; this module checks that raw object
 * against a schema (the region names of an earlier line, in order) and writes its
 * [inclusive ms, calls] pairs straight into arrays: no Python object per value.
 *
 * It is conservative by design. It accepts only what msgspec's typed decoder
 * (tuple[Ms, Calls] values) accepts, with the same values: strict JSON grammar, names
 * byte-equal to the schema's (which hold no escapes), values it can convert exactly
 * (a mantissa of at most 2^53 and a power of ten of at most 22: one IEEE operation on
 * two exact operands, so correctly rounded), and the same ranges. Anything else returns
 * False and the caller decodes the line with the typed decoder, which decides.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <stdint.h>
#include <string.h>

#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
#define EXACT_DOUBLES 1
#else
#define EXACT_DOUBLES 0 /* excess precision: the one-operation rounding argument fails */
#endif

static const double POW10[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

static inline const char *
skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* One JSON number at p. Returns the end, or NULL when it is not a number by the grammar
 * or cannot be converted exactly here. *is_int: no fraction and no exponent. */
static const char *
parse_number(const char *p, const char *end, double *out, int64_t *iout, int *is_int)
{
    int neg = 0, digits = 0, integral = 1;
    int64_t exp10 = 0;
    uint64_t mant = 0;

    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end)
        return NULL;
    if (*p == '0') {
        p++;
        if (p < end && *p >= '0' && *p <= '9')
            return NULL; /* a leading zero */
    }
    else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            if (++digits > 18)
                return NULL;
            mant = mant * 10 + (uint64_t)(*p - '0');
            p++;
        }
    }
    else
        return NULL;
    if (p < end && *p == '.') {
        const char *q;
        integral = 0;
        q = ++p;
        while (p < end && *p >= '0' && *p <= '9') {
            if (++digits > 18)
                return NULL;
            mant = mant * 10 + (uint64_t)(*p - '0');
            exp10--;
            p++;
        }
        if (p == q)
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        const char *q;
        int eneg = 0;
        int64_t e = 0;
        integral = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) {
            eneg = *p == '-';
            p++;
        }
        q = p;
        while (p < end && *p >= '0' && *p <= '9') {
            if (e > 100000)
                return NULL;
            e = e * 10 + (*p - '0');
            p++;
        }
        if (p == q)
            return NULL;
        exp10 += eneg ? -e : e;
    }
    *is_int = integral;
    if (integral)
        *iout = neg ? -(int64_t)mant : (int64_t)mant;
    if (!EXACT_DOUBLES || mant > ((uint64_t)1 << 53) || exp10 < -22 || exp10 > 22)
        return NULL;
    {
        double v = (double)mant;
        if (exp10 < 0)
            v = v / POW10[-exp10];
        else if (exp10 > 0)
            v = v * POW10[exp10];
        /* an integer is converted as msgspec converts an int: "-0" is 0.0, not -0.0 */
        *out = integral ? (double)*iout : (neg ? -v : v);
    }
    return p;
}

static int
get_buffer(PyObject *obj, Py_buffer *view, int writable)
{
    return PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_SIMPLE);
}

PyDoc_STRVAR(scan_doc,
"scan(raw, keys, ms, calls, row, max_ms, max_calls) -> bool\n\n"
"Check the raw JSON object ``raw`` against ``keys`` (a tuple of the region names' UTF-8\n"
"bytes, in order, distinct, none holding a quote or a backslash) and write its values into row\n"
"``row`` of ``ms`` and ``calls`` (C-contiguous float64 buffers of len(keys) columns).\n"
"True when every value was accepted; False (nothing promised about the row) otherwise.");

static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer raw, ms, calls;
    PyObject *keys, *res = Py_False;
    Py_ssize_t row, nkeys, i;
    double max_ms;
    long long max_calls;
    const char *p, *end;
    double *out_ms, *out_calls;

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 7 arguments");
        return NULL;
    }
    keys = args[1];
    if (!PyTuple_Check(keys)) {
        PyErr_SetString(PyExc_TypeError, "keys must be a tuple of bytes");
        return NULL;
    }
    row = PyLong_AsSsize_t(args[4]);
    max_ms = PyFloat_AsDouble(args[5]);
    max_calls = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    nkeys = PyTuple_GET_SIZE(keys);
    if (get_buffer(args[0], &raw, 0) < 0)
        return NULL;
    if (get_buffer(args[2], &ms, 1) < 0) {
        PyBuffer_Release(&raw);
        return NULL;
    }
    if (get_buffer(args[3], &calls, 1) < 0) {
        PyBuffer_Release(&ms);
        PyBuffer_Release(&raw);
        return NULL;
    }
    if (row < 0 || (row + 1) * nkeys * (Py_ssize_t)sizeof(double) > ms.len
        || (row + 1) * nkeys * (Py_ssize_t)sizeof(double) > calls.len) {
        PyErr_SetString(PyExc_IndexError, "row out of the buffers");
        res = NULL;
        goto done;
    }
    out_ms = (double *)ms.buf + row * nkeys;
    out_calls = (double *)calls.buf + row * nkeys;
    p = (const char *)raw.buf;
    end = p + raw.len;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{')
        goto done;
    p = skip_ws(p, end);
    for (i = 0; i < nkeys; i++) {
        PyObject *k = PyTuple_GET_ITEM(keys, i);
        Py_ssize_t klen;
        double v, c;
        int64_t iv;
        int is_int;

        if (!PyBytes_Check(k)) {
            PyErr_SetString(PyExc_TypeError, "keys must be a tuple of bytes");
            res = NULL;
            goto done;
        }
        klen = PyBytes_GET_SIZE(k);
        if (i > 0) {
            if (p >= end || *p++ != ',')
                goto done;
            p = skip_ws(p, end);
        }
        if (end - p < klen + 2 || *p != '"' || memcmp(p + 1, PyBytes_AS_STRING(k), (size_t)klen) != 0
            || p[klen + 1] != '"')
            goto done;
        p = skip_ws(p + klen + 2, end);
        if (p >= end || *p++ != ':')
            goto done;
        p = skip_ws(p, end);
        if (p >= end || *p++ != '[')
            goto done;
        p = skip_ws(p, end);
        p = parse_number(p, end, &v, &iv, &is_int);
        if (p == NULL || !(v >= 0.0 && v < max_ms))
            goto done;
        p = skip_ws(p, end);
        if (p >= end || *p++ != ',')
            goto done;
        p = skip_ws(p, end);
        p = parse_number(p, end, &c, &iv, &is_int);
        if (p == NULL || !is_int || iv < 0 || iv >= max_calls)
            goto done;
        p = skip_ws(p, end);
        if (p >= end || *p++ != ']')
            goto done;
        p = skip_ws(p, end);
        out_ms[i] = v;
        out_calls[i] = (double)iv;
    }
    if (p >= end || *p++ != '}')
        goto done;
    p = skip_ws(p, end);
    if (p == end)
        res = Py_True;
done:
    PyBuffer_Release(&calls);
    PyBuffer_Release(&ms);
    PyBuffer_Release(&raw);
    Py_XINCREF(res);
    return res;
}

PyDoc_STRVAR(keys_doc,
"keys(raw) -> tuple[bytes, ...] | None\n\n"
"The names of the raw JSON object ``raw`` (one the typed decoder accepted), as the\n"
"bytes between their quotes, in order; None when a name holds an escape.");

static PyObject *
keys(PyObject *self, PyObject *arg)
{
    Py_buffer raw;
    PyObject *out = NULL, *list;
    const char *p, *end;
    int depth = 0;

    if (get_buffer(arg, &raw, 0) < 0)
        return NULL;
    list = PyList_New(0);
    if (list == NULL)
        goto done;
    p = (const char *)raw.buf;
    end = p + raw.len;
    /* the values are arrays of numbers (the typed decoder checked it): a quote at depth 1
     * (inside the object, outside any array) opens a name */
    while (p < end) {
        char ch = *p++;
        if (ch == '{' || ch == '[')
            depth++;
        else if (ch == '}' || ch == ']')
            depth--;
        else if (ch == '"') {
            const char *q = p;
            PyObject *k;
            while (p < end && *p != '"' && *p != '\\')
                p++;
            if (p >= end || *p == '\\' || depth != 1) {
                Py_INCREF(Py_None);
                out = Py_None;
                goto done;
            }
            k = PyBytes_FromStringAndSize(q, p - q);
            if (k == NULL || PyList_Append(list, k) < 0) {
                Py_XDECREF(k);
                goto done;
            }
            Py_DECREF(k);
            p++;
        }
    }
    out = PyList_AsTuple(list);
done:
    Py_XDECREF(list);
    PyBuffer_Release(&raw);
    return out;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {"keys", keys, METH_O, keys_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tui.source._regions",
    "The reader's fast path for the regions object of a step record (see tui/source/decode.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__regions(void)
{
    return PyModule_Create(&module);
}
