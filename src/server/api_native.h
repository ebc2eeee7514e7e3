/* Exsa's own endpoints: health, status, /v1/generate, the model registry
 * (/v1/models/load|unload|reload|list|active), tokenize / detokenize, and
 * Prometheus /metrics. Handlers get the exsa_app as their `app` argument.
 *
 * /v1/generate streams SSE events `data: {"token": "...", "id": N, "done":
 * false}` (one per generated token, even when its text is held back) and
 * ends with `data: {"token": "", "done": true, "finish_reason", "usage",
 * "timings"}`; a timeout, a shutdown or an engine error ends it with
 * finish_reason "timeout" / "cancelled" / "error" and an "error" object.
 */
#ifndef EXSA_SERVER_API_NATIVE_H
#define EXSA_SERVER_API_NATIVE_H

#include "server/http.h"

void exsa_api_health(exsa_http_req *rq, void *app);
void exsa_api_status(exsa_http_req *rq, void *app);
void exsa_api_generate(exsa_http_req *rq, void *app);
/* llama-server's POST /completion: /v1/generate with its field names
 * ("content", "stop", "tokens_predicted", "tokens_evaluated", "stop_type"),
 * for its clients and benchmark scripts. */
void exsa_api_llama_completion(exsa_http_req *rq, void *app);
void exsa_api_models_load(exsa_http_req *rq, void *app);
void exsa_api_models_unload(exsa_http_req *rq, void *app);
void exsa_api_models_reload(exsa_http_req *rq, void *app);
void exsa_api_models_list(exsa_http_req *rq, void *app);
void exsa_api_models_active(exsa_http_req *rq, void *app);
void exsa_api_tokenize(exsa_http_req *rq, void *app);
void exsa_api_detokenize(exsa_http_req *rq, void *app);
void exsa_api_metrics(exsa_http_req *rq, void *app);

#endif
