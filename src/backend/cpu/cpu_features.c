/* Run-time CPU feature detection and core counting.
 *
 * A feature counts only when both the CPU has it (cpuid) and the OS saves
 * the register state it needs (XCR0 via xgetbv): AVX2/FMA/F16C need YMM
 * state, AVX-512 needs opmask + ZMM state. On non-x86 builds every feature
 * reads as absent, so the scalar kernels are chosen.
 */
#include "backend/cpu/cpu_features.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long read_xcr0(void)
{
    unsigned int lo, hi;
    /* xgetbv with ecx = 0 reads XCR0; only called once OSXSAVE is known set. */
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

void exsa_cpu_features_detect(exsa_cpu_features *f)
{
    memset(f, 0, sizeof(*f));
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    const int osxsave = (c >> 27) & 1;
    const int avx = (c >> 28) & 1;
    const int fma = (c >> 12) & 1;
    const int f16c = (c >> 29) & 1;
    if (!osxsave || !avx)
        return;
    const unsigned long long xcr0 = read_xcr0();
    const int ymm_ok = (xcr0 & 0x6) == 0x6;   /* SSE + AVX state */
    const int zmm_ok = (xcr0 & 0xE0) == 0xE0; /* opmask + ZMM_Hi256 + Hi16_ZMM */
    if (!ymm_ok)
        return;
    f->fma = fma;
    f->f16c = f16c;

    unsigned int max_leaf = __get_cpuid_max(0, NULL);
    if (max_leaf < 7)
        return;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned int leaf7_max_sub = a;
    f->avx2 = (b >> 5) & 1;
    if (zmm_ok) {
        f->avx512f = (b >> 16) & 1;
        f->avx512dq = (b >> 17) & 1;
        f->avx512bw = (b >> 30) & 1;
        f->avx512vl = (b >> 31) & 1;
        f->avx512vnni = (c >> 11) & 1;
        if (!f->avx512f) /* the others are extensions of F */
            f->avx512dq = f->avx512bw = f->avx512vl = f->avx512vnni = 0;
    }
    if (leaf7_max_sub >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        f->avx_vnni = (a >> 4) & 1;
        f->avx512bf16 = f->avx512f && ((a >> 5) & 1);
    }
}

#else

void exsa_cpu_features_detect(exsa_cpu_features *f)
{
    memset(f, 0, sizeof(*f));
}

#endif

/* Reads one small integer from a sysfs file; -1 when absent or unreadable. */
static long read_sys_long(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return -1;
    long v = -1;
    if (fscanf(fp, "%ld", &v) != 1)
        v = -1;
    fclose(fp);
    return v;
}

#define MAX_CORE_KEYS 4096

static int add_unique(long long *keys, int n, long long key)
{
    for (int i = 0; i < n; i++)
        if (keys[i] == key)
            return n;
    if (n < MAX_CORE_KEYS)
        keys[n++] = key;
    return n;
}

/* Distinct (package, core) pairs among the CPUs this process may run on. */
static int cores_from_sysfs(long long *keys)
{
    cpu_set_t set;
    int have_mask = sched_getaffinity(0, sizeof(set), &set) == 0;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (have_mask && !CPU_ISSET(cpu, &set))
            continue;
        char path[128];
        snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        long core = read_sys_long(path);
        if (core < 0) {
            if (!have_mask)
                break; /* without a mask, stop at the first missing cpu */
            continue;
        }
        snprintf(path, sizeof(path),
                 "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        long pkg = read_sys_long(path);
        if (pkg < 0)
            pkg = 0;
        n = add_unique(keys, n, ((long long)pkg << 32) | (unsigned long)core);
    }
    return n;
}

/* Same count from /proc/cpuinfo ("physical id" / "core id" per processor). */
static int cores_from_cpuinfo(long long *keys)
{
    FILE *fp = fopen("/proc/cpuinfo", "r");
    if (!fp)
        return 0;
    char line[512];
    long pkg = 0, core = -1;
    int n = 0;
    while (fgets(line, sizeof(line), fp)) {
        long v;
        if (sscanf(line, "physical id : %ld", &v) == 1)
            pkg = v;
        else if (sscanf(line, "core id : %ld", &v) == 1)
            core = v;
        else if (line[0] == '\n') {
            if (core >= 0)
                n = add_unique(keys, n, ((long long)pkg << 32) | (unsigned long)core);
            pkg = 0;
            core = -1;
        }
    }
    if (core >= 0)
        n = add_unique(keys, n, ((long long)pkg << 32) | (unsigned long)core);
    fclose(fp);
    return n;
}

int exsa_cpu_physical_cores(void)
{
    long long *keys = malloc(MAX_CORE_KEYS * sizeof(*keys));
    int n = 0;
    if (keys) {
        n = cores_from_sysfs(keys);
        if (n <= 0)
            n = cores_from_cpuinfo(keys);
        free(keys);
    }
    if (n <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 ? (int)online : 1;
    }
    return n;
}
