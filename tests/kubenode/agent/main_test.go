package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
)

// TestHandler: the endpoints a test asks of a pod, on loopback.
func TestHandler(t *testing.T) {
	t.Setenv("POD_NAME", "pod-a")
	srv := httptest.NewServer(handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, tc := range []struct {
		name, path string
		code       int
		prefix     string
	}{
		{"whoami", "/whoami", 200, "pod-a "},
		{"get self", "/get?url=" + url.QueryEscape(srv.URL+"/whoami"), 200, "pod-a "},
		{"get nowhere", "/get?url=" + url.QueryEscape("http://127.0.0.1:1/"), 502, ""},
		{"get 404", "/get?url=" + url.QueryEscape(srv.URL+"/nothing"), 502, ""},
		{"ping bad address", "/ping?ip=nope", 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(tc.path)
			if code != tc.code || !strings.HasPrefix(body, tc.prefix) {
				t.Errorf("GET %s: %d %q, want %d and a body starting %q", tc.path, code, body, tc.code, tc.prefix)
			}
		})
	}
	t.Run("ping loopback", func(t *testing.T) {
		// An unprivileged ICMP socket needs the group in
		// net.ipv4.ping_group_range; a raw one needs CAP_NET_RAW.
		if os.Geteuid() != 0 {
			if r, _ := os.ReadFile("/proc/sys/net/ipv4/ping_group_range"); strings.HasPrefix(string(r), "1\t0") {
				t.Skip("neither root nor in ping_group_range")
			}
		}
		for _, ip := range []string{"127.0.0.1", "::1"} {
			if code, body := get("/ping?ip=" + ip); code != 200 || !strings.HasPrefix(body, "reply from "+ip) {
				t.Errorf("ping %s: %d %q", ip, code, body)
			}
		}
	})
}
