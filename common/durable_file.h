/* durable_file.h: files and folders that survive a crash, in one place: fsync by path, write a
 * whole file and sync it, copy one, replace one atomically, remove a folder we wrote, and the
 * folder swap that checkpoints and snapshots use. Every write, fsync and rename goes through an
 * I/O hook table (durable_io), so tests inject short writes, failed fsyncs and crashes between
 * the renames, as gateway/spill_log.c's tests do (shared/STYLE.md: the SQLite example).
 *
 * The folder swap for a folder DIR (a checkpoint, a snapshot version):
 *   durable_dir_begin   removes a stale DIR.tmp (a crash's leftover) and creates it empty; the
 *                       caller writes its files there, each synced (durable_write_file,
 *                       durable_writer, or its own writer followed by durable_fsync_path);
 *   durable_dir_commit  fsyncs DIR.tmp, renames DIR to DIR.old when DIR exists, DIR.tmp to DIR,
 *                       fsyncs the parent (the renames are durable), then removes DIR.old;
 *   durable_dir_recover after a crash between the two renames (DIR missing, DIR.old present)
 *                       renames DIR.old back to DIR.
 * Invariant: once a folder was committed, a complete one is at DIR or (between the renames)
 * at DIR.old at every instant, and DIR never names a partial folder. A reader that calls
 * durable_dir_recover first always finds the old or the new folder whole.
 *
 * Not a lock: one writer per folder. */
#ifndef DUEL_DURABLE_FILE_H
#define DUEL_DURABLE_FILE_H

#include <stddef.h>
#include <sys/types.h>

#include "error.h"

#define DURABLE_PATH_MAX 4096

/* I/O hooks for fault injection. NULL members (or a NULL table) use the real pwrite, fsync and
 * rename. Each hook returns what the real call would, with errno set on failure. The first
 * three members are the spill log's hook table (gateway/spill_log.h), in the same order. */
typedef struct durable_io {
    ssize_t (*pwrite_fn)(void *ctx, int fd, const void *buf, size_t n, off_t offset);
    int (*fsync_fn)(void *ctx, int fd);
    void *ctx;
    int (*rename_fn)(void *ctx, const char *from, const char *to);
} durable_io;

/* fsync through the hooks (io may be NULL). */
int durable_fsync(const durable_io *io, int fd);
/* Writes all n bytes at offset, retrying short writes and EINTR; 0, or -1 with errno (a write
 * that returns 0 counts as EIO). */
int durable_write_all(const durable_io *io, int fd, const void *buf, size_t n, off_t offset);

/* fsync of a file or a folder by path; DUEL_EIO naming the path. */
int durable_fsync_path(const durable_io *io, const char *path, duel_error *err);
/* Creates or truncates path, writes data, fsyncs and closes it (the descriptor is closed on
 * every path). DUEL_EIO naming the path and the step that failed. */
int durable_write_file(const durable_io *io, const char *path, const void *data, size_t len,
                       duel_error *err);
/* Copies a file of at most max_bytes (durable_write_file of its contents). */
int durable_copy_file(const durable_io *io, const char *from, const char *to, size_t max_bytes,
                      duel_error *err);
/* Atomic replacement of one file: writes path.tmp, syncs it, renames it over path and syncs
 * the folder. A crash leaves the old or the new contents at path. */
int durable_replace_file(const durable_io *io, const char *path, const void *data, size_t len,
                         duel_error *err);

/* A file written in pieces (large ones: the trainer's entries.bin): buffered, then synced by
 * commit. A failed write is remembered and reported by commit; abort removes the file. */
typedef struct durable_writer durable_writer;
int durable_writer_open(const durable_io *io, const char *path, durable_writer **out,
                        duel_error *err);
/* 0, or -1 once any write has failed (later writes are skipped). */
int durable_writer_write(durable_writer *w, const void *data, size_t n);
/* Flushes, fsyncs, closes and frees w (also on failure). DUEL_EIO naming the path. */
int durable_writer_commit(durable_writer *w, duel_error *err);
/* Closes and frees w and removes its file. NULL is a no-op. */
void durable_writer_abort(durable_writer *w);

/* Removes path and everything under it without following symbolic links (a folder this
 * process wrote: a checkpoint, a snapshot, a work folder). Best effort; an absent path is
 * fine. */
void durable_remove_tree(const char *path);

/* The folder swap (see the top of this file). begin writes DIR.tmp's path into tmp_out. */
int durable_dir_begin(const char *dir, char *tmp_out, size_t cap, duel_error *err);
int durable_dir_commit(const durable_io *io, const char *dir, duel_error *err);
/* 1 when DIR exists (after restoring DIR.old if a crash came between the renames), 0 when
 * there is neither; DUEL_EIO when DIR.old cannot be renamed back. */
int durable_dir_recover(const char *dir, duel_error *err);

/* "<dir>/<name>" into out[0..DURABLE_PATH_MAX); DUEL_EINVAL when too long. */
int durable_path_join(char *out, const char *dir, const char *name, duel_error *err);

#endif
