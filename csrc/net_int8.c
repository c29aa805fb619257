/* net_int8.c: the network's int8 mode and its calibration histograms (see conv_int8.h). */
#include <stdlib.h>
#include <string.h>

#include "conv_int8.h"
#include "resnet50.h"

int net_set_int8(Net *net, int kernel) {
    Conv *slots[RESNET50_NCONV];
    resnet50_conv_slots(net, slots);
    for (int i = 0; i < RESNET50_NCONV; i++) conv_int8_set(slots[i], 0, 0.0f);
    net->int8_kernel = 0;
    resnet50_plan_free(net); /* int8 layers need other scratch */
    if (!kernel || !net->int8_scales) return 0;
    /* slot 0, the stem, stays fp32: it reads the standardised image, which is signed and whose
     * few large values would take the 7 bits of an unsigned scale */
    for (int i = 1; i < RESNET50_NCONV; i++) {
        if (net->int8_scales[i] <= 0.0f) continue; /* kept in fp32 */
        if (conv_int8_set(slots[i], kernel, net->int8_scales[i]) != 0) {
            for (int j = 0; j <= i; j++) conv_int8_set(slots[j], 0, 0.0f);
            return -1;
        }
    }
    net->int8_kernel = kernel;
    return 0;
}

int net_int8_observe(Net *net, int on, uint64_t *hist) {
    Conv *slots[RESNET50_NCONV];
    resnet50_conv_slots(net, slots);
    if (!on) {
        for (int i = 0; i < RESNET50_NCONV; i++) {
            if (hist) {
                uint64_t *dst = hist + (size_t)i * INT8_HIST_BINS;
                if (slots[i]->int8 && slots[i]->int8->hist)
                    memcpy(dst, slots[i]->int8->hist, sizeof(uint64_t) * INT8_HIST_BINS);
                else
                    memset(dst, 0, sizeof(uint64_t) * INT8_HIST_BINS);
            }
            conv_int8_observe(slots[i], 0);
        }
        return 0;
    }
    for (int i = 1; i < RESNET50_NCONV; i++) {
        if (conv_int8_observe(slots[i], 1) != 0) {
            for (int j = 0; j <= i; j++) conv_int8_observe(slots[j], 0);
            return -1;
        }
    }
    return 0;
}
