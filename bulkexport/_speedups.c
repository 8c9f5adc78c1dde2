/*
 * The flattener's hot loop in C: parsed /sends/data_series days -> column buffers.
 *
 * Why: after orjson.loads, the pure-Python flattener spends ~6 us per output row building
 * tuples, grouping them by key set and transposing them. Here every value goes straight
 * into its column (an int64/double buffer with a validity byte, or a list of str), checked
 * by exactly the rules of flatten._fit_int / _fit_float / _fit_str.
 *
 * Scope: the well-formed common case only. Anything unusual (a value that does not fit its
 * column, a duplicated day, an odd 'time', wrong nesting) makes flatten_days() undo what it
 * appended for the response and return None; the caller then runs the pure-Python path on
 * that response, which decides (BadResponse, rejection with a reason, or keeping it). So
 * every decision about a doubtful response is made in one place, in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { K_INT = 0, K_FLOAT = 1, K_STR = 2 };
#define EXACT 9007199254740992.0 /* 2**53 */
#define MAX_DAYS 512

typedef struct {
    PyObject_HEAD
    Py_ssize_t ncols;   /* known columns */
    char *kinds;        /* per column: K_INT, K_FLOAT or K_STR */
    PyObject *index;    /* dict: field name -> column number */
    int has_channel;    /* rows carry a channel (send_stats) */
    Py_ssize_t n, cap;  /* rows held, rows allocated */
    int32_t *slots;     /* per row: the response's slot */
    int32_t *days;      /* per row: days since 1970-01-01 */
    int64_t **vals;     /* per numeric column: values (doubles stored bit for bit) */
    uint8_t **valid;    /* per numeric column: 1 where a value is present */
    PyObject **strs;    /* per string column: a list of str or None */
    PyObject *channels; /* list of str, or NULL */
    PyObject *extras;   /* list of (row, name, value) for fields the schema does not know */
} Acc;

static void acc_free_buffers(Acc *a) {
    PyMem_Free(a->slots);
    PyMem_Free(a->days);
    a->slots = a->days = NULL;
    for (Py_ssize_t c = 0; c < a->ncols; c++) {
        if (a->vals) { PyMem_Free(a->vals[c]); a->vals[c] = NULL; }
        if (a->valid) { PyMem_Free(a->valid[c]); a->valid[c] = NULL; }
    }
    a->cap = 0;
}

static void Acc_dealloc(Acc *a) {
    acc_free_buffers(a);
    for (Py_ssize_t c = 0; c < a->ncols; c++) {
        if (a->strs) Py_XDECREF(a->strs[c]);
    }
    PyMem_Free(a->vals);
    PyMem_Free(a->valid);
    PyMem_Free(a->strs);
    PyMem_Free(a->kinds);
    Py_XDECREF(a->index);
    Py_XDECREF(a->channels);
    Py_XDECREF(a->extras);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static int acc_reset_lists(Acc *a) {
    for (Py_ssize_t c = 0; c < a->ncols; c++) {
        if (a->kinds[c] == K_STR) {
            Py_XSETREF(a->strs[c], PyList_New(0));
            if (!a->strs[c]) return -1;
        }
    }
    if (a->has_channel) {
        Py_XSETREF(a->channels, PyList_New(0));
        if (!a->channels) return -1;
    }
    Py_XSETREF(a->extras, PyList_New(0));
    return a->extras ? 0 : -1;
}

/* Acc(index: dict[str, int], kinds: bytes, channel: bool) */
static int Acc_init(Acc *a, PyObject *args, PyObject *kw) {
    PyObject *index;
    const char *kinds;
    Py_ssize_t nkinds;
    int channel;
    if (!PyArg_ParseTuple(args, "O!y#p", &PyDict_Type, &index, &kinds, &nkinds, &channel)) return -1;
    if (a->kinds) {
        PyErr_SetString(PyExc_RuntimeError, "Acc is initialised once");
        return -1;
    }
    a->ncols = nkinds;
    a->kinds = PyMem_Malloc(nkinds ? nkinds : 1);
    a->vals = PyMem_Calloc(nkinds ? nkinds : 1, sizeof(int64_t *));
    a->valid = PyMem_Calloc(nkinds ? nkinds : 1, sizeof(uint8_t *));
    a->strs = PyMem_Calloc(nkinds ? nkinds : 1, sizeof(PyObject *));
    if (!a->kinds || !a->vals || !a->valid || !a->strs) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(a->kinds, kinds, nkinds);
    Py_INCREF(index);
    a->index = index;
    a->has_channel = channel;
    a->n = a->cap = 0;
    return acc_reset_lists(a);
}

static int acc_grow(Acc *a) {
    Py_ssize_t cap = a->cap ? a->cap * 2 : 1024;
    int32_t *s = PyMem_Realloc(a->slots, cap * sizeof(int32_t));
    if (!s) goto fail;
    a->slots = s;
    int32_t *d = PyMem_Realloc(a->days, cap * sizeof(int32_t));
    if (!d) goto fail;
    a->days = d;
    for (Py_ssize_t c = 0; c < a->ncols; c++) {
        if (a->kinds[c] == K_STR) continue;
        int64_t *v = PyMem_Realloc(a->vals[c], cap * sizeof(int64_t));
        if (!v) goto fail;
        a->vals[c] = v;
        uint8_t *ok = PyMem_Realloc(a->valid[c], cap);
        if (!ok) goto fail;
        a->valid[c] = ok;
    }
    a->cap = cap;
    return 0;
fail:
    PyErr_NoMemory();
    return -1;
}

/* Append an all-null row; return its number, or -1 on error. */
static Py_ssize_t acc_row(Acc *a, long slot, int32_t day, PyObject *channel) {
    if (a->n == a->cap && acc_grow(a) < 0) return -1;
    Py_ssize_t r = a->n;
    for (Py_ssize_t c = 0; c < a->ncols; c++) {
        if (a->kinds[c] == K_STR) {
            if (PyList_Append(a->strs[c], Py_None) < 0) return -1;
        } else {
            a->vals[c][r] = 0;
            a->valid[c][r] = 0;
        }
    }
    if (a->has_channel && PyList_Append(a->channels, channel) < 0) return -1;
    a->slots[r] = (int32_t)slot;
    a->days[r] = day;
    a->n = r + 1;
    return r;
}

/* Drop every row from n0 on, and extras from e0 on (a response that is not taken here). */
static void acc_truncate(Acc *a, Py_ssize_t n0, Py_ssize_t e0) {
    if (a->n > n0) {
        for (Py_ssize_t c = 0; c < a->ncols; c++) {
            if (a->kinds[c] == K_STR) PyList_SetSlice(a->strs[c], n0, a->n, NULL);
        }
        if (a->has_channel) PyList_SetSlice(a->channels, n0, a->n, NULL);
        a->n = n0;
    }
    if (PyList_GET_SIZE(a->extras) > e0) PyList_SetSlice(a->extras, e0, PyList_GET_SIZE(a->extras), NULL);
}

/* Store one value; 1 stored (or null), 0 does not fit (the caller bails), -1 error. */
static int acc_set(Acc *a, Py_ssize_t r, Py_ssize_t c, PyObject *v) {
    if (v == Py_None) return 1;
    switch (a->kinds[c]) {
    case K_INT:
        if (PyLong_CheckExact(v)) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow) return 0;
            if (x == -1 && PyErr_Occurred()) return -1;
            a->vals[c][r] = x;
            a->valid[c][r] = 1;
            return 1;
        }
        if (PyFloat_CheckExact(v)) {
            double d = PyFloat_AS_DOUBLE(v);
            if (!(d >= -EXACT && d <= EXACT) || d != floor(d)) return 0;
            a->vals[c][r] = (int64_t)d;
            a->valid[c][r] = 1;
            return 1;
        }
        return 0;
    case K_FLOAT: {
        double d;
        if (PyFloat_CheckExact(v)) {
            d = PyFloat_AS_DOUBLE(v);
            if (!isfinite(d)) return 0;
        } else if (PyLong_CheckExact(v)) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow) return 0;
            if (x == -1 && PyErr_Occurred()) return -1;
            if (x < -9007199254740992LL || x > 9007199254740992LL) return 0;
            d = (double)x;
        } else {
            return 0;
        }
        memcpy(&a->vals[c][r], &d, sizeof d);
        a->valid[c][r] = 1;
        return 1;
    }
    default:
        if (!PyUnicode_CheckExact(v)) return 0;
        Py_INCREF(v);
        PyList_SET_ITEM(a->strs[c], r, v); /* replaces None, which the list owned */
        Py_DECREF(Py_None);
        return 1;
    }
}

/* One object's fields into row r: known ones to their columns, others to extras.
   skip_day_keys: ignore 'time' and 'messages' (a day's own fields). 1 ok, 0 bail, -1 error. */
static int acc_fields(Acc *a, Py_ssize_t r, PyObject *obj, int skip_day_keys) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(obj, &pos, &key, &value)) {
        if (skip_day_keys && PyUnicode_Check(key) &&
            (PyUnicode_CompareWithASCIIString(key, "time") == 0 ||
             PyUnicode_CompareWithASCIIString(key, "messages") == 0))
            continue;
        PyObject *col = PyDict_GetItemWithError(a->index, key);
        if (col) {
            int ok = acc_set(a, r, PyLong_AsSsize_t(col), value);
            if (ok <= 0) return ok;
            continue;
        }
        if (PyErr_Occurred()) return -1;
        PyObject *row = PyLong_FromSsize_t(r);
        if (!row) return -1;
        PyObject *t = PyTuple_Pack(3, row, key, value);
        Py_DECREF(row);
        if (!t) return -1;
        int err = PyList_Append(a->extras, t);
        Py_DECREF(t);
        if (err < 0) return -1;
    }
    return 1;
}

static int two_digits(const char *s) {
    return (s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9') ? (s[0] - '0') * 10 + (s[1] - '0') : -1;
}

/* "YYYY-MM-DD" (optionally followed by 'T' or ' ' and anything) -> days since 1970-01-01;
   0 on anything else (the Python path decides what it is). */
static int parse_day(PyObject *s, int32_t *out) {
    Py_ssize_t len;
    const char *t = PyUnicode_AsUTF8AndSize(s, &len);
    if (!t) { PyErr_Clear(); return 0; }
    if (len < 10 || (len > 10 && t[10] != 'T' && t[10] != ' ') || t[4] != '-' || t[7] != '-') return 0;
    int hi = two_digits(t), lo = two_digits(t + 2), m = two_digits(t + 5), d = two_digits(t + 8);
    if (hi < 0 || lo < 0 || m < 1 || m > 12 || d < 1) return 0;
    int y = hi * 100 + lo;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1 || d > mdays[m - 1] + (m == 2 && leap)) return 0;
    /* days from civil (Howard Hinnant's algorithm) */
    int yy = y - (m <= 2);
    int era = (yy >= 0 ? yy : yy - 399) / 400;
    int yoe = yy - era * 400;
    int doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    *out = (int32_t)(era * 146097 + doe - 719468);
    return 1;
}

static PyTypeObject AccType;

/* flatten_days(data, slot, stats, totals, known_channels, new_channels) -> int | None
   The number of send_stats rows appended, or None when the response is left to Python
   (nothing of it is kept). */
static PyObject *flatten_days_impl(PyObject *self, PyObject *args) {
    PyObject *data, *known, *fresh;
    long slot;
    Acc *st, *tt;
    if (!PyArg_ParseTuple(args, "OlO!O!O!O!", &data, &slot, &AccType, &st, &AccType, &tt, &PyFrozenSet_Type,
                          &known, &PySet_Type, &fresh))
        return NULL;
    if (!PyList_CheckExact(data)) Py_RETURN_NONE;
    Py_ssize_t ns0 = st->n, nt0 = tt->n;
    Py_ssize_t es0 = PyList_GET_SIZE(st->extras), et0 = PyList_GET_SIZE(tt->extras);
    int32_t seen[MAX_DAYS];
    Py_ssize_t nseen = 0, rows = 0;
    PyObject *new_channels = NULL; /* channels first seen here: added only if the response is kept */
    PyObject *time_key = PyUnicode_InternFromString("time");
    PyObject *messages_key = PyUnicode_InternFromString("messages");
    if (!time_key || !messages_key) goto error;

    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(data); i++) {
        PyObject *day = PyList_GET_ITEM(data, i);
        if (!PyDict_CheckExact(day)) goto bail;
        PyObject *time = PyDict_GetItemWithError(day, time_key);
        if (!time) { if (PyErr_Occurred()) goto error; goto bail; }
        if (!PyUnicode_CheckExact(time)) goto bail;
        int32_t days;
        if (!parse_day(time, &days)) goto bail;
        if (nseen == MAX_DAYS) goto bail;
        for (Py_ssize_t k = 0; k < nseen; k++)
            if (seen[k] == days) goto bail; /* a day listed twice: Python compares the copies */
        seen[nseen++] = days;

        Py_ssize_t day_rows = 0;
        PyObject *messages = PyDict_GetItemWithError(day, messages_key);
        if (!messages && PyErr_Occurred()) goto error;
        if (messages && messages != Py_None) {
            if (!PyDict_CheckExact(messages)) goto bail;
            PyObject *channel, *entries;
            Py_ssize_t pos = 0;
            while (PyDict_Next(messages, &pos, &channel, &entries)) {
                if (!PyList_CheckExact(entries)) goto bail;
                Py_ssize_t ne = PyList_GET_SIZE(entries);
                if (!ne) continue;
                int is_known = PySet_Contains(known, channel);
                if (is_known < 0) goto error;
                if (!is_known) {
                    if (!new_channels && !(new_channels = PyList_New(0))) goto error;
                    if (PyList_Append(new_channels, channel) < 0) goto error;
                }
                for (Py_ssize_t j = 0; j < ne; j++) {
                    PyObject *entry = PyList_GET_ITEM(entries, j);
                    if (!PyDict_CheckExact(entry)) goto bail;
                    Py_ssize_t r = acc_row(st, slot, days, channel);
                    if (r < 0) goto error;
                    int ok = acc_fields(st, r, entry, 0);
                    if (ok < 0) goto error;
                    if (!ok) goto bail;
                }
                day_rows += ne;
            }
        }
        if (!day_rows) { /* "no data" unless some day-level field has a value */
            PyObject *key, *value;
            Py_ssize_t pos = 0;
            int any = 0;
            while (PyDict_Next(day, &pos, &key, &value)) {
                if (value != Py_None && PyUnicode_CompareWithASCIIString(key, "time") != 0 &&
                    PyUnicode_CompareWithASCIIString(key, "messages") != 0) {
                    any = 1;
                    break;
                }
            }
            if (!any) continue;
        }
        Py_ssize_t r = acc_row(tt, slot, days, NULL);
        if (r < 0) goto error;
        int ok = acc_fields(tt, r, day, 1);
        if (ok < 0) goto error;
        if (!ok) goto bail;
        rows += day_rows;
    }
    if (new_channels) {
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(new_channels); k++)
            if (PySet_Add(fresh, PyList_GET_ITEM(new_channels, k)) < 0) goto error;
        Py_DECREF(new_channels);
    }
    Py_DECREF(time_key);
    Py_DECREF(messages_key);
    return PyLong_FromSsize_t(rows);

bail:
    acc_truncate(st, ns0, es0);
    acc_truncate(tt, nt0, et0);
    Py_XDECREF(new_channels);
    Py_XDECREF(time_key);
    Py_XDECREF(messages_key);
    Py_RETURN_NONE;
error:
    acc_truncate(st, ns0, es0);
    acc_truncate(tt, nt0, et0);
    Py_XDECREF(new_channels);
    Py_XDECREF(time_key);
    Py_XDECREF(messages_key);
    return NULL;
}

/* Acc.take() -> (n, slots, days, channels, columns, extras) and start afresh.
   columns: per known column, (valid_bitmap | None, data, null_count) for numbers (the
   bitmap in Arrow's LSB order, None when nothing is null) or the list of str for strings. */
static PyObject *Acc_take(Acc *a, PyObject *unused) {
    Py_ssize_t n = a->n;
    PyObject *cols = PyList_New(a->ncols);
    if (!cols) return NULL;
    for (Py_ssize_t c = 0; c < a->ncols; c++) {
        PyObject *item;
        if (a->kinds[c] == K_STR) {
            item = a->strs[c];
            Py_INCREF(item);
        } else {
            Py_ssize_t nulls = 0;
            for (Py_ssize_t r = 0; r < n; r++) nulls += !a->valid[c][r];
            PyObject *bitmap = Py_None;
            Py_INCREF(bitmap);
            if (nulls) {
                Py_DECREF(bitmap);
                bitmap = PyBytes_FromStringAndSize(NULL, (n + 7) / 8);
                if (!bitmap) goto error;
                uint8_t *b = (uint8_t *)PyBytes_AS_STRING(bitmap);
                memset(b, 0, (n + 7) / 8);
                for (Py_ssize_t r = 0; r < n; r++)
                    if (a->valid[c][r]) b[r >> 3] |= (uint8_t)(1u << (r & 7));
            }
            PyObject *values = PyBytes_FromStringAndSize((const char *)a->vals[c], n * (Py_ssize_t)sizeof(int64_t));
            if (!values) { Py_DECREF(bitmap); goto error; }
            item = Py_BuildValue("(NNn)", bitmap, values, nulls);
            if (!item) goto error;
        }
        PyList_SET_ITEM(cols, c, item);
    }
    PyObject *slots = PyBytes_FromStringAndSize((const char *)a->slots, n * (Py_ssize_t)sizeof(int32_t));
    PyObject *days = PyBytes_FromStringAndSize((const char *)a->days, n * (Py_ssize_t)sizeof(int32_t));
    if (!slots || !days) { Py_XDECREF(slots); Py_XDECREF(days); goto error; }
    PyObject *channels = a->has_channel ? a->channels : Py_None;
    Py_INCREF(channels);
    PyObject *out = Py_BuildValue("(nNNNNO)", n, slots, days, channels, cols, a->extras);
    if (!out) return NULL;
    a->n = 0;
    if (acc_reset_lists(a) < 0) { Py_DECREF(out); return NULL; }
    if (a->cap > 65536) acc_free_buffers(a); /* a burst of rows: give the memory back */
    return out;
error:
    Py_DECREF(cols);
    return NULL;
}

static Py_ssize_t Acc_len(Acc *a) { return a->n; }

static PyMethodDef Acc_methods[] = {
    {"take", (PyCFunction)Acc_take, METH_NOARGS, "Hand over the rows as buffers and start afresh."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Acc_as_sequence = {.sq_length = (lenfunc)Acc_len};

static PyTypeObject AccType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bulkexport._speedups.Acc",
    .tp_basicsize = sizeof(Acc),
    .tp_dealloc = (destructor)Acc_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Rows of one output table, column by column.",
    .tp_methods = Acc_methods,
    .tp_as_sequence = &Acc_as_sequence,
    .tp_init = (initproc)Acc_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef module_methods[] = {
    {"flatten_days", flatten_days_impl, METH_VARARGS,
     "flatten_days(data, slot, stats, totals, known_channels, new_channels) -> rows | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "bulkexport._speedups",
                                    "The flattener's hot loop in C (see flatten.py).", -1, module_methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&AccType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&AccType);
    if (PyModule_AddObject(m, "Acc", (PyObject *)&AccType) < 0) {
        Py_DECREF(&AccType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
