/* Recursive-descent evaluator for 64-bit integer expressions:
 *
 *   or    := xor ('|' xor)*
 *   xor   := and ('^' and)*
 *   and   := shift ('&' shift)*
 *   shift := sum (('<<' | '>>') sum)*
 *   sum   := prod (('+' | '-') prod)*
 *   prod  := unary (('*' | '/' | '%') unary)*
 *   unary := ('-' | '~' | '!') unary | primary
 *   primary := number | '0x' hexnumber | '(' or ')'
 */
#include "hp.h"

typedef struct expr_ctx {
    const char *s;
    size_t n;
    size_t pos;
    u32 depth;
    int err;
} expr_ctx;

static i64 parse_or(expr_ctx *x);

static HP_NOINLINE int expr_peek(expr_ctx *x)
{
    while (x->pos < x->n && (x->s[x->pos] == ' ' || x->s[x->pos] == '\t'))
        x->pos++;
    return x->pos < x->n ? (u8)x->s[x->pos] : -1;
}

static HP_NOINLINE i64 expr_error(expr_ctx *x, int code)
{
    if (x->err == 0)
        x->err = code;
    return 0;
}

static HP_NOINLINE i64 parse_number(expr_ctx *x)
{
    u64 v = 0;
    int digits = 0;
    if (x->n - x->pos >= 2 && x->s[x->pos] == '0' && (x->s[x->pos + 1] | 0x20) == 'x') {
        x->pos += 2;
        while (x->pos < x->n) {
            u32 c = (u8)x->s[x->pos];
            u32 d;
            if (c >= '0' && c <= '9')
                d = c - '0';
            else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
                d = (c | 0x20) - 'a' + 10;
            else
                break;
            v = (v << 4) | d;
            x->pos++;
            digits++;
        }
    } else {
        while (x->pos < x->n && x->s[x->pos] >= '0' && x->s[x->pos] <= '9') {
            v = v * 10 + (u64)(x->s[x->pos] - '0');
            x->pos++;
            digits++;
        }
    }
    if (digits == 0)
        return expr_error(x, HP_E_SYNTAX);
    return (i64)v;
}

static HP_NOINLINE i64 parse_primary(expr_ctx *x)
{
    int c = expr_peek(x);
    i64 v;
    if (c == '(') {
        if (++x->depth > g_hp_config.max_depth)
            return expr_error(x, HP_E_DEPTH);
        x->pos++;
        v = parse_or(x);
        if (expr_peek(x) != ')')
            return expr_error(x, HP_E_SYNTAX);
        x->pos++;
        x->depth--;
        return v;
    }
    if (c >= '0' && c <= '9')
        return parse_number(x);
    return expr_error(x, HP_E_SYNTAX);
}

static HP_NOINLINE i64 parse_unary(expr_ctx *x)
{
    int c = expr_peek(x);
    if (c == '-' || c == '~' || c == '!') {
        i64 v;
        if (++x->depth > g_hp_config.max_depth * 4)
            return expr_error(x, HP_E_DEPTH);
        x->pos++;
        v = parse_unary(x);
        x->depth--;
        if (c == '-')
            return (i64)(0 - (u64)v);
        if (c == '~')
            return ~v;
        return !v;
    }
    return parse_primary(x);
}

static HP_NOINLINE i64 parse_prod(expr_ctx *x)
{
    i64 v = parse_unary(x);
    for (;;) {
        int c = expr_peek(x);
        i64 r;
        if (c != '*' && c != '/' && c != '%')
            return v;
        x->pos++;
        r = parse_unary(x);
        if (c == '*') {
            v = (i64)((u64)v * (u64)r);
        } else {
            if (r == 0 || (r == -1 && v == (i64)0x8000000000000000ull))
                return expr_error(x, HP_E_RANGE);
            v = c == '/' ? v / r : v % r;
        }
    }
}

static HP_NOINLINE i64 parse_sum(expr_ctx *x)
{
    i64 v = parse_prod(x);
    for (;;) {
        int c = expr_peek(x);
        if (c == '+') {
            x->pos++;
            v = (i64)((u64)v + (u64)parse_prod(x));
        } else if (c == '-') {
            x->pos++;
            v = (i64)((u64)v - (u64)parse_prod(x));
        } else {
            return v;
        }
    }
}

static HP_NOINLINE i64 parse_shift(expr_ctx *x)
{
    i64 v = parse_sum(x);
    for (;;) {
        int c = expr_peek(x);
        i64 r;
        if ((c != '<' && c != '>') || x->pos + 1 >= x->n || x->s[x->pos + 1] != c)
            return v;
        x->pos += 2;
        r = parse_sum(x);
        if (r < 0 || r > 63)
            return expr_error(x, HP_E_RANGE);
        v = c == '<' ? (i64)((u64)v << r) : v >> r;
    }
}

static HP_NOINLINE i64 parse_and(expr_ctx *x)
{
    i64 v = parse_shift(x);
    while (expr_peek(x) == '&') {
        x->pos++;
        v &= parse_shift(x);
    }
    return v;
}

static HP_NOINLINE i64 parse_xor(expr_ctx *x)
{
    i64 v = parse_and(x);
    while (expr_peek(x) == '^') {
        x->pos++;
        v ^= parse_and(x);
    }
    return v;
}

static HP_NOINLINE i64 parse_or(expr_ctx *x)
{
    i64 v = parse_xor(x);
    while (expr_peek(x) == '|') {
        x->pos++;
        v |= parse_xor(x);
    }
    return v;
}

HP_API int hp_expr_eval(const char *s, size_t n, i64 *out)
{
    expr_ctx x;
    i64 v;
    if (s == NULL || out == NULL)
        return HP_E_ARG;
    x.s = s;
    x.n = n;
    x.pos = 0;
    x.depth = 0;
    x.err = 0;
    v = parse_or(&x);
    if (x.err == 0 && expr_peek(&x) != -1)
        x.err = HP_E_SYNTAX;
    if (x.err != 0)
        return hp_fail(x.err, "expr: evaluation failed");
    *out = v;
    return (int)x.pos;
}
