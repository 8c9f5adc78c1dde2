/*
 * The flattener's hot loops in C: /sends/data_series responses -> column buffers. Two of
 * them: flatten_body() reads a response's bytes itself (the common case; see its section
 * below), flatten_days() walks what orjson parsed (the bodies flatten_body leaves).
 *
 * Why: after orjson.loads, the pure-Python flattener spends ~6 us per output row building
 * tuples, grouping them by key set and transposing them. Here every value goes straight
 * into its column (an int64/double buffer with a validity byte, or a list of str), checked
 * by exactly the rules of flatten._fit_int / _fit_float / _fit_str.
 *
 * Scope: the well-formed common case only. Anything unusual (a value that does not fit its
 * column, a duplicated day, an odd 'time', wrong nesting) makes either loop undo what it
 * appended for the response and return None; the caller then hands the response to the
 * next loop (flatten_body -> orjson and flatten_days -> the pure-Python path), and the last
 * decides (BadResponse, rejection with a reason, or keeping it). So every decision about a
 * doubtful response is made in one place, in Python.
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
    int64_t **vals;     /* per numeric column: values (doubles stored bit for bit), 0 from row n on */
    uint8_t **valid;    /* per numeric column: 1 where a value is present, 0 from row n on */
    PyObject **strs;    /* per string column: a list of str or None */
    PyObject *channels; /* list of str, or NULL */
    PyObject *extras;   /* list of (row, name, value) for fields the schema does not know */
    /* For flatten_body: field names as UTF-8, found by a small open-addressed hash. */
    const char **names; /* per column: its name */
    Py_ssize_t *lens;   /* per column: its name's length */
    int16_t table[256]; /* hash slot -> column, -1 empty */
    PyObject **scache;  /* per string column, SCACHE recent ASCII values (strong refs) */
} Acc;

#define SCACHE 4

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
    if (a->scache)
        for (Py_ssize_t k = 0; k < a->ncols * SCACHE; k++) Py_XDECREF(a->scache[k]);
    PyMem_Free(a->scache);
    PyMem_Free(a->lens);
    PyMem_Free((void *)a->names); /* the strings belong to the index's keys */
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

static unsigned name_hash(const char *s, Py_ssize_t len) {
    unsigned h = (unsigned)len * 131u;
    if (len) h += (unsigned char)s[0] * 31u + (unsigned char)s[len - 1] * 7u + (unsigned char)s[len / 2];
    return h & 255u;
}

/* The byte-level view of the index for flatten_body: names, lengths, and the hash table. */
static int acc_index_names(Acc *a) {
    memset(a->table, 0xff, sizeof a->table);
    a->names = PyMem_Calloc(a->ncols ? a->ncols : 1, sizeof(char *));
    a->lens = PyMem_Calloc(a->ncols ? a->ncols : 1, sizeof(Py_ssize_t));
    a->scache = PyMem_Calloc(a->ncols ? a->ncols * SCACHE : 1, sizeof(PyObject *));
    if (!a->names || !a->lens || !a->scache) {
        PyErr_NoMemory();
        return -1;
    }
    if (a->ncols > 64) return 0; /* more than a row's bitmask: flatten_body leaves every body to the others */
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(a->index, &pos, &key, &value)) {
        Py_ssize_t c = PyLong_AsSsize_t(value), len;
        if (c == -1 && PyErr_Occurred()) return -1;
        const char *name = PyUnicode_AsUTF8AndSize(key, &len);
        if (!name) return -1;
        if (c < 0 || c >= a->ncols || a->names[c]) {
            PyErr_SetString(PyExc_ValueError, "Acc: the index must number the columns 0..n-1 once each");
            return -1;
        }
        a->names[c] = name;
        a->lens[c] = len;
        unsigned h = name_hash(name, len);
        while (a->table[h] >= 0) h = (h + 1) & 255u;
        a->table[h] = (int16_t)c;
    }
    return 0;
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
    if (acc_index_names(a) < 0) return -1;
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
        memset(v + a->cap, 0, (cap - a->cap) * sizeof(int64_t));
        a->vals[c] = v;
        uint8_t *ok = PyMem_Realloc(a->valid[c], cap);
        if (!ok) goto fail;
        memset(ok + a->cap, 0, cap - a->cap);
        a->valid[c] = ok;
    }
    a->cap = cap;
    return 0;
fail:
    PyErr_NoMemory();
    return -1;
}

/* Append an all-null row (numeric columns are zero past n already); return its number, or
   -1 on error. */
static Py_ssize_t acc_row(Acc *a, long slot, int32_t day, PyObject *channel) {
    if (a->n == a->cap && acc_grow(a) < 0) return -1;
    Py_ssize_t r = a->n;
    for (Py_ssize_t c = 0; c < a->ncols; c++) {
        if (a->kinds[c] == K_STR && PyList_Append(a->strs[c], Py_None) < 0) return -1;
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
            if (a->kinds[c] == K_STR) {
                PyList_SetSlice(a->strs[c], n0, a->n, NULL);
            } else {
                memset(a->vals[c] + n0, 0, (a->n - n0) * sizeof(int64_t));
                memset(a->valid[c] + n0, 0, a->n - n0);
            }
        }
        if (a->has_channel) PyList_SetSlice(a->channels, n0, a->n, NULL);
        a->n = n0;
    }
    if (PyList_GET_SIZE(a->extras) > e0) PyList_SetSlice(a->extras, e0, PyList_GET_SIZE(a->extras), NULL);
}

/* An integer into a numeric column, by the value rules: an int column takes any int64, a
   float column one within +-2**53 (beyond, the double would not be the number sent).
   1 stored, 0 does not fit. Both loops store numbers through this and acc_put_double. */
static int acc_put_int(Acc *a, Py_ssize_t r, Py_ssize_t c, long long x) {
    if (a->kinds[c] == K_INT) {
        a->vals[c][r] = x;
    } else {
        if (x < -9007199254740992LL || x > 9007199254740992LL) return 0;
        double d = (double)x;
        memcpy(&a->vals[c][r], &d, sizeof d);
    }
    a->valid[c][r] = 1;
    return 1;
}

/* A double into a numeric column: an int column takes it if integral within +-2**53, a
   float column if finite. 1 stored, 0 does not fit. */
static int acc_put_double(Acc *a, Py_ssize_t r, Py_ssize_t c, double d) {
    if (a->kinds[c] == K_INT) {
        if (!(d >= -EXACT && d <= EXACT) || d != floor(d)) return 0;
        a->vals[c][r] = (int64_t)d;
    } else {
        if (!isfinite(d)) return 0;
        memcpy(&a->vals[c][r], &d, sizeof d);
    }
    a->valid[c][r] = 1;
    return 1;
}

/* Store one value; 1 stored (or null), 0 does not fit (the caller bails), -1 error. */
static int acc_set(Acc *a, Py_ssize_t r, Py_ssize_t c, PyObject *v) {
    if (v == Py_None) return 1;
    if (a->kinds[c] == K_STR) {
        if (!PyUnicode_CheckExact(v)) return 0;
        Py_INCREF(v);
        PyList_SET_ITEM(a->strs[c], r, v); /* replaces None, which the list owned */
        Py_DECREF(Py_None);
        return 1;
    }
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) return 0;
        if (x == -1 && PyErr_Occurred()) return -1;
        return acc_put_int(a, r, c, x);
    }
    if (PyFloat_CheckExact(v)) return acc_put_double(a, r, c, PyFloat_AS_DOUBLE(v));
    return 0;
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
static int day_from_text(const char *t, Py_ssize_t len, int32_t *out) {
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

static int parse_day(PyObject *s, int32_t *out) {
    Py_ssize_t len;
    const char *t = PyUnicode_AsUTF8AndSize(s, &len);
    if (!t) { PyErr_Clear(); return 0; }
    return day_from_text(t, len, out);
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

/* ---- flatten_body: the response's bytes straight into the accumulators ----------------
 *
 * Why: orjson.loads builds a Python object for every key and value of a ~20 KB body (about
 * half of a response's CPU), only for flatten_days to take them apart again. This reads the
 * JSON text itself and writes each value into its column: no dict, no int, no float object.
 *
 * Scope: a strict subset of JSON, the shape Braze sends: {"message": "success", "data":
 * [day, ...]} in either order, known fields and channels only, each key once, strings
 * without escapes, integers of at most 18 digits, numbers that fit their column. Anything
 * else (an escape, an unknown field, a duplicate key, true/false, malformed JSON, trailing
 * bytes, an odd 'time') returns None with nothing kept, and the caller runs orjson and the
 * other two loops, which decide: accept, reject with a reason, or raise BadResponse. So the
 * reader never needs to be right about a doubtful body, only about the bodies it accepts,
 * and for those it yields exactly what orjson + flatten_days would (tests/test_flatten_*). */

typedef struct {
    const char *p, *end;
} Cur;

static inline void skip_ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

/* Whitespace, then ch: 1 (consumed) or 0 (not there). */
static inline int eat(Cur *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static inline int eat_null(Cur *c) {
    skip_ws(c);
    if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
        c->p += 4;
        return 1;
    }
    return 0;
}

/* A string with no escape and no control character: its bytes, without the quotes.
   1 read, 0 bail. *ascii: no byte >= 0x80 (others are checked by the UTF-8 decoder). */
static int read_str(Cur *c, const char **s, Py_ssize_t *len, int *ascii) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"') return 0;
    const char *start = ++c->p;
    unsigned char any = 0;
    /* Eight plain bytes at a time: no quote, backslash, control character or byte >= 0x80. */
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (c->end - c->p >= 8) {
        uint64_t w, q, b;
        memcpy(&w, c->p, 8);
        q = w ^ (ones * '"');
        b = w ^ (ones * '\\');
        if ((((q - ones) & ~q) | ((b - ones) & ~b) | (w - ones * 0x20) | w) & highs) break;
        c->p += 8;
    }
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            *s = start;
            *len = c->p - start;
            *ascii = any < 0x80;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20) return 0;
        any |= ch;
        c->p++;
    }
    return 0;
}

/* Names are short: eight bytes at a time, inline, beats a call to memcmp. */
static inline int same_bytes(const char *a, const char *b, Py_ssize_t n) {
    uint64_t x, y;
    if (n < 8) {
        for (Py_ssize_t i = 0; i < n; i++)
            if (a[i] != b[i]) return 0;
        return 1;
    }
    for (Py_ssize_t i = 0; i + 8 <= n; i += 8) {
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) return 0;
    }
    memcpy(&x, a + n - 8, 8); /* the tail, overlapping */
    memcpy(&y, b + n - 8, 8);
    return x == y;
}

static inline int is_key(const char *k, Py_ssize_t len, const char *want, Py_ssize_t wlen) {
    return len == wlen && same_bytes(k, want, wlen);
}

/* Column of a field name, or -1 when the schema does not know it. */
static Py_ssize_t acc_lookup(Acc *a, const char *s, Py_ssize_t len) {
    unsigned h = name_hash(s, len);
    for (;;) {
        int c = a->table[h];
        if (c < 0) return -1;
        if (a->lens[c] == len && same_bytes(a->names[c], s, len)) return c;
        h = (h + 1) & 255u;
    }
}

/* A string value into a string column: recent ASCII values are reused, not decoded again
   (variation names repeat on every day of a response). 1 stored, 0 bail, -1 error. */
static int acc_set_text(Acc *a, Py_ssize_t r, Py_ssize_t col, const char *s, Py_ssize_t len, int ascii) {
    PyObject **cache = a->scache + col * SCACHE;
    PyObject *v = NULL;
    if (ascii) {
        for (int k = 0; k < SCACHE && cache[k]; k++) {
            if (PyUnicode_GET_LENGTH(cache[k]) == len && memcmp(PyUnicode_DATA(cache[k]), s, len) == 0) {
                v = cache[k];
                Py_INCREF(v);
                break;
            }
        }
    }
    if (!v) {
        v = PyUnicode_DecodeUTF8(s, len, NULL);
        if (!v) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
            PyErr_Clear(); /* not UTF-8: orjson's error to report */
            return 0;
        }
        if (ascii) {
            Py_XDECREF(cache[SCACHE - 1]);
            memmove(cache + 1, cache, (SCACHE - 1) * sizeof *cache);
            Py_INCREF(v);
            cache[0] = v;
        }
    }
    PyObject *old = PyList_GET_ITEM(a->strs[col], r);
    PyList_SET_ITEM(a->strs[col], r, v);
    Py_DECREF(old);
    return 1;
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number into a numeric column, by the rules of acc_put_int / acc_put_double. 1
   stored, 0 bail.
   A decimal of at most 15 significant digits and no exponent is m / 10**k with both exact
   doubles, so one IEEE division is the correctly rounded value (Clinger's fast path); any
   other float goes through Python's own correctly rounded strtod. */
static int read_number(Cur *c, Acc *a, Py_ssize_t r, Py_ssize_t col) {
    const char *s = c->p, *p = c->p, *end = c->end;
    int neg = 0, is_float = 0, has_exp = 0, digits = 0, frac = 0;
    uint64_t x = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p < end && *p == '0') {
        p++;
    } else if (p < end && *p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            if (++digits > 18) return 0; /* could pass int64: the other loops decide */
            x = x * 10 + (uint64_t)(*p++ - '0');
        }
    } else {
        return 0;
    }
    if (p < end && *p == '.') {
        const char *d0 = ++p;
        while (p < end && *p >= '0' && *p <= '9') {
            if (digits + frac < 18) x = x * 10 + (uint64_t)(*p - '0');
            frac++;
            p++;
        }
        if (p == d0) return 0;
        is_float = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        const char *d0 = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == d0) return 0;
        is_float = has_exp = 1;
    }
    c->p = p;
    double d;
    if (a->kinds[col] == K_STR) return 0;
    if (!is_float) return acc_put_int(a, r, col, neg ? -(long long)x : (long long)x);
    if (!has_exp && digits + frac <= 15 && frac <= 22) {
        d = (double)x / POW10[frac];
        if (neg) d = -d;
    } else {
        char buf[64];
        Py_ssize_t n = p - s;
        if (n >= (Py_ssize_t)sizeof buf) return 0;
        memcpy(buf, s, n);
        buf[n] = '\0';
        char *stop;
        d = PyOS_string_to_double(buf, &stop, NULL); /* correctly rounded, locale-independent */
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (stop != buf + n) return 0;
    }
    return acc_put_double(a, r, col, d);
}

/* A known field's value into row r. 1 stored (*nonnull set unless null), 0 bail, -1 error. */
static int read_value(Cur *c, Acc *a, Py_ssize_t r, Py_ssize_t col, int *nonnull) {
    if (eat_null(c)) return 1;
    if (c->p >= c->end) return 0;
    *nonnull = 1;
    char ch = *c->p;
    if (ch == '"') {
        const char *s;
        Py_ssize_t len;
        int ascii;
        if (a->kinds[col] != K_STR || !read_str(c, &s, &len, &ascii)) return 0;
        return acc_set_text(a, r, col, s, len, ascii);
    }
    if (ch == '-' || (ch >= '0' && ch <= '9')) return read_number(c, a, r, col);
    return 0; /* true, false, an object, a list: the other loops decide */
}

/* `"name": value` of a known field into row r, each field once. 1, 0 bail, -1 error. */
static int read_field(Cur *c, Acc *a, Py_ssize_t r, const char *k, Py_ssize_t klen, uint64_t *seen, int *nonnull) {
    Py_ssize_t col = acc_lookup(a, k, klen);
    if (col < 0 || (*seen >> col & 1)) return 0; /* unknown (extra_metrics) or listed twice */
    *seen |= 1ull << col;
    if (!eat(c, ':')) return 0;
    return read_value(c, a, r, col, nonnull);
}

/* One send_stats entry, an object of known fields, as row r. */
static int read_entry(Cur *c, Acc *a, Py_ssize_t r) {
    uint64_t seen = 0;
    int nonnull = 0;
    if (!eat(c, '{')) return 0;
    if (eat(c, '}')) return 1;
    for (;;) {
        const char *k;
        Py_ssize_t klen;
        int ascii;
        if (!read_str(c, &k, &klen, &ascii)) return 0;
        int ok = read_field(c, a, r, k, klen, &seen, &nonnull);
        if (ok <= 0) return ok;
        if (eat(c, ',')) continue;
        return eat(c, '}');
    }
}

/* A day's "messages": null, or an object of known channel -> list of entries. */
static int read_messages(Cur *c, Acc *st, long slot, PyObject *channels) {
    uint64_t seen = 0;
    if (eat_null(c)) return 1;
    if (!eat(c, '{')) return 0;
    if (eat(c, '}')) return 1;
    for (;;) {
        const char *k;
        Py_ssize_t klen, i, n = PyTuple_GET_SIZE(channels);
        int ascii;
        if (!read_str(c, &k, &klen, &ascii)) return 0;
        PyObject *channel = NULL;
        for (i = 0; i < n; i++) {
            Py_ssize_t len;
            const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(channels, i), &len);
            if (!name) return -1;
            if (is_key(k, klen, name, len)) {
                channel = PyTuple_GET_ITEM(channels, i);
                break;
            }
        }
        if (!channel || (seen >> i & 1)) return 0; /* a new channel, or one listed twice */
        seen |= 1ull << i;
        if (!eat(c, ':') || !eat(c, '[')) return 0;
        if (!eat(c, ']')) {
            for (;;) {
                Py_ssize_t r = acc_row(st, slot, 0, channel); /* its day is set with the day's */
                if (r < 0) return -1;
                int ok = read_entry(c, st, r);
                if (ok <= 0) return ok;
                if (eat(c, ',')) continue;
                if (!eat(c, ']')) return 0;
                break;
            }
        }
        if (eat(c, ',')) continue;
        return eat(c, '}');
    }
}

/* One day of 'data': its send_totals row, and its send_stats rows through read_messages.
   The keys come in any order, so rows are made first and given the day at the end. */
static int read_day(Cur *c, Acc *st, Acc *tt, long slot, PyObject *channels, int32_t *seen_days, Py_ssize_t *nseen) {
    Py_ssize_t s0 = st->n, rt;
    uint64_t seen = 0;
    int has_time = 0, has_messages = 0, nonnull = 0;
    int32_t days = 0;
    if (!eat(c, '{')) return 0;
    if ((rt = acc_row(tt, slot, 0, NULL)) < 0) return -1;
    if (!eat(c, '}')) {
        for (;;) {
            const char *k;
            Py_ssize_t klen;
            int ascii, ok;
            if (!read_str(c, &k, &klen, &ascii)) return 0;
            if (is_key(k, klen, "time", 4)) {
                const char *t;
                Py_ssize_t tlen;
                if (has_time || !eat(c, ':') || !read_str(c, &t, &tlen, &ascii) || !ascii) return 0;
                if (!day_from_text(t, tlen, &days)) return 0;
                has_time = ok = 1;
            } else if (is_key(k, klen, "messages", 8)) {
                if (has_messages || !eat(c, ':')) return 0;
                has_messages = 1;
                ok = read_messages(c, st, slot, channels);
            } else {
                ok = read_field(c, tt, rt, k, klen, &seen, &nonnull);
            }
            if (ok <= 0) return ok;
            if (eat(c, ',')) continue;
            if (!eat(c, '}')) return 0;
            break;
        }
    }
    if (!has_time || *nseen == MAX_DAYS) return 0;
    for (Py_ssize_t k = 0; k < *nseen; k++)
        if (seen_days[k] == days) return 0; /* a day listed twice: Python compares the copies */
    seen_days[(*nseen)++] = days;
    for (Py_ssize_t r = s0; r < st->n; r++) st->days[r] = days;
    if (st->n == s0 && !nonnull)
        acc_truncate(tt, rt, PyList_GET_SIZE(tt->extras)); /* nothing but 'time': "no data" */
    else
        tt->days[rt] = days;
    return 1;
}

/* {"message": "success", "data": [...]}, in either order, nothing else, then only whitespace. */
static int read_doc(Cur *c, Acc *st, Acc *tt, long slot, PyObject *channels) {
    int32_t seen_days[MAX_DAYS];
    Py_ssize_t nseen = 0;
    int has_message = 0, has_data = 0;
    if (!eat(c, '{')) return 0;
    for (;;) {
        const char *k, *v;
        Py_ssize_t klen, vlen;
        int ascii;
        if (!read_str(c, &k, &klen, &ascii) || !eat(c, ':')) return 0;
        if (is_key(k, klen, "message", 7)) {
            if (has_message || !read_str(c, &v, &vlen, &ascii) || !is_key(v, vlen, "success", 7)) return 0;
            has_message = 1;
        } else if (is_key(k, klen, "data", 4)) {
            if (has_data || !eat(c, '[')) return 0;
            has_data = 1;
            if (!eat(c, ']')) {
                for (;;) {
                    int ok = read_day(c, st, tt, slot, channels, seen_days, &nseen);
                    if (ok <= 0) return ok;
                    if (eat(c, ',')) continue;
                    if (!eat(c, ']')) return 0;
                    break;
                }
            }
        } else {
            return 0;
        }
        if (eat(c, ',')) continue;
        if (!eat(c, '}')) return 0;
        skip_ws(c);
        return has_message && has_data && c->p == c->end;
    }
}

/* flatten_body(body, slot, stats, totals, channels) -> int | None
   channels: a tuple of the known channel names (at most 64). The number of send_stats rows
   appended, or None when the body is left to orjson and the other loops (nothing kept). */
static PyObject *flatten_body_impl(PyObject *self, PyObject *args) {
    Py_buffer body;
    long slot;
    Acc *st, *tt;
    PyObject *channels;
    if (!PyArg_ParseTuple(args, "y*lO!O!O!", &body, &slot, &AccType, &st, &AccType, &tt, &PyTuple_Type, &channels))
        return NULL;
    if (st->ncols > 64 || tt->ncols > 64 || PyTuple_GET_SIZE(channels) > 64) {
        PyBuffer_Release(&body);
        Py_RETURN_NONE;
    }
    Py_ssize_t ns0 = st->n, nt0 = tt->n;
    Py_ssize_t es0 = PyList_GET_SIZE(st->extras), et0 = PyList_GET_SIZE(tt->extras);
    Cur c = {(const char *)body.buf, (const char *)body.buf + body.len};
    int ok = read_doc(&c, st, tt, slot, channels);
    PyBuffer_Release(&body);
    if (ok == 1) return PyLong_FromSsize_t(st->n - ns0);
    acc_truncate(st, ns0, es0);
    acc_truncate(tt, nt0, et0);
    if (ok < 0) return NULL;
    Py_RETURN_NONE;
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
    /* The numeric buffers are zero past n again before anything else can fail. */
    if (a->cap > 65536) {
        acc_free_buffers(a); /* a burst of rows: give the memory back */
    } else if (n) {
        for (Py_ssize_t c = 0; c < a->ncols; c++) {
            if (a->kinds[c] == K_STR) continue;
            memset(a->vals[c], 0, n * sizeof(int64_t));
            memset(a->valid[c], 0, n);
        }
    }
    if (acc_reset_lists(a) < 0) { Py_DECREF(out); return NULL; }
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
    {"flatten_body", flatten_body_impl, METH_VARARGS,
     "flatten_body(body, slot, stats, totals, channels) -> rows | None"},
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
