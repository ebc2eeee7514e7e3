/* Backend-independent entry points: they dispatch through the ops table so
 * callers need not know which backend they hold. */
#include "backend/backend.h"

void exsa_backend_free(exsa_backend *b)
{
    if (b && b->ops && b->ops->destroy)
        b->ops->destroy(b);
}

const char *exsa_backend_describe(const exsa_backend *b)
{
    if (!b || !b->ops)
        return "none";
    if (b->ops->describe)
        return b->ops->describe(b);
    return b->ops->name ? b->ops->name : "unknown";
}
