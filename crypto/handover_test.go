package crypto

import "testing"

func TestHandoverPeersKeepsOnlyPeerSettings(t *testing.T) {
	tests := []struct {
		name, get, want string
	}{
		{"empty device", "private_key=aa\nlisten_port=6784\n", ""},
		{
			"one peer",
			"private_key=aa\nlisten_port=6784\nfwmark=0\npublic_key=bb\npreshared_key=cc\nprotocol_version=1\n" +
				"endpoint=10.0.0.2:6784\nlast_handshake_time_sec=17\nlast_handshake_time_nsec=5\ntx_bytes=9\nrx_bytes=8\n" +
				"persistent_keepalive_interval=25\nallowed_ip=10.32.0.0/14\nallowed_ip=10.36.0.1/32\n",
			"public_key=bb\npreshared_key=cc\nprotocol_version=1\nendpoint=10.0.0.2:6784\n" +
				"persistent_keepalive_interval=25\nallowed_ip=10.32.0.0/14\nallowed_ip=10.36.0.1/32\n",
		},
		{"garbage lines", "errno=0\nnot a pair\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := handoverPeers(tt.get); got != tt.want {
				t.Errorf("handoverPeers:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}
