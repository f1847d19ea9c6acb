/* A CGI 1.1 function in C, compiled to a WASI preview1 command module against wasi-libc.
 *
 * It answers with the request method, path and query, then echoes the request body.
 * Every line written to stderr becomes a log line of the invocation. */
#include <stdio.h>
#include <stdlib.h>

static const char *env_or(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value ? value : fallback;
}

int main(void) {
    const char *method = env_or("REQUEST_METHOD", "GET");
    const char *path = env_or("PATH_INFO", "/");
    const char *query = env_or("QUERY_STRING", "");

    fprintf(stderr, "c-cgi: %s %s\n", method, path);

    printf("Content-Type: text/plain\r\n");
    printf("X-Powered-By: wasi-libc\r\n\r\n");
    printf("Hello from C! method=%s path=%s query=%s\n", method, path, query);

    char buffer[65536];
    size_t read;
    while ((read = fread(buffer, 1, sizeof buffer, stdin)) > 0) {
        fwrite(buffer, 1, read, stdout);
    }
    return 0;
}
