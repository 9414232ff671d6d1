/* Line-oriented command protocol, parsed byte by byte by a state machine.
 *
 *   line := word (' '+ arg)* [' '* '#' comment] ['\r'] '\n'
 *   arg  := decimal | '-' decimal | '0x' hex | '"' text-with-\-escapes '"'
 *
 * Completed lines are dispatched through a writable command table (.data);
 * the handlers are reached only through that table. */
#include "hp.h"

enum {
    S_IDLE,     /* start of line */
    S_WORD,     /* in the command word */
    S_SPACE,    /* between arguments */
    S_AFTER,    /* right after an argument */
    S_QUOTE,    /* inside "..." */
    S_QESC,     /* after a backslash inside "..." */
    S_SIGN,     /* after '-' */
    S_NUM,      /* decimal digits */
    S_HEX0,     /* after a leading '0' */
    S_HEX,      /* hex digits after "0x" */
    S_COMMENT,  /* after '#' */
    S_CR,       /* after '\r' */
    S_ERROR     /* skipping the rest of a bad line */
};

static HP_NOINLINE int cmd_ping(hp_fsm *m)
{
    (void)m;
    return 0x474e4f50; /* "PONG" */
}

static HP_NOINLINE int cmd_echo(hp_fsm *m)
{
    host_log(m->text, (int)m->tlen);
    return (int)m->tlen;
}

static HP_NOINLINE int cmd_add(hp_fsm *m)
{
    u32 i, sum = 0;
    for (i = 0; i < m->argc; i++)
        sum += (u32)m->args[i];
    return (int)sum;
}

static HP_NOINLINE int cmd_crc(hp_fsm *m)
{
    return (int)(hp_crc32(m->text, m->tlen) & 0x7fffffffu);
}

static HP_NOINLINE int cmd_eval(hp_fsm *m)
{
    i64 v;
    int rc = hp_expr_eval(m->text, m->tlen, &v);
    return rc < 0 ? rc : (int)v;
}

static HP_NOINLINE int cmd_limit(hp_fsm *m)
{
    if (m->argc != 2)
        return HP_E_ARG;
    return hp_set_limit((u32)m->args[0], (u32)m->args[1]);
}

static HP_NOINLINE int cmd_time(hp_fsm *m)
{
    (void)m;
    return (int)(host_now() & 0x7fffffffu);
}

#if HP_VERSION >= 4
static HP_NOINLINE int cmd_hex(hp_fsm *m)
{
    char tmp[2 * sizeof(m->text) + 1];
    int rc = hp_hex_encode(m->text, m->tlen, tmp, sizeof(tmp));
    if (rc > 0)
        host_log(tmp, rc);
    return rc;
}
#endif

typedef struct hp_cmd {
    const char *name;
    hp_cmd_fn fn;
} hp_cmd;

#if HP_VERSION >= 4
#define HP_MAX_CMDS 12
#else
#define HP_MAX_CMDS 10
#endif

/* Writable: hp_cmd_register fills the empty slots at run time. */
static hp_cmd g_commands[HP_MAX_CMDS] = {
    { "ping",  cmd_ping  },
    { "echo",  cmd_echo  },
    { "add",   cmd_add   },
    { "crc",   cmd_crc   },
    { "eval",  cmd_eval  },
    { "limit", cmd_limit },
    { "time",  cmd_time  },
#if HP_VERSION >= 4
    { "hex",   cmd_hex   },
#endif
};

static HP_NOINLINE hp_cmd_fn cmd_lookup(const char *word, u32 len)
{
    u32 i;
    for (i = 0; i < HP_MAX_CMDS && g_commands[i].name != NULL; i++) {
        if (hp_streq(g_commands[i].name, word, len))
            return g_commands[i].fn;
    }
    return NULL;
}

HP_API int hp_cmd_register(const char *name, hp_cmd_fn fn)
{
    u32 i;
    if (name == NULL || fn == NULL || hp_strlen(name) >= sizeof(((hp_fsm *)0)->word))
        return HP_E_ARG;
    for (i = 0; i < HP_MAX_CMDS; i++) {
        if (g_commands[i].name == NULL) {
            g_commands[i].name = name;
            g_commands[i].fn = fn;
            return (int)i;
        }
    }
    return hp_fail(HP_E_NOSPACE, "cmd: table full");
}

static HP_NOINLINE void fsm_clear_line(hp_fsm *m)
{
    m->argc = 0;
    m->num = 0;
    m->sign = 1;
    m->wlen = 0;
    m->tlen = 0;
    m->word[0] = 0;
    m->text[0] = 0;
}

static HP_NOINLINE u32 fsm_push_arg(hp_fsm *m)
{
    if (m->argc >= sizeof(m->args) / sizeof(m->args[0]))
        return S_ERROR;
    m->args[m->argc++] = m->num * m->sign;
    m->num = 0;
    m->sign = 1;
    return S_AFTER;
}

static HP_NOINLINE u32 fsm_text_char(hp_fsm *m, u32 c)
{
    if (m->tlen + 1 >= sizeof(m->text))
        return S_ERROR;
    m->text[m->tlen++] = (char)c;
    m->text[m->tlen] = 0;
    return S_QUOTE;
}

/* Ends a line: dispatches the command, if any. */
static HP_NOINLINE u32 fsm_end_line(hp_fsm *m)
{
    if (m->wlen != 0) {
        hp_cmd_fn fn = cmd_lookup(m->word, m->wlen);
        if (fn != NULL) {
            m->result = fn(m);
            m->lines++;
        } else {
            m->errors++;
            m->result = hp_fail(HP_E_SYNTAX, "cmd: unknown command");
        }
    }
    fsm_clear_line(m);
    return S_IDLE;
}

static HP_NOINLINE int is_word_char(u32 c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/* One transition. The dense switch compiles to a jump table. */
static HP_NOINLINE u32 fsm_step(hp_fsm *m, u32 c)
{
    switch (m->state) {
    case S_IDLE:
        if (c == '\n' || c == ' ' || c == '\t')
            return S_IDLE;
        if (c == '#')
            return S_COMMENT;
        if (!is_word_char(c))
            return S_ERROR;
        m->word[m->wlen++] = (char)c;
        m->word[m->wlen] = 0;
        return S_WORD;
    case S_WORD:
        if (is_word_char(c)) {
            if (m->wlen + 1 >= sizeof(m->word))
                return S_ERROR;
            m->word[m->wlen++] = (char)c;
            m->word[m->wlen] = 0;
            return S_WORD;
        }
        /* fall through */
    case S_AFTER:
        if (c == ' ' || c == '\t')
            return S_SPACE;
        if (c == '\r')
            return S_CR;
        if (c == '\n')
            return fsm_end_line(m);
        if (c == '#')
            return S_COMMENT;
        return S_ERROR;
    case S_SPACE:
        if (c == ' ' || c == '\t')
            return S_SPACE;
        if (c == '"')
            return S_QUOTE;
        if (c == '-')
            return S_SIGN;
        if (c == '0')
            return S_HEX0;
        if (c >= '1' && c <= '9') {
            m->num = (i32)(c - '0');
            return S_NUM;
        }
        if (c == '\r')
            return S_CR;
        if (c == '\n')
            return fsm_end_line(m);
        if (c == '#')
            return S_COMMENT;
        return S_ERROR;
    case S_QUOTE:
        if (c == '"')
            return S_AFTER;
        if (c == '\\')
            return S_QESC;
        if (c == '\n')
            return S_ERROR;
        return fsm_text_char(m, c);
    case S_QESC:
        if (c == 'n')
            c = '\n';
        else if (c == 't')
            c = '\t';
        else if (c == '0')
            c = 0;
        return fsm_text_char(m, c);
    case S_SIGN:
        if (c < '0' || c > '9')
            return S_ERROR;
        m->sign = -1;
        m->num = (i32)(c - '0');
        return S_NUM;
    case S_NUM:
        if (c >= '0' && c <= '9') {
            if (m->num > 100000000)
                return S_ERROR;
            m->num = m->num * 10 + (i32)(c - '0');
            return S_NUM;
        }
        break;
    case S_HEX0:
        if (c == 'x' || c == 'X')
            return S_HEX;
        if (c >= '0' && c <= '9') {
            m->num = (i32)(c - '0');
            return S_NUM;
        }
        break;
    case S_HEX:
        if ((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')) {
            if ((u32)m->num >> 27)
                return S_ERROR;
            m->num = (m->num << 4) | (i32)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
            return S_HEX;
        }
        break;
    case S_COMMENT:
        if (c == '\n')
            return fsm_end_line(m);
        return S_COMMENT;
    case S_CR:
        if (c == '\n')
            return fsm_end_line(m);
        return S_ERROR;
    case S_ERROR:
        if (c == '\n') {
            m->errors++;
            fsm_clear_line(m);
            return S_IDLE;
        }
        return S_ERROR;
    default:
        return hp_fail(HP_E_STATE, "fsm: corrupt state") < 0 ? S_ERROR : S_IDLE;
    }

    /* end of a number: same terminators as after any argument */
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '#') {
        u32 next = fsm_push_arg(m);
        if (next == S_ERROR)
            return S_ERROR;
        m->state = S_AFTER;
        return fsm_step(m, c);
    }
    return S_ERROR;
}

HP_API int hp_fsm_init(hp_fsm *m)
{
    if (m == NULL)
        return HP_E_ARG;
    memset(m, 0, sizeof(*m));
    fsm_clear_line(m);
    m->state = S_IDLE;
    return HP_OK;
}

/* Feeds n bytes; returns the number of commands dispatched so far. */
HP_API int hp_fsm_feed(hp_fsm *m, const char *s, size_t n)
{
    size_t i;
    if (m == NULL || (s == NULL && n != 0))
        return HP_E_ARG;
    if (m->state > S_ERROR)
        return hp_fail(HP_E_STATE, "fsm: corrupt state");
    for (i = 0; i < n; i++)
        m->state = fsm_step(m, (u8)s[i]);
    g_hp_stats.bytes_in += (u32)n;
    return (int)m->lines;
}
