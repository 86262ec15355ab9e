/*
 * loadgen: a Gearman load generator for the txgear benchmark suite.
 *
 * Speaks the raw binary protocol (no Gearman library), many non-blocking
 * connections in one process driven by epoll, pipelined requests.  Every run
 * is checked: each job is acknowledged/completed exactly once, payloads come
 * back byte for byte (each payload embeds its sequence number and a pattern
 * derived from it), and the server's own "status" is cross-checked where it
 * says something useful.  Any correctness problem prints "loadgen: ERROR: ..."
 * on stderr and exits with status 2; usage or I/O problems exit with status 1.
 * A successful run prints exactly one JSON object on stdout (one line).
 *
 * Build: cc -O2 -o benchmarks/loadgen benchmarks/loadgen.c
 *
 * Modes (see usage()):
 *   bgsubmit  pipelined SUBMIT_JOB_BG on --conns connections, --depth in flight each
 *   echo      --workers GRAB_JOB_UNIQ/PRE_SLEEP/NOOP workers echo the payload back;
 *             --clients foreground clients keep --depth SUBMIT_JOBs in flight each
 *   drain     (unless --no-fill) queue --jobs background jobs, then time --workers
 *             workers emptying the queue; every sequence number seen exactly once
 *   idle      open --conns connections, CAN_DO --function + PRE_SLEEP each, print a
 *             "ready" line, hold them until SIGTERM/SIGINT or --duration seconds
 *   unique    --clients clients submit the same unique id each round; the worker
 *             holds the job until every client has its JOB_CREATED, so exactly one
 *             execution per round is required
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    CAN_DO = 1, PRE_SLEEP = 4, NOOP = 6, SUBMIT_JOB = 7, JOB_CREATED = 8,
    NO_JOB = 10, JOB_ASSIGN = 11, WORK_STATUS = 12, WORK_COMPLETE = 13,
    WORK_FAIL = 14, ECHO_REQ = 16, ECHO_RES = 17, SUBMIT_JOB_BG = 18,
    ERROR_PKT = 19, WORK_EXCEPTION = 25, WORK_DATA = 28, WORK_WARNING = 29,
    GRAB_JOB_UNIQ = 30, JOB_ASSIGN_UNIQ = 31
};

#define MAX_HANDLE 128
#define SEQ_BYTES 8

/* ------------------------------------------------------------------ options */

static struct {
    const char *host;
    int port;
    int conns, depth, workers, clients;
    long jobs;        /* jobs (or rounds, for "unique") */
    long size;        /* payload bytes (>= SEQ_BYTES) */
    const char *function;
    long seq_base;
    long expect_total; /* bgsubmit: server "status" TOTAL expected afterwards; -1 skip */
    int timeout;       /* seconds without any packet before declaring a stall */
    double duration;   /* idle: seconds to hold (0 = until signalled) */
    int no_fill;
    int check_status;
} opt = {
    "127.0.0.1", 4730, 4, 100, 4, 8, 10000, 100, NULL, 0, -2, 60, 0, 0, 1,
};

static const char *mode_name = "";

/* ------------------------------------------------------------------ errors */

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "loadgen: ERROR: %s: ", mode_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "loadgen: %s: ", mode_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

static void *xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p) die("out of memory");
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ payloads */

/* A payload is SEQ_BYTES of little-endian sequence number followed by
 * pattern[seq % 251 ...]: cheap to build and to check with memcpy/memcmp, and
 * any corruption, truncation or swap between jobs shows.  It contains NULs. */
static unsigned char *pattern;

static void pattern_init(size_t maxsize)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    size_t n = maxsize + 256;
    pattern = xmalloc(n);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        pattern[i] = (unsigned char)x;
    }
}

static void payload_fill(unsigned char *dst, uint64_t seq, size_t size)
{
    for (int i = 0; i < SEQ_BYTES; i++) dst[i] = (unsigned char)(seq >> (8 * i));
    memcpy(dst + SEQ_BYTES, pattern + seq % 251, size - SEQ_BYTES);
}

static uint64_t payload_seq(const unsigned char *p)
{
    uint64_t s = 0;
    for (int i = 0; i < SEQ_BYTES; i++) s |= (uint64_t)p[i] << (8 * i);
    return s;
}

/* 1 if p/len is exactly the payload for seq */
static int payload_ok(const unsigned char *p, size_t len, uint64_t seq, size_t size)
{
    return len == size && payload_seq(p) == seq
        && memcmp(p + SEQ_BYTES, pattern + seq % 251, size - SEQ_BYTES) == 0;
}

/* ------------------------------------------------------------------ buffers */

typedef struct { unsigned char *p; size_t len, cap, off; } buf;

static void buf_reserve(buf *b, size_t extra)
{
    if (b->len + extra <= b->cap) return;
    if (b->off) {  /* compact first */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off; b->off = 0;
        if (b->len + extra <= b->cap) return;
    }
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < b->len + extra) nc *= 2;
    b->p = realloc(b->p, nc);
    if (!b->p) die("out of memory");
    b->cap = nc;
}

static void buf_add(buf *b, const void *d, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

/* ------------------------------------------------------------------ connections */

typedef struct conn conn;
typedef void (*handler_fn)(conn *c, uint32_t type, unsigned char *body, uint32_t len);

struct conn {
    int fd, idx;
    int epout;         /* EPOLLOUT registered */
    int dirty;
    int closed_ok;     /* we closed it on purpose */
    buf in, out;
    size_t pkt_start;  /* for pkt_begin/pkt_end */
    handler_fn h;
    /* role state */
    int sleeping, grabbing, checked;
    long executed;
    /* fifo of submit timestamps / slot ids awaiting JOB_CREATED */
    double *fifo_t; int *fifo_slot; int fifo_head, fifo_len, fifo_cap;
    /* echo client slots */
    struct slot { int used, has_handle; uint64_t seq; double t0; int hlen; char handle[MAX_HANDLE]; } *slots;
    int nslots, inflight;
    long last_round;
};

static int ep = -1;
static conn **dirty_list; static int ndirty, dirty_cap;
static double last_progress;
static volatile sig_atomic_t stop_flag;
static int loop_done;
static double loop_deadline;   /* run_loop returns at this time (0 = no deadline) */

static void mark_dirty(conn *c)
{
    if (c->dirty) return;
    c->dirty = 1;
    if (ndirty == dirty_cap) {
        dirty_cap = dirty_cap ? dirty_cap * 2 : 64;
        dirty_list = realloc(dirty_list, dirty_cap * sizeof *dirty_list);
        if (!dirty_list) die("out of memory");
    }
    dirty_list[ndirty++] = c;
}

static void pkt_begin(conn *c, uint32_t type)
{
    unsigned char h[12] = {0, 'R', 'E', 'Q'};
    uint32_t t = htonl(type);
    memcpy(h + 4, &t, 4);
    /* relative to out.off: buf_reserve may compact (move data to the front) */
    c->pkt_start = c->out.len - c->out.off;
    buf_add(&c->out, h, 12);
}

static void pkt_add(conn *c, const void *d, size_t n) { buf_add(&c->out, d, n); }
static void pkt_nul(conn *c) { buf_add(&c->out, "", 1); }

static void pkt_end(conn *c)
{
    size_t start = c->out.off + c->pkt_start;
    uint32_t sz = htonl((uint32_t)(c->out.len - start - 12));
    memcpy(c->out.p + start + 8, &sz, 4);
    mark_dirty(c);
}

static void pkt_simple(conn *c, uint32_t type, const void *arg, size_t n)
{
    pkt_begin(c, type);
    if (arg) pkt_add(c, arg, n);
    pkt_end(c);
}

static void ep_mod(conn *c, int want_out)
{
    struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    c->epout = want_out;
}

static void conn_flush(conn *c)
{
    c->dirty = 0;
    while (c->out.off < c->out.len) {
        ssize_t n = write(c->fd, c->out.p + c->out.off, c->out.len - c->out.off);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->epout) ep_mod(c, 1);
                return;
            }
            fail("write to server failed on connection %d: %s", c->idx, strerror(errno));
        }
        c->out.off += n;
    }
    c->out.off = c->out.len = 0;
    if (c->epout) ep_mod(c, 0);
}

static void flush_dirty(void)
{
    /* handlers may mark more connections dirty while we flush: index loop */
    for (int i = 0; i < ndirty; i++) conn_flush(dirty_list[i]);
    ndirty = 0;
}

/* --port P1,P2,...: new connections go to the ports in turn (servers of one cluster) */
#define MAX_PORTS 16
static int ports[MAX_PORTS];
static int nports, next_port;

static void parse_ports(const char *list)
{
    nports = 0;
    for (const char *p = list; *p && nports < MAX_PORTS;) {
        ports[nports++] = atoi(p);
        const char *comma = strchr(p, ',');
        if (!comma) break;
        p = comma + 1;
    }
    opt.port = ports[0];
}

static int tcp_connect(void)
{
    int port = nports ? ports[next_port++ % nports] : opt.port;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) die("bad --host %s (IPv4 address expected)", opt.host);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket: %s (raise ulimit -n?)", strerror(errno));
    for (int attempt = 0;; attempt++) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) break;
        if (errno == EINTR) continue;
        if ((errno == ECONNREFUSED || errno == EAGAIN) && attempt < 50) {
            close(fd);
            fd = socket(AF_INET, SOCK_STREAM, 0);
            usleep(100000);
            continue;
        }
        die("connect %s:%d: %s", opt.host, port, strerror(errno));
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int nconns_total;

static conn *conn_new(handler_fn h)
{
    conn *c = xcalloc(1, sizeof *c);
    c->fd = tcp_connect();
    c->idx = nconns_total++;
    c->h = h;
    return c;
}

/* blocking helpers used during setup, before the connection joins epoll */
static void write_all(int fd, const void *p, size_t n)
{
    const char *q = p;
    while (n) {
        ssize_t w = write(fd, q, n);
        if (w < 0) { if (errno == EINTR) continue; die("write: %s", strerror(errno)); }
        q += w; n -= w;
    }
}

static void read_exact(int fd, void *p, size_t n, const char *what)
{
    char *q = p;
    while (n) {
        ssize_t r = read(fd, q, n);
        if (r < 0) { if (errno == EINTR) continue; die("read (%s): %s", what, strerror(errno)); }
        if (r == 0) fail("server closed the connection during setup (%s)", what);
        q += r; n -= r;
    }
}

/* send everything queued in c->out (blocking) */
static void conn_flush_blocking(conn *c)
{
    write_all(c->fd, c->out.p + c->out.off, c->out.len - c->out.off);
    c->out.off = c->out.len = 0;
    c->dirty = 0;
}

/* read one packet (blocking) and require it to be ECHO_RES with the given data */
static void expect_echo(conn *c, const char *data)
{
    unsigned char h[12];
    read_exact(c->fd, h, 12, "ECHO_RES header");
    uint32_t type, size;
    memcpy(&type, h + 4, 4); memcpy(&size, h + 8, 4);
    type = ntohl(type); size = ntohl(size);
    if (memcmp(h, "\0RES", 4) != 0) fail("bad magic in reply during setup");
    unsigned char *b = xmalloc(size + 1);
    read_exact(c->fd, b, size, "ECHO_RES body");
    if (type == ERROR_PKT) fail("server sent ERROR during setup: %.*s", (int)size, b);
    if (type != ECHO_RES || size != strlen(data) || memcmp(b, data, size) != 0)
        fail("expected ECHO_RES \"%s\" during setup, got packet type %u size %u", data, type, size);
    free(b);
}

static void conn_watch(conn *c)
{
    int fl = fcntl(c->fd, F_GETFL);
    fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl add: %s", strerror(errno));
}

static void conn_close(conn *c)
{
    if (c->fd < 0) return;
    c->closed_ok = 1;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

static void conn_read(conn *c)
{
    buf *b = &c->in;
    buf_reserve(b, 65536);
    ssize_t n = read(c->fd, b->p + b->len, b->cap - b->len);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        fail("read from server failed on connection %d: %s", c->idx, strerror(errno));
    }
    if (n == 0) fail("server closed connection %d unexpectedly", c->idx);
    b->len += n;
    last_progress = now_s();
    size_t off = b->off;
    while (b->len - off >= 12) {
        unsigned char *h = b->p + off;
        uint32_t type, size;
        memcpy(&type, h + 4, 4); memcpy(&size, h + 8, 4);
        type = ntohl(type); size = ntohl(size);
        if (memcmp(h, "\0RES", 4) != 0)
            fail("bad magic %02x%02x%02x%02x from server on connection %d", h[0], h[1], h[2], h[3], c->idx);
        if (b->len - off - 12 < size) break;
        off += 12 + size;
        if (type == ERROR_PKT) {
            unsigned char *z = memchr(h + 12, 0, size);
            fail("server sent ERROR on connection %d: %.*s", c->idx, (int)size, z ? (char *)h + 12 : "?");
        }
        /* handlers never touch c->in, so h stays valid */
        c->h(c, type, h + 12, size);
        if (c->fd < 0) return;
    }
    b->off = off;
    if (b->off == b->len) b->off = b->len = 0;
}

/* Run the event loop until a handler sets loop_done, or stop_flag (idle). */
static void run_loop(int stall_check, const char *(*describe)(void))
{
    struct epoll_event evs[512];
    loop_done = 0;
    last_progress = now_s();
    flush_dirty();
    while (!loop_done && !stop_flag) {
        int n = epoll_wait(ep, evs, 512, 200);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait: %s", strerror(errno)); }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_read(c);
            if (c->fd >= 0 && (evs[i].events & EPOLLOUT)) conn_flush(c);
        }
        flush_dirty();
        if (loop_deadline > 0 && now_s() >= loop_deadline) break;
        if (stall_check && now_s() - last_progress > opt.timeout)
            fail("stalled: no packet from the server for %d s (%s) -- lost jobs or a hung server",
                 opt.timeout, describe ? describe() : "");
    }
}

/* ------------------------------------------------------------------ admin "status" */

/* Look up FUNCTION in the server's admin "status" listing. Returns 1 if found. */
static int admin_status(const char *fn, long *total, long *running, long *workers)
{
    int fd = tcp_connect();
    write_all(fd, "status\n", 7);
    size_t cap = 1 << 16, len = 0;
    char *b = xmalloc(cap);
    for (;;) {
        if (len + 1 >= cap) { cap *= 2; b = realloc(b, cap); if (!b) die("oom"); }
        ssize_t r = read(fd, b + len, cap - 1 - len);
        if (r < 0) { if (errno == EINTR) continue; die("admin read: %s", strerror(errno)); }
        if (r == 0) fail("server closed the admin connection before finishing the \"status\" reply");
        len += r; b[len] = 0;
        if ((len >= 2 && strcmp(b + len - 2, ".\n") == 0 && (len == 2 || b[len - 3] == '\n'))) break;
        if (strncmp(b, "ERR", 3) == 0 && strchr(b, '\n')) fail("admin \"status\" not supported: %s", b);
    }
    close(fd);
    int found = 0;
    size_t fl = strlen(fn);
    for (char *line = b; *line; ) {
        char *nl = strchr(line, '\n');
        if (!nl) break;
        *nl = 0;
        if (strncmp(line, fn, fl) == 0 && line[fl] == '\t') {
            if (sscanf(line + fl + 1, "%ld\t%ld\t%ld", total, running, workers) != 3)
                fail("cannot parse admin status line: %s", line);
            found = 1;
        }
        line = nl + 1;
    }
    free(b);
    return found;
}

/* ------------------------------------------------------------------ latency stats */

static uint32_t *lat; static long nlat;

static void lat_init(long n) { lat = xmalloc(sizeof *lat * (n ? n : 1)); nlat = 0; }
static void lat_add(double seconds)
{
    double us = seconds * 1e6;
    lat[nlat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}
static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}
static void lat_pct(double *p50, double *p99, double *pmax)
{
    if (!nlat) { *p50 = *p99 = *pmax = 0; return; }
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    *p50 = lat[(nlat - 1) * 50 / 100];
    *p99 = lat[(nlat - 1) * 99 / 100];
    *pmax = lat[nlat - 1];
}

/* ------------------------------------------------------------------ handle set (bgsubmit) */

static char **hset; static size_t hset_cap, hset_n;

static uint64_t fnv(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

/* returns 0 if already present */
static int hset_add(const unsigned char *p, size_t n)
{
    if ((hset_n + 1) * 2 > hset_cap) {
        size_t oc = hset_cap; char **old = hset;
        hset_cap = oc ? oc * 2 : 1 << 16;
        hset = xcalloc(hset_cap, sizeof *hset);
        for (size_t i = 0; i < oc; i++) if (old[i]) {
            size_t l = strlen(old[i]);
            size_t j = fnv((unsigned char *)old[i], l) & (hset_cap - 1);
            while (hset[j]) j = (j + 1) & (hset_cap - 1);
            hset[j] = old[i];
        }
        free(old);
    }
    size_t j = fnv(p, n) & (hset_cap - 1);
    while (hset[j]) {
        if (strlen(hset[j]) == n && memcmp(hset[j], p, n) == 0) return 0;
        j = (j + 1) & (hset_cap - 1);
    }
    hset[j] = xmalloc(n + 1);
    memcpy(hset[j], p, n); hset[j][n] = 0;
    hset_n++;
    return 1;
}

static void hset_free(void)
{
    for (size_t i = 0; i < hset_cap; i++) free(hset[i]);
    free(hset); hset = NULL; hset_cap = hset_n = 0;
}

/* ------------------------------------------------------------------ common role bits */

static unsigned char *scratch;  /* payload build buffer */
static conn **conns; static int nconns;
static long next_seq, seq_end, acked, completed;

static void fifo_push(conn *c, double t, int slot)
{
    if (c->fifo_len == c->fifo_cap) {
        int nc = c->fifo_cap ? c->fifo_cap * 2 : 16;
        double *nt = xmalloc(nc * sizeof *nt); int *ns = xmalloc(nc * sizeof *ns);
        for (int i = 0; i < c->fifo_len; i++) {
            nt[i] = c->fifo_t[(c->fifo_head + i) % c->fifo_cap];
            ns[i] = c->fifo_slot[(c->fifo_head + i) % c->fifo_cap];
        }
        free(c->fifo_t); free(c->fifo_slot);
        c->fifo_t = nt; c->fifo_slot = ns; c->fifo_head = 0; c->fifo_cap = nc;
    }
    int i = (c->fifo_head + c->fifo_len++) % c->fifo_cap;
    c->fifo_t[i] = t; c->fifo_slot[i] = slot;
}

static int fifo_pop(conn *c, double *t)
{
    if (!c->fifo_len) fail("JOB_CREATED on connection %d with no submission pending", c->idx);
    int i = c->fifo_head;
    c->fifo_head = (c->fifo_head + 1) % c->fifo_cap;
    c->fifo_len--;
    *t = c->fifo_t[i];
    return c->fifo_slot[i];
}

static void send_submit(conn *c, uint32_t type, const char *unique, uint64_t seq)
{
    payload_fill(scratch, seq, opt.size);
    pkt_begin(c, type);
    pkt_add(c, opt.function, strlen(opt.function)); pkt_nul(c);
    pkt_add(c, unique, strlen(unique)); pkt_nul(c);
    pkt_add(c, scratch, opt.size);
    pkt_end(c);
}

static const char *type_name(uint32_t t)
{
    static char b[32];
    switch (t) {
    case NOOP: return "NOOP"; case JOB_CREATED: return "JOB_CREATED"; case NO_JOB: return "NO_JOB";
    case JOB_ASSIGN: return "JOB_ASSIGN"; case JOB_ASSIGN_UNIQ: return "JOB_ASSIGN_UNIQ";
    case WORK_COMPLETE: return "WORK_COMPLETE"; case WORK_FAIL: return "WORK_FAIL";
    case WORK_EXCEPTION: return "WORK_EXCEPTION"; case ECHO_RES: return "ECHO_RES";
    }
    snprintf(b, sizeof b, "type %u", t);
    return b;
}

/* split body into n args (the last one runs to the end); returns 0 on failure */
static int split_args(unsigned char *body, uint32_t len, int n, unsigned char **a, uint32_t *al)
{
    uint32_t pos = 0;
    for (int i = 0; i < n - 1; i++) {
        unsigned char *z = memchr(body + pos, 0, len - pos);
        if (!z) return 0;
        a[i] = body + pos; al[i] = (uint32_t)(z - (body + pos));
        pos += al[i] + 1;
    }
    a[n - 1] = body + pos; al[n - 1] = len - pos;
    return 1;
}

/* Register a set of workers: CAN_DO + ECHO barrier so they are known to the
 * server before any job is submitted; then they go through GRAB_JOB_UNIQ. */
static conn **make_workers(int n, handler_fn h)
{
    conn **w = xcalloc(n, sizeof *w);
    for (int i = 0; i < n; i++) {
        w[i] = conn_new(h);
        pkt_simple(w[i], CAN_DO, opt.function, strlen(opt.function));
        pkt_simple(w[i], ECHO_REQ, "ready", 5);
        conn_flush_blocking(w[i]);
    }
    for (int i = 0; i < n; i++) {
        expect_echo(w[i], "ready");
        conn_watch(w[i]);
        w[i]->grabbing = 1;
        pkt_simple(w[i], GRAB_JOB_UNIQ, NULL, 0);
    }
    return w;
}

/* generic worker reaction to NO_JOB / NOOP; returns 1 if handled */
static int worker_sleep_wake(conn *c, uint32_t type)
{
    if (type == NO_JOB) {
        if (!c->grabbing) fail("NO_JOB on worker connection %d without a GRAB outstanding", c->idx);
        c->grabbing = 0;
        c->sleeping = 1;
        pkt_simple(c, PRE_SLEEP, NULL, 0);
        return 1;
    }
    if (type == NOOP) {
        if (c->sleeping) {
            c->sleeping = 0;
            c->grabbing = 1;
            pkt_simple(c, GRAB_JOB_UNIQ, NULL, 0);
        }
        return 1;
    }
    return 0;
}

static void print_json_start(void) { printf("{\"mode\": \"%s\"", mode_name); }
static void print_json_end(void) { printf(", \"errors\": 0}\n"); fflush(stdout); }

/* ------------------------------------------------------------------ bgsubmit */

static void bg_submit_next(conn *c)
{
    if (next_seq >= seq_end) return;
    send_submit(c, SUBMIT_JOB_BG, "", next_seq++);
    fifo_push(c, now_s(), 0);
}

static void bg_client(conn *c, uint32_t type, unsigned char *body, uint32_t len)
{
    if (type != JOB_CREATED) fail("unexpected %s on submit connection %d", type_name(type), c->idx);
    double t0;
    fifo_pop(c, &t0);
    if (len == 0 || len >= MAX_HANDLE) fail("bad job handle length %u", len);
    if (!hset_add(body, len)) fail("duplicate job handle %.*s", (int)len, body);
    lat_add(now_s() - t0);
    acked++;
    if (acked == seq_end - opt.seq_base) loop_done = 1;
    else bg_submit_next(c);
}

static const char *bg_describe(void)
{
    static char b[128];
    snprintf(b, sizeof b, "%ld of %ld submissions acknowledged", acked, seq_end - opt.seq_base);
    return b;
}

/* returns elapsed seconds */
static double run_bgsubmit(double *p50, double *p99, double *pmax)
{
    next_seq = opt.seq_base; seq_end = opt.seq_base + opt.jobs; acked = 0;
    lat_init(opt.jobs);
    nconns = opt.conns;
    conns = xcalloc(nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) { conns[i] = conn_new(bg_client); conn_watch(conns[i]); }
    double t0 = now_s();
    for (int i = 0; i < nconns; i++)
        for (int d = 0; d < opt.depth; d++) bg_submit_next(conns[i]);
    run_loop(1, bg_describe);
    double el = now_s() - t0;
    for (int i = 0; i < nconns; i++) conn_close(conns[i]);
    hset_free();
    lat_pct(p50, p99, pmax);
    free(lat);
    if (opt.check_status && opt.expect_total != -1) {
        long total, running, workers;
        long expect = opt.expect_total == -2 ? opt.jobs : opt.expect_total;
        if (!admin_status(opt.function, &total, &running, &workers))
            fail("function %s missing from the server's admin status after %ld submissions", opt.function, opt.jobs);
        if (total != expect)
            fail("server's admin status says %ld jobs queued for %s, expected %ld", total, opt.function, expect);
    }
    return el;
}

static void mode_bgsubmit(void)
{
    double p50, p99, pmax;
    double el = run_bgsubmit(&p50, &p99, &pmax);
    print_json_start();
    printf(", \"jobs\": %ld, \"seconds\": %.4f, \"jobs_per_s\": %.1f, \"p50_us\": %.0f, \"p99_us\": %.0f, \"max_us\": %.0f",
           opt.jobs, el, opt.jobs / el, p50, p99, pmax);
    print_json_end();
}

/* ------------------------------------------------------------------ echo */

static unsigned char *done_map;   /* one byte per seq */
static long worker_assigned;

static void echo_submit_next(conn *c)
{
    if (next_seq >= seq_end) return;
    int s;
    for (s = 0; s < c->nslots && c->slots[s].used; s++) ;
    if (s == c->nslots) fail("internal: no free slot");
    struct slot *sl = &c->slots[s];
    sl->used = 1; sl->has_handle = 0; sl->seq = next_seq++;
    sl->t0 = now_s();
    send_submit(c, SUBMIT_JOB, "", sl->seq);
    fifo_push(c, sl->t0, s);
    c->inflight++;
}

static void echo_client(conn *c, uint32_t type, unsigned char *body, uint32_t len)
{
    unsigned char *a[2]; uint32_t al[2];
    switch (type) {
    case JOB_CREATED: {
        double t0;
        int s = fifo_pop(c, &t0);
        if (len == 0 || len >= MAX_HANDLE) fail("bad job handle length %u", len);
        for (int i = 0; i < c->nslots; i++)
            if (c->slots[i].used && c->slots[i].has_handle && c->slots[i].hlen == (int)len
                && memcmp(c->slots[i].handle, body, len) == 0)
                fail("handle %.*s given to two jobs in flight on connection %d", (int)len, body, c->idx);
        memcpy(c->slots[s].handle, body, len);
        c->slots[s].hlen = len;
        c->slots[s].has_handle = 1;
        return;
    }
    case WORK_COMPLETE: {
        if (!split_args(body, len, 2, a, al)) fail("malformed WORK_COMPLETE");
        int s;
        for (s = 0; s < c->nslots; s++)
            if (c->slots[s].used && c->slots[s].has_handle && c->slots[s].hlen == (int)al[0]
                && memcmp(c->slots[s].handle, a[0], al[0]) == 0) break;
        if (s == c->nslots)
            fail("WORK_COMPLETE for handle %.*s not in flight on connection %d (duplicate completion?)",
                 (int)al[0], a[0], c->idx);
        struct slot *sl = &c->slots[s];
        if (!payload_ok(a[1], al[1], sl->seq, opt.size)) {
            fail("corrupted result for job %lu (handle %.*s): %u bytes, expected %ld; seq in result %lu",
                 (unsigned long)sl->seq, (int)al[0], a[0], al[1], opt.size,
                 al[1] >= SEQ_BYTES ? (unsigned long)payload_seq(a[1]) : 0ul);
        }
        long k = sl->seq - opt.seq_base;
        if (done_map[k]) fail("job %lu completed twice", (unsigned long)sl->seq);
        done_map[k] = 1;
        lat_add(now_s() - sl->t0);
        sl->used = 0; c->inflight--;
        completed++;
        if (completed == opt.jobs) loop_done = 1;
        else echo_submit_next(c);
        return;
    }
    case WORK_STATUS: case WORK_DATA: case WORK_WARNING:
        return;
    }
    fail("unexpected %s on client connection %d", type_name(type), c->idx);
}

static void echo_worker(conn *c, uint32_t type, unsigned char *body, uint32_t len)
{
    if (worker_sleep_wake(c, type)) return;
    if (type != JOB_ASSIGN_UNIQ) fail("unexpected %s on worker connection %d", type_name(type), c->idx);
    unsigned char *a[4]; uint32_t al[4];
    if (!split_args(body, len, 4, a, al)) fail("malformed JOB_ASSIGN_UNIQ");
    if (!c->grabbing) fail("JOB_ASSIGN_UNIQ without a GRAB outstanding on connection %d", c->idx);
    c->executed++; worker_assigned++;
    pkt_begin(c, WORK_COMPLETE);
    pkt_add(c, a[0], al[0]); pkt_nul(c);
    pkt_add(c, a[3], al[3]);
    pkt_end(c);
    pkt_simple(c, GRAB_JOB_UNIQ, NULL, 0);
}

static const char *echo_describe(void)
{
    static char b[160];
    snprintf(b, sizeof b, "%ld of %ld jobs completed, %ld submitted, %ld executed by workers",
             completed, opt.jobs, next_seq - opt.seq_base, worker_assigned);
    return b;
}

static void mode_echo(void)
{
    next_seq = opt.seq_base; seq_end = opt.seq_base + opt.jobs; completed = 0;
    done_map = xcalloc(opt.jobs, 1);
    lat_init(opt.jobs);
    conn **w = make_workers(opt.workers, echo_worker);
    conn **cl = xcalloc(opt.clients, sizeof *cl);
    for (int i = 0; i < opt.clients; i++) {
        cl[i] = conn_new(echo_client);
        cl[i]->nslots = opt.depth;
        cl[i]->slots = xcalloc(opt.depth, sizeof *cl[i]->slots);
        conn_watch(cl[i]);
    }
    double t0 = now_s();
    for (int i = 0; i < opt.clients; i++)
        for (int d = 0; d < opt.depth; d++) echo_submit_next(cl[i]);
    run_loop(1, echo_describe);
    double el = now_s() - t0;
    for (long k = 0; k < opt.jobs; k++) if (!done_map[k]) fail("job %ld never completed", k + opt.seq_base);
    if (worker_assigned != opt.jobs)
        fail("workers executed %ld jobs for %ld submissions", worker_assigned, opt.jobs);
    long wmin = -1, wmax = 0;
    for (int i = 0; i < opt.workers; i++) {
        if (wmin < 0 || w[i]->executed < wmin) wmin = w[i]->executed;
        if (w[i]->executed > wmax) wmax = w[i]->executed;
    }
    double p50, p99, pmax;
    lat_pct(&p50, &p99, &pmax);
    print_json_start();
    printf(", \"jobs\": %ld, \"size\": %ld, \"workers\": %d, \"clients\": %d, \"depth\": %d"
           ", \"seconds\": %.4f, \"jobs_per_s\": %.1f, \"p50_us\": %.0f, \"p99_us\": %.0f, \"max_us\": %.0f"
           ", \"per_worker_min\": %ld, \"per_worker_max\": %ld",
           opt.jobs, opt.size, opt.workers, opt.clients, opt.depth, el, opt.jobs / el, p50, p99, pmax, wmin, wmax);
    print_json_end();
}

/* ------------------------------------------------------------------ drain */

static int drain_finishing;
static int drain_checked;

static void drain_check_done(void)
{
    /* all sequence numbers seen: every worker must now get NO_JOB for one GRAB */
    drain_finishing = 1;
    for (int i = 0; i < nconns; i++) {
        conn *w = conns[i];
        if (w->sleeping && !w->checked) {
            w->sleeping = 0; w->grabbing = 1;
            pkt_simple(w, GRAB_JOB_UNIQ, NULL, 0);
        }
    }
}

static void drain_worker(conn *c, uint32_t type, unsigned char *body, uint32_t len)
{
    if (drain_finishing && type == NO_JOB) {
        if (!c->grabbing) fail("NO_JOB without a GRAB outstanding");
        c->grabbing = 0;
        if (!c->checked) { c->checked = 1; if (++drain_checked == nconns) loop_done = 1; }
        return;
    }
    if (drain_finishing && type == NOOP) return;
    if (worker_sleep_wake(c, type)) return;
    if (type != JOB_ASSIGN_UNIQ) fail("unexpected %s on worker connection %d", type_name(type), c->idx);
    unsigned char *a[4]; uint32_t al[4];
    if (!split_args(body, len, 4, a, al)) fail("malformed JOB_ASSIGN_UNIQ");
    if (al[3] < SEQ_BYTES) fail("job %.*s has a %u-byte payload (truncated)", (int)al[0], a[0], al[3]);
    uint64_t seq = payload_seq(a[3]);
    if ((long)seq < opt.seq_base || (long)seq >= seq_end)
        fail("job %.*s carries sequence number %lu outside [%ld, %ld) (extra or corrupted job%s)",
             (int)al[0], a[0], (unsigned long)seq, opt.seq_base, seq_end,
             drain_finishing ? ", after all jobs were already seen" : "");
    if (!payload_ok(a[3], al[3], seq, opt.size))
        fail("payload of job %lu (handle %.*s) corrupted (%u bytes, expected %ld)",
             (unsigned long)seq, (int)al[0], a[0], al[3], opt.size);
    long k = seq - opt.seq_base;
    if (done_map[k]) fail("job %lu delivered twice (handle %.*s)", (unsigned long)seq, (int)al[0], a[0]);
    done_map[k] = 1;
    c->executed++;
    completed++;
    pkt_begin(c, WORK_COMPLETE);
    pkt_add(c, a[0], al[0]); pkt_nul(c);
    pkt_end(c);
    c->grabbing = 1;
    pkt_simple(c, GRAB_JOB_UNIQ, NULL, 0);
    if (completed == opt.jobs && !drain_finishing) drain_check_done();
}

static const char *drain_describe(void)
{
    static char b[128];
    snprintf(b, sizeof b, "%ld of %ld queued jobs delivered to workers", completed, opt.jobs);
    return b;
}

static void mode_drain(void)
{
    double fill_s = 0, p50, p99, pmax;
    if (!opt.no_fill) fill_s = run_bgsubmit(&p50, &p99, &pmax);
    seq_end = opt.seq_base + opt.jobs;
    completed = 0;
    done_map = xcalloc(opt.jobs, 1);
    conn **w = make_workers(opt.workers, drain_worker);
    conns = w; nconns = opt.workers;
    double t0 = now_s();
    run_loop(1, drain_describe);
    double el = now_s() - t0;
    for (long k = 0; k < opt.jobs; k++) if (!done_map[k]) fail("job %ld never delivered", k + opt.seq_base);
    long wmin = -1, wmax = 0;
    for (int i = 0; i < nconns; i++) {
        if (wmin < 0 || w[i]->executed < wmin) wmin = w[i]->executed;
        if (w[i]->executed > wmax) wmax = w[i]->executed;
    }
    if (opt.check_status) {
        long total = 0, running = 0, workers = 0;
        if (admin_status(opt.function, &total, &running, &workers) && (total != 0 || running != 0))
            fail("after draining, the server's admin status still shows %ld jobs (%ld running) for %s",
                 total, running, opt.function);
    }
    for (int i = 0; i < nconns; i++) conn_close(w[i]);
    print_json_start();
    printf(", \"jobs\": %ld, \"workers\": %d, \"fill_seconds\": %.4f, \"seconds\": %.4f, \"jobs_per_s\": %.1f"
           ", \"per_worker_min\": %ld, \"per_worker_max\": %ld",
           opt.jobs, opt.workers, fill_s, el, opt.jobs / el, wmin, wmax);
    print_json_end();
}

/* ------------------------------------------------------------------ idle */

static void idle_conn(conn *c, uint32_t type, unsigned char *body, uint32_t len)
{
    (void)body; (void)len;
    if (type == NOOP) { c->executed++; return; }  /* a wake-up; stay asleep (no GRAB) */
    fail("unexpected %s on idle worker connection %d", type_name(type), c->idx);
}

static void on_signal(int s) { (void)s; stop_flag = 1; }

static void mode_idle(void)
{
    const int batch = 32;
    nconns = opt.conns;
    conns = xcalloc(nconns, sizeof *conns);
    double t0 = now_s();
    for (int i = 0; i < nconns; i += batch) {
        int e = i + batch < nconns ? i + batch : nconns;
        for (int j = i; j < e; j++) {
            conns[j] = conn_new(idle_conn);
            pkt_simple(conns[j], CAN_DO, opt.function, strlen(opt.function));
            pkt_simple(conns[j], PRE_SLEEP, NULL, 0);
            pkt_simple(conns[j], ECHO_REQ, "idle", 4);
            conn_flush_blocking(conns[j]);
        }
        /* the ECHO_RES proves the server has accepted and read each one */
        for (int j = i; j < e; j++) { expect_echo(conns[j], "idle"); conn_watch(conns[j]); }
    }
    double setup = now_s() - t0;
    long total = -1, running = -1, workers = -1;
    if (opt.check_status) {
        if (!admin_status(opt.function, &total, &running, &workers))
            fail("function %s missing from the server's admin status", opt.function);
        if (workers != nconns)
            fail("server's admin status shows %ld workers for %s, expected %d", workers, opt.function, nconns);
    }
    print_json_start();
    printf(", \"ready\": true, \"conns\": %d, \"setup_seconds\": %.3f, \"status_workers\": %ld", nconns, setup, workers);
    print_json_end();
    if (opt.duration > 0) loop_deadline = now_s() + opt.duration;
    run_loop(0, NULL);   /* until SIGTERM/SIGINT or the deadline; a dropped connection fails */
    exit(0);
}

/* ------------------------------------------------------------------ unique storm */

static long round_no;
static double round_t0;
static int created_cnt, complete_cnt, exec_cnt;
static char round_unique[96];
static char round_handle[MAX_HANDLE]; static uint32_t round_hlen;
static conn *held_worker; static char held_handle[MAX_HANDLE]; static uint32_t held_hlen;
static conn **storm_clients;

static void storm_complete_held(void)
{
    conn *w = held_worker;
    held_worker = NULL;
    payload_fill(scratch, round_no, opt.size);
    pkt_begin(w, WORK_COMPLETE);
    pkt_add(w, held_handle, held_hlen); pkt_nul(w);
    pkt_add(w, scratch, opt.size);
    pkt_end(w);
    w->grabbing = 1;
    pkt_simple(w, GRAB_JOB_UNIQ, NULL, 0);
}

static void storm_start_round(void)
{
    if (round_no + 1 >= opt.jobs + opt.seq_base) { loop_done = 1; return; }
    round_no++;
    created_cnt = complete_cnt = exec_cnt = 0;
    snprintf(round_unique, sizeof round_unique, "storm-%d-%ld", (int)getpid(), round_no);
    round_t0 = now_s();
    for (int i = 0; i < opt.clients; i++) {
        send_submit(storm_clients[i], SUBMIT_JOB, round_unique, round_no);
        fifo_push(storm_clients[i], round_t0, 0);
    }
}

static void storm_client(conn *c, uint32_t type, unsigned char *body, uint32_t len)
{
    unsigned char *a[2]; uint32_t al[2];
    if (type == JOB_CREATED) {
        double t0;
        fifo_pop(c, &t0);
        if (created_cnt == 0) {
            if (len == 0 || len >= MAX_HANDLE) fail("bad job handle length %u", len);
            memcpy(round_handle, body, len); round_hlen = len;
        } else if (len != round_hlen || memcmp(body, round_handle, len) != 0) {
            fail("round %ld: unique %s not coalesced: handles %.*s and %.*s",
                 round_no, round_unique, (int)round_hlen, round_handle, (int)len, body);
        }
        if (++created_cnt == opt.clients && held_worker) storm_complete_held();
        return;
    }
    if (type == WORK_COMPLETE) {
        if (!split_args(body, len, 2, a, al)) fail("malformed WORK_COMPLETE");
        if (al[0] != round_hlen || memcmp(a[0], round_handle, al[0]) != 0)
            fail("round %ld: WORK_COMPLETE for unexpected handle %.*s", round_no, (int)al[0], a[0]);
        if (c->last_round == round_no) fail("round %ld: client %d got WORK_COMPLETE twice", round_no, c->idx);
        c->last_round = round_no;
        if (!payload_ok(a[1], al[1], round_no, opt.size)) fail("round %ld: corrupted result", round_no);
        if (++complete_cnt == opt.clients) {
            if (exec_cnt != 1) fail("round %ld: job executed %d times", round_no, exec_cnt);
            lat_add(now_s() - round_t0);
            completed++;
            storm_start_round();
        }
        return;
    }
    if (type == WORK_STATUS || type == WORK_DATA || type == WORK_WARNING) return;
    fail("unexpected %s on client connection %d", type_name(type), c->idx);
}

static void storm_worker(conn *c, uint32_t type, unsigned char *body, uint32_t len)
{
    if (worker_sleep_wake(c, type)) return;
    if (type != JOB_ASSIGN_UNIQ) fail("unexpected %s on worker connection %d", type_name(type), c->idx);
    unsigned char *a[4]; uint32_t al[4];
    if (!split_args(body, len, 4, a, al)) fail("malformed JOB_ASSIGN_UNIQ");
    c->grabbing = 0;
    if (al[2] != strlen(round_unique) || memcmp(a[2], round_unique, al[2]) != 0)
        fail("round %ld: worker got unique %.*s, expected %s", round_no, (int)al[2], a[2], round_unique);
    if (!payload_ok(a[3], al[3], round_no, opt.size)) fail("round %ld: corrupted workload", round_no);
    if (++exec_cnt > 1) fail("round %ld: unique %s executed %d times", round_no, round_unique, exec_cnt);
    if (al[0] >= MAX_HANDLE) fail("handle too long");
    memcpy(held_handle, a[0], al[0]); held_hlen = al[0];
    held_worker = c;
    worker_assigned++;
    if (created_cnt == opt.clients) storm_complete_held();
}

static const char *storm_describe(void)
{
    static char b[200];
    snprintf(b, sizeof b, "round %ld: %d/%d JOB_CREATED, %d/%d WORK_COMPLETE, %d executions",
             round_no, created_cnt, opt.clients, complete_cnt, opt.clients, exec_cnt);
    return b;
}

static void mode_unique(void)
{
    lat_init(opt.jobs);
    make_workers(opt.workers, storm_worker);
    storm_clients = xcalloc(opt.clients, sizeof *storm_clients);
    for (int i = 0; i < opt.clients; i++) {
        storm_clients[i] = conn_new(storm_client);
        storm_clients[i]->last_round = -1;
        conn_watch(storm_clients[i]);
    }
    round_no = opt.seq_base - 1;
    completed = 0;
    double t0 = now_s();
    storm_start_round();
    run_loop(1, storm_describe);
    double el = now_s() - t0;
    if (completed != opt.jobs || worker_assigned != opt.jobs)
        fail("%ld rounds completed, %ld executions, expected %ld", completed, worker_assigned, opt.jobs);
    double p50, p99, pmax;
    lat_pct(&p50, &p99, &pmax);
    long subs = opt.jobs * opt.clients;
    print_json_start();
    printf(", \"rounds\": %ld, \"clients\": %d, \"jobs\": %ld, \"executions\": %ld, \"seconds\": %.4f"
           ", \"rounds_per_s\": %.1f, \"jobs_per_s\": %.1f, \"p50_us\": %.0f, \"p99_us\": %.0f, \"max_us\": %.0f",
           opt.jobs, opt.clients, subs, worker_assigned, el, opt.jobs / el, subs / el, p50, p99, pmax);
    print_json_end();
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr,
        "usage: loadgen MODE [options]\n"
        "modes:\n"
        "  bgsubmit  --conns C --depth D --jobs N --size S       pipelined SUBMIT_JOB_BG, no workers\n"
        "  echo      --workers W --clients C --depth D --jobs N --size S   foreground echo jobs\n"
        "  drain     --jobs N --workers W [--no-fill] [--conns C --depth D --size S]\n"
        "  idle      --conns C --function F [--duration SEC]     idle registered workers until SIGTERM\n"
        "  unique    --clients C --workers W --jobs ROUNDS --size S   same unique id per round\n"
        "common: --host 127.0.0.1 --port 4730 --function NAME --seq-base K --timeout SEC\n"
        "        --port P1,P2,... spreads connections over several servers (use --no-status)\n"
        "        --expect-total N (bgsubmit: jobs the server's status must show; -1 = skip)\n"
        "        --no-status (skip the admin \"status\" cross-checks)\n"
        "Prints one JSON line; exits 2 on any correctness error (lost, duplicated or corrupted jobs).\n");
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 2) usage();
    mode_name = argv[1];
    static struct option lo[] = {
        {"host", 1, 0, 'H'}, {"port", 1, 0, 'p'}, {"conns", 1, 0, 'c'}, {"depth", 1, 0, 'd'},
        {"workers", 1, 0, 'w'}, {"clients", 1, 0, 'C'}, {"jobs", 1, 0, 'n'}, {"rounds", 1, 0, 'n'},
        {"size", 1, 0, 's'}, {"function", 1, 0, 'f'}, {"seq-base", 1, 0, 'b'},
        {"expect-total", 1, 0, 'e'}, {"timeout", 1, 0, 't'}, {"duration", 1, 0, 'D'},
        {"no-fill", 0, 0, 'F'}, {"no-status", 0, 0, 'S'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int ch;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p': parse_ports(optarg); break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'd': opt.depth = atoi(optarg); break;
        case 'w': opt.workers = atoi(optarg); break;
        case 'C': opt.clients = atoi(optarg); break;
        case 'n': opt.jobs = atol(optarg); break;
        case 's': opt.size = atol(optarg); break;
        case 'f': opt.function = optarg; break;
        case 'b': opt.seq_base = atol(optarg); break;
        case 'e': opt.expect_total = atol(optarg); break;
        case 't': opt.timeout = atoi(optarg); break;
        case 'D': opt.duration = atof(optarg); break;
        case 'F': opt.no_fill = 1; break;
        case 'S': opt.check_status = 0; break;
        default: usage();
        }
    }
    if (opt.size < SEQ_BYTES) die("--size must be at least %d", SEQ_BYTES);
    if (opt.jobs < 1 || opt.conns < 1 || opt.depth < 1 || opt.workers < 1 || opt.clients < 1) die("counts must be >= 1");
    if (!opt.function) {
        static char fn[64];
        snprintf(fn, sizeof fn, "bench_%s", mode_name);
        opt.function = fn;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    pattern_init(opt.size);
    scratch = xmalloc(opt.size);

    if (!strcmp(mode_name, "bgsubmit")) mode_bgsubmit();
    else if (!strcmp(mode_name, "echo")) mode_echo();
    else if (!strcmp(mode_name, "drain")) mode_drain();
    else if (!strcmp(mode_name, "idle")) mode_idle();
    else if (!strcmp(mode_name, "unique")) mode_unique();
    else usage();
    return 0;
}
