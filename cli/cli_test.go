package cli

import (
	"testing"

	"github.com/spf13/pflag"
)

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{
		"node-name":          "WEFT_NODE_NAME",
		"advertise-endpoint": "WEFT_ADVERTISE_ENDPOINT",
		"mtu":                "WEFT_MTU",
	} {
		if got := envName(flag); got != want {
			t.Errorf("envName(%q) = %q, want %q", flag, got, want)
		}
	}
}

func TestApplyEnv(t *testing.T) {
	env := map[string]string{"WEFT_NODE_NAME": "from-env", "WEFT_MTU": "1400", "WEFT_PEERS": "10.0.0.1"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	name := fs.String("node-name", "", "")
	mtu := fs.Int("mtu", 0, "")
	peers := fs.String("peers", "", "")
	if err := fs.Parse([]string{"--peers", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs, lookup); err != nil {
		t.Fatal(err)
	}
	if *name != "from-env" || *mtu != 1400 {
		t.Errorf("env not applied: node-name=%q mtu=%d", *name, *mtu)
	}
	if *peers != "from-flag" {
		t.Errorf("a flag on the command line must win over the environment; peers=%q", *peers)
	}

	env["WEFT_MTU"] = "lots"
	fs2 := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs2.Int("mtu", 0, "")
	if err := applyEnv(fs2, lookup); err == nil {
		t.Error("a malformed WEFT_MTU should be an error naming the variable")
	}
}
