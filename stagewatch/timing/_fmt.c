/* The classic text log's block, ``template % values``, with fast fixed-point floats (issue 21).
 *
 * ``render(template, values)`` returns exactly ``template % values``. The text log's
 * template has one ``%d`` and ~60 ``%9.2f`` / ``%5.1f`` conversions per step; CPython's
 * ``%`` spends ~100 ns on each float (the general dtoa). Here a float with a precision of
 * 0-4 and |x| * 10^p < 4e15 is rounded exactly in integer arithmetic: y = |x| * 10^p is split
 * into its double and the exact error of the product (fma), so the rounding of the exact
 * product, half to even, is decided as the correctly rounded dtoa decides it; the digits
 * are then those of an integer below 2^53. Anything else (another conversion, a flag, a
 * non-ASCII template, NaN, infinity, a huge value, a value of another type) goes to
 * CPython's own ``PyOS_double_to_string`` or the whole template to ``PyUnicode_Format``:
 * the output is the same bytes either way (tests/test_text_log_fmt.py checks it against
 * ``%`` with hypothesis). The pure-Python fallback is ``template % values`` itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
#define EXACT_DOUBLES 1
#else
#define EXACT_DOUBLES 0 /* excess precision: y and e are not the double product and its error */
#endif

static const double SCALE[5] = {1.0, 10.0, 100.0, 1000.0, 10000.0};
static const uint64_t ISCALE[5] = {1, 10, 100, 1000, 10000};

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
    char small[8192];
} Out;

static int
out_reserve(Out *o, Py_ssize_t extra)
{
    if (o->len + extra <= o->cap)
        return 0;
    Py_ssize_t cap = (o->len + extra) * 2;
    char *nb;
    if (o->buf == o->small) {
        nb = PyMem_Malloc(cap);
        if (nb != NULL)
            memcpy(nb, o->buf, o->len);
    }
    else
        nb = PyMem_Realloc(o->buf, cap);
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = nb;
    o->cap = cap;
    return 0;
}

/* |x| * 10^prec < 4e15: the digits of x to ``prec`` places as '%.<prec>f' gives them.
 * Returns the length written to ``s`` (at most 32). */
static int
fixed(double x, int prec, char *s)
{
    int neg = signbit(x) != 0;
    double a = fabs(x), sc = SCALE[prec];
    double y = a * sc;
    double e = fma(a, sc, -y); /* a * sc == y + e exactly */
    double n = rint(y);        /* half to even, of y */
    double r = y - n;          /* exact: |r| <= 0.5 */
    if (r == 0.5) {            /* y is a tie: the exact product decides */
        if (e > 0.0)
            n += 1.0;
    }
    else if (r == -0.5) {
        if (e < 0.0)
            n -= 1.0;
    }
    uint64_t v = (uint64_t)n;
    uint64_t ip = v / ISCALE[prec], fp = v % ISCALE[prec];
    char tmp[32];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + ip % 10);
        ip /= 10;
    } while (ip);
    int len = 0;
    if (neg)
        s[len++] = '-';
    while (k)
        s[len++] = tmp[--k];
    if (prec) {
        s[len++] = '.';
        for (int i = prec - 1; i >= 0; i--) {
            s[len + i] = (char)('0' + fp % 10);
            fp /= 10;
        }
        len += prec;
    }
    return len;
}

/* One float conversion: 0 done, 1 not handled here (the caller falls back), -1 error. */
static int
put_float(Out *o, PyObject *v, int width, int prec)
{
    char num[40];
    int len;
    if (!PyFloat_CheckExact(v))
        return 1;
    double x = PyFloat_AS_DOUBLE(v);
    if (EXACT_DOUBLES && fabs(x) * SCALE[prec] < 4e15) { /* finite, y below 2^52 */
        len = fixed(x, prec, num);
    }
    else {
        char *p = PyOS_double_to_string(x, 'f', prec, 0, NULL);
        if (p == NULL)
            return -1;
        size_t n = strlen(p);
        if (out_reserve(o, (Py_ssize_t)n + width) < 0) {
            PyMem_Free(p);
            return -1;
        }
        for (int i = (int)n; i < width; i++)
            o->buf[o->len++] = ' ';
        memcpy(o->buf + o->len, p, n);
        o->len += (Py_ssize_t)n;
        PyMem_Free(p);
        return 0;
    }
    if (out_reserve(o, len + width) < 0)
        return -1;
    for (int i = len; i < width; i++)
        o->buf[o->len++] = ' ';
    memcpy(o->buf + o->len, num, len);
    o->len += len;
    return 0;
}

static int
put_int(Out *o, PyObject *v)
{
    if (!PyLong_CheckExact(v))
        return 1;
    int overflow = 0;
    long long i = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow)
        return 1;
    if (i == -1 && PyErr_Occurred())
        return -1;
    char num[32];
    int len = snprintf(num, sizeof num, "%lld", i);
    if (out_reserve(o, len) < 0)
        return -1;
    memcpy(o->buf + o->len, num, len);
    o->len += len;
    return 0;
}

/* 0: rendered into o; 1: not handled (fall back); -1: error set. */
static int
render_into(Out *o, const char *t, Py_ssize_t n, PyObject *vals)
{
    Py_ssize_t nv = PyTuple_GET_SIZE(vals), iv = 0, i = 0;
    while (i < n) {
        const char *pct = memchr(t + i, '%', n - i);
        Py_ssize_t lit = (pct ? pct - t : n) - i;
        if (out_reserve(o, lit + 1) < 0)
            return -1;
        memcpy(o->buf + o->len, t + i, lit);
        o->len += lit;
        i += lit;
        if (i >= n)
            break;
        i++; /* past '%' */
        if (i < n && t[i] == '%') {
            o->buf[o->len++] = '%';
            i++;
            continue;
        }
        int width = 0, prec = -1;
        while (i < n && t[i] >= '0' && t[i] <= '9' && width < 100) {
            if (width == 0 && t[i] == '0')
                return 1; /* the '0' flag */
            width = width * 10 + (t[i++] - '0');
        }
        if (i < n && t[i] == '.') {
            i++;
            if (i < n && t[i] >= '0' && t[i] <= '4') {
                prec = t[i++] - '0';
            }
            else
                return 1;
        }
        if (i >= n || iv >= nv)
            return 1;
        char c = t[i++];
        int r;
        if (c == 'f' && prec >= 0)
            r = put_float(o, PyTuple_GET_ITEM(vals, iv), width, prec);
        else if (c == 'd' && prec < 0 && width == 0)
            r = put_int(o, PyTuple_GET_ITEM(vals, iv));
        else
            return 1;
        if (r)
            return r;
        iv++;
    }
    return iv == nv ? 0 : 1;
}

static PyObject *
render(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *tmpl, *vals;
    if (!PyArg_ParseTuple(args, "UO!:render", &tmpl, &PyTuple_Type, &vals))
        return NULL;
    if (!PyUnicode_IS_ASCII(tmpl))
        return PyUnicode_Format(tmpl, vals);
    Out o;
    o.buf = o.small;
    o.len = 0;
    o.cap = sizeof o.small;
    int r = render_into(&o, (const char *)PyUnicode_DATA(tmpl), PyUnicode_GET_LENGTH(tmpl), vals);
    PyObject *res = NULL;
    if (r == 0)
        res = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, o.buf, o.len);
    else if (r == 1)
        res = PyUnicode_Format(tmpl, vals);
    if (o.buf != o.small)
        PyMem_Free(o.buf);
    return res;
}

static PyMethodDef methods[] = {
    {"render", render, METH_VARARGS, "template % values, with fast fixed-point floats."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fmt", "The text log's block formatting (see text_log.py).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__fmt(void)
{
    return PyModule_Create(&module);
}
