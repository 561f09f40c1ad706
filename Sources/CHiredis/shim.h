#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H

#include <stdlib.h>
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

/* Bytes fed to the reader that it has not parsed yet. */
static inline size_t chiredis_reader_unparsed(redisReader *reader) {
    return reader->len - reader->pos;
}

/*
 * hiredis 0.14 has no `maxelements`: an array header such as `*2000000000` makes it calloc the element
 * vector at once. This backport wraps the default createArray and refuses arrays over a limit before
 * anything is allocated; hiredis then reports "Out of memory" and `exceeded` tells the two apart.
 * The struct starts with the function table so that `reader->fn` can point at it.
 */
typedef struct chiredis_reader_limits {
    redisReplyObjectFunctions fn;
    void *(*default_create_array)(const redisReadTask *, int);
    long long max_elements;
    int exceeded;
} chiredis_reader_limits;

static inline void *chiredis_create_array(const redisReadTask *task, int elements) {
    chiredis_reader_limits *limits = (chiredis_reader_limits *)task->privdata;
    if ((long long)elements > limits->max_elements) {
        limits->exceeded = 1;
        return NULL;
    }
    return limits->default_create_array(task, elements);
}

/* A reader with hiredis's default reply objects whose arrays are limited to `max_elements`. */
static inline redisReader *chiredis_reader_create(long long max_elements) {
    redisReader *reader = redisReaderCreate();
    if (reader == NULL) return NULL;
    chiredis_reader_limits *limits = (chiredis_reader_limits *)calloc(1, sizeof(chiredis_reader_limits));
    if (limits == NULL) {
        redisReaderFree(reader);
        return NULL;
    }
    limits->fn = *reader->fn;
    limits->default_create_array = reader->fn->createArray;
    limits->fn.createArray = chiredis_create_array;
    limits->max_elements = max_elements;
    reader->fn = &limits->fn;
    reader->privdata = limits;
    return reader;
}

static inline int chiredis_reader_limit_exceeded(redisReader *reader) {
    return ((chiredis_reader_limits *)reader->privdata)->exceeded;
}

/* Frees a reader made by chiredis_reader_create (the limits outlive redisReaderFree, which uses fn). */
static inline void chiredis_reader_free(redisReader *reader) {
    void *limits = reader->privdata;
    redisReaderFree(reader);
    free(limits);
}

#endif
