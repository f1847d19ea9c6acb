#!/bin/sh
# CGI: the request body (an image) on stdin; ?width=N (16-2048, default 128) and
# ?format=jpg|png (default jpg). Answers the thumbnail, or 422 when the body is not an image.
set -u
width=128
format=jpg
for pair in $(echo "${QUERY_STRING:-}" | tr '&' ' '); do
  case "$pair" in
    width=*) width=${pair#width=} ;;
    format=*) format=${pair#format=} ;;
  esac
done
case "$width" in ''|*[!0-9]*) width=0 ;; esac
if [ "$width" -lt 16 ] || [ "$width" -gt 2048 ]; then
  printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nwidth must be 16 to 2048\n'
  exit 0
fi
case "$format" in
  jpg) type=image/jpeg ;;
  png) type=image/png ;;
  *) printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nformat must be jpg or png\n'; exit 0 ;;
esac
out=/tmp/thumb.$$
if convert - -auto-orient -thumbnail "${width}x${width}>" "$format:$out" 2>/tmp/err.$$; then
  echo "thumbnail: $(identify -format '%wx%h' "$out") $format" >&2
  printf 'Content-Type: %s\r\n\r\n' "$type"
  cat "$out"
else
  echo "thumbnail: not an image: $(head -c 200 /tmp/err.$$)" >&2
  printf 'Status: 422 Unprocessable Content\r\nContent-Type: text/plain\r\n\r\nthe body is not an image ImageMagick reads\n'
fi
rm -f "$out" /tmp/err.$$
