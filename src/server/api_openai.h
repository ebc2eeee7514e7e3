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

#include "server/http.h"

void exsa_api_openai_chat(exsa_http_req *rq, void *app);
void exsa_api_openai_completions(exsa_http_req *rq, void *app);
void exsa_api_openai_models(exsa_http_req *rq, void *app);
void exsa_api_openai_model(exsa_http_req *rq, void *app); /* GET /v1/models/{id} */
void exsa_api_openai_embeddings(exsa_http_req *rq, void *app);

#endif
