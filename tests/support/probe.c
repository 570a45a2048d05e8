/* The attacker inside a container (tests/test_containment.py): tries each escape once and
 * prints one `name=result` line per try, result being "ok" (it went through), "skipped"
 * (it would have gone through and could change the host, so it was not tried) or the errno
 * name. Calls that could change host state are either guarded (skipped when CapEff/Seccomp
 * say they would pass) or made with arguments that fail after the permission checks.
 * Usage: probe HOST_PID DISK_MAJOR DISK_MINOR */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned long long cap_eff;
static int seccomp_mode;

static void read_status(void) {
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "CapEff:", 7)) cap_eff = strtoull(line + 7, NULL, 16);
        if (!strncmp(line, "Seccomp:", 8)) seccomp_mode = atoi(line + 8);
    }
    fclose(f);
}

static int has_cap(int cap) { return (cap_eff >> cap) & 1; }

static void report(const char *name, long ret, int err) {
    if (ret >= 0) printf("%s=ok\n", name);
    else printf("%s=%s\n", name, strerrorname_np(err) ? strerrorname_np(err) : "E?");
}

/* run `fn` in a child so a namespace change or a signal stays there */
#define TRY(name, expr) do { fflush(stdout); pid_t p_ = fork(); if (p_ == 0) { \
        errno = 0; long r_ = (long)(expr); report(name, r_, errno); fflush(stdout); _exit(0); } \
        waitpid(p_, NULL, 0); } while (0)

#define GUARDED(name, cap, expr) do { if (has_cap(cap)) printf("%s=skipped\n", name); \
        else TRY(name, expr); } while (0)

enum { SYS_ADMIN = 21, SYS_MODULE = 16, SYS_TIME = 25, SYS_PTRACE = 19, MKNOD_CAP = 27 };

static int open_wronly_no_write(const char *path) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) close(fd);            /* opened: never written */
    return fd;
}

static long read_len(const char *path) {
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    long n = read(fd, buf, sizeof buf);
    close(fd);
    return n;
}

static int same(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* walk `..` from a directory fd up to where it stops: our root when the directory is inside */
static int top_is_root(int dirfd, const struct stat *root) {
    struct stat cur, up;
    for (int i = 0; i < 4096; i++) {
        if (fstat(dirfd, &cur)) break;
        int parent = openat(dirfd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (parent < 0) break;
        fstat(parent, &up);
        close(dirfd);
        dirfd = parent;
        if (same(&cur, &up)) break;
    }
    fstat(dirfd, &cur);
    close(dirfd);
    return same(&cur, root);
}

/* a path the kernel names for a file (readlink of /proc/N/exe or fd/K) that resolves, from
 * inside, to that very file */
static int resolves_inside(const char *magic) {
    char target[4096];
    struct stat via_magic, via_path;
    ssize_t n = readlink(magic, target, sizeof target - 1);
    if (n <= 0) return 1;
    target[n] = 0;
    if (target[0] != '/') return 1;                       /* pipe:[..], socket:[..], anon */
    if (!strncmp(target, "/memfd:", 7)) return 1;         /* anonymous memory, no path */
    if (stat(magic, &via_magic)) return 1;
    if (S_ISCHR(via_magic.st_mode)) return 1;             /* ttys: the device cgroup rules */
    if (S_ISDIR(via_magic.st_mode)) {
        int fd = open(magic, O_PATH | O_DIRECTORY | O_CLOEXEC);
        struct stat root;
        stat("/", &root);
        return fd < 0 || top_is_root(fd, &root);
    }
    return stat(target, &via_path) == 0 && same(&via_magic, &via_path);
}

static char escapes[8192];

static void escape(const char *pid, const char *what) {
    size_t used = strlen(escapes);
    snprintf(escapes + used, sizeof escapes - used, "%s:%s,", pid, what);
}

static void proc_walk(void) {
    struct stat root;
    char path[512];
    stat("/", &root);
    DIR *d = opendir("/proc");
    struct dirent *e;
    int pids = 0;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        pids++;
        const char *n = e->d_name;
        snprintf(path, sizeof path, "/proc/%s/root", n);
        int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        struct stat st;
        if (fd >= 0) {
            fstat(fd, &st);
            if (!same(&st, &root)) escape(n, "root");
            close(fd);
        }
        snprintf(path, sizeof path, "/proc/%s/cwd", n);
        fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0 && !top_is_root(fd, &root)) escape(n, "cwd");
        snprintf(path, sizeof path, "/proc/%s/exe", n);
        if (!resolves_inside(path)) escape(n, "exe");
        if (open_wronly_no_write(path) >= 0) escape(n, "exe-writable");
        snprintf(path, sizeof path, "/proc/%s/fd", n);
        DIR *fds = opendir(path);
        struct dirent *f;
        while (fds && (f = readdir(fds))) {
            if (f->d_name[0] == '.') continue;
            char fdpath[600];
            snprintf(fdpath, sizeof fdpath, "/proc/%s/fd/%s", n, f->d_name);
            if (!resolves_inside(fdpath)) { char what[300]; snprintf(what, sizeof what, "fd%s", f->d_name); escape(n, what); }
        }
        if (fds) closedir(fds);
        snprintf(path, sizeof path, "/proc/%s/environ", n);
        int ef = open(path, O_RDONLY | O_CLOEXEC);
        if (ef >= 0) {
            static char env[1 << 16];
            ssize_t len = read(ef, env, sizeof env - 1);
            close(ef);
            for (ssize_t i = 0; len > 0 && i < len; i += strlen(env + i) + 1) {
                env[len] = 0;
                if (!strncmp(env + i, "COCKER_REGISTRY_TOKEN", 21)) escape(n, "environ");
            }
        }
    }
    if (d) closedir(d);
    printf("proc_pids=%d\nproc_escapes=%s\n", pids, escapes);
}

static void setns_all(void) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    const char *kinds[] = {"mnt", "pid", "net", "user", "uts", "ipc", "cgroup"};
    int joined = 0, tried = 0, err = 0;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        for (unsigned k = 0; k < sizeof kinds / sizeof *kinds; k++) {
            char path[300];
            snprintf(path, sizeof path, "/proc/%s/ns/%s", e->d_name, kinds[k]);
            pid_t p = fork();
            if (p == 0) {
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0) _exit(200);
                _exit(setns(fd, 0) == 0 ? 0 : (errno & 0x7f) + 1);
            }
            int status;
            waitpid(p, &status, 0);
            int code = WEXITSTATUS(status);
            if (code == 200) continue;
            tried++;
            if (code == 0) joined++;
            else err = code - 1;
        }
    }
    if (d) closedir(d);
    printf("setns_tried=%d\nsetns_joined=%d\nsetns_errno=%s\n", tried, joined,
           err ? strerrorname_np(err) : "none");
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: probe HOST_PID DISK_MAJOR DISK_MINOR\n"); return 2; }
    pid_t host_pid = atoi(argv[1]);
    unsigned major_ = atoi(argv[2]), minor_ = atoi(argv[3]);
    read_status();
    printf("seccomp=%d\ncapeff=%016llx\n", seccomp_mode, cap_eff);

    proc_walk();
    setns_all();
    GUARDED("mount", SYS_ADMIN, mount("none", "/mnt", "tmpfs", 0, NULL));
    GUARDED("umount", SYS_ADMIN, umount2("/proc/keys", MNT_DETACH));
    TRY("unshare_user", unshare(CLONE_NEWUSER));
    TRY("unshare_mnt", unshare(CLONE_NEWNS));
    /* bad fd: if the call got past seccomp and the capability check it fails with EBADF */
    GUARDED("finit_module", SYS_MODULE, syscall(SYS_finit_module, -1, "", 0));
    TRY("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0));
    TRY("bpf", syscall(SYS_bpf, 0 /* MAP_CREATE */, NULL, 0));
    TRY("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    TRY("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    TRY("userfaultfd", syscall(SYS_userfaultfd, 0));
    TRY("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    TRY("socket_vsock", socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
    TRY("socket_alg", socket(38 /* AF_ALG */, SOCK_SEQPACKET, 0));
    /* clock id 1000 does not exist: EINVAL once past seccomp; the clock is never set */
    struct timespec ts = {0, 0};
    TRY("clock_settime", syscall(SYS_clock_settime, 1000, &ts));
    {
        char proc_host[64];
        snprintf(proc_host, sizeof proc_host, "/proc/%d", host_pid);
        if (access(proc_host, F_OK) == 0) printf("ptrace_host=skipped\n");
        else TRY("ptrace_host", ptrace(PTRACE_ATTACH, host_pid, NULL, NULL));
    }
    TRY("write_core_pattern", open_wronly_no_write("/proc/sys/kernel/core_pattern"));
    TRY("write_sysrq", open_wronly_no_write("/proc/sysrq-trigger"));
    TRY("write_sys", open_wronly_no_write("/sys/kernel/profiling"));
    /* CVE-2022-0492: a cgroup v1 release_agent runs as host root */
    TRY("write_release_agent", open_wronly_no_write("/sys/fs/cgroup/memory/release_agent"));
    printf("read_keys=%ld\nread_timer_list=%ld\nread_kcore=%ld\n", read_len("/proc/keys"),
           read_len("/proc/timer_list"), read_len("/proc/kcore"));
    unlink("/tmp/.probe-disk");
    if (mknod("/tmp/.probe-disk", S_IFBLK | 0600, makedev(major_, minor_)) == 0) {
        printf("mknod_disk=ok\n");
        TRY("read_disk", read_len("/tmp/.probe-disk"));   /* a read never changes the disk */
        unlink("/tmp/.probe-disk");
    } else {
        printf("mknod_disk=%s\n", strerrorname_np(errno));
    }
    /* the kernel log: a device the host can open, outside the container's device list */
    unlink("/tmp/.probe-kmsg");
    if (mknod("/tmp/.probe-kmsg", S_IFCHR | 0600, makedev(1, 11)) == 0) {
        TRY("read_kmsg", read_len("/tmp/.probe-kmsg") < 0 ? -1 : 0);
        unlink("/tmp/.probe-kmsg");
    } else {
        printf("read_kmsg=%s\n", strerrorname_np(errno));
    }
    fflush(stdout);
    return 0;
}
