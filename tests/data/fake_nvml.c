/* A stand-in for libnvidia-ml.so.1 with the real nvml.h signatures and struct layouts, for
 * tests/session.rs: two devices with fixed readings and GPM support, so the sampler's FFI is
 * checked value by value on a machine without a GPU. */
#include <stdint.h>
#include <stdlib.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef void *nvmlGpmSample_t;
typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;
typedef struct { unsigned long long total; unsigned long long free; unsigned long long used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned int isSupportedDevice; } nvmlGpmSupport_t;
typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    struct { char *shortName; char *longName; char *unit; } metricInfo;
} nvmlGpmMetric_t;
typedef struct {
    unsigned int version;
    unsigned int numMetrics;
    nvmlGpmSample_t sample1;
    nvmlGpmSample_t sample2;
    nvmlGpmMetric_t metrics[98];
} nvmlGpmMetricsGet_t;

static int initialized;
static long devices[2];
static long samples_live;

nvmlReturn_t nvmlInit_v2(void) { initialized = 1; return 0; }
nvmlReturn_t nvmlShutdown(void) { initialized = 0; return 0; }
const char *nvmlErrorString(nvmlReturn_t r) { return r == 3 ? "Not Supported" : "Unknown Error"; }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { *n = 2; return 0; }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (i > 1) return 2;
    *d = &devices[i];
    return 0;
}
static int idx(nvmlDevice_t d) { return (long *)d == &devices[1]; }
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    u->gpu = 37 + idx(d);
    u->memory = 12;
    return 0;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    m->total = 80ull << 30;
    m->used = (5ull << 30) + idx(d);
    m->free = m->total - m->used;
    return 0;
}
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, unsigned int type, unsigned int *mhz) {
    (void)d;
    if (type == 1) { *mhz = 1980; return 0; }
    if (type == 2) { *mhz = 2619; return 0; }
    return 2;
}
/* Device 1 has no power reading: the sampler notes it once and goes on. */
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
    if (idx(d)) return 3;
    *mw = 412345;
    return 0;
}
/* Only device 0 has GPM. */
nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t d, nvmlGpmSupport_t *s) {
    if (s->version != 1) return 25;
    s->isSupportedDevice = !idx(d);
    return 0;
}
nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *s) { *s = malloc(64); samples_live++; return 0; }
nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t s) { free(s); samples_live--; return 0; }
nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t d, nvmlGpmSample_t s) { (void)d; (void)s; return 0; }
nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *g) {
    if (g->version != 1 || !g->sample1 || !g->sample2 || g->sample1 == g->sample2) return 2;
    for (unsigned int i = 0; i < g->numMetrics; i++) {
        nvmlGpmMetric_t *m = &g->metrics[i];
        m->nvmlReturn = 0;
        switch (m->metricId) {
        case 2: m->value = 71.5; break;  /* SM_UTIL */
        case 3: m->value = 33.0; break;  /* SM_OCCUPANCY */
        case 5: m->value = 42.25; break; /* ANY_TENSOR_UTIL */
        case 10: m->value = 58.0; break; /* DRAM_BW_UTIL */
        default: m->nvmlReturn = 2;
        }
    }
    return 0;
}
long fake_nvml_samples_live(void) { return samples_live; }
