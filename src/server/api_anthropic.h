/* Anthropic's Messages API: POST /v1/messages.
 *
 * Requests in Anthropic's shape (model, max_tokens (required), system as a
 * string or text blocks, messages with content as a string or blocks,
 * stop_sequences, temperature, top_p, top_k, stream, metadata (ignored),
 * thinking) are turned into an OpenAI-shaped conversation for the chat
 * template and run through the same generation job as /v1/chat/completions.
 * A last assistant message is a prefill: the answer continues it. Image,
 * document, tool_use and tool_result blocks and tools are refused (400).
 *
 * Replies are Anthropic "message" objects; streams are SSE with Anthropic's
 * events in its order: message_start, content_block_start, ping,
 * content_block_delta..., content_block_stop, message_delta, message_stop
 * (pings also after 10 s without output). Thinking (a template that writes
 * <think>) becomes a "thinking" block before the text block. Errors have
 * Anthropic's shape {"type": "error", "error": {"type", "message"}}
 * (exsa_api_anthropic_error_json, which the server uses for every error
 * reply on this route, authentication and limits included).
 * The handler gets the exsa_app as its `app` argument.
 */
#ifndef EXSA_SERVER_API_ANTHROPIC_H
#define EXSA_SERVER_API_ANTHROPIC_H

#include <jansson.h>

#include "server/http.h"

void exsa_api_anthropic_messages(exsa_http_req *rq, void *app);

/* {"type": "error", "error": {"type": T, "message": msg}} with T chosen by
 * the HTTP status (400 invalid_request_error, 401 authentication_error, 403
 * permission_error, 404 not_found_error, 413 request_too_large, 429
 * rate_limit_error, 503 / 529 overloaded_error, 504 timeout_error, other
 * 5xx api_error). NULL when out of memory. */
json_t *exsa_api_anthropic_error_json(int status, const char *message);

#endif
