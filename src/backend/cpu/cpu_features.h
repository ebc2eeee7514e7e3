/* Run-time CPU feature detection (cpuid + xgetbv, so a feature the OS does
 * not save state for counts as absent). */
#ifndef EXSA_CPU_FEATURES_H
#define EXSA_CPU_FEATURES_H

typedef struct exsa_cpu_features {
    int avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512dq, avx512vnni;
    int avx_vnni;
    int avx512bf16; /* vdpbf16ps */
} exsa_cpu_features;

/* Fills f from the running CPU. */
void exsa_cpu_features_detect(exsa_cpu_features *f);

/* Number of physical cores (falls back to online CPUs). */
int exsa_cpu_physical_cores(void);

#endif
