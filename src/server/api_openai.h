/* OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions,
 * /v1/models (and /v1/models/{id}), /v1/embeddings.
 *
 * Replies follow OpenAI's objects (chat.completion, chat.completion.chunk,
 * text_completion, list/model, embedding) so that the official SDKs work
 * unchanged. Streams are SSE: "data: {chunk}\n\n" frames, an SSE comment
 * (": keep-alive") after 10 s without output, and "data: [DONE]" last. A
 * stream that cannot finish normally (request timeout, shutdown, engine
 * error) sends one "data: {"error": {...}}" frame before [DONE].
 * Handlers get the exsa_app as their `app` argument.
 */
#ifndef EXSA_SERVER_API_OPENAI_H
#define EXSA_SERVER_API_OPENAI_H

#include <jansson.h>

#include "server/http.h"
#include "server/request_params.h"

void exsa_api_openai_chat(exsa_http_req *rq, void *app);
void exsa_api_openai_completions(exsa_http_req *rq, void *app);
void exsa_api_openai_models(exsa_http_req *rq, void *app);
void exsa_api_openai_model(exsa_http_req *rq, void *app); /* GET /v1/models/{id} */
void exsa_api_openai_embeddings(exsa_http_req *rq, void *app);

/* llama-server's reasoning_format: "none" leaves <think> in the content,
 * "deepseek" moves it to reasoning_content, "auto" (the default) does so
 * when the model's chat template writes <think>. */
enum { EXSA_REASONING_AUTO = 0, EXSA_REASONING_NONE, EXSA_REASONING_DEEPSEEK };

/* Reads reasoning_format and chat_template_kwargs (an object passed into
 * the template, e.g. {"enable_thinking": false}; *kwargs borrows from
 * body, NULL when absent). Fails naming the field. */
int exsa_chat_reasoning_fields(const json_t *body, const json_t **kwargs, int *format,
                               exsa_param_err *pe);
/* 1 when the reply should split thinking from content. */
int exsa_chat_thinks(exsa_engine *e, int format);

#endif
