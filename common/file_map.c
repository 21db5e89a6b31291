/* file_map.c: mmap-based whole-file access and small-file reads (see file_map.h). */
#include "file_map.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int duel_file_map_open(const char *path, duel_file_map *map, duel_error *err) {
    map->data = NULL;
    map->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return duel_error_set(err, DUEL_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return duel_error_set(err, DUEL_EIO, "%s: not a regular file", path);
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return duel_error_set(err, DUEL_EIO, "%s: cannot map: %s", path, strerror(e));
        }
        map->data = p;
        map->size = (size_t)st.st_size;
    }
    close(fd);
    return DUEL_OK;
}

void duel_file_map_close(duel_file_map *map) {
    if (map->data) munmap((void *)map->data, map->size);
    map->data = NULL;
    map->size = 0;
}

int duel_file_read_all(const char *path, size_t max_bytes, char **out, size_t *out_len,
                       duel_error *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    /* Read up to max_bytes + 1 so that a file over the limit is detected without trusting
     * its size from stat (it may be a pipe or still growing). */
    size_t cap = max_bytes < 4096 ? max_bytes + 1 : 4096, len = 0;
    char *buf = malloc(cap + 1);
    int rc = DUEL_OK;
    if (!buf) {
        rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        if (len == cap) {
            if (cap > max_bytes) break;
            size_t ncap = cap * 2 > max_bytes + 1 ? max_bytes + 1 : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
                goto done;
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    if (ferror(f)) {
        rc = duel_error_set(err, DUEL_EIO, "%s: read error", path);
    } else if (len > max_bytes) {
        rc = duel_error_set(err, DUEL_ELIMIT, "%s: larger than the limit of %zu bytes", path,
                            max_bytes);
    }
done:
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[len] = '\0';
    *out = buf;
    if (out_len) *out_len = len;
    return DUEL_OK;
}
