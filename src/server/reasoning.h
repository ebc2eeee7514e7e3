/* Reasoning split: generated text -> the model's thinking and its answer.
 *
 * Models of the DeepSeek R1 / Qwen 3 kind write their thinking between
 * "<think>" and "</think>" before the answer. The splitter takes the
 * generated text piece by piece (as the engine's TOKEN events bring it) and
 * sends each byte to the reasoning or the content buffer, so a stream can
 * emit reasoning deltas and content deltas as they come. A marker split
 * across pieces ("<thi" + "nk>") is recognized: bytes that may start a
 * marker are held back (at most 8) until the next piece decides.
 *
 * "<think>" opens a thinking part wherever it appears outside one; "</think>"
 * closes it. Templates that open "<think>" in the prompt (the generation
 * prompt ends with it) start the splitter inside the thinking part, so that
 * only "</think>" appears in the output. Whitespace at the start of a
 * thinking part and at the start of the text after "</think>" is dropped
 * (the models write "<think>\n" and "</think>\n\n"). Unterminated thinking
 * stays reasoning.
 *
 * A splitter is a small value owned by its caller: no allocation, no free.
 */
#ifndef EXSA_SERVER_REASONING_H
#define EXSA_SERVER_REASONING_H

#include <stddef.h>

#include "server/strbuf.h"

typedef struct exsa_reasoning {
    int in_think;  /* inside a thinking part */
    int skip_ws;   /* dropping whitespace at the start of a part */
    char pend[16]; /* held bytes: a proper prefix of the marker looked for */
    size_t n_pend;
} exsa_reasoning;

/* start_in_think: the prompt already opened "<think>". */
void exsa_reasoning_init(exsa_reasoning *r, int start_in_think);

/* Splits n bytes of generated text, appending to reasoning / content (both
 * required). Returns 0, or EXSA_ENOMEM when a buffer could not grow (its oom
 * flag is set too). */
int exsa_reasoning_feed(exsa_reasoning *r, const char *s, size_t n, exsa_strbuf *reasoning,
                        exsa_strbuf *content);

/* End of the text: held bytes go out as text of the current part. */
int exsa_reasoning_finish(exsa_reasoning *r, exsa_strbuf *reasoning, exsa_strbuf *content);

/* 1 when a chat template's Jinja source writes thinking markers (so its
 * model thinks and llama-server's reasoning_format "deepseek" applies). */
int exsa_reasoning_template_thinks(const char *template_source);

/* 1 when a rendered prompt ends inside an open "<think>" (trailing
 * whitespace aside): the output then starts in the thinking part. */
int exsa_reasoning_prompt_opened(const char *prompt, size_t len);

#endif
