/*
 * test_shim_driver.c -- a command-line driver over the LibTorch shim, for
 * tests/test_torch_shim_build.py (which computes the references with PyTorch) and for timing.
 *
 *   driver load MODEL DEVICE [INDEX]         fa_model_load (INDEX: the device index, default 0)
 *   driver loadbuf MODEL DEVICE [INDEX]      fa_model_load_buffer on the file's bytes
 *   driver classes MODEL H W C               fa_model_num_classes (twice: cached)
 *   driver run MODEL N H W C DIR WANT_GRAD K [DI_PROB DI_MIN SI TI SEED CALL]
 *       reads DIR/x.bin (float32 NHWC), DIR/labels.bin and DIR/index.bin (int64, optional),
 *       writes DIR/loss.bin, DIR/logits.bin (K > 0), DIR/pred.bin, DIR/grad.bin (WANT_GRAD).
 *       K = 0: no logits; K = -1: the model's K from fa_model_num_classes.
 *   driver oracle MODEL N H W C DIR CALLS [OUTPUTS DI_PROB]
 *       CALLS fa_model_oracle_grad calls with grad; writes DIR/grad.bin of the last one.
 *       OUTPUTS: "loss+pred" (default), "loss", "pred" or "none": which of loss and pred are
 *       asked for (the others are NULL); the asked ones go to DIR/loss.bin and DIR/pred.bin.
 *       DI_PROB: the oracle's DI probability (min scale 0.8, seed 1; default 0)
 *   driver bench MODEL N H W C REPS WANT_GRAD  mean seconds per fa_model_run after one warm-up
 *
 * Prints "STATUS_NAME<TAB>message" and then "key=value" lines; exit 0 unless the driver itself
 * fails (bad command line, I/O).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fa_torch.h"

static void *read_file(const char *dir, const char *name, size_t *size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(dir != NULL ? path : name, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long length = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = malloc(length > 0 ? (size_t)length : 1);
    if (data != NULL && fread(data, 1, (size_t)length, f) != (size_t)length) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *size = (size_t)length;
    return data;
}

static int write_file(const char *dir, const char *name, const void *data, size_t size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return 1;
    size_t written = fwrite(data, 1, size, f);
    fclose(f);
    return written != size;
}

static int report(fa_status status) {
    printf("%s\t", fa_status_name(status));
    for (const char *c = status == FA_OK ? "" : fa_last_error(); *c != '\0'; c++)
        fputs(*c == '\n' ? "\\n" : (char[2]){*c, '\0'}, stdout); /* one line per status */
    putchar('\n');
    return status != FA_OK;
}

/* Loads MODEL on the CPU; reports only a failure (the caller reports its own call). */
static int load_failed(const char *path, fa_model **model) {
    fa_status status = fa_model_load(path, FA_DEVICE_CPU, 0, model);
    return status != FA_OK && report(status);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmd_load(int argc, char **argv, int from_buffer) {
    if (argc != 4 && argc != 5)
        return 2;
    int index = argc == 5 ? atoi(argv[4]) : 0;
    fa_model *model = NULL;
    fa_status status;
    if (from_buffer) {
        size_t size = 0;
        void *data = read_file(NULL, argv[2], &size);
        if (data == NULL)
            return 2;
        status = fa_model_load_buffer(data, size, atoi(argv[3]), index, &model);
        free(data);
    } else {
        status = fa_model_load(argv[2], atoi(argv[3]), index, &model);
    }
    report(status);
    if (status == FA_OK)
        printf("device=%d\ndevice_index=%d\nstream_null=%d\n", fa_model_device(model),
               fa_model_device_index(model), fa_model_cuda_stream(model) == NULL);
    printf("handle_null=%d\n", model == NULL);
    fa_model_free(model);
    return 0;
}

static int cmd_classes(int argc, char **argv) {
    if (argc != 6)
        return 2;
    fa_model *model = NULL;
    if (load_failed(argv[2], &model))
        return 0;
    int64_t k = -1, again = -1;
    fa_status status = fa_model_num_classes(model, atoll(argv[3]), atoll(argv[4]), atoll(argv[5]), &k);
    if (status == FA_OK)
        status = fa_model_num_classes(model, atoll(argv[3]), atoll(argv[4]), atoll(argv[5]), &again);
    report(status);
    if (status == FA_OK)
        printf("k=%lld\nk_again=%lld\n", (long long)k, (long long)again);
    fa_model_free(model);
    return 0;
}

static int cmd_run(int argc, char **argv) {
    if (argc != 10 && argc != 16)
        return 2;
    const char *dir = argv[7];
    int64_t n = atoll(argv[3]), h = atoll(argv[4]), w = atoll(argv[5]), c = atoll(argv[6]);
    int want_grad = atoi(argv[8]);
    int64_t k = atoll(argv[9]);
    fa_transform transform = {0};
    int64_t call = 0;
    if (argc == 16) {
        transform.di_prob = strtof(argv[10], NULL);
        transform.di_min_scale = strtof(argv[11], NULL);
        transform.si_copies = atoi(argv[12]);
        transform.ti_kernel = atoi(argv[13]);
        transform.seed = strtoull(argv[14], NULL, 10);
        call = atoll(argv[15]);
    }
    size_t x_size = 0, labels_size = 0, index_size = 0;
    float *x = read_file(dir, "x.bin", &x_size);
    int64_t *labels = read_file(dir, "labels.bin", &labels_size);
    int64_t *index = read_file(dir, "index.bin", &index_size);
    size_t dim = (size_t)(h * w * c);
    fa_model *model = NULL;
    if (x == NULL || x_size != (size_t)n * dim * sizeof(float))
        return 2;
    if (load_failed(argv[2], &model))
        return 0;
    float *x_copy = malloc(x_size);
    if (x_copy == NULL)
        return 2;
    memcpy(x_copy, x, x_size);
    fa_status status = FA_OK;
    if (k < 0)
        status = fa_model_num_classes(model, h, w, c, &k);
    float *loss = malloc(sizeof(float) * (size_t)n + 1);
    float *logits = k > 0 ? malloc(sizeof(float) * (size_t)(n * k)) : NULL;
    int64_t *pred = malloc(sizeof(int64_t) * (size_t)n + 1);
    float *grad = want_grad ? malloc(sizeof(float) * (size_t)n * dim) : NULL;
    if (status == FA_OK)
        status = fa_model_run(model, n, h, w, c, x, labels, want_grad, loss, logits, k, pred,
                              grad, 0, argc == 16 ? &transform : NULL, index, call);
    report(status);
    int failed = 0;
    if (status == FA_OK) {
        printf("k=%lld\nx_unchanged=%d\n", (long long)k, memcmp(x, x_copy, x_size) == 0);
        if (labels != NULL)
            failed |= write_file(dir, "loss.bin", loss, sizeof(float) * (size_t)n);
        if (logits != NULL)
            failed |= write_file(dir, "logits.bin", logits, sizeof(float) * (size_t)(n * k));
        failed |= write_file(dir, "pred.bin", pred, sizeof(int64_t) * (size_t)n);
        if (grad != NULL)
            failed |= write_file(dir, "grad.bin", grad, sizeof(float) * (size_t)n * dim);
    }
    fa_model_free(model);
    free(x);
    free(x_copy);
    free(labels);
    free(index);
    free(loss);
    free(logits);
    free(pred);
    free(grad);
    return failed;
}

static int cmd_oracle(int argc, char **argv) {
    if (argc != 9 && argc != 11)
        return 2;
    const char *outputs = argc == 11 ? argv[9] : "loss+pred";
    int want_loss = strstr(outputs, "loss") != NULL, want_pred = strstr(outputs, "pred") != NULL;
    const char *dir = argv[7];
    int64_t n = atoll(argv[3]);
    fa_model_oracle oracle = {0};
    oracle.h = atoll(argv[4]);
    oracle.w = atoll(argv[5]);
    oracle.c = atoll(argv[6]);
    if (argc == 11) {
        oracle.transform.di_prob = strtof(argv[10], NULL);
        oracle.transform.di_min_scale = 0.8f;
        oracle.transform.seed = 1;
    }
    int calls = atoi(argv[8]);
    size_t dim = (size_t)(oracle.h * oracle.w * oracle.c), x_size = 0, labels_size = 0;
    float *x = read_file(dir, "x.bin", &x_size);
    int64_t *labels = read_file(dir, "labels.bin", &labels_size);
    if (x == NULL || labels == NULL)
        return 2;
    if (load_failed(argv[2], &oracle.model))
        return 0;
    float *loss = malloc(sizeof(float) * (size_t)n);
    int64_t *pred = malloc(sizeof(int64_t) * (size_t)n);
    float *grad = malloc(sizeof(float) * (size_t)n * dim);
    fa_status status = FA_OK;
    for (int i = 0; i < calls && status == FA_OK; i++)
        status = fa_model_oracle_grad(&oracle, n, NULL, labels, x, 1, want_loss ? loss : NULL,
                                      want_pred ? pred : NULL, grad);
    report(status);
    printf("calls=%lld\n", (long long)oracle.calls);
    int failed = status == FA_OK && write_file(dir, "grad.bin", grad, sizeof(float) * (size_t)n * dim);
    if (status == FA_OK && want_loss)
        failed |= write_file(dir, "loss.bin", loss, sizeof(float) * (size_t)n);
    if (status == FA_OK && want_pred)
        failed |= write_file(dir, "pred.bin", pred, sizeof(int64_t) * (size_t)n);
    fa_model_free(oracle.model);
    free(x);
    free(labels);
    free(loss);
    free(pred);
    free(grad);
    return failed;
}

static int cmd_bench(int argc, char **argv) {
    if (argc != 9)
        return 2;
    int64_t n = atoll(argv[3]), h = atoll(argv[4]), w = atoll(argv[5]), c = atoll(argv[6]);
    int reps = atoi(argv[7]), want_grad = atoi(argv[8]);
    size_t size = (size_t)(n * h * w * c);
    float *x = malloc(sizeof(float) * size), *grad = malloc(sizeof(float) * size);
    float *loss = malloc(sizeof(float) * (size_t)n);
    int64_t *labels = malloc(sizeof(int64_t) * (size_t)n), *pred = malloc(sizeof(int64_t) * (size_t)n);
    for (size_t i = 0; i < size; i++)
        x[i] = (float)((i * 2654435761u) % 256u);
    for (int64_t i = 0; i < n; i++)
        labels[i] = i;
    fa_model *model = NULL;
    fa_status status = fa_model_load(argv[2], FA_DEVICE_CPU, 0, &model);
    double total = 0.0;
    for (int r = 0; r <= reps && status == FA_OK; r++) {
        double start = now();
        status = fa_model_run(model, n, h, w, c, x, labels, want_grad, loss, NULL, 0, pred,
                              want_grad ? grad : NULL, 0, NULL, NULL, 0);
        if (r > 0)
            total += now() - start;
    }
    report(status);
    printf("seconds=%.6f\n", total / reps);
    fa_model_free(model);
    free(x);
    free(grad);
    free(loss);
    free(labels);
    free(pred);
    return 0;
}

int main(int argc, char **argv) {
    int rc = 2;
    if (argc >= 2 && strcmp(argv[1], "load") == 0)
        rc = cmd_load(argc, argv, 0);
    else if (argc >= 2 && strcmp(argv[1], "loadbuf") == 0)
        rc = cmd_load(argc, argv, 1);
    else if (argc >= 2 && strcmp(argv[1], "classes") == 0)
        rc = cmd_classes(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "run") == 0)
        rc = cmd_run(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "oracle") == 0)
        rc = cmd_oracle(argc, argv);
    else if (argc >= 2 && strcmp(argv[1], "bench") == 0)
        rc = cmd_bench(argc, argv);
    if (rc == 2)
        fprintf(stderr, "usage: see the comment at the top of test_shim_driver.c\n");
    return rc;
}
