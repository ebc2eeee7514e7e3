/* Pre-tokenizer regex lists (see pretokenize.h). The lists and the name ->
 * list mapping follow llama.cpp's llama-vocab.cpp; the rewrites below make
 * PCRE2 split exactly where llama.cpp's splitters do. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "text/pretokenize.h"
#include "util/err.h"

/* llama.cpp's whitespace set (its \s), as items of a character class. PCRE2's
 * own \s with UCP also takes U+180E and differs by Unicode version. */
#define WS_ITEMS                                                                         \
    "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"      \
    "\\x{202F}\\x{205F}\\x{3000}"

#define RX_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RX_CONTRACT "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RX_LLAMA3                                                                        \
    RX_CONTRACT "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RX_QWEN2                                                                         \
    RX_CONTRACT "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"     \
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Upper-then-lower letter runs written with lookaheads, as llama.cpp does
 * (its std::regex has no \p{Lu}). */
#define RX_UPPER "((?=[\\p{L}])([^a-z]))"
#define RX_LOWER "((?=[\\p{L}])([^A-Z]))"
#define RX_TEKKEN                                                                        \
    "[^\\r\\n\\p{L}\\p{N}]?" RX_UPPER "*" RX_LOWER "+|[^\\r\\n\\p{L}\\p{N}]?" RX_UPPER     \
    "+" RX_LOWER "*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RX_GPT4O                                                                         \
    "[^\\r\\n\\p{L}\\p{N}]?" RX_UPPER "*" RX_LOWER "+" RX_CONTRACT                         \
    "?|[^\\r\\n\\p{L}\\p{N}]?" RX_UPPER "+" RX_LOWER "*" RX_CONTRACT                       \
    "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RX_BLOOM " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{964}\\x{6D4}\\x{60C})]+"
/* CJK runs of deepseek-llm/coder. llama.cpp matches this (no \p{}) on text
 * whose non-ASCII whitespace became U+000B, so the range U+0800..U+4E00 never
 * takes a whitespace character: hence the lookahead. */
#define RX_DS_CJK "(?:(?!\\s)[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}])+"
/* deepseek-v3: llama.cpp's collapsed ASCII \p{S} lacks '~', so '~' is neither
 * punctuation nor symbol there. */
#define RX_DSV3                                                                          \
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|(?:~|[^\\r\\n\\p{L}\\p{P}\\p{S}])?" \
    "[\\p{L}\\p{M}]+| ?(?:(?!~)[\\p{P}\\p{S}])+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

#define MAX_RX 6

typedef struct {
    const char *canon;
    int ignore_merges;
    const char *rx[MAX_RX];
} rx_list;

static const rx_list L_DEFAULT = {
    "default", 0, {"[\\p{P}\\$\\+<=>\\^~\\|]+", RX_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}};
static const rx_list L_GPT2 = {"gpt2", 0, {RX_GPT2}};
static const rx_list L_LLAMA3 = {"llama3", 1, {RX_LLAMA3}};
static const rx_list L_DBRX = {"dbrx", 0, {RX_LLAMA3}};
static const rx_list L_CHATGLM4 = {"chatglm4", 0, {RX_LLAMA3}};
static const rx_list L_QWEN2 = {"qwen2", 0, {RX_QWEN2}};
static const rx_list L_DEEPSEEK_LLM = {
    "deepseek-llm",
    0,
    {"[\\r\\n]",
     "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"
     "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}"
     "\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}"
     "\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}"
     "\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"
     "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}"
     "\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}"
     "\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}"
     "\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}"
     "\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}"
     "\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}"
     "\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}"
     "\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}"
     "\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"
     "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}"
     "\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}"
     "\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}"
     "\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+",
     /* U+3000 (a whitespace) left out of the range U+3000..U+3002, see RX_DS_CJK */
     "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3001}-\\x{3002}]+",
     "\\s+$", RX_DS_CJK, "\\p{N}+"}};
static const rx_list L_DEEPSEEK_CODER = {
    "deepseek-coder", 0, {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RX_DS_CJK, "\\p{N}"}};
static const rx_list L_DEEPSEEK_V3 = {
    "deepseek-v3", 0, {"\\p{N}{1,3}", "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+", RX_DSV3}};
static const rx_list L_FALCON = {
    "falcon", 0, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RX_GPT2, "[0-9][0-9][0-9]"}};
static const rx_list L_STARCODER = {"starcoder", 0, {"\\p{N}", RX_GPT2}};
static const rx_list L_BLOOM = {"bloom", 0, {RX_BLOOM}};
static const rx_list L_VIKING = {"viking", 0, {RX_BLOOM, "\\p{N}"}};
static const rx_list L_TEKKEN = {"tekken", 1, {RX_TEKKEN}};
static const rx_list L_CHAMELEON = {
    "chameleon",
    0,
    {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
     "[\\p{P}!-/:-@\\[-`{-~]", RX_GPT2}};
static const rx_list L_GPT4O = {"gpt-4o", 0, {RX_GPT4O}};
static const rx_list L_SUPERBPE = {"superbpe", 0, {"\\p{N}+", "(?=(\\d{3})+(?!\\d))"}};
static const rx_list L_BAILINGMOE = {
    "bailingmoe",
    0,
    {"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"}};
static const rx_list L_SEED_CODER = {
    "seed-coder",
    0,
    {RX_CONTRACT "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|"
                 "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}};

typedef struct {
    const char *name;
    const rx_list *list;
} rx_name;

/* tokenizer.ggml.pre values llama.cpp accepts for byte-level BPE. */
static const rx_name NAMES[] = {
    {"default", &L_DEFAULT},
    {"llama3", &L_LLAMA3}, {"llama-v3", &L_LLAMA3}, {"llama-bpe", &L_LLAMA3},
    {"falcon3", &L_LLAMA3}, {"falcon-h1", &L_LLAMA3}, {"pixtral", &L_LLAMA3},
    {"midm-2.0", &L_LLAMA3}, {"lfm2", &L_LLAMA3},
    {"dbrx", &L_DBRX}, {"smaug-bpe", &L_DBRX},
    {"deepseek-llm", &L_DEEPSEEK_LLM},
    {"deepseek-coder", &L_DEEPSEEK_CODER},
    {"deepseek-v3", &L_DEEPSEEK_V3}, {"hunyuan-dense", &L_DEEPSEEK_V3},
    {"falcon", &L_FALCON},
    {"starcoder", &L_STARCODER}, {"refact", &L_STARCODER}, {"command-r", &L_STARCODER},
    {"smollm", &L_STARCODER}, {"codeshell", &L_STARCODER}, {"exaone", &L_STARCODER},
    {"minerva-7b", &L_STARCODER},
    {"gpt-2", &L_GPT2}, {"phi-2", &L_GPT2}, {"jina-es", &L_GPT2}, {"jina-de", &L_GPT2},
    {"gigachat", &L_GPT2}, {"jina-v1-en", &L_GPT2}, {"jina-v2-es", &L_GPT2},
    {"jina-v2-de", &L_GPT2}, {"jina-v2-code", &L_GPT2}, {"roberta-bpe", &L_GPT2},
    {"a.x-4.0", &L_GPT2}, {"mellum", &L_GPT2}, {"mpt", &L_GPT2}, {"olmo", &L_GPT2},
    {"jais", &L_GPT2}, {"trillion", &L_GPT2}, {"granite-docling", &L_GPT2},
    {"exaone4", &L_GPT2},
    {"qwen2", &L_QWEN2}, {"deepseek-r1-qwen", &L_QWEN2}, {"kormo", &L_QWEN2},
    {"megrez", &L_QWEN2}, {"stablelm2", &L_QWEN2}, {"hunyuan", &L_QWEN2},
    {"grok-2", &L_QWEN2},
    {"poro-chat", &L_BLOOM}, {"bloom", &L_BLOOM}, {"gpt3-finnish", &L_BLOOM},
    {"viking", &L_VIKING},
    {"glm4", &L_CHATGLM4}, {"chatglm-bpe", &L_CHATGLM4},
    {"tekken", &L_TEKKEN},
    {"chameleon", &L_CHAMELEON},
    {"gpt-4o", &L_GPT4O}, {"llama4", &L_GPT4O}, {"minimax-m2", &L_GPT4O},
    {"superbpe", &L_SUPERBPE},
    {"bailingmoe", &L_BAILINGMOE}, {"bailingmoe2", &L_BAILINGMOE}, {"llada-moe", &L_BAILINGMOE},
    {"seed-coder", &L_SEED_CODER},
};

struct exsa_pretok {
    const rx_list *list;
    int n;
    pcre2_code *code[MAX_RX];
};

/* Writes pattern src with \s \S \d spelled out (see WS_ITEMS) into a new
 * NUL-terminated string. */
static char *rewrite(const char *src)
{
    static const char ws[] = WS_ITEMS;
    size_t n = strlen(src), cap = n * (sizeof ws + 4) + 1;
    char *out = malloc(cap), *o = out;
    if (!out)
        return NULL;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '\\' && i + 1 < n) {
            char e = src[i + 1];
            i++;
            if (e == 's' || e == 'S') {
                if (in_class) {
                    /* only \s occurs inside our classes */
                    memcpy(o, ws, sizeof ws - 1);
                    o += sizeof ws - 1;
                } else {
                    *o++ = '[';
                    if (e == 'S')
                        *o++ = '^';
                    memcpy(o, ws, sizeof ws - 1);
                    o += sizeof ws - 1;
                    *o++ = ']';
                }
            } else if (e == 'd') {
                o += in_class ? (memcpy(o, "0-9", 3), 3) : (memcpy(o, "[0-9]", 5), 5);
            } else {
                *o++ = c;
                *o++ = e;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            *o++ = c;
            /* a leading ^ or ] belongs to the class syntax */
            if (i + 1 < n && src[i + 1] == '^')
                *o++ = src[++i];
            continue;
        }
        if (in_class && c == ']')
            in_class = 0;
        *o++ = c;
    }
    *o = 0;
    return out;
}

exsa_pretok *exsa_pretok_create(const char *name, size_t len, exsa_err *err)
{
    const rx_list *list = NULL;
    if (!name) {
        list = &L_DEFAULT;
    } else {
        for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) {
            if (strlen(NAMES[i].name) == len && memcmp(NAMES[i].name, name, len) == 0) {
                list = NAMES[i].list;
                break;
            }
        }
    }
    if (!list) {
        exsa_err_set(err, EXSA_EUNSUPPORTED, "tokenizer: pre-tokenizer '%.*s' is not supported",
                     (int)(len > 200 ? 200 : len), name);
        return NULL;
    }
    exsa_pretok *p = calloc(1, sizeof *p);
    if (!p) {
        exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    p->list = list;
    for (int i = 0; i < MAX_RX && list->rx[i]; i++) {
        char *pat = rewrite(list->rx[i]);
        if (!pat) {
            exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory");
            exsa_pretok_free(p);
            return NULL;
        }
        int ec;
        PCRE2_SIZE eo;
        p->code[i] = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &ec, &eo, NULL);
        free(pat);
        if (!p->code[i]) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof msg);
            exsa_err_set(err, EXSA_EUNSUPPORTED,
                         "tokenizer: pre-tokenizer '%s' regex %d: %s at offset %zu", list->canon,
                         i, (const char *)msg, (size_t)eo);
            exsa_pretok_free(p);
            return NULL;
        }
        /* JIT is an optimisation: without it (no JIT support) matching still works */
        pcre2_jit_compile(p->code[i], PCRE2_JIT_COMPLETE);
        p->n = i + 1;
    }
    return p;
}

void exsa_pretok_free(exsa_pretok *p)
{
    if (!p)
        return;
    for (int i = 0; i < MAX_RX; i++)
        pcre2_code_free(p->code[i]);
    free(p);
}

int exsa_pretok_ignore_merges(const exsa_pretok *p)
{
    return p->list->ignore_merges;
}

const char *exsa_pretok_name(const exsa_pretok *p)
{
    return p->list->canon;
}

void exsa_pieces_free(exsa_pieces *pc)
{
    free(pc->end);
    free(pc->tmp);
    memset(pc, 0, sizeof *pc);
}

/* Offset of the first byte that is not strict UTF-8 (no overlongs,
 * surrogates or values above U+10FFFF), or len. */
static size_t utf8_invalid_at(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            n = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else
            return i;
        if (len - i <= n)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += n + 1;
    }
    return len;
}

static int push_end(size_t **v, size_t *n, size_t *cap, size_t x)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        size_t bytes;
        if (__builtin_mul_overflow(nc, sizeof **v, &bytes))
            return EXSA_ENOMEM;
        size_t *p = realloc(*v, bytes);
        if (!p)
            return EXSA_ENOMEM;
        *v = p;
        *cap = nc;
    }
    (*v)[(*n)++] = x;
    return 0;
}

/* Runs one regex over every piece of src (ends[0..n)), writing the new piece
 * ends to *dst. */
static int split_one(const pcre2_code *code, const char *text, const size_t *ends, size_t n,
                     size_t **dst, size_t *dn, size_t *dcap, pcre2_match_data *md,
                     pcre2_match_context **mctx, pcre2_jit_stack **jstack, exsa_err *err)
{
    size_t start = 0;
    *dn = 0;
    for (size_t k = 0; k < n; k++) {
        size_t end = ends[k];
        PCRE2_SPTR subj = (PCRE2_SPTR)(text + start);
        size_t plen = end - start, pos = 0, prev = 0;
        while (pos < plen) {
            int rc = pcre2_match(code, subj, plen, pos, PCRE2_NO_UTF_CHECK, md, *mctx);
            if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !*jstack) {
                /* Deep backtracking on a long piece: retry with a large stack. */
                *jstack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
                *mctx = pcre2_match_context_create(NULL);
                if (!*jstack || !*mctx)
                    return exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory");
                pcre2_jit_stack_assign(*mctx, NULL, *jstack);
                continue;
            }
            if (rc == PCRE2_ERROR_NOMATCH)
                break;
            if (rc < 0) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return exsa_err_set(err, EXSA_EINVAL,
                                    "tokenizer: pre-tokenizer regex failed at byte %zu: %s",
                                    start + pos, (const char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            int r = 0;
            if (ms > prev)
                r = push_end(dst, dn, dcap, start + ms);
            if (!r && me > ms)
                r = push_end(dst, dn, dcap, start + me);
            if (r)
                return exsa_err_set(err, r, "tokenizer: out of memory");
            prev = me > ms ? me : ms;
            if (me > ms) {
                pos = me;
            } else {
                /* empty match: it only marks a split point; step one character */
                pos = ms + 1;
                while (pos < plen && (subj[pos] & 0xC0) == 0x80)
                    pos++;
            }
        }
        if (prev < plen && push_end(dst, dn, dcap, end))
            return exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory");
        start = end;
    }
    return 0;
}

int exsa_pretok_split(const exsa_pretok *p, const char *text, size_t len, exsa_pieces *out,
                      exsa_err *err)
{
    out->n = 0;
    if (len == 0)
        return 0;
    size_t bad = utf8_invalid_at((const unsigned char *)text, len);
    if (bad != len)
        return exsa_err_set(err, EXSA_EINVAL, "tokenizer: invalid UTF-8 at byte %zu", bad);
    if (push_end(&out->end, &out->n, &out->cap, len))
        return exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory");

    pcre2_match_data *md = NULL;
    pcre2_match_context *mctx = NULL;
    pcre2_jit_stack *jstack = NULL;
    int rc = 0;
    for (int i = 0; i < p->n && rc == 0; i++) {
        pcre2_match_data_free(md);
        md = pcre2_match_data_create_from_pattern(p->code[i], NULL);
        if (!md) {
            rc = exsa_err_set(err, EXSA_ENOMEM, "tokenizer: out of memory");
            break;
        }
        /* the current pieces become the input; the output reuses the other buffer */
        size_t *src = out->end, sn = out->n, scap = out->cap;
        out->end = out->tmp;
        out->cap = out->tmp_cap;
        out->tmp = src;
        out->tmp_cap = scap;
        rc = split_one(p->code[i], text, src, sn, &out->end, &out->n, &out->cap, md, &mctx,
                       &jstack, err);
    }
    pcre2_match_data_free(md);
    pcre2_match_context_free(mctx);
    pcre2_jit_stack_free(jstack);
    if (rc)
        out->n = 0;
    return rc;
}
