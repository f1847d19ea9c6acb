/* A static HTTP/1.1 server on $PORT: answers every request with a greeting that names the
 * method, the path and the invocation id, then closes the connection. One request at a time. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static void header_value(const char *head, const char *name, char *out, size_t size) {
    out[0] = '\0';
    for (const char *line = head; line && *line; line = strstr(line, "\r\n")) {
        if (line != head) line += 2;
        size_t len = strlen(name);
        if (strncasecmp(line, name, len) == 0 && line[len] == ':') {
            const char *value = line + len + 1;
            while (*value == ' ') value++;
            size_t n = strcspn(value, "\r\n");
            if (n >= size) n = size - 1;
            memcpy(out, value, n);
            out[n] = '\0';
            return;
        }
    }
}

int main(void) {
    const char *port_text = getenv("PORT");
    int port = port_text ? atoi(port_text) : 8080;
    int server = socket(AF_INET, SOCK_STREAM, 0);
    int yes = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(server, (struct sockaddr *)&address, sizeof address) != 0 || listen(server, 64) != 0) {
        perror("static-hello: cannot listen");
        return 1;
    }
    printf("static-hello listening on %d\n", port);
    fflush(stdout);
    static char request[65536];
    for (;;) {
        int client = accept(server, NULL, NULL);
        if (client < 0) continue;
        size_t used = 0;
        char *end = NULL;
        while (used < sizeof request - 1 && !end) {
            ssize_t n = read(client, request + used, sizeof request - 1 - used);
            if (n <= 0) break;
            used += (size_t)n;
            request[used] = '\0';
            end = strstr(request, "\r\n\r\n");
        }
        if (!end) {  /* a readiness probe, or a broken request */
            close(client);
            continue;
        }
        char method[16] = "", path[1024] = "", invocation[128], length_text[32];
        sscanf(request, "%15s %1023s", method, path);
        header_value(request, "amphi-invocation-id", invocation, sizeof invocation);
        header_value(request, "content-length", length_text, sizeof length_text);
        long remaining = atol(length_text) - (long)(used - (size_t)(end + 4 - request));
        while (remaining > 0) {  /* the body is not used, but it is read */
            ssize_t n = read(client, request, sizeof request < (size_t)remaining ? sizeof request : (size_t)remaining);
            if (n <= 0) break;
            remaining -= n;
        }
        char body[1400];
        int body_len = snprintf(body, sizeof body,
                                "hello from a static binary in a scratch image: %s %s (%s)\n", method, path,
                                invocation);
        char head[256];
        int head_len = snprintf(head, sizeof head,
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                                "Connection: close\r\n\r\n",
                                body_len);
        write(client, head, (size_t)head_len);
        write(client, body, (size_t)body_len);
        close(client);
        printf("static-hello: served %s %s\n", method, path);
        fflush(stdout);
    }
}
