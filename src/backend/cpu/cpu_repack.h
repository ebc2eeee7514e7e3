/* Repacked weight layouts of the CPU backend (exsa_cpu_repack is declared in
 * backend/backend.h for the model layer). */
#ifndef EXSA_CPU_REPACK_H
#define EXSA_CPU_REPACK_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

/* Bytes of one block column of an 8-row group of a repacked block layout
 * (the group is n_in / block such columns); 0 for other layouts. */
size_t exsa_cpu_repacked_col_bytes(int layout);

/* Row `row` of a repacked tensor back in its GGUF form (row_bytes bytes). */
void exsa_cpu_repacked_row(const exsa_tensor *w, int64_t row, void *out);

#endif
