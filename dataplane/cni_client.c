/* podnet-cni as a runtime executes it: a client of the CNI server in the
 * first node's agent (dataplane/cniserver.py), so a CNI call costs a socket
 * round trip and the ADD itself, not a Python start-up and its imports.
 *
 * `podnet cni install` compiles it with the paths baked in:
 *   PODNET_SOCK        the server's Unix socket (RUN_DIR/cni.sock)
 *   PODNET_PYTHON      the venv's python, PODNET_PYTHONPATH its path
 * When the server cannot be reached (no cluster, its agent restarting) the
 * client execs the Python plugin instead, with stdin untouched, so every
 * call is answered either way.
 *
 * Request: "PNC1", u32 count, count x (u32 len, "CNI_X=value"), u32 len, stdin.
 * Reply:   u32 exit status, u32 len, the plugin's stdout. Native byte order:
 * both ends are on this host. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MARK "# managed-by: podnet cni install"
#define MAX_STDIN (16 << 20)

extern char **environ;
static const char managed_by[] __attribute__((used)) = MARK;

static void fallback(const char *in, size_t n) {
    /* The server never saw a whole request. stdin already read: hand it to
     * the Python plugin through a pipe. */
    if (in) {
        int p[2];
        if (n > 65536 || pipe(p) != 0) {
            fputs("{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"try again later\","
                  "\"details\":\"the podnet CNI server went away mid-call\"}\n", stdout);
            exit(1);
        }
        if (write(p[1], in, n) != (ssize_t)n)
            exit(1);
        close(p[1]);
        dup2(p[0], 0);
        close(p[0]);
    }
    setenv("PYTHONPATH", PODNET_PYTHONPATH, 1);
    execl(PODNET_PYTHON, PODNET_PYTHON, "-S", "-P", "-m", "dataplane.cni", (char *)NULL);
    fprintf(stderr, "podnet-cni: cannot run %s: %s\n", PODNET_PYTHON, strerror(errno));
    exit(1);
}

static int put(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int get(int fd, void *p, size_t n) {
    char *c = p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

int main(void) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || strlen(PODNET_SOCK) >= sizeof sa.sun_path)
        fallback(NULL, 0);
    strcpy(sa.sun_path, PODNET_SOCK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fallback(NULL, 0);                     /* stdin not read yet */

    size_t cap = 65536, n = 0;
    char *in = malloc(cap);
    for (;;) {
        if (!in)
            return 1;
        ssize_t r = read(0, in + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;                             /* the server reports code 5 for what it got */
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == cap) {
            if (cap >= MAX_STDIN)
                break;
            cap *= 2;
            in = realloc(in, cap);
        }
    }

    uint32_t count = 0, len;
    for (char **e = environ; *e; e++)
        count += strncmp(*e, "CNI_", 4) == 0;
    if (put(fd, "PNC1", 4) || put(fd, &count, 4))
        fallback(in, n);
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "CNI_", 4) != 0)
            continue;
        len = (uint32_t)strlen(*e);
        if (put(fd, &len, 4) || put(fd, *e, len))
            fallback(in, n);
    }
    len = (uint32_t)n;
    if (put(fd, &len, 4) || put(fd, in, n))
        fallback(in, n);

    /* From here the server may have acted on the request: no second try. */
    uint32_t rc;
    char *out = NULL;
    if (get(fd, &rc, 4) || get(fd, &len, 4) || !(out = malloc(len + 1)) || get(fd, out, len)) {
        fputs("{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"try again later\","
              "\"details\":\"the podnet CNI server closed the connection before answering\"}\n", stdout);
        return 1;
    }
    if (put(1, out, len))
        return 1;
    return (int)rc;
}
