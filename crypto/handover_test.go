package crypto

import (
	"testing"
	"time"
)

func TestHandoverPeersKeepsOnlyPeerSettings(t *testing.T) {
	tests := []struct {
		name, get, want string
		last            time.Time
	}{
		{"empty device", "private_key=aa\nlisten_port=6784\n", "", time.Time{}},
		{
			"one peer",
			"private_key=aa\nlisten_port=6784\nfwmark=0\npublic_key=bb\npreshared_key=cc\nprotocol_version=1\n" +
				"endpoint=10.0.0.2:6784\nlast_handshake_time_sec=17\nlast_handshake_time_nsec=5\ntx_bytes=9\nrx_bytes=8\n" +
				"persistent_keepalive_interval=25\nallowed_ip=10.32.0.0/14\nallowed_ip=10.36.0.1/32\n",
			"public_key=bb\npreshared_key=cc\nprotocol_version=1\nendpoint=10.0.0.2:6784\n" +
				"persistent_keepalive_interval=25\nallowed_ip=10.32.0.0/14\nallowed_ip=10.36.0.1/32\n",
			time.Unix(17, 5),
		},
		{
			"the latest of two handshakes, none for a peer that never had one",
			"public_key=bb\nlast_handshake_time_sec=17\nlast_handshake_time_nsec=5\n" +
				"public_key=dd\nlast_handshake_time_sec=20\nlast_handshake_time_nsec=0\n" +
				"public_key=ee\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n",
			"public_key=bb\npublic_key=dd\npublic_key=ee\n",
			time.Unix(20, 0),
		},
		{"garbage lines", "errno=0\nnot a pair\n", "", time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, last := handoverPeers(tt.get)
			if got != tt.want {
				t.Errorf("handoverPeers:\n%s\nwant:\n%s", got, tt.want)
			}
			if !last.Equal(tt.last) {
				t.Errorf("last handshake %v, want %v", last, tt.last)
			}
		})
	}
}
