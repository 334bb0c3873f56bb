/*
 * skiff-https-get: a static HTTPS GET client for the test image, so a pod can call the API
 * server with its service-account token and CA the way `curl --cacert` does.
 *
 * Busybox's wget cannot do this: its TLS 1.2 ClientHello carries no signature_algorithms
 * extension, which per RFC 5246 means SHA-1 signatures only, and rustls (like OpenSSL at its
 * default security level) refuses SHA-1, so the handshake fails ("handshake failure"). It does
 * not verify certificates either.
 *
 * Usage: skiff-https-get [--cacert FILE | --insecure] [--header 'Name: value']... URL
 *   URL is https://HOST[:PORT]/PATH, HOST an IPv4 address or a DNS name. A name is looked up
 *   with the libc resolver's res_search (an A query to the nameservers of /etc/resolv.conf,
 *   through its search list and ndots, as curl's lookup does in a pod), not getaddrinfo:
 *   in a static binary getaddrinfo needs glibc's NSS modules, which the image does not have.
 *   The server certificate must chain to FILE and name HOST (the IP, or the DNS name, which
 *   is also sent as SNI).
 * Prints the response body on stdout and "HTTP <code>" on stderr. Exit status: 0 for a 2xx
 * answer, 22 for any other status (as curl --fail), 1 for a usage, connection or TLS error.
 */
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_HEADERS 16
#define MAX_RESPONSE (8 << 20)

static int fail(const char *what) {
    fprintf(stderr, "skiff-https-get: %s\n", what);
    ERR_print_errors_fp(stderr);
    return 1;
}

struct target {
    char host[256];
    int port;
    const char *path;
    int is_ip;
    struct in_addr addr;
};

/* The first A record of NAME, through resolv.conf's search list. */
static int resolve(const char *name, struct in_addr *out) {
    unsigned char answer[4096];
    if (res_init() != 0) return -1;
    int len = res_search(name, ns_c_in, ns_t_a, answer, sizeof answer);
    if (len < 0) return -1;
    ns_msg msg;
    if (ns_initparse(answer, len, &msg) != 0) return -1;
    for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
        ns_rr rr;
        if (ns_parserr(&msg, ns_s_an, i, &rr) != 0) return -1;
        if (ns_rr_type(rr) == ns_t_a && ns_rr_rdlen(rr) == 4) {
            memcpy(out, ns_rr_rdata(rr), 4);
            return 0;
        }
    }
    return -1;
}

/* https://HOST[:PORT]/PATH */
static int parse_url(const char *url, struct target *t) {
    const char *p = url;
    if (strncmp(p, "https://", 8) != 0) return -1;
    p += 8;
    size_t n = strcspn(p, ":/");
    if (n == 0 || n >= sizeof t->host) return -1;
    memcpy(t->host, p, n);
    t->host[n] = 0;
    p += n;
    t->port = 443;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (port <= 0 || port > 65535) return -1;
        t->port = (int)port;
        p = end;
    }
    t->path = *p == '/' ? p : "/";
    t->is_ip = inet_pton(AF_INET, t->host, &t->addr) == 1;
    return 0;
}

static int connect_to(const struct target *t) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)t->port),
                               .sin_addr = t->addr};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static SSL_CTX *tls_context(const char *cacert, int insecure) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    if (!cacert || SSL_CTX_load_verify_locations(ctx, cacert, NULL) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

/* Send the request, read the whole answer (HTTP/1.0: the server closes when done). */
static char *exchange(SSL *ssl, const struct target *t, const char **headers, int nheaders,
                      size_t *len) {
    char req[16384];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s:%d\r\nAccept: */*\r\n", t->path,
                     t->host, t->port);
    for (int i = 0; i < nheaders && n > 0 && (size_t)n < sizeof req; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "%s\r\n", headers[i]);
    if (n <= 0 || (size_t)n + 3 > sizeof req) return NULL;
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    if (SSL_write(ssl, req, n) != n) return NULL;
    size_t cap = 65536, used = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return NULL;
    for (;;) {
        if (used == cap) {
            if (cap >= MAX_RESPONSE) break;
            cap *= 2;
            char *bigger = realloc(buf, cap + 1);
            if (!bigger) break;
            buf = bigger;
        }
        int r = SSL_read(ssl, buf + used, (int)(cap - used));
        if (r <= 0) break;
        used += (size_t)r;
    }
    buf[used] = 0;
    *len = used;
    return buf;
}

int main(int argc, char **argv) {
    const char *cacert = NULL, *url = NULL, *headers[MAX_HEADERS];
    int insecure = 0, nheaders = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cacert") && i + 1 < argc) cacert = argv[++i];
        else if (!strcmp(argv[i], "--insecure")) insecure = 1;
        else if (!strcmp(argv[i], "--header") && i + 1 < argc && nheaders < MAX_HEADERS)
            headers[nheaders++] = argv[++i];
        else if (!url && argv[i][0] != '-') url = argv[i];
        else return fail("usage: skiff-https-get [--cacert FILE | --insecure] [--header H]... URL");
    }
    struct target t;
    if (!url || parse_url(url, &t) != 0) return fail("the URL must be https://HOST[:PORT]/PATH");
    if (!t.is_ip && resolve(t.host, &t.addr) != 0) {
        fprintf(stderr, "skiff-https-get: cannot resolve %s\n", t.host);
        return 1;
    }
    SSL_CTX *ctx = tls_context(cacert, insecure);
    if (!ctx) return fail("cannot load the CA (--cacert FILE or --insecure)");
    SSL *ssl = SSL_new(ctx);
    if (!ssl) return fail("SSL_new");
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    if (t.is_ip) {
        if (!insecure && X509_VERIFY_PARAM_set1_ip_asc(param, t.host) != 1)
            return fail("bad IP address");
    } else {
        if (SSL_set_tlsext_host_name(ssl, t.host) != 1) return fail("bad server name");
        if (!insecure && X509_VERIFY_PARAM_set1_host(param, t.host, 0) != 1)
            return fail("bad server name");
    }
    int fd = connect_to(&t);
    if (fd < 0) return fail("cannot connect");
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) return fail("TLS handshake failed");
    size_t len = 0;
    char *resp = exchange(ssl, &t, headers, nheaders, &len);
    if (!resp) return fail("request failed");
    int code = 0;
    if (sscanf(resp, "HTTP/%*d.%*d %d", &code) != 1) return fail("no HTTP status line");
    char *body = strstr(resp, "\r\n\r\n");
    body = body ? body + 4 : resp + len;
    fwrite(body, 1, len - (size_t)(body - resp), stdout);
    fflush(stdout);
    fprintf(stderr, "HTTP %d\n", code);
    return code >= 200 && code < 300 ? 0 : 22;
}
