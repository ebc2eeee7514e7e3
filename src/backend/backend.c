/* Backend-independent entry points: they dispatch through the ops table so
 * callers need not know which backend they hold. */
#include "backend/backend.h"

#include <string.h>

#include "util/err.h"

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

int exsa_device_from_name(const char *name)
{
    static const char *const names[] = {"auto", "cpu", "cuda"};
    for (int i = 0; name && i < 3; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *exsa_device_name(int device)
{
    switch (device) {
    case EXSA_DEVICE_AUTO: return "auto";
    case EXSA_DEVICE_CPU: return "cpu";
    case EXSA_DEVICE_CUDA: return "cuda";
    default: return "?";
    }
}

#ifndef EXSA_HAVE_CUDA
/* Built without the CUDA backend (EXSA_CUDA=OFF, or no nvcc at build). */
int exsa_cuda_usable(const char **why)
{
    if (why)
        *why = "this build has no CUDA backend";
    return 0;
}

exsa_backend *exsa_backend_cuda_create(int ordinal, exsa_err *err)
{
    (void)ordinal;
    exsa_err_set(err, EXSA_EUNSUPPORTED, "cuda: this build has no CUDA backend");
    return NULL;
}
#endif
