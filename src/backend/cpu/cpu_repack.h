/* Repacked weight layouts of the CPU backend (exsa_cpu_repack is declared in
 * backend/backend.h for the model layer). */
#ifndef EXSA_CPU_REPACK_H
#define EXSA_CPU_REPACK_H

#include <stdint.h>

#include "backend/backend.h"

/* Row `row` of a repacked tensor back in its GGUF form (row_bytes bytes). */
void exsa_cpu_repacked_row(const exsa_tensor *w, int64_t row, void *out);

#endif
