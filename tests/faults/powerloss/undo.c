/*
 * A power-loss model for the relay's log: an LD_PRELOAD shim that records, before every
 * write to a watched file, the bytes it overwrites (an undo journal), and marks every
 * fsync/fdatasync. After the process is killed, tests/faults/powerloss/model.py rolls every
 * watched file back to its state at its last sync: what a power cut does to writes that were
 * still in the page cache. Written for this project's tests only.
 *
 * Env: UNDO_LOG   the journal file (appended to)
 *      UNDO_WATCH a path prefix; files whose path starts with it are watched, except "-shm"
 *                 (SQLite's shared-memory index is rebuilt after a crash by design)
 * Every process of the relay loads it (the environment is inherited) and appends to the one
 * journal, each record whole; SQLite's write lock keeps their writes to the log apart.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <pthread.h>

static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int journal = -1;
static const char *watch;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void init(void) {
    if (real_pwrite64) return;
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_write = dlsym(RTLD_NEXT, "write");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    watch = getenv("UNDO_WATCH");
    const char *path = getenv("UNDO_LOG");
    if (path) journal = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

static int watched(int fd, char *path) {
    char link[64];
    if (!watch || journal < 0 || fd == journal) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, PATH_MAX - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    size_t w = strlen(watch);
    if (strncmp(path, watch, w) != 0) return 0;
    if (n >= 4 && strcmp(path + n - 4, "-shm") == 0) return 0;
    return 1;
}

static void put(const void *data, size_t len) {
    const char *p = data;
    while (len) {
        ssize_t n = real_write(journal, p, len);
        if (n <= 0) { if (errno == EINTR) continue; abort(); }
        p += n; len -= (size_t)n;
    }
}

/* record: kind (1 byte), path length (u32), path, offset (u64), old file size (u64),
   saved length (u64), saved bytes. One write() per record: the relay's processes append to
   one journal (O_APPEND), and Linux does not interleave one write to a file with another. */
static void record(char kind, const char *path, uint64_t offset, uint64_t old_size,
                   const char *saved, uint64_t saved_len) {
    uint32_t plen = (uint32_t)strlen(path);
    size_t total = 1 + 4 + plen + 24 + saved_len;
    char *buf = malloc(total), *at = buf;
    if (!buf) abort();
    *at++ = kind;
    memcpy(at, &plen, 4); at += 4;
    memcpy(at, path, plen); at += plen;
    memcpy(at, &offset, 8); at += 8;
    memcpy(at, &old_size, 8); at += 8;
    memcpy(at, &saved_len, 8); at += 8;
    if (saved_len) memcpy(at, saved, saved_len);
    put(buf, total);
    free(buf);
}

static void save_range(int fd, const char *path, char kind, off_t from, off_t to) {
    struct stat st;
    fstat(fd, &st);
    uint64_t old_size = (uint64_t)st.st_size;
    uint64_t end = (uint64_t)to < old_size ? (uint64_t)to : old_size;
    uint64_t len = (uint64_t)from < end ? end - (uint64_t)from : 0;
    char *saved = len ? malloc(len) : NULL;
    if (len && pread(fd, saved, len, from) != (ssize_t)len) abort();
    record(kind, path, (uint64_t)from, old_size, saved, len);
    free(saved);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    char path[PATH_MAX];
    init();
    if (watched(fd, path)) {
        pthread_mutex_lock(&lock);
        save_range(fd, path, 'W', offset, offset + (off_t)count);
        ssize_t n = real_pwrite64(fd, buf, count, offset);
        pthread_mutex_unlock(&lock);
        return n;
    }
    return real_pwrite64(fd, buf, count, offset);
}
ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return pwrite64(fd, buf, count, offset);
}

int ftruncate64(int fd, off_t length) {
    char path[PATH_MAX];
    init();
    if (watched(fd, path)) {
        pthread_mutex_lock(&lock);
        save_range(fd, path, 'T', length, (off_t)1 << 62);
        int r = real_ftruncate64(fd, length);
        pthread_mutex_unlock(&lock);
        return r;
    }
    return real_ftruncate64(fd, length);
}
int ftruncate(int fd, off_t length) { return ftruncate64(fd, length); }

static int synced(int fd, int (*real)(int)) {
    char path[PATH_MAX];
    init();
    int r = real(fd);
    if (r == 0 && watched(fd, path)) {
        pthread_mutex_lock(&lock);
        record('S', path, 0, 0, NULL, 0);
        pthread_mutex_unlock(&lock);
    }
    return r;
}
int fsync(int fd) { init(); return synced(fd, real_fsync); }
int fdatasync(int fd) { init(); return synced(fd, real_fdatasync); }
