#ifndef CZLIB_SHIM_H
#define CZLIB_SHIM_H

#include <zlib.h>

// inflateInit is a macro over inflateInit_ (it passes the header's version and struct size): Swift cannot call it.
static inline int czlib_inflate_init(z_stream *stream) {
    return inflateInit(stream);
}

#endif
