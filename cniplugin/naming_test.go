package cniplugin

import (
	"fmt"
	"testing"
)

func TestHostVethName(t *testing.T) {
	a := HostVethName("0123456789abcdef", "eth0")
	if a != HostVethName("0123456789abcdef", "eth0") {
		t.Error("HostVethName is not stable")
	}
	if len(a) > 15 || !IsHostVethName(a) {
		t.Errorf("HostVethName = %q: longer than 15 bytes or not recognised", a)
	}
	if a == HostVethName("0123456789abcdef", "net1") {
		t.Error("HostVethName ignores the interface name")
	}
	seen := map[string]string{}
	for i := range 100000 {
		id := fmt.Sprintf("container-%d", i)
		name := HostVethName(id, "eth0")
		if other, ok := seen[name]; ok {
			t.Fatalf("%s and %s both give %s", id, other, name)
		}
		seen[name] = id
	}
	// The separator keeps "ab"+"c" and "a"+"bc" apart.
	if HostVethName("ab", "c") == HostVethName("a", "bc") {
		t.Error("HostVethName concatenates without a separator")
	}
}

func TestIsHostVethName(t *testing.T) {
	tests := map[string]bool{
		HostVethName("x", "eth0"): true,
		"weft":                    false,
		"wv":                      false,
		"wv0123456789ab":          false, // one digit short
		"wv0123456789abc":         true,
		"wv0123456789abC":         false,
		"wx0123456789abc":         false,
		"veth0123456789a":         false,
	}
	for name, want := range tests {
		if got := IsHostVethName(name); got != want {
			t.Errorf("IsHostVethName(%q) = %v, want %v", name, got, want)
		}
	}
}
