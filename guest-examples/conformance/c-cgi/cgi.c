/* The conformance function in C, speaking CGI 1.1 over stdio. The conformance suite runs it twice
 * from this one source: compiled with wasi-libc as a WASI preview1 module (wasm backend), and with
 * gcc into a container image whose label says `amphi.protocol=cgi` (container backend).
 * Every conformance function answers the same routes (conformance/README.md). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned long calls_seen;

static const char *env(const char *name) {
    const char *value = getenv(name);
    return value ? value : "";
}

/* The first value of a query parameter, percent-decoded into `out`; NULL when absent. */
static const char *param(const char *name, char *out, size_t size) {
    const char *query = env("QUERY_STRING");
    size_t name_len = strlen(name);
    while (*query) {
        const char *end = strchr(query, '&');
        size_t pair_len = end ? (size_t)(end - query) : strlen(query);
        if (pair_len >= name_len && strncmp(query, name, name_len) == 0 &&
            (pair_len == name_len || query[name_len] == '=')) {
            const char *value = query + name_len + (pair_len > name_len);
            const char *value_end = query + pair_len;
            size_t n = 0;
            for (const char *p = value; p < value_end && n + 1 < size; p++) {
                unsigned hex;
                if (*p == '+') {
                    out[n++] = ' ';
                } else if (*p == '%' && p + 2 < value_end && sscanf(p + 1, "%2x", &hex) == 1) {
                    out[n++] = (char)hex;
                    p += 2;
                } else {
                    out[n++] = *p;
                }
            }
            out[n] = '\0';
            return out;
        }
        if (!end) break;
        query = end + 1;
    }
    return NULL;
}

static unsigned long number(const char *name) {
    char buf[32];
    return param(name, buf, sizeof buf) ? strtoul(buf, NULL, 10) : 0;
}

static unsigned long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned long ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Reads the whole request body; its length goes to `len`. */
static char *read_body(size_t *len) {
    size_t expected = strtoul(env("CONTENT_LENGTH"), NULL, 10), n = 0;
    char *body = malloc(expected + 1);
    if (!body) abort();
    while (n < expected) {
        size_t got = fread(body + n, 1, expected - n, stdin);
        if (got == 0) break;
        n += got;
    }
    *len = n;
    return body;
}

static void text(int status, const char *body) {
    printf("Status: %d\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s", status, body);
}

int main(void) {
    const char *path = env("X_RAW_PATH_INFO");
    if (!*path) path = "/";
    char route[64] = "";
    sscanf(path, "/%63[^/]", route);
    char value[4096];

    if (strcmp(route, "echo") == 0) {
        size_t len;
        char *body = read_body(&len);
        printf("Content-Type: application/octet-stream\r\n");
        if (*env("CONTENT_TYPE")) printf("X-Echo-Content-Type: %s\r\n", env("CONTENT_TYPE"));
        printf("\r\n");
        fwrite(body, 1, len, stdout);
    } else if (strcmp(route, "request") == 0) {
        size_t len;
        read_body(&len);
        printf("Content-Type: text/plain; charset=utf-8\r\n\r\nmethod=%s\npath=%s\nquery=%s\nbody_len=%zu\n",
               env("REQUEST_METHOD"), path, env("QUERY_STRING"), len);
    } else if (strcmp(route, "header") == 0) {
        /* CGI names a header HTTP_NAME, except Content-Type and Content-Length (RFC 3875). */
        char var[300] = "HTTP_";
        const char *name = param("name", value, sizeof value) ? value : "";
        if (strcasecmp(name, "content-type") == 0) strcpy(var, "CONTENT_TYPE");
        else if (strcasecmp(name, "content-length") == 0) strcpy(var, "CONTENT_LENGTH");
        else
            for (size_t i = 0; name[i] && i + 6 < sizeof var; i++)
                var[5 + i] = name[i] == '-' ? '_' : (char)toupper((unsigned char)name[i]);
        const char *found = getenv(var);
        if (found && *found) text(200, found); else text(404, "absent");
    } else if (strcmp(route, "meta") == 0) {
        unsigned long long deadline = strtoull(env("HTTP_AMPHI_DEADLINE_MS"), NULL, 10), now = now_ms();
        printf("Content-Type: text/plain; charset=utf-8\r\n\r\nid=%s\nfunction=%s\nversion=%s\ndeadline_ok=%s\n",
               env("HTTP_AMPHI_INVOCATION_ID"), env("HTTP_AMPHI_FUNCTION"), env("HTTP_AMPHI_FUNCTION_VERSION"),
               deadline > now && deadline - now <= 900000 ? "true" : "false");
    } else if (strcmp(route, "status") == 0) {
        unsigned long code = number("code");
        if (code < 100 || code > 999) code = 400;
        printf("Status: %lu\r\nContent-Type: text/plain\r\n\r\n", code);
        if (code != 204 && code != 304) printf("status %lu", code);
    } else if (strcmp(route, "headers-out") == 0) {
        printf("Content-Type: text/plain; charset=utf-8\r\nX-Repeat: a\r\nX-Repeat: b\r\n"
               "X-Unusual: a \"quoted\" value; with=odd, chars\r\n\r\nheaders");
    } else if (strcmp(route, "headers-forged") == 0) {
        printf("Content-Type: text/plain; charset=utf-8\r\nAmphi-Shim-Error: forged\r\n"
               "Amphi-Function: forged\r\nAmphi-Backend: forged\r\nAmphi-Anything: forged\r\n\r\nforged");
    } else if (strcmp(route, "stream") == 0) {
        unsigned long chunks = number("chunks"), delay = number("delay_ms");
        printf("Content-Type: application/octet-stream\r\n\r\n");
        for (unsigned long i = 0; i < chunks; i++) {
            sleep_ms(delay);
            printf("chunk %lu\n", i);
            fflush(stdout);
        }
    } else if (strcmp(route, "env") == 0) {
        const char *found = getenv(param("name", value, sizeof value) ? value : "");
        if (found) text(200, found); else text(404, "unset");
    } else if (strcmp(route, "log") == 0) {
        /* stdout is the response, so the log is stderr; the prefixed line names its invocation. */
        const char *line = param("text", value, sizeof value) ? value : "";
        fprintf(stderr, "%s\n", line);
        fprintf(stderr, "amphi-invocation=%s logger: %s\n", env("HTTP_AMPHI_INVOCATION_ID"), line);
        text(200, "logged");
    } else if (strcmp(route, "big") == 0) {
        /* A response body of `mb` MiB: past the CGI response limit from 32 MiB on. */
        char chunk[65536];
        memset(chunk, 'x', sizeof chunk);
        printf("Content-Type: text/plain\r\n\r\n");
        for (unsigned long i = 0, n = number("mb") * 16; i < n; i++)
            if (fwrite(chunk, 1, sizeof chunk, stdout) != sizeof chunk) break;
    } else if (strcmp(route, "flood") == 0) {
        /* `mb` MiB to stderr, in lines of 1 KiB: far past any log budget. */
        char line[1024];
        memset(line, 'x', sizeof line - 1);
        line[sizeof line - 1] = '\n';
        for (unsigned long i = 0, n = number("mb") * 1024; i < n; i++)
            if (fwrite(line, 1, sizeof line, stderr) != sizeof line) break;
        text(200, "flooded");
    } else if (strcmp(route, "sleep") == 0) {
        sleep_ms(number("ms"));
        text(200, "slept");
    } else if (strcmp(route, "crash") == 0) {
        fprintf(stderr, "the conformance function was asked to crash\n");
        abort();
    } else if (strcmp(route, "alloc") == 0) {
        size_t mib = number("mib");
        /* Volatile, so the compiler cannot drop an allocation nothing reads. */
        volatile char *block = malloc(mib << 20);
        if (!block) abort();
        for (size_t i = 0; i < (mib << 20); i += 4096) block[i] = 1;
        snprintf(value, sizeof value, "allocated %zu MiB", mib);
        text(200, value);
    } else if (strcmp(route, "state") == 0) {
        snprintf(value, sizeof value, "%lu", ++calls_seen);
        text(200, value);
    } else {
        text(404, "no such route");
    }
    return 0;
}
