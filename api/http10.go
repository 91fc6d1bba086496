package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

var errEOF = io.EOF

// formatRequest renders an HTTP/1.0 request: the daemon answers it and
// closes the connection, so the answer needs no chunked decoding and ends
// where the connection does. path must be valid (validPath).
func formatRequest(method, path string, body []byte) []byte {
	b := make([]byte, 0, 128+len(body))
	b = fmt.Appendf(b, "%s %s HTTP/1.0\r\nHost: weft\r\n", method, path)
	if body != nil || method == MethodPost {
		b = fmt.Appendf(b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b = append(b, "\r\n"...)
	return append(b, body...)
}

// validPath reports whether path can go on a request line as it is.
func validPath(path string) bool {
	if !strings.HasPrefix(path, "/") {
		return false
	}
	for i := 0; i < len(path); i++ {
		if c := path[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// response is an answer of the daemon as parseResponse read it.
type response struct {
	Status int    // e.g. 200
	Reason string // e.g. "OK"
	Body   []byte // aliases the parsed data
}

// parseResponse reads a whole HTTP/1.x answer: status line, headers and
// the body up to Content-Length, or to the end of data without one. Only
// what the daemon's net/http server sends to an HTTP/1.0 request is
// accepted; a chunked body is an error.
func parseResponse(data []byte) (response, error) {
	head, body, ok := bytes.Cut(data, []byte("\r\n\r\n"))
	if !ok {
		if len(data) == 0 {
			return response{}, errors.New("the connection closed without an answer")
		}
		return response{}, fmt.Errorf("answer cut short in its headers after %d bytes", len(data))
	}
	lines := strings.Split(string(head), "\r\n")
	proto, rest, _ := strings.Cut(lines[0], " ")
	code, reason, _ := strings.Cut(rest, " ")
	if proto != "HTTP/1.0" && proto != "HTTP/1.1" {
		return response{}, fmt.Errorf("not an HTTP answer: %q", truncate(lines[0], 64))
	}
	if len(code) != 3 || strings.Trim(code, "0123456789") != "" || code[0] == '0' {
		return response{}, fmt.Errorf("bad status code in %q", truncate(lines[0], 64))
	}
	status, _ := strconv.Atoi(code)
	resp := response{Status: status, Reason: reason}
	length := -1
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ":")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return response{}, fmt.Errorf("malformed header line %q", truncate(l, 64))
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(k) {
		case "content-length":
			n, err := strconv.ParseUint(v, 10, 31)
			if err != nil || (length >= 0 && int(n) != length) {
				return response{}, fmt.Errorf("bad Content-Length %q", truncate(v, 32))
			}
			length = int(n)
		case "transfer-encoding":
			if !strings.EqualFold(v, "identity") {
				return response{}, fmt.Errorf("unsupported Transfer-Encoding %q", truncate(v, 32))
			}
		}
	}
	if length >= 0 {
		if len(body) < length {
			return response{}, fmt.Errorf("answer cut short: %d of %d bytes of body", len(body), length)
		}
		body = body[:length]
	}
	resp.Body = body
	return resp, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
