/* errors.c -- the thread-local error message behind fa_last_error(), and status names. */
#include <stdarg.h>
#include <stdio.h>

#include "fairattack.h"

#define FA_ERROR_CAPACITY 1024

static _Thread_local char last_error[FA_ERROR_CAPACITY];

const char *fa_last_error(void) { return last_error; }

void fa_clear_error(void) { last_error[0] = '\0'; }

fa_status fa_set_error(fa_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}

const char *fa_status_name(int status) {
    static const char *const names[] = {
        "FA_OK",      "FA_ERR_ARGUMENT", "FA_ERR_TYPE",    "FA_ERR_MEMORY",      "FA_ERR_MODEL",
        "FA_ERR_IO",  "FA_ERR_CUDA",     "FA_ERR_NO_CUDA", "FA_ERR_INTERRUPTED", "FA_ERR_INTERNAL",
    };
    if (status < 0 || status >= (int)(sizeof names / sizeof names[0]))
        return "FA_UNKNOWN";
    return names[status];
}
