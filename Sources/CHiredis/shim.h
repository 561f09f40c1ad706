#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H

#include <hiredis/hiredis.h>
#include <hiredis/read.h>

/* hiredis exposes these as macros, which Swift cannot call. */
static inline const char *chiredis_reader_errstr(redisReader *reader) {
    return reader->errstr;
}

static inline int chiredis_reader_err(redisReader *reader) {
    return reader->err;
}

/* Keep the reader's buffer instead of shrinking it at every reply (hiredis frees it above maxbuf). */
static inline void chiredis_reader_keep_buffer(redisReader *reader) {
    reader->maxbuf = 0;
}

#endif
