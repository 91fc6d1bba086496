package cniplugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		code       uint   // 0: no error
		msg        string // part of the message
		wantSocket string
		wantMTU    int
	}{
		{name: "defaults", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`, wantSocket: DefaultSocket},
		{name: "all keys", in: `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":"/run/x/w.sock","mtu":1400}`, wantSocket: "/run/x/w.sock", wantMTU: 1400},
		{name: "0.4.0", in: `{"cniVersion":"0.4.0","name":"weft","type":"weft-cni"}`, wantSocket: DefaultSocket},
		{name: "unknown keys are fine", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","runtimeConfig":{"x":1},"args":{}}`, wantSocket: DefaultSocket},
		{name: "valid attachments", in: `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`, wantSocket: DefaultSocket},
		{name: "not json", in: `{"cniVersion":`, code: types.ErrDecodingFailure, msg: "cut short"},
		{name: "garbage", in: `{cniVersion}`, code: types.ErrDecodingFailure, msg: "not valid JSON"},
		{name: "empty", in: ``, code: types.ErrDecodingFailure, msg: "empty"},
		{name: "trailing data", in: `{"cniVersion":"1.0.0","name":"weft"} {}`, code: types.ErrDecodingFailure, msg: "after its JSON"},
		{name: "array", in: `[]`, code: types.ErrInvalidNetworkConfig, msg: "must be an object"},
		{name: "mtu string", in: `{"cniVersion":"1.0.0","name":"weft","mtu":"1400"}`, code: types.ErrInvalidNetworkConfig, msg: "mtu must be a whole number"},
		{name: "mtu fraction", in: `{"cniVersion":"1.0.0","name":"weft","mtu":1400.5}`, code: types.ErrInvalidNetworkConfig, msg: "mtu"},
		{name: "mtu too small", in: `{"cniVersion":"1.0.0","name":"weft","mtu":67}`, code: types.ErrInvalidNetworkConfig, msg: "out of range"},
		{name: "mtu too big", in: `{"cniVersion":"1.0.0","name":"weft","mtu":70000}`, code: types.ErrInvalidNetworkConfig, msg: "out of range"},
		{name: "mtu negative", in: `{"cniVersion":"1.0.0","name":"weft","mtu":-1}`, code: types.ErrInvalidNetworkConfig, msg: "out of range"},
		{name: "socket relative", in: `{"cniVersion":"1.0.0","name":"weft","socket":"weft.sock"}`, code: types.ErrInvalidNetworkConfig, msg: "absolute"},
		{name: "socket number", in: `{"cniVersion":"1.0.0","name":"weft","socket":1}`, code: types.ErrInvalidNetworkConfig, msg: "socket must be a string"},
		{name: "socket too long", in: `{"cniVersion":"1.0.0","name":"weft","socket":"/` + strings.Repeat("a", 120) + `"}`, code: types.ErrInvalidNetworkConfig, msg: "more than a unix socket"},
		{name: "no version", in: `{"name":"weft"}`, code: types.ErrInvalidNetworkConfig, msg: "cniVersion is missing"},
		{name: "old version", in: `{"cniVersion":"0.3.1","name":"weft"}`, code: types.ErrIncompatibleCNIVersion, msg: "not supported"},
		{name: "future version", in: `{"cniVersion":"9.0.0","name":"weft"}`, code: types.ErrIncompatibleCNIVersion, msg: "not supported"},
		{name: "no name", in: `{"cniVersion":"1.0.0"}`, code: types.ErrInvalidNetworkConfig, msg: "no name"},
		{name: "bad prevResult", in: `{"cniVersion":"1.0.0","name":"weft","prevResult":{"ips":"x"}}`, code: types.ErrDecodingFailure, msg: "prevResult"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := ParseConfig([]byte(tt.in))
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("ParseConfig: %v", err)
				}
				if conf.Socket != tt.wantSocket || conf.MTU != tt.wantMTU {
					t.Errorf("socket %q mtu %d, want %q %d", conf.Socket, conf.MTU, tt.wantSocket, tt.wantMTU)
				}
				return
			}
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("ParseConfig = %v, want a *types.Error with code %d", err, tt.code)
			}
			if e.Code != tt.code || !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("error code %d %q, want code %d containing %q", e.Code, e.Msg, tt.code, tt.msg)
			}
			if e.Details == "" {
				t.Errorf("error %q says nothing about what to do", e.Msg)
			}
		})
	}
}

func TestParseConfigPrevResult(t *testing.T) {
	in := `{"cniVersion":"1.0.0","name":"weft","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.32.0.5/32"}]}}`
	conf, err := ParseConfig([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if conf.PrevResult == nil {
		t.Fatal("prevResult not parsed")
	}
}

func TestParseCNIArgs(t *testing.T) {
	tests := []struct{ in, ns, name string }{
		{"", "", ""},
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc", "default", "web-0"},
		{"K8S_POD_NAME=a;K8S_POD_UID=u;K8S_POD_NAMESPACE=kube-system", "kube-system", "a"},
		{"garbage;;=;K8S_POD_NAME", "", ""},
	}
	for _, tt := range tests {
		got := parseCNIArgs(tt.in)
		if got.Namespace != tt.ns || got.Name != tt.name {
			t.Errorf("parseCNIArgs(%q) = %+v, want %q %q", tt.in, got, tt.ns, tt.name)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","socket":"/run/weft/weft.sock","mtu":0}`,
		`{"cniVersion":"1.1.0","name":"weft","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`,
		`{"cniVersion":"1.0.0","name":"weft","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.32.0.5/32","interface":1}],"interfaces":[{"name":"eth0"}]}}`,
		`{"cniVersion":"0.4.0","name":"weft","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.1/32"}]}}`,
		`{"mtu":"x"}`, `[]`, `null`, ``, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := ParseConfig(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Msg == "" {
				t.Fatalf("ParseConfig error %v is not a CNI error with a message", err)
			}
			return
		}
		if conf.Socket == "" || conf.MTU != 0 && (conf.MTU < MinMTU || conf.MTU > MaxMTU) || conf.Name == "" {
			t.Fatalf("ParseConfig accepted %+v", conf)
		}
	})
}

func TestGCAttachments(t *testing.T) {
	tests := []struct {
		in   string
		want int // -1: error
	}{
		{`{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}]}`, 2},
		{`{"cni.dev/valid-attachments":[]}`, 0},
		{`{"cni.dev/valid-attachments":null}`, 0},
		{`{"cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}`, 1},
		{`{}`, -1},
		{`{"cni.dev/valid-attachments":"all"}`, -1},
		{`[`, -1},
	}
	for _, tt := range tests {
		got, err := gcAttachments([]byte(tt.in))
		if tt.want < 0 {
			if err == nil {
				t.Errorf("gcAttachments(%s) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || len(got) != tt.want {
			t.Errorf("gcAttachments(%s) = %v, %v; want %d attachments", tt.in, got, err, tt.want)
		}
	}
}
